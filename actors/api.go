package actors

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/asynkron/protoactor-go/actor"
	"google.golang.org/protobuf/proto"

	"github.com/blixard/blixard/consensus"
	"github.com/blixard/blixard/consensus/simbug"
	"github.com/blixard/blixard/microvm"
	"github.com/blixard/blixard/proto/blixardpb"
)

// APIActorName is the name the api actor is registered under; clients
// address it as actor.NewPID(<node api addr>, APIActorName).
const APIActorName = "api"

// Defaults of APIConfig.
const (
	DefaultProposeTimeout  = 5 * time.Second
	DefaultForwardTimeout  = 5 * time.Second
	DefaultWatchTimeout    = 30 * time.Second
	DefaultMaxWatchTimeout = 60 * time.Second
	DefaultWatchPoll       = 50 * time.Millisecond
	DefaultMaxInFlight     = 1024
	// MaxLogChunk bounds the console log bytes of one VmLogsResponse.
	MaxLogChunk = 1 << 20
)

// RaftInfo is what the api actor reports about Raft in ClusterStatus;
// *consensus.Replica satisfies it. It is optional: without it the leader,
// term and voters are reported as unknown.
type RaftInfo interface {
	// LeaderID returns the leader and term as this replica knows them.
	LeaderID() (leader, term uint64, ok bool)
	// AppliedIndex is the index of the last command applied locally.
	AppliedIndex() uint64
	// Membership returns the Raft membership (a linearizable read).
	Membership(ctx context.Context) (consensus.Membership, error)
	// LocalVoters returns the voters as this replica last applied them,
	// without asking the leader (ok false when not known).
	LocalVoters() (voters map[uint64]string, ok bool)
}

// LogReader reads a local VM's console log with the semantics of
// Driver.Logs; every Driver satisfies it.
type LogReader interface {
	Logs(ctx context.Context, name string, offset int64, lastLines int) (data []byte, next int64, err error)
}

// APIConfig configures the api actor. Replica is required.
type APIConfig struct {
	// NodeID is this node's id: log requests for VMs placed here are
	// served from Logs, others are forwarded to the VM's node.
	NodeID  uint64
	Replica Replica
	Raft    RaftInfo
	Logs    LogReader
	// Logger defaults to slog.Default().
	Logger *slog.Logger
	// ProposeTimeout bounds one proposal or linearizable read (default
	// 5 s); when it passes the request is answered UNAVAILABLE so the
	// client can retry elsewhere with the same request id.
	ProposeTimeout time.Duration
	// ForwardTimeout bounds a log request forwarded to another node.
	ForwardTimeout time.Duration
	// WatchPoll is how often a pending WatchVmRequest looks at the local
	// state (default 50 ms); MaxWatchTimeout caps its timeout (default
	// 60 s; a zero timeout_ms means DefaultWatchTimeout).
	WatchPoll       time.Duration
	MaxWatchTimeout time.Duration
	// MaxInFlight caps the requests being served at once (default 1024);
	// beyond it requests are answered UNAVAILABLE at once.
	MaxInFlight int
	// GossipStatus, optional, returns the gossip view by node id for
	// NodeInfo.gossip_status.
	GossipStatus func() map[uint64]string
	// Leave, optional, makes this node leave the cluster for good
	// (LeaveClusterRequest); nil refuses such requests.
	Leave func(context.Context) error
	// LeaveTimeout bounds a leave, VM stops included (default 2 min).
	LeaveTimeout time.Duration
}

func (c APIConfig) withDefaults() APIConfig {
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.LeaveTimeout <= 0 {
		c.LeaveTimeout = 2 * time.Minute
	}
	if c.ProposeTimeout <= 0 {
		c.ProposeTimeout = DefaultProposeTimeout
	}
	if c.ForwardTimeout <= 0 {
		c.ForwardTimeout = DefaultForwardTimeout
	}
	if c.WatchPoll <= 0 {
		c.WatchPoll = DefaultWatchPoll
	}
	if c.MaxWatchTimeout <= 0 {
		c.MaxWatchTimeout = DefaultMaxWatchTimeout
	}
	if c.MaxInFlight <= 0 {
		c.MaxInFlight = DefaultMaxInFlight
	}
	return c
}

