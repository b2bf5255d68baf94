package sim

import (
	"context"
	"fmt"
	"sync"

	dbconfig "github.com/lni/dragonboat/v4/config"
	"github.com/lni/dragonboat/v4/raftio"
	pb "github.com/lni/dragonboat/v4/raftpb"
)

// raftNet is dragonboat's custom transport hook
// (consensus.ReplicaConfig.TransportFactory) over the simulated Network:
// message batches go through the fault model; snapshot chunks are
// delivered synchronously unless the link is cut or an end paused, in
// which case the chunk fails and dragonboat retries the snapshot later.
type raftNet struct {
	net *Network

	mu     sync.Mutex
	byAddr map[string]uint64 // raft address → node id (fixed for the run)
	live   map[string]*raftTransport
}

func newRaftNet(n *Network, addrs map[uint64]string) *raftNet {
	r := &raftNet{net: n, byAddr: map[string]uint64{}, live: map[string]*raftTransport{}}
	for id, a := range addrs {
		r.byAddr[a] = id
	}
	return r
}

var _ dbconfig.TransportFactory = (*raftNet)(nil)

// Create is called by each NodeHost for its transport.
func (r *raftNet) Create(cfg dbconfig.NodeHostConfig, h raftio.MessageHandler, ch raftio.ChunkHandler) raftio.ITransport {
	return &raftTransport{rn: r, addr: cfg.RaftAddress, id: r.byAddr[cfg.RaftAddress], handler: h, chunks: ch}
}

// Validate accepts the addresses of the run's nodes.
func (r *raftNet) Validate(addr string) bool {
	_, ok := r.byAddr[addr]
	return ok
}

func (r *raftNet) lookup(addr string) *raftTransport {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.live[addr]
}

type raftTransport struct {
	rn      *raftNet
	addr    string
	id      uint64
	handler raftio.MessageHandler
	chunks  raftio.ChunkHandler

	// mu is held shared by deliveries and exclusively by Close, so no
	// message reaches a closed NodeHost.
	mu     sync.RWMutex
	closed bool
}

func (t *raftTransport) Name() string { return "blixard-sim" }

func (t *raftTransport) Start() error {
	t.rn.mu.Lock()
	defer t.rn.mu.Unlock()
	t.rn.live[t.addr] = t
	return nil
}

func (t *raftTransport) Close() error {
	t.rn.mu.Lock()
	if t.rn.live[t.addr] == t {
		delete(t.rn.live, t.addr)
	}
	t.rn.mu.Unlock()
	t.mu.Lock()
	t.closed = true
	t.mu.Unlock()
	return nil
}

func (t *raftTransport) deliverBatch(b pb.MessageBatch) {
	t.mu.RLock()
	defer t.mu.RUnlock()
	if !t.closed {
		t.handler(b)
	}
}

func (t *raftTransport) deliverChunk(c pb.Chunk) bool {
	t.mu.RLock()
	defer t.mu.RUnlock()
	return !t.closed && t.chunks(c)
}

func (t *raftTransport) GetConnection(_ context.Context, target string) (raftio.IConnection, error) {
	to, ok := t.rn.byAddr[target]
	if !ok {
		return nil, fmt.Errorf("sim raft: unknown address %s", target)
	}
	return &raftConn{t: t, to: to, target: target}, nil
}

func (t *raftTransport) GetSnapshotConnection(_ context.Context, target string) (raftio.ISnapshotConnection, error) {
	to, ok := t.rn.byAddr[target]
	if !ok {
		return nil, fmt.Errorf("sim raft: unknown address %s", target)
	}
	if !t.rn.net.Reachable(t.id, to) {
		return nil, errUnreachable
	}
	return &raftConn{t: t, to: to, target: target}, nil
}

type raftConn struct {
	t      *raftTransport
	to     uint64
	target string
}

func (c *raftConn) Close() {}

// SendMessageBatch copies the batch (dragonboat may reuse its buffers)
// and routes it; a lost message is not an error, as on a real network.
func (c *raftConn) SendMessageBatch(b pb.MessageBatch) error {
	data := pb.MustMarshal(&b)
	c.t.rn.net.send(c.t.id, c.to, func() {
		dst := c.t.rn.lookup(c.target)
		if dst == nil {
			return
		}
		var mb pb.MessageBatch
		if err := mb.Unmarshal(data); err != nil {
			panic(fmt.Sprintf("sim raft: unmarshalling a batch we marshalled: %v", err))
		}
		dst.deliverBatch(mb)
	})
	return nil
}

func (c *raftConn) SendChunk(ch pb.Chunk) error {
	if !c.t.rn.net.Reachable(c.t.id, c.to) {
		return errUnreachable
	}
	dst := c.t.rn.lookup(c.target)
	if dst == nil {
		return errUnreachable
	}
	data := pb.MustMarshal(&ch)
	var cp pb.Chunk
	if err := cp.Unmarshal(data); err != nil {
		return err
	}
	if !dst.deliverChunk(cp) {
		return fmt.Errorf("sim raft: chunk refused by %s", c.target)
	}
	return nil
}
