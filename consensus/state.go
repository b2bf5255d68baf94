package consensus

import (
	"errors"
	"io"

	"github.com/blixard/blixard/proto/blixardpb"
)

// SKELETON: the signatures below are the contract other packages build
// against; the implementation replaces this file.

// State is the cluster state machine: pure, deterministic, no I/O, no clock.
// It is not safe for concurrent use; the Replica serialises access.
type State struct{}

// NewState returns an empty state (no nodes, no VMs, default config).
func NewState() *State { return &State{} }

// Apply applies one committed command at log index idx and returns the
// typed result and the effects. It never panics on any input.
func (s *State) Apply(idx uint64, cmd *blixardpb.Command) (*blixardpb.Result, []Effect) {
	return &blixardpb.Result{Error: &blixardpb.Error{Code: blixardpb.Code_INTERNAL, Message: "not implemented"}}, nil
}

// ApplyBytes decodes a marshalled Command and applies it; undecodable bytes
// yield an INVALID_ARGUMENT result and change nothing but the applied index.
func (s *State) ApplyBytes(idx uint64, data []byte) (*blixardpb.Result, []Effect) {
	return s.Apply(idx, nil)
}

// Save writes a deterministic, versioned snapshot.
func (s *State) Save(w io.Writer) error { return errors.New("not implemented") }

// Restore replaces the state with a snapshot written by Save.
func (s *State) Restore(r io.Reader) error { return errors.New("not implemented") }

// AppliedIndex is the index of the last applied command.
func (s *State) AppliedIndex() uint64 { return 0 }

// Config returns a copy of the cluster configuration.
func (s *State) Config() *blixardpb.ClusterConfig { return &blixardpb.ClusterConfig{} }

// VM returns a copy of the named VM's record.
func (s *State) VM(name string) (*blixardpb.VmRecord, bool) { return nil, false }

// VMs returns copies of all VM records, sorted by name.
func (s *State) VMs() []*blixardpb.VmRecord { return nil }

// VMsOnNode returns copies of the records of VMs placed on node id, sorted by name.
func (s *State) VMsOnNode(id uint64) []*blixardpb.VmRecord { return nil }

// Node returns a copy of node id's record.
func (s *State) Node(id uint64) (*blixardpb.NodeRecord, bool) { return nil, false }

// Nodes returns copies of all node records, sorted by id.
func (s *State) Nodes() []*blixardpb.NodeRecord { return nil }

// Usage is what the VMs placed on a node take from it.
type Usage struct {
	Vcpus    uint32
	MemoryMB uint64
	VMs      int
}

// NodeUsage returns the resources reserved on node id.
func (s *State) NodeUsage(id uint64) Usage { return Usage{} }