// NewAPI returns the props of the api actor. Spawn it under APIActorName.
//
// It serves the API requests of proto/blixardpb (CreateVmRequest ...
// SetNodeSchedulableRequest) from remote clients. Each request is handled
// on its own goroutine, never on the actor's mailbox, and answered to the
// captured sender, so slow proposals do not hold up other requests. Writes
// are proposed through the local Replica (which forwards to the leader)
// with the client's request id, so a retried request is applied at most
// once. When the actor stops, requests in flight are answered UNAVAILABLE.
func NewAPI(cfg APIConfig) *actor.Props {
	cfg = cfg.withDefaults()
	if cfg.Replica == nil {
		panic("actors: APIConfig needs a Replica")
	}
	return actor.PropsFromProducer(func() actor.Actor {
		a := &apiActor{cfg: cfg, sem: make(chan struct{}, cfg.MaxInFlight)}
		a.group = newGroupCommit(a)
		return a
	})
}

type apiActor struct {
	cfg    APIConfig
	sem    chan struct{}
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
	group  *groupCommit
}

func (a *apiActor) Receive(ctx actor.Context) {
	switch msg := ctx.Message().(type) {
	case *actor.Started:
		a.ctx, a.cancel = context.WithCancel(context.Background())
	case *actor.Stopping:
		// Fail what is in flight and wait for the goroutines, so a
		// stopped node leaves none behind.
		a.cancel()
		a.wg.Wait()
	case *actor.Restarting:
		a.cancel()
		a.wg.Wait()
	case proto.Message:
		sender := ctx.Sender()
		if sender == nil {
			a.cfg.Logger.Debug("api request without sender dropped", "type", fmt.Sprintf("%T", msg))
			return
		}
		select {
		case a.sem <- struct{}{}:
		default:
			if r := apiErrorResponse(msg, apiUnavailable("node overloaded: too many requests in flight")); r != nil {
				ctx.Respond(r)
			}
			return
		}
		system := ctx.ActorSystem()
		reqCtx := a.ctx
		a.wg.Add(1)
		go func() {
			defer a.wg.Done()
			defer func() { <-a.sem }()
			defer func() {
				// A bug in one handler must not take the node down: it
				// fails that request only.
				if p := recover(); p != nil {
					a.cfg.Logger.Error("api handler panicked", "type", fmt.Sprintf("%T", msg), "panic", p)
					if r := apiErrorResponse(msg, &apiError{Code: blixardpb.Code_INTERNAL, Message: fmt.Sprintf("internal error: %v", p)}); r != nil {
						system.Root.Send(sender, r)
					}
				}
			}()
			if resp := a.serve(reqCtx, system, msg); resp != nil {
				system.Root.Send(sender, resp)
			}
		}()
	}
}

// apiError is the typed error a handler returns.
type apiError = blixardpb.Error

func apiUnavailable(format string, args ...any) *apiError {
	return &apiError{Code: blixardpb.Code_UNAVAILABLE, Message: fmt.Sprintf(format, args...)}
}

func apiInvalid(format string, args ...any) *apiError {
	return &apiError{Code: blixardpb.Code_INVALID_ARGUMENT, Message: fmt.Sprintf(format, args...)}
}

