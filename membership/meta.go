// Package membership provides blixard's gossip membership: every node
// runs a hashicorp/memberlist member that carries its metadata (node id,
// api/raft/gossip addresses, capacity, labels, version), joins the others
// through any member's gossip address, and reports who is alive, suspect,
// dead or gone. It makes no decisions: the node agent (actors/) turns the
// view into Raft membership changes and node status proposals.
//
// Only cmd/ and actors/ import it.
package membership

import (
	"encoding/json"
	"fmt"
	"strconv"
)

// MetaVersion is the version of the metadata encoding; Decode refuses
// others.
const MetaVersion = 1

// Meta is what a node announces about itself through gossip. Its
// encoding must fit memberlist's 512-byte limit (MaxMetaSize).
type Meta struct {
	NodeID     uint64
	APIAddr    string
	RaftAddr   string
	GossipAddr string
	Vcpus      uint32
	MemoryMB   uint64
	Labels     map[string]string
	Version    string
	// Joining is set while the node waits to be added to the Raft group
	// (its replica has not started): the leader answers with its role.
	Joining bool
	// Leaving is announced just before a graceful leave, so that members
	// tell it from a failure (memberlist's leave event does not say).
	Leaving bool
	// Expect is the --bootstrap-expect of a node without Raft data that
	// waits for that many such nodes to form a cluster together; zero
	// otherwise.
	Expect int
}

// MaxMetaSize is memberlist's limit on a node's metadata.
const MaxMetaSize = 512

// metaWire is the compact JSON form: short keys, empty fields omitted.
type metaWire struct {
	V  int               `json:"v"`
	ID uint64            `json:"id"`
	A  string            `json:"a,omitempty"`
	R  string            `json:"r,omitempty"`
	G  string            `json:"g,omitempty"`
	C  uint32            `json:"c,omitempty"`
	M  uint64            `json:"m,omitempty"`
	L  map[string]string `json:"l,omitempty"`
	S  string            `json:"s,omitempty"`
	J  bool              `json:"j,omitempty"`
	X  bool              `json:"x,omitempty"`
	E  int               `json:"e,omitempty"`
}

// Encode returns the gossip form of m; it fails when m has no node id or
// does not fit MaxMetaSize (long labels).
func (m Meta) Encode() ([]byte, error) {
	if m.NodeID == 0 {
		return nil, fmt.Errorf("node metadata: node id must be nonzero")
	}
	b, err := json.Marshal(metaWire{V: MetaVersion, ID: m.NodeID, A: m.APIAddr, R: m.RaftAddr, G: m.GossipAddr,
		C: m.Vcpus, M: m.MemoryMB, L: m.Labels, S: m.Version, J: m.Joining, X: m.Leaving, E: m.Expect})
	if err != nil {
		return nil, fmt.Errorf("node metadata: %w", err)
	}
	if len(b) > MaxMetaSize {
		return nil, fmt.Errorf("node metadata is %d bytes, more than gossip's limit of %d (shorten the labels)", len(b), MaxMetaSize)
	}
	return b, nil
}

// DecodeMeta parses what Encode produced.
func DecodeMeta(b []byte) (Meta, error) {
	var w metaWire
	if err := json.Unmarshal(b, &w); err != nil {
		return Meta{}, fmt.Errorf("node metadata: %w", err)
	}
	if w.V != MetaVersion {
		return Meta{}, fmt.Errorf("node metadata: version %d, want %d", w.V, MetaVersion)
	}
	if w.ID == 0 {
		return Meta{}, fmt.Errorf("node metadata: no node id")
	}
	return Meta{NodeID: w.ID, APIAddr: w.A, RaftAddr: w.R, GossipAddr: w.G, Vcpus: w.C, MemoryMB: w.M,
		Labels: w.L, Version: w.S, Joining: w.J, Leaving: w.X, Expect: w.E}, nil
}

// NodeName is the memberlist name of node id: two processes with the
// same node id collide on it, which memberlist reports as a conflict.
func NodeName(id uint64) string { return "node-" + strconv.FormatUint(id, 10) }
