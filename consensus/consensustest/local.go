// Package consensustest provides test doubles for the consensus package.
// Local stands in for a Replica in tests of actors/, sim/ and cmd/: one
// in-memory State behind a mutex, no Raft, no disk.
//
// Who may import it: tests only (and sim/).
package consensustest

import (
	"context"
	"fmt"
	"sync"

	"google.golang.org/protobuf/proto"

	"github.com/blixard/blixard/consensus"
	"github.com/blixard/blixard/proto/blixardpb"
)

// Local is an in-memory, single-replica stand-in for a consensus Replica.
// Propose applies commands at increasing log indexes (1, 2, …); Read runs a
// function against the state under the same lock. It is safe for
// concurrent use.
type Local struct {
	mu          sync.Mutex
	state       *consensus.State
	index       uint64
	nodeID      uint64
	clock       func() int64
	onEffects   func([]consensus.Effect)
	unavailable bool

	// Effects queue: whoever finds delivering unset delivers the queue,
	// outside the lock, until it is empty. This keeps hooks in log order
	// across concurrent proposers and lets a hook call Propose.
	queue      [][]consensus.Effect
	delivering bool
}

// Option configures a Local.
type Option func(*Local)

// WithClock sets the clock that fills Command.time_unix_ms when a proposed
// command leaves it zero. The default clock returns 0 (no wall time
// enters the state unless the test asks for it).
func WithClock(now func() int64) Option { return func(l *Local) { l.clock = now } }

// WithEffects sets the hook that receives, after each applied command,
// the effects that concern node nodeID (see consensus.Effect.Concerns);
// nodeID 0 receives every effect.
// It is called outside the lock, in log order, and only when there is at
// least one such effect; when Propose returns in a single-goroutine test,
// the hook has seen that command's effects. It must not block for long; it
// may call Propose.
func WithEffects(nodeID uint64, fn func([]consensus.Effect)) Option {
	return func(l *Local) { l.nodeID, l.onEffects = nodeID, fn }
}

// WithState starts from the given state instead of an empty one. The
// Local owns it afterwards.
func WithState(s *consensus.State) Option { return func(l *Local) { l.state = s } }

// NewLocal returns a Local with an empty state.
func NewLocal(opts ...Option) *Local {
	l := &Local{state: consensus.NewState(), clock: func() int64 { return 0 }}
	for _, o := range opts {
		o(l)
	}
	l.index = l.state.AppliedIndex()
	return l
}

// SetUnavailable makes Propose and Read fail with consensus.ErrUnavailable
// (true) or work again (false), as a cluster that lost its quorum would.
func (l *Local) SetUnavailable(down bool) {
	l.mu.Lock()
	l.unavailable = down
	l.mu.Unlock()
}

// ProposeBatch applies cmds as one Batch entry (copies of them, times
// filled in as Propose does) and returns their results in order.
func (l *Local) ProposeBatch(ctx context.Context, cmds []*blixardpb.Command) ([]*blixardpb.Result, error) {
	res, err := l.Propose(ctx, &blixardpb.Command{Op: &blixardpb.Command_Batch{Batch: &blixardpb.Batch{Commands: cmds}}})
	if err != nil {
		return nil, err
	}
	if res.GetError().GetCode() != blixardpb.Code_OK {
		return nil, fmt.Errorf("batch refused: %s", res.GetError().GetMessage())
	}
	return res.GetBatch(), nil
}

// Propose applies cmd (a copy of it, with time_unix_ms filled in from the
// clock when zero) and returns its result. It fails with the context's
// error when ctx is done and with consensus.ErrUnavailable when the Local
// is set unavailable; the command is not applied then.
func (l *Local) Propose(ctx context.Context, cmd *blixardpb.Command) (*blixardpb.Result, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	c := proto.Clone(cmd).(*blixardpb.Command)
	l.mu.Lock()
	if l.unavailable {
		l.mu.Unlock()
		return nil, consensus.ErrUnavailable
	}
	now := l.clock()
	if c.GetTimeUnixMs() == 0 {
		c.TimeUnixMs = now
	}
	for _, in := range c.GetBatch().GetCommands() {
		if in.GetTimeUnixMs() == 0 {
			in.TimeUnixMs = now
		}
	}
	l.index++
	res, effects := l.state.Apply(l.index, c)
	var mine []consensus.Effect
	if l.onEffects != nil {
		for _, e := range effects {
			if l.nodeID == 0 || e.Concerns(l.nodeID) {
				mine = append(mine, e)
			}
		}
	}
	if len(mine) > 0 {
		l.queue = append(l.queue, mine)
	}
	if l.delivering || len(l.queue) == 0 {
		l.mu.Unlock()
		return res, nil
	}
	l.delivering = true
	for len(l.queue) > 0 {
		batch := l.queue[0]
		l.queue = l.queue[1:]
		l.mu.Unlock()
		l.onEffects(batch)
		l.mu.Lock()
	}
	l.delivering = false
	l.mu.Unlock()
	return res, nil
}

// Read runs fn against the state under the lock. stale is accepted for
// API parity with the Replica; a Local is always up to date.
func (l *Local) Read(ctx context.Context, stale bool, fn func(*consensus.State)) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.unavailable && !stale {
		return consensus.ErrUnavailable
	}
	fn(l.state)
	return nil
}

// Index returns the index of the last applied command.
func (l *Local) Index() uint64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.index
}