// serve handles one request and returns its response (nil for messages
// that are not API requests).
func (a *apiActor) serve(ctx context.Context, system *actor.ActorSystem, msg proto.Message) proto.Message {
	switch m := msg.(type) {
	case *blixardpb.CreateVmRequest, *blixardpb.StartVmRequest, *blixardpb.StopVmRequest,
		*blixardpb.DeleteVmRequest, *blixardpb.MigrateVmRequest:
		cmd, e := apiVMWrite(m)
		if e != nil {
			return &blixardpb.VmResponse{Error: e}
		}
		res, e := a.group.propose(ctx, cmd)
		return apiVMResponse(res, e)
	case *blixardpb.VmWriteBatchRequest:
		return a.writeBatch(ctx, m)
	case *blixardpb.SetNodeSchedulableRequest:
		if m.GetNodeId() == 0 {
			return &blixardpb.NodeResponse{Error: apiInvalid("node id is required")}
		}
		cmd, e := apiCommand(m.GetRequestId(), &blixardpb.Command{Op: &blixardpb.Command_SetNodeSchedulable{SetNodeSchedulable: &blixardpb.SetNodeSchedulable{NodeId: m.GetNodeId(), Schedulable: m.GetSchedulable()}}})
		if e != nil {
			return &blixardpb.NodeResponse{Error: e}
		}
		res, e := a.propose(ctx, cmd)
		if e != nil {
			return &blixardpb.NodeResponse{Error: e}
		}
		return &blixardpb.NodeResponse{Error: res.GetError(), Node: res.GetNode()}
	case *blixardpb.GetVmRequest:
		rec, e := a.getVM(ctx, m.GetName(), m.GetStale())
		return &blixardpb.VmResponse{Error: e, Vm: rec}
	case *blixardpb.ListVmsRequest:
		var vms []*blixardpb.VmRecord
		e := a.read(ctx, m.GetStale(), func(s *consensus.State) { vms = s.VMs() })
		return &blixardpb.ListVmsResponse{Error: e, Vms: vms}
	case *blixardpb.WatchVmRequest:
		rec, e := a.watch(ctx, m)
		return &blixardpb.VmResponse{Error: e, Vm: rec}
	case *blixardpb.VmLogsRequest:
		return a.logs(ctx, system, m)
	case *blixardpb.ClusterStatusRequest:
		return a.clusterStatus(ctx, m.GetStale())
	case *blixardpb.ListNodesRequest:
		st := a.clusterStatus(ctx, m.GetStale())
		return &blixardpb.ListNodesResponse{Error: st.GetError(), Nodes: st.GetNodes()}
	case *blixardpb.LeaveClusterRequest:
		return a.leave(ctx, system, m)
	default:
		a.cfg.Logger.Debug("api: unknown message", "type", fmt.Sprintf("%T", msg))
		return nil
	}
}

// errorResponse builds the response type of req carrying e (nil for
// unknown requests).
func apiErrorResponse(req proto.Message, e *apiError) proto.Message {
	switch req.(type) {
	case *blixardpb.CreateVmRequest, *blixardpb.StartVmRequest, *blixardpb.StopVmRequest, *blixardpb.DeleteVmRequest,
		*blixardpb.MigrateVmRequest, *blixardpb.GetVmRequest, *blixardpb.WatchVmRequest:
		return &blixardpb.VmResponse{Error: e}
	case *blixardpb.VmWriteBatchRequest:
		return &blixardpb.VmWriteBatchResponse{Error: e}
	case *blixardpb.ListVmsRequest:
		return &blixardpb.ListVmsResponse{Error: e}
	case *blixardpb.VmLogsRequest:
		return &blixardpb.VmLogsResponse{Error: e}
	case *blixardpb.ClusterStatusRequest:
		return &blixardpb.ClusterStatusResponse{Error: e}
	case *blixardpb.ListNodesRequest:
		return &blixardpb.ListNodesResponse{Error: e}
	case *blixardpb.SetNodeSchedulableRequest, *blixardpb.LeaveClusterRequest:
		return &blixardpb.NodeResponse{Error: e}
	}
	return nil
}

func apiVMResponse(res *blixardpb.Result, e *apiError) *blixardpb.VmResponse {
	if e != nil {
		return &blixardpb.VmResponse{Error: e}
	}
	return &blixardpb.VmResponse{Error: res.GetError(), Vm: res.GetVm()}
}

