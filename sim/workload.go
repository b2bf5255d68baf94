package sim

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"time"

	"google.golang.org/protobuf/proto"

	bxclient "github.com/blixard/blixard/client"
	"github.com/blixard/blixard/proto/blixardpb"
)

// Workload knobs.
const (
	// vmNames is the pool the clients pick from: small, so that clients
	// collide on names (creates race, deletes meet starts).
	numVMNames = 6
	// maxAttempts is how many nodes a client tries (same request id)
	// before it gives up and records the outcome as unknown.
	maxAttempts = 4
	// requestTimeout bounds one attempt (the api answers UNAVAILABLE
	// after simProposeTimeout).
	requestTimeout = simProposeTimeout + time.Second
)

// opWeights are the relative frequencies of the operations.
var opWeights = [numOpKinds]int{OpCreate: 25, OpStart: 15, OpStop: 15, OpDelete: 12, OpMigrate: 8, OpGet: 25}

func vmName(i int) string { return fmt.Sprintf("vm-%c", 'a'+i) }

// history collects the operations of all clients.
type history struct {
	start time.Time
	mu    sync.Mutex
	ops   []Op
}

func (h *history) now() int64 { return int64(time.Since(h.start)) }

func (h *history) add(o Op) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.ops = append(h.ops, o)
}

func (h *history) all() []Op {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]Op(nil), h.ops...)
}

// client is one workload client: its operation choices come from its own
// generator, seeded by the run's seed and the client's number.
type client struct {
	id   int
	seed uint64
	c    *cluster
	h    *history
	rng  *rand.Rand
	// noMigrate draws no migrations (their share goes to gets).
	noMigrate bool
}

// run issues up to ops operations, one at a time, until ctx ends.
func (cl *client) run(ctx context.Context, ops int) {
	cl.rng = rand.New(rand.NewPCG(cl.seed, uint64(cl.id)+1))
	total := 0
	for _, w := range opWeights {
		total += w
	}
	for i := 0; i < ops && ctx.Err() == nil; i++ {
		r := cl.rng.IntN(total)
		kind := OpKind(0)
		for ; r >= opWeights[kind]; kind++ {
			r -= opWeights[kind]
		}
		if kind == OpMigrate && cl.noMigrate {
			kind = OpGet
		}
		in := opInput{Kind: kind, Name: vmName(cl.rng.IntN(numVMNames))}
		if kind == OpCreate {
			in.NoStart = cl.rng.IntN(4) == 0
		}
		first := uint64(cl.rng.IntN(len(cl.c.nodes))) + 1
		target := uint64(cl.rng.IntN(len(cl.c.nodes) + 1)) // 0: let the cluster choose
		reqID := fmt.Sprintf("sim-%d-c%d-%d", cl.seed, cl.id, i)
		// Every other write goes as a batch of one: the api's batch path
		// and Batch entries are exercised next to the plain ones.
		cl.do(ctx, in, reqID, first, target, i%2 == 1)
	}
}

func (cl *client) request(in opInput, reqID string, target uint64) proto.Message {
	switch in.Kind {
	case OpCreate:
		return &blixardpb.CreateVmRequest{RequestId: reqID, NoStart: in.NoStart, Spec: &blixardpb.VmSpec{
			Name: in.Name, Vcpus: 1, MemoryMb: 64}}
	case OpStart:
		return &blixardpb.StartVmRequest{RequestId: reqID, Name: in.Name}
	case OpStop:
		return &blixardpb.StopVmRequest{RequestId: reqID, Name: in.Name}
	case OpDelete:
		return &blixardpb.DeleteVmRequest{RequestId: reqID, Name: in.Name}
	case OpMigrate:
		return &blixardpb.MigrateVmRequest{RequestId: reqID, Name: in.Name, TargetNodeId: target}
	}
	return &blixardpb.GetVmRequest{Name: in.Name}
}

// do performs one operation with retries on other nodes (same request
// id) and records it. A read without an answer is not recorded (it had
// no effect); a write without one is recorded as unknown.
func (cl *client) do(ctx context.Context, in opInput, reqID string, first, target uint64, batch bool) {
	msg := cl.request(in, reqID, target)
	if w, ok := bxclient.AsVMWrite(msg); ok && batch {
		msg = &blixardpb.VmWriteBatchRequest{Writes: []*blixardpb.VmWrite{w}}
	}
	o := Op{Client: cl.id, In: in, Call: cl.h.now()}
	node := first
	for attempt := 1; attempt <= maxAttempts && ctx.Err() == nil; attempt++ {
		o.Attempts, o.Node = attempt, node
		resp, err := cl.c.request(ctx, node, msg)
		if br, ok := resp.(*blixardpb.VmWriteBatchResponse); ok && err == nil {
			resp = &blixardpb.VmResponse{Error: br.GetError()}
			if br.GetError() == nil {
				resp = &blixardpb.VmResponse{Error: &blixardpb.Error{Code: blixardpb.Code_INTERNAL,
					Message: fmt.Sprintf("%d responses to a batch of one write", len(br.GetResponses()))}}
				if len(br.GetResponses()) == 1 {
					resp = br.GetResponses()[0]
				}
			}
		}
		if err == nil {
			e := respError(resp)
			if e.GetCode() != blixardpb.Code_UNAVAILABLE && e.GetCode() != blixardpb.Code_DEADLINE_EXCEEDED {
				o.Return = cl.h.now()
				o.Out = opOutput{Code: e.GetCode()}
				if vr, ok := resp.(*blixardpb.VmResponse); ok && in.Kind == OpGet && e == nil {
					o.Out.Running = vr.GetVm().GetDesired() == blixardpb.DesiredState_DESIRED_RUNNING
				}
				cl.h.add(o)
				return
			}
		}
		node = node%uint64(len(cl.c.nodes)) + 1
		// A short pause before the next node, as a client would.
		select {
		case <-ctx.Done():
		case <-time.After(20 * time.Millisecond):
		}
	}
	if in.Kind == OpGet {
		return
	}
	o.Return = cl.h.now()
	o.Out = opOutput{Unknown: true}
	cl.h.add(o)
}

func respError(m proto.Message) *blixardpb.Error {
	if e, ok := m.(interface{ GetError() *blixardpb.Error }); ok {
		return e.GetError()
	}
	return &blixardpb.Error{Code: blixardpb.Code_INTERNAL, Message: fmt.Sprintf("unexpected response %T", m)}
}

var errNodeDown = errors.New("sim: node is down (connection refused)")

// request sends msg to node's api actor through its local PID, as the
// network would carry it: a crashed node refuses at once; a paused one
// never answers (the attempt times out).
func (c *cluster) request(ctx context.Context, id uint64, msg proto.Message) (proto.Message, error) {
	nd := c.node(id).current()
	if nd == nil {
		return nil, errNodeDown
	}
	if c.net.Paused(id) {
		select {
		case <-ctx.Done():
		case <-time.After(requestTimeout):
		}
		return nil, context.DeadlineExceeded
	}
	res, err := nd.System().Root.RequestFuture(nd.API(), msg, requestTimeout).Result()
	if err != nil {
		return nil, err
	}
	out, ok := res.(proto.Message)
	if !ok {
		return nil, fmt.Errorf("sim: unexpected reply %T", res)
	}
	return out, nil
}
