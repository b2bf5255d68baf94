package client

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/asynkron/protoactor-go/actor"
	"google.golang.org/protobuf/proto"

	"github.com/blixard/blixard/proto/blixardpb"
)

// Write batching: VM writes that callers make concurrently to one node are
// sent as one VmWriteBatchRequest, which the node commits in one Raft
// entry. A node has at most DefaultBatchesInFlight batches (or single
// writes) outstanding from this client; a write made while that many are
// out waits for one of them to be answered and then goes with everything
// else that waited. A write made while fewer are out is sent at once,
// alone, as its plain request: batching adds no latency to a client that
// is not busy. Every write keeps its own request id, response and retries.
//
// One batch in flight measured best (docs/benchmarks.md): on a 3-node
// cluster each Raft round costs far more than the commands it carries, so
// fewer, fuller rounds win over overlapping ones.
//
// When a batch of several writes is answered, its callers usually write
// again at once. Sent straight away, the next batch would carry only the
// writes that queued meanwhile, and the answered callers would form the
// batch after it: the callers would split into two groups taking turns,
// each batch half full and twice the Raft rounds. So the batcher lingers
// before the next batch, until as many writes wait as were just answered
// plus those that waited already, or until no write has come for
// DefaultLingerGap, or DefaultLingerMax has passed. Only a batch of
// several writes is followed by a linger: a caller writing alone, one
// write after another, never waits.
const (
	DefaultBatchesInFlight = 1
	DefaultLingerGap       = 200 * time.Microsecond
	DefaultLingerMax       = 2 * time.Millisecond
	// maxBatchWrites bounds one batch (the node refuses more than
	// consensus.MaxBatch).
	maxBatchWrites = 512
)

// WithWriteBatching sets how many batches of VM writes may be outstanding
// to one node (default DefaultBatchesInFlight); n <= 0 sends every write
// on its own.
func WithWriteBatching(n int) Option { return func(o *options) { o.batches = n; o.batchesSet = true } }

// withLinger sets the linger's gap and bound (tests).
func withLinger(gap, max time.Duration) Option {
	return func(o *options) { o.lingerGap, o.lingerMax = gap, max }
}

// batcher coalesces the VM writes to one node.
type batcher struct {
	c    *Client
	addr string

	mu       sync.Mutex
	inFlight int
	queue    []*pendingWrite
	// want is how many queued writes end a linger (0: not lingering);
	// full is signalled when the queue reaches it.
	want int
	full chan struct{}
	// arrived counts queued writes, so that a linger sees whether any
	// came during its last gap.
	arrived uint64
}

type pendingWrite struct {
	req      proto.Message // one of the VmWrite requests
	deadline time.Time
	done     chan writeResult // buffered: the batch never blocks on a caller that gave up
}

type writeResult struct {
	res response
	err error
}

// AsVMWrite wraps a VM write request (create, start, stop, delete,
// migrate) as a VmWrite of a VmWriteBatchRequest; ok is false for other
// requests.
func AsVMWrite(req proto.Message) (w *blixardpb.VmWrite, ok bool) {
	switch m := req.(type) {
	case *blixardpb.CreateVmRequest:
		return &blixardpb.VmWrite{Op: &blixardpb.VmWrite_Create{Create: m}}, true
	case *blixardpb.StartVmRequest:
		return &blixardpb.VmWrite{Op: &blixardpb.VmWrite_Start{Start: m}}, true
	case *blixardpb.StopVmRequest:
		return &blixardpb.VmWrite{Op: &blixardpb.VmWrite_Stop{Stop: m}}, true
	case *blixardpb.DeleteVmRequest:
		return &blixardpb.VmWrite{Op: &blixardpb.VmWrite_Delete{Delete: m}}, true
	case *blixardpb.MigrateVmRequest:
		return &blixardpb.VmWrite{Op: &blixardpb.VmWrite_Migrate{Migrate: m}}, true
	}
	return nil, false
}

func isVMWrite(req proto.Message) bool {
	switch req.(type) {
	case *blixardpb.CreateVmRequest, *blixardpb.StartVmRequest, *blixardpb.StopVmRequest,
		*blixardpb.DeleteVmRequest, *blixardpb.MigrateVmRequest:
		return true
	}
	return false
}

// checkEncodable refuses a batched write protobuf cannot encode (invalid
// UTF-8 in a string): in a batch it would fail every write of the batch
// in protoactor's serializer.
func (c *Client) checkEncodable(req proto.Message) error {
	if c.opts.batches <= 0 || !isVMWrite(req) {
		return nil
	}
	if _, err := proto.Marshal(req); err != nil {
		return &Error{Code: blixardpb.Code_INVALID_ARGUMENT, Message: fmt.Sprintf("request cannot be encoded: %v", err)}
	}
	return nil
}

// batcherFor returns addr's batcher.
func (c *Client) batcherFor(addr string) *batcher {
	c.mu.Lock()
	defer c.mu.Unlock()
	b := c.batchers[addr]
	if b == nil {
		b = &batcher{c: c, addr: addr, full: make(chan struct{}, 1)}
		c.batchers[addr] = b
	}
	return b
}