// apiVMWrite turns a VM write request into its command, or into the
// error that refuses it before it costs a log entry.
func apiVMWrite(msg proto.Message) (*blixardpb.Command, *apiError) {
	var rid, name string
	var cmd blixardpb.Command
	switch m := msg.(type) {
	case *blixardpb.CreateVmRequest:
		if e := apiCheckCreate(m); e != nil {
			return nil, e
		}
		return apiCommand(m.GetRequestId(), &blixardpb.Command{Op: &blixardpb.Command_CreateVm{CreateVm: &blixardpb.CreateVm{Spec: m.GetSpec(), NoStart: m.GetNoStart()}}})
	case *blixardpb.StartVmRequest:
		rid, name = m.GetRequestId(), m.GetName()
		cmd.Op = &blixardpb.Command_StartVm{StartVm: &blixardpb.StartVm{Name: name}}
	case *blixardpb.StopVmRequest:
		rid, name = m.GetRequestId(), m.GetName()
		cmd.Op = &blixardpb.Command_StopVm{StopVm: &blixardpb.StopVm{Name: name}}
	case *blixardpb.DeleteVmRequest:
		rid, name = m.GetRequestId(), m.GetName()
		cmd.Op = &blixardpb.Command_DeleteVm{DeleteVm: &blixardpb.DeleteVm{Name: name}}
	case *blixardpb.MigrateVmRequest:
		rid, name = m.GetRequestId(), m.GetName()
		cmd.Op = &blixardpb.Command_MigrateVm{MigrateVm: &blixardpb.MigrateVm{Name: name, TargetNodeId: m.GetTargetNodeId()}}
	default:
		return nil, apiInvalid("a batch write holds no vm write request")
	}
	if e := apiCheckVMName(name); e != nil {
		return nil, e
	}
	return apiCommand(rid, &cmd)
}

// apiCommand checks a write's request id and sets it on cmd.
func apiCommand(requestID string, cmd *blixardpb.Command) (*blixardpb.Command, *apiError) {
	if requestID == "" {
		return nil, apiInvalid("request id is required (clients generate one per request and reuse it on retry)")
	}
	if len(requestID) > consensus.MaxRequestID {
		return nil, apiInvalid("request id is longer than %d bytes", consensus.MaxRequestID)
	}
	cmd.RequestId = requestID
	return cmd, nil
}

// writeBatch serves a VmWriteBatchRequest: the writes that pass the
// checks are proposed together in one Raft entry, and every write gets
// its own response, in order.
func (a *apiActor) writeBatch(ctx context.Context, m *blixardpb.VmWriteBatchRequest) *blixardpb.VmWriteBatchResponse {
	ws := m.GetWrites()
	if len(ws) > consensus.MaxBatch {
		return &blixardpb.VmWriteBatchResponse{Error: apiInvalid("a batch holds at most %d writes, not %d", consensus.MaxBatch, len(ws))}
	}
	out := make([]*blixardpb.VmResponse, len(ws))
	cmds := make([]*blixardpb.Command, 0, len(ws))
	at := make([]int, 0, len(ws))
	for i, w := range ws {
		var req proto.Message
		switch op := w.GetOp().(type) {
		case *blixardpb.VmWrite_Create:
			req = op.Create
		case *blixardpb.VmWrite_Start:
			req = op.Start
		case *blixardpb.VmWrite_Stop:
			req = op.Stop
		case *blixardpb.VmWrite_Delete:
			req = op.Delete
		case *blixardpb.VmWrite_Migrate:
			req = op.Migrate
		}
		cmd, e := apiVMWrite(req)
		if e != nil {
			out[i] = &blixardpb.VmResponse{Error: e}
			continue
		}
		cmds = append(cmds, cmd)
		at = append(at, i)
	}
	if len(cmds) > 0 {
		res, e := a.commit(ctx, cmds, true)
		for j, i := range at {
			if e != nil {
				out[i] = &blixardpb.VmResponse{Error: e}
			} else {
				out[i] = apiVMResponse(res[j], nil)
			}
		}
	}
	return &blixardpb.VmWriteBatchResponse{Responses: out}
}

