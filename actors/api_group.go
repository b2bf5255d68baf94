package actors

import (
	"context"
	"sync"

	"github.com/blixard/blixard/consensus"
	"github.com/blixard/blixard/proto/blixardpb"
)

// groupCommit merges the single VM writes that separate clients send to
// this node concurrently into Batch entries: one proposal is in flight,
// and the writes that arrive meanwhile go together as the next. A write
// that arrives while nothing is in flight is proposed at once, alone.
// Each write keeps its own request id, result and deadline (a write whose
// request ends while it waits is answered UNAVAILABLE and, if it is still
// proposed, commits once: its retry carries the same request id).
type groupCommit struct {
	a     *apiActor
	mu    sync.Mutex
	busy  bool
	queue []*groupWrite
}

type groupWrite struct {
	ctx  context.Context
	cmd  *blixardpb.Command
	done chan groupResult // buffered
}

type groupResult struct {
	res *blixardpb.Result
	err *apiError
}

func newGroupCommit(a *apiActor) *groupCommit { return &groupCommit{a: a} }

// propose commits cmd, alone or in a batch with concurrent writes.
func (g *groupCommit) propose(ctx context.Context, cmd *blixardpb.Command) (*blixardpb.Result, *apiError) {
	g.mu.Lock()
	if !g.busy {
		g.busy = true
		g.mu.Unlock()
		res, e := g.a.propose(ctx, cmd)
		g.drain()
		return res, e
	}
	w := &groupWrite{ctx: ctx, cmd: cmd, done: make(chan groupResult, 1)}
	g.queue = append(g.queue, w)
	g.mu.Unlock()
	select {
	case r := <-w.done:
		return r.res, r.err
	case <-ctx.Done():
		return nil, &apiError{Code: blixardpb.Code_UNAVAILABLE, Message: "no answer before the request's deadline: " + ctx.Err().Error()}
	}
}

// drain proposes what queued while the caller's own proposal was in
// flight, batch after batch, until nothing is queued; it runs on after
// the caller's answer in a goroutine of its own.
func (g *groupCommit) drain() {
	g.mu.Lock()
	if len(g.queue) == 0 {
		g.busy = false
		g.mu.Unlock()
		return
	}
	g.mu.Unlock()
	g.a.wg.Add(1)
	go func() {
		defer g.a.wg.Done()
		for {
			g.mu.Lock()
			n := min(len(g.queue), consensus.MaxBatch)
			if n == 0 {
				g.busy = false
				g.mu.Unlock()
				return
			}
			batch := append([]*groupWrite(nil), g.queue[:n]...)
			g.queue = append(g.queue[:0], g.queue[n:]...)
			g.mu.Unlock()
			g.send(batch)
		}
	}()
}

// send commits one batch of queued writes (those whose requests ended
// are left out) and answers each.
func (g *groupCommit) send(batch []*groupWrite) {
	live := batch[:0]
	for _, w := range batch {
		if w.ctx.Err() == nil {
			live = append(live, w)
		}
	}
	if len(live) == 0 {
		return
	}
	cmds := make([]*blixardpb.Command, len(live))
	for i, w := range live {
		cmds[i] = w.cmd
	}
	res, e := g.a.commit(g.a.ctx, cmds, len(cmds) > 1)
	for i, w := range live {
		if e != nil {
			w.done <- groupResult{err: e}
		} else {
			w.done <- groupResult{res: res[i]}
		}
	}
}
