package sim

import (
	"errors"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"
)

// Network is the simulated network between the nodes of one run: the
// fault model that both the Raft transport (raftnet.go) and the gossip
// transport (gossipnet.go) send through, and that client requests pass
// (Cluster.request).
//
// A message from node a to node b is
//   - dropped when the link a→b is cut (partitions are a matrix of
//     one-way links, so one-way and bridge partitions are expressible);
//   - held while a or b is paused, and delivered when the pause ends
//     (a paused node's network freezes; its goroutines keep running);
//   - dropped with probability Loss;
//   - otherwise delivered after a delay drawn from [0, MaxDelay); messages
//     with different delays overtake each other (reordering).
//
// Decisions are drawn from a generator seeded by the run's seed, but the
// order in which goroutines ask for them is not deterministic, so the same
// seed gives the same fault schedule and workload, not the same message
// fates.
type Network struct {
	mu       sync.Mutex
	rng      *rand.Rand
	cut      map[[2]uint64]bool
	paused   map[uint64]bool
	held     map[uint64][]func() // by paused node
	loss     float64
	maxDelay time.Duration
	closed   bool
	wg       sync.WaitGroup
	timers   map[*time.Timer]struct{}

	// Counters for the report.
	Sent, Dropped, Delayed, Held atomic.Int64
}

// errUnreachable is what a dial or request gets across a cut link.
var errUnreachable = errors.New("sim: peer unreachable")

func newNetwork(seed uint64) *Network {
	return &Network{
		rng:    rand.New(rand.NewPCG(seed, 0x6e6574)),
		cut:    map[[2]uint64]bool{},
		paused: map[uint64]bool{},
		held:   map[uint64][]func(){},
		timers: map[*time.Timer]struct{}{},
	}
}

// SetLinks sets the link faults: loss probability and maximum delay.
func (n *Network) SetLinks(loss float64, maxDelay time.Duration) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.loss, n.maxDelay = loss, maxDelay
}

// Cut cuts the one-way link from a to b.
func (n *Network) Cut(a, b uint64) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.cut[[2]uint64{a, b}] = true
}

// HealAll restores every link and ends every pause.
func (n *Network) HealAll() {
	n.mu.Lock()
	n.cut = map[[2]uint64]bool{}
	var ids []uint64
	for id := range n.paused {
		ids = append(ids, id)
	}
	n.mu.Unlock()
	for _, id := range ids {
		n.Resume(id)
	}
}

// Pause freezes node id's network: messages to and from it are held.
func (n *Network) Pause(id uint64) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.paused[id] = true
}

// Resume ends node id's pause and delivers what was held, in order.
func (n *Network) Resume(id uint64) {
	n.mu.Lock()
	delete(n.paused, id)
	held := n.held[id]
	delete(n.held, id)
	n.mu.Unlock()
	for _, f := range held {
		n.send(0, 0, f) // through the current link state (the other end may be paused)
	}
}

// Paused reports whether node id is paused.
func (n *Network) Paused(id uint64) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.paused[id]
}

// Reachable reports whether both directions between a and b are up and
// neither end is paused (what a stream connection or a request needs).
func (n *Network) Reachable(a, b uint64) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	return !n.cut[[2]uint64{a, b}] && !n.cut[[2]uint64{b, a}] && !n.paused[a] && !n.paused[b]
}

// send routes one message from a to b; deliver runs on its own goroutine
// when (and if) the message arrives. a or b zero means "already past the
// sender's checks" (held messages being released).
func (n *Network) send(a, b uint64, deliver func()) {
	n.mu.Lock()
	if n.closed {
		n.mu.Unlock()
		return
	}
	n.Sent.Add(1)
	if a != 0 && b != 0 && n.cut[[2]uint64{a, b}] {
		n.mu.Unlock()
		n.Dropped.Add(1)
		return
	}
	for _, id := range []uint64{a, b} {
		if id != 0 && n.paused[id] {
			n.held[id] = append(n.held[id], deliver)
			n.mu.Unlock()
			n.Held.Add(1)
			return
		}
	}
	if n.loss > 0 && n.rng.Float64() < n.loss {
		n.mu.Unlock()
		n.Dropped.Add(1)
		return
	}
	var d time.Duration
	if n.maxDelay > 0 {
		d = time.Duration(n.rng.Int64N(int64(n.maxDelay)))
	}
	n.wg.Add(1)
	if d == 0 {
		n.mu.Unlock()
		go func() {
			defer n.wg.Done()
			deliver()
		}()
		return
	}
	n.Delayed.Add(1)
	var t *time.Timer
	t = time.AfterFunc(d, func() {
		defer n.wg.Done()
		n.mu.Lock()
		delete(n.timers, t)
		n.mu.Unlock()
		deliver()
	})
	n.timers[t] = struct{}{}
	n.mu.Unlock()
}

// Close drops everything in flight and waits for deliveries under way.
func (n *Network) Close() {
	n.mu.Lock()
	n.closed = true
	for t := range n.timers {
		if t.Stop() {
			n.wg.Done()
		}
	}
	n.timers = nil
	n.held = nil
	n.mu.Unlock()
	n.wg.Wait()
}