// propose commits one command and maps an unknown outcome to UNAVAILABLE
// (the client retries with the same request id).
func (a *apiActor) propose(ctx context.Context, cmd *blixardpb.Command) (*blixardpb.Result, *apiError) {
	res, e := a.commit(ctx, []*blixardpb.Command{cmd}, false)
	if e != nil {
		return nil, e
	}
	return res[0], nil
}

// commit commits cmds, as one Batch entry when batch is set and as a
// plain entry otherwise (one command), and returns their results in order.
func (a *apiActor) commit(ctx context.Context, cmds []*blixardpb.Command, batch bool) ([]*blixardpb.Result, *apiError) {
	run := func(ctx context.Context) ([]*blixardpb.Result, error) {
		if batch {
			return a.cfg.Replica.ProposeBatch(ctx, cmds)
		}
		res, err := a.cfg.Replica.Propose(ctx, cmds[0])
		return []*blixardpb.Result{res}, err
	}
	if simbug.On(simbug.AckBeforeCommit) {
		// Planted bug: answer success now, commit (maybe) later.
		a.wg.Add(1)
		go func() {
			defer a.wg.Done()
			pctx, cancel := context.WithTimeout(ctx, a.cfg.ProposeTimeout)
			defer cancel()
			_, _ = run(pctx)
		}()
		res := make([]*blixardpb.Result, len(cmds))
		for i := range res {
			res[i] = &blixardpb.Result{}
		}
		return res, nil
	}
	pctx, cancel := context.WithTimeout(ctx, a.cfg.ProposeTimeout)
	defer cancel()
	res, err := run(pctx)
	if err != nil {
		return nil, a.unavailableErr(ctx, err)
	}
	for _, r := range res {
		if r == nil {
			return nil, &apiError{Code: blixardpb.Code_INTERNAL, Message: "proposal returned no result"}
		}
	}
	return res, nil
}

// read runs fn against the state, linearizably unless stale.
func (a *apiActor) read(ctx context.Context, stale bool, fn func(*consensus.State)) *apiError {
	rctx, cancel := context.WithTimeout(ctx, a.cfg.ProposeTimeout)
	defer cancel()
	if err := a.cfg.Replica.Read(rctx, stale, fn); err != nil {
		return a.unavailableErr(ctx, err)
	}
	return nil
}

// unavailableErr turns a Replica error into the UNAVAILABLE response
// error: the cluster has no quorum (or leader), or this node is stopping.
func (a *apiActor) unavailableErr(ctx context.Context, err error) *apiError {
	if ctx.Err() != nil {
		return apiUnavailable("node %d is shutting down", a.cfg.NodeID)
	}
	msg := err.Error()
	if errors.Is(err, consensus.ErrUnavailable) {
		msg = strings.TrimPrefix(msg, consensus.ErrUnavailable.Error())
		msg = strings.TrimPrefix(msg, ": ")
	}
	if !strings.HasPrefix(msg, "no quorum") {
		msg = "no quorum: " + msg
	}
	return apiUnavailable("%s", msg)
}

func (a *apiActor) getVM(ctx context.Context, name string, stale bool) (*blixardpb.VmRecord, *apiError) {
	var rec *blixardpb.VmRecord
	var ok bool
	if e := a.read(ctx, stale, func(s *consensus.State) { rec, ok = s.VM(name) }); e != nil {
		return nil, e
	}
	if !ok {
		return nil, &apiError{Code: blixardpb.Code_NOT_FOUND, Message: fmt.Sprintf("vm %q not found", name)}
	}
	return rec, nil
}