// do sends a VM write through the batcher and waits up to timeout (and
// ctx) for its response.
func (b *batcher) do(ctx context.Context, req proto.Message, timeout time.Duration) (response, error) {
	p := &pendingWrite{req: req, deadline: time.Now().Add(timeout), done: make(chan writeResult, 1)}
	b.mu.Lock()
	if b.inFlight < b.c.opts.batches {
		b.inFlight++
		b.mu.Unlock()
		go b.run([]*pendingWrite{p})
	} else {
		b.queue = append(b.queue, p)
		b.arrived++
		if b.want > 0 && len(b.queue) >= b.want {
			b.want = 0
			select {
			case b.full <- struct{}{}:
			default:
			}
		}
		b.mu.Unlock()
	}
	// The attempt's own deadline holds while it waits in the queue too.
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case r := <-p.done:
		return r.res, r.err
	case <-t.C:
		return nil, &errTransport{addr: b.addr, err: errors.New("no answer (timeout)")}
	case <-ctx.Done():
		return nil, &errTransport{addr: b.addr, err: ctx.Err()}
	}
}

// run sends batch, then whatever queued meanwhile (after the linger),
// until nothing more comes.
func (b *batcher) run(batch []*pendingWrite) {
	tick := time.NewTimer(time.Hour)
	tick.Stop()
	defer tick.Stop()
	for {
		b.send(batch)
		b.mu.Lock()
		if len(batch) > 1 {
			b.linger(len(batch)+len(b.queue), tick)
		}
		if len(b.queue) == 0 {
			b.inFlight--
			b.mu.Unlock()
			return
		}
		n := min(len(b.queue), maxBatchWrites)
		batch = make([]*pendingWrite, n)
		copy(batch, b.queue)
		b.queue = append(b.queue[:0], b.queue[n:]...)
		b.mu.Unlock()
	}
}

// linger waits, with b.mu held on entry and on return, until want writes
// are queued, a gap passes with no write queued, or the linger's bound.
func (b *batcher) linger(want int, tick *time.Timer) {
	gap, bound := b.c.opts.lingerGap, b.c.opts.lingerMax
	if len(b.queue) >= want || gap <= 0 {
		return
	}
	end := time.Now().Add(bound)
	b.want = want
	for {
		seen := b.arrived
		b.mu.Unlock()
		tick.Reset(min(gap, time.Until(end)))
		full := false
		select {
		case <-b.full:
			full = true
		case <-tick.C:
		}
		tick.Stop()
		b.mu.Lock()
		if full || b.want == 0 || b.arrived == seen || !time.Now().Before(end) {
			break
		}
	}
	b.want = 0
	select { // a signal that raced with the tick
	case <-b.full:
	default:
	}
}

// send sends one batch (a single write as its plain request) and hands
// every write its response or the batch's failure.
func (b *batcher) send(batch []*pendingWrite) {
	var last time.Time
	for _, p := range batch {
		if p.deadline.After(last) {
			last = p.deadline
		}
	}
	timeout := time.Until(last)
	fail := func(err error) {
		for _, p := range batch {
			p.done <- writeResult{err: err}
		}
	}
	if timeout <= 0 {
		fail(&errTransport{addr: b.addr, err: context.DeadlineExceeded})
		return
	}
	pid := actor.NewPID(b.addr, APIActorName)
	if len(batch) == 1 {
		res, err := b.c.request(pid, batch[0].req, timeout)
		batch[0].done <- writeResult{res, err}
		return
	}
	req := &blixardpb.VmWriteBatchRequest{Writes: make([]*blixardpb.VmWrite, len(batch))}
	for i, p := range batch {
		req.Writes[i], _ = AsVMWrite(p.req)
	}
	res, err := b.c.request(pid, req, timeout)
	if err != nil {
		fail(err)
		return
	}
	br, ok := res.(*blixardpb.VmWriteBatchResponse)
	switch {
	case !ok:
		fail(&errTransport{addr: b.addr, err: fmt.Errorf("unexpected reply %T to a write batch", res)})
	case br.GetError() != nil && br.GetError().GetCode() != blixardpb.Code_OK:
		// The node refused the batch whole (overloaded, say): each write
		// gets that answer and retries as it would have alone.
		for _, p := range batch {
			p.done <- writeResult{res: &blixardpb.VmResponse{Error: br.GetError()}}
		}
	case len(br.GetResponses()) != len(batch):
		fail(&errTransport{addr: b.addr, err: fmt.Errorf("%d responses to a batch of %d writes", len(br.GetResponses()), len(batch))})
	default:
		for i, p := range batch {
			p.done <- writeResult{res: br.GetResponses()[i]}
		}
	}
}

// request sends req to pid and waits up to timeout for the reply; a
// failure is an errTransport.
func (c *Client) request(pid *actor.PID, req proto.Message, timeout time.Duration) (response, error) {
	v, err := c.system.Root.RequestFuture(pid, req, timeout).Result()
	if err != nil {
		switch {
		case errors.Is(err, actor.ErrTimeout):
			err = errors.New("no answer (timeout)")
		case errors.Is(err, actor.ErrDeadLetter):
			err = errors.New("no api actor (node unreachable or starting)")
		}
		return nil, &errTransport{addr: pid.GetAddress(), err: err}
	}
	if _, ok := v.(*actor.DeadLetterResponse); ok {
		return nil, &errTransport{addr: pid.GetAddress(), err: errors.New("no api actor (node unreachable or starting)")}
	}
	res, ok := v.(response)
	if !ok {
		return nil, &errTransport{addr: pid.GetAddress(), err: fmt.Errorf("unexpected reply %T", v)}
	}
	return res, nil
}