// watch answers when the VM differs from what the caller saw, is gone, or
// the timeout passes. The first look is linearizable (so a watch that
// failed over to another node still sees the caller's own writes); later
// looks poll the local state, which is cheap.
func (a *apiActor) watch(ctx context.Context, m *blixardpb.WatchVmRequest) (*blixardpb.VmRecord, *apiError) {
	timeout := time.Duration(m.GetTimeoutMs()) * time.Millisecond
	if timeout <= 0 {
		timeout = DefaultWatchTimeout
	}
	timeout = min(timeout, a.cfg.MaxWatchTimeout)
	deadline := time.Now().Add(timeout)
	differs := func(r *blixardpb.VmRecord) bool {
		return r.GetGeneration() != m.GetGeneration() || r.GetStatus() != m.GetStatus() ||
			r.GetDesired() != m.GetDesired() || r.GetNodeId() != m.GetNodeId() || r.GetRestarts() != m.GetRestarts()
	}
	rec, e := a.getVM(ctx, m.GetName(), false)
	if e != nil {
		return nil, e
	}
	t := time.NewTicker(a.cfg.WatchPoll)
	defer t.Stop()
	for !differs(rec) && time.Now().Before(deadline) {
		select {
		case <-ctx.Done():
			return nil, apiUnavailable("node %d is shutting down", a.cfg.NodeID)
		case <-t.C:
		}
		if rec, e = a.getVM(ctx, m.GetName(), true); e != nil {
			return nil, e
		}
	}
	return rec, nil
}

// logs serves a VM's console log from this node's driver when the VM is
// placed here, and otherwise forwards the request to its node's api actor.
func (a *apiActor) logs(ctx context.Context, system *actor.ActorSystem, m *blixardpb.VmLogsRequest) *blixardpb.VmLogsResponse {
	var rec *blixardpb.VmRecord
	var node *blixardpb.NodeRecord
	var found, nodeFound bool
	e := a.read(ctx, m.GetForwarded(), func(s *consensus.State) {
		if rec, found = s.VM(m.GetName()); found && rec.GetNodeId() != 0 {
			node, nodeFound = s.Node(rec.GetNodeId())
		}
	})
	switch {
	case e != nil:
		return &blixardpb.VmLogsResponse{Error: e}
	case !found:
		return &blixardpb.VmLogsResponse{Error: &apiError{Code: blixardpb.Code_NOT_FOUND, Message: fmt.Sprintf("vm %q not found", m.GetName())}}
	case rec.GetNodeId() == 0:
		return &blixardpb.VmLogsResponse{Error: &apiError{Code: blixardpb.Code_FAILED_PRECONDITION, Message: fmt.Sprintf("vm %q is not placed on any node, so it has no logs", m.GetName())}}
	case rec.GetNodeId() == a.cfg.NodeID || m.GetForwarded():
		return a.localLogs(ctx, m)
	case !nodeFound || node.GetApiAddr() == "":
		return &blixardpb.VmLogsResponse{Error: &apiError{Code: blixardpb.Code_FAILED_PRECONDITION, Message: fmt.Sprintf("node %d of vm %q has no known api address", rec.GetNodeId(), m.GetName())}}
	}
	fwd := proto.Clone(m).(*blixardpb.VmLogsRequest)
	fwd.Forwarded = true
	// A node that does not answer is reported as DEADLINE_EXCEEDED, not
	// UNAVAILABLE: the client would retry on another node, which would
	// forward to the same unreachable node.
	res, err := system.Root.RequestFuture(actor.NewPID(node.GetApiAddr(), APIActorName), fwd, a.cfg.ForwardTimeout).Result()
	if err != nil {
		return &blixardpb.VmLogsResponse{Error: &apiError{Code: blixardpb.Code_DEADLINE_EXCEEDED, Message: fmt.Sprintf("node %d (%s), where vm %q runs, did not answer: %v", rec.GetNodeId(), node.GetApiAddr(), m.GetName(), err)}}
	}
	out, ok := res.(*blixardpb.VmLogsResponse)
	if !ok {
		return &blixardpb.VmLogsResponse{Error: &apiError{Code: blixardpb.Code_DEADLINE_EXCEEDED, Message: fmt.Sprintf("node %d (%s), where vm %q runs, did not answer (got %T)", rec.GetNodeId(), node.GetApiAddr(), m.GetName(), res)}}
	}
	return out
}

// leave serves a LeaveClusterRequest: this node leaves when it is the one
// named, otherwise the request goes to the named node's api (once).
func (a *apiActor) leave(ctx context.Context, system *actor.ActorSystem, m *blixardpb.LeaveClusterRequest) *blixardpb.NodeResponse {
	id := m.GetNodeId()
	if id == 0 {
		return &blixardpb.NodeResponse{Error: apiInvalid("node id is required")}
	}
	var node *blixardpb.NodeRecord
	var found bool
	if e := a.read(ctx, false, func(s *consensus.State) { node, found = s.Node(id) }); e != nil {
		return &blixardpb.NodeResponse{Error: e}
	}
	if !found {
		return &blixardpb.NodeResponse{Error: &apiError{Code: blixardpb.Code_NOT_FOUND, Message: fmt.Sprintf("node %d not found", id)}}
	}
	if id == a.cfg.NodeID {
		if a.cfg.Leave == nil {
			return &blixardpb.NodeResponse{Error: &apiError{Code: blixardpb.Code_FAILED_PRECONDITION, Message: fmt.Sprintf("node %d runs without gossip membership and cannot leave by request", id)}}
		}
		lctx, cancel := context.WithTimeout(ctx, a.cfg.LeaveTimeout)
		defer cancel()
		if err := a.cfg.Leave(lctx); err != nil {
			return &blixardpb.NodeResponse{Error: &apiError{Code: blixardpb.Code_FAILED_PRECONDITION, Message: err.Error()}, Node: node}
		}
		return &blixardpb.NodeResponse{Node: node}
	}
	if m.GetForwarded() {
		return &blixardpb.NodeResponse{Error: &apiError{Code: blixardpb.Code_FAILED_PRECONDITION, Message: fmt.Sprintf("this is node %d, not node %d", a.cfg.NodeID, id)}}
	}
	if node.GetApiAddr() == "" {
		return &blixardpb.NodeResponse{Error: &apiError{Code: blixardpb.Code_FAILED_PRECONDITION, Message: fmt.Sprintf("node %d has no known api address", id)}}
	}
	fwd := &blixardpb.LeaveClusterRequest{NodeId: id, Forwarded: true}
	res, err := system.Root.RequestFuture(actor.NewPID(node.GetApiAddr(), APIActorName), fwd, a.cfg.LeaveTimeout).Result()
	if err != nil {
		return &blixardpb.NodeResponse{Error: &apiError{Code: blixardpb.Code_DEADLINE_EXCEEDED, Message: fmt.Sprintf("node %d (%s) did not answer the leave request: %v", id, node.GetApiAddr(), err)}}
	}
	out, ok := res.(*blixardpb.NodeResponse)
	if !ok {
		return &blixardpb.NodeResponse{Error: &apiError{Code: blixardpb.Code_DEADLINE_EXCEEDED, Message: fmt.Sprintf("node %d (%s) did not answer the leave request (got %T)", id, node.GetApiAddr(), res)}}
	}
	return out
}

func (a *apiActor) localLogs(ctx context.Context, m *blixardpb.VmLogsRequest) *blixardpb.VmLogsResponse {
	if a.cfg.Logs == nil {
		return &blixardpb.VmLogsResponse{Error: &apiError{Code: blixardpb.Code_FAILED_PRECONDITION, Message: fmt.Sprintf("node %d serves no logs", a.cfg.NodeID)}}
	}
	offset := int64(-1)
	if m.GetFromOffset() {
		offset = max(m.GetOffset(), 0)
	}
	lctx, cancel := context.WithTimeout(ctx, a.cfg.ProposeTimeout)
	defer cancel()
	data, next, err := a.cfg.Logs.Logs(lctx, m.GetName(), offset, int(m.GetLines()))
	switch {
	case errors.Is(err, microvm.ErrNotFound):
		return &blixardpb.VmLogsResponse{Error: &apiError{Code: blixardpb.Code_NOT_FOUND, Message: fmt.Sprintf("no console log for vm %q on node %d (not started here yet)", m.GetName(), a.cfg.NodeID)}}
	case err != nil:
		return &blixardpb.VmLogsResponse{Error: &apiError{Code: blixardpb.Code_INTERNAL, Message: fmt.Sprintf("reading console log of vm %q: %v", m.GetName(), err)}}
	}
	if len(data) > MaxLogChunk {
		if offset >= 0 {
			// Follow mode: return the first chunk; the caller continues.
			next -= int64(len(data) - MaxLogChunk)
			data = data[:MaxLogChunk]
		} else {
			data = data[len(data)-MaxLogChunk:]
		}
	}
	return &blixardpb.VmLogsResponse{Data: data, NextOffset: next}
}

// clusterStatus reads the node records and their usage, and adds what the
// local replica knows about Raft.
func (a *apiActor) clusterStatus(ctx context.Context, stale bool) *blixardpb.ClusterStatusResponse {
	out := &blixardpb.ClusterStatusResponse{}
	e := a.read(ctx, stale, func(s *consensus.State) {
		out.ClusterId = s.Config().GetClusterId()
		out.AppliedIndex = s.AppliedIndex()
		for _, n := range s.Nodes() {
			u := s.NodeUsage(n.GetId())
			out.Nodes = append(out.Nodes, &blixardpb.NodeInfo{
				Node:         n,
				VcpusUsed:    u.Vcpus,
				MemoryUsedMb: u.MemoryMB,
				Vms:          uint32(u.VMs),
			})
		}
	})
	if e != nil {
		return &blixardpb.ClusterStatusResponse{Error: e}
	}
	if a.cfg.Raft == nil {
		return out
	}
	if leader, term, ok := a.cfg.Raft.LeaderID(); ok {
		out.LeaderId, out.Term = leader, term
	}
	// A stale status takes the local view of the voters: it must answer
	// at once while there is no leader (clients probe nodes with it).
	voters, _ := a.cfg.Raft.LocalVoters()
	if !stale {
		mctx, cancel := context.WithTimeout(ctx, a.cfg.ProposeTimeout)
		defer cancel()
		m, err := a.cfg.Raft.Membership(mctx)
		if err != nil {
			return &blixardpb.ClusterStatusResponse{Error: a.unavailableErr(ctx, err)}
		}
		voters = m.Voters
	}
	var gossip map[uint64]string
	if a.cfg.GossipStatus != nil {
		gossip = a.cfg.GossipStatus()
	}
	for _, n := range out.Nodes {
		_, n.Voter = voters[n.GetNode().GetId()]
		n.Leader = out.LeaderId != 0 && n.GetNode().GetId() == out.LeaderId
		n.GossipStatus = gossip[n.GetNode().GetId()]
	}
	return out
}

// apiCheckVMName rejects a malformed name before it costs a log entry,
// with the state machine's own message.
func apiCheckVMName(name string) *apiError {
	if err := consensus.CheckVMName(name); err != nil {
		return apiInvalid("%s", err)
	}
	return nil
}

// checkCreate does the cheap checks of a create; the state machine does
// the rest (limits, capacity, uniqueness).
func apiCheckCreate(m *blixardpb.CreateVmRequest) *apiError {
	if m.GetSpec() == nil {
		return apiInvalid("vm spec is required")
	}
	if e := apiCheckVMName(m.GetSpec().GetName()); e != nil {
		return e
	}
	if err := consensus.CheckTenant(m.GetSpec().GetTenant()); err != nil {
		return apiInvalid("%s", err)
	}
	return nil
}
