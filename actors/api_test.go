package actors_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/asynkron/protoactor-go/actor"
	"google.golang.org/protobuf/proto"

	"github.com/blixard/blixard/actors"
	"github.com/blixard/blixard/consensus"
	"github.com/blixard/blixard/consensus/consensustest"
	"github.com/blixard/blixard/microvm"
	"github.com/blixard/blixard/proto/blixardpb"
)

// apiEnv is an api actor of node 1 on a local actor system (no remote)
// over a consensustest.Local holding nodes 1 and 2.
type apiEnv struct {
	t      *testing.T
	system *actor.ActorSystem
	pid    *actor.PID
	local  *consensustest.Local
}

func quietLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// newTestSystem is a quiet actor system whose dead-letter throttle timer
// (a goroutine per burst) ends at once, so goleak sees no stragglers.
func newTestSystem() *actor.ActorSystem {
	return actor.NewActorSystem(
		actor.WithLoggerFactory(func(*actor.ActorSystem) *slog.Logger { return quietLogger() }),
		actor.WithDeadLetterThrottleInterval(time.Millisecond),
	)
}

func newAPIEnv(t *testing.T, cfg actors.APIConfig) *apiEnv {
	t.Helper()
	local := consensustest.NewLocal(consensustest.WithClock(func() int64 { return 1000 }))
	for id := uint64(1); id <= 2; id++ {
		res, err := local.Propose(context.Background(), &blixardpb.Command{
			RequestId: fmt.Sprintf("upsert-%d", id),
			Op: &blixardpb.Command_UpsertNode{UpsertNode: &blixardpb.UpsertNode{Node: &blixardpb.NodeRecord{
				Id: id, ApiAddr: fmt.Sprintf("127.0.0.1:%d", 7000+id), RaftAddr: "127.0.0.1:1", Vcpus: 8, MemoryMb: 8192,
			}}},
		})
		if err != nil || res.GetError().GetCode() != blixardpb.Code_OK {
			t.Fatalf("upsert node %d: %v %v", id, err, res.GetError())
		}
	}
	if cfg.Replica == nil {
		cfg.Replica = local
	}
	cfg.NodeID = 1
	cfg.Logger = quietLogger()
	system := newTestSystem()
	pid, err := system.Root.SpawnNamed(actors.NewAPI(cfg), actors.APIActorName)
	if err != nil {
		t.Fatal(err)
	}
	e := &apiEnv{t: t, system: system, pid: pid, local: local}
	t.Cleanup(func() {
		system.Root.StopFuture(pid).Wait()
		system.Shutdown()
	})
	return e
}

func (e *apiEnv) ask(req proto.Message) proto.Message {
	e.t.Helper()
	res, err := e.system.Root.RequestFuture(e.pid, req, 10*time.Second).Result()
	if err != nil {
		e.t.Fatalf("%T: %v", req, err)
	}
	return res.(proto.Message)
}

func (e *apiEnv) create(id, name string) *blixardpb.VmResponse {
	e.t.Helper()
	return e.ask(&blixardpb.CreateVmRequest{RequestId: id, Spec: &blixardpb.VmSpec{Name: name, Vcpus: 1, MemoryMb: 128}}).(*blixardpb.VmResponse)
}

func TestAPICreateGetListAndTypedErrors(t *testing.T) {
	e := newAPIEnv(t, actors.APIConfig{})
	r := e.create("r1", "web")
	if r.GetError().GetCode() != blixardpb.Code_OK || r.GetVm().GetSpec().GetName() != "web" || r.GetVm().GetNodeId() == 0 {
		t.Fatalf("create: %v", r)
	}
	g := e.ask(&blixardpb.GetVmRequest{Name: "web"}).(*blixardpb.VmResponse)
	if g.GetError().GetCode() != blixardpb.Code_OK || g.GetVm().GetId() != r.GetVm().GetId() {
		t.Fatalf("get: %v", g)
	}
	// A retry with the same request id returns the first result and
	// creates nothing.
	if again := e.create("r1", "web"); again.GetError().GetCode() != blixardpb.Code_OK || again.GetVm().GetId() != r.GetVm().GetId() {
		t.Fatalf("retried create: %v", again)
	}
	if dup := e.create("r2", "web"); dup.GetError().GetCode() != blixardpb.Code_ALREADY_EXISTS || !strings.Contains(dup.GetError().GetMessage(), "already exists") {
		t.Fatalf("duplicate: %v", dup)
	}
	l := e.ask(&blixardpb.ListVmsRequest{}).(*blixardpb.ListVmsResponse)
	if len(l.GetVms()) != 1 {
		t.Fatalf("list: %v", l)
	}
	if nf := e.ask(&blixardpb.GetVmRequest{Name: "nope"}).(*blixardpb.VmResponse); nf.GetError().GetCode() != blixardpb.Code_NOT_FOUND {
		t.Fatalf("get unknown: %v", nf)
	}
	if nf := e.ask(&blixardpb.DeleteVmRequest{RequestId: "r3", Name: "nope"}).(*blixardpb.VmResponse); nf.GetError().GetCode() != blixardpb.Code_NOT_FOUND {
		t.Fatalf("delete unknown: %v", nf)
	}
}

func TestAPIRejectsCheapMistakesWithoutProposing(t *testing.T) {
	e := newAPIEnv(t, actors.APIConfig{})
	before := e.local.Index()
	for _, req := range []proto.Message{
		&blixardpb.CreateVmRequest{RequestId: "a", Spec: &blixardpb.VmSpec{Name: "Bad_Name"}},
		&blixardpb.CreateVmRequest{RequestId: "b"},
		&blixardpb.CreateVmRequest{RequestId: "c", Spec: &blixardpb.VmSpec{Name: "ok", Tenant: "No Tenant"}},
		&blixardpb.CreateVmRequest{Spec: &blixardpb.VmSpec{Name: "ok"}},
		&blixardpb.StopVmRequest{RequestId: "d", Name: ""},
		&blixardpb.SetNodeSchedulableRequest{RequestId: "e"},
	} {
		res := e.ask(req)
		if code := res.(interface{ GetError() *blixardpb.Error }).GetError().GetCode(); code != blixardpb.Code_INVALID_ARGUMENT {
			t.Errorf("%T %v: code %v, want INVALID_ARGUMENT", req, req, code)
		}
	}
	msg := e.create("x", "Bad_Name").GetError().GetMessage()
	if !strings.Contains(msg, "DNS label") {
		t.Errorf("invalid name message %q does not name the rule", msg)
	}
	if after := e.local.Index(); after != before {
		t.Fatalf("rejected requests were proposed: index %d → %d", before, after)
	}
}

func TestAPIUnavailableIsRetryable(t *testing.T) {
	e := newAPIEnv(t, actors.APIConfig{})
	e.create("r1", "web")
	e.local.SetUnavailable(true)
	r := e.create("r2", "db")
	if r.GetError().GetCode() != blixardpb.Code_UNAVAILABLE || !strings.HasPrefix(r.GetError().GetMessage(), "no quorum") {
		t.Fatalf("create without quorum: %v", r)
	}
	if g := e.ask(&blixardpb.GetVmRequest{Name: "web"}).(*blixardpb.VmResponse); g.GetError().GetCode() != blixardpb.Code_UNAVAILABLE {
		t.Fatalf("linearizable read without quorum: %v", g)
	}
	if g := e.ask(&blixardpb.GetVmRequest{Name: "web", Stale: true}).(*blixardpb.VmResponse); g.GetError().GetCode() != blixardpb.Code_OK {
		t.Fatalf("stale read without quorum: %v", g)
	}
	e.local.SetUnavailable(false)
	if r := e.create("r2", "db"); r.GetError().GetCode() != blixardpb.Code_OK {
		t.Fatalf("retry after quorum is back: %v", r)
	}
}

// gateReplica holds every Propose until release is closed, counting how
// many are held at once.
type gateReplica struct {
	actors.Replica
	inFlight, peak atomic.Int64
	release        chan struct{}
}

func (g *gateReplica) Propose(ctx context.Context, cmd *blixardpb.Command) (*blixardpb.Result, error) {
	n := g.inFlight.Add(1)
	for {
		p := g.peak.Load()
		if n <= p || g.peak.CompareAndSwap(p, n) {
			break
		}
	}
	defer g.inFlight.Add(-1)
	select {
	case <-g.release:
	case <-ctx.Done():
		return nil, fmt.Errorf("%w: test gate", consensus.ErrUnavailable)
	}
	return g.Replica.Propose(ctx, cmd)
}

// TestAPIServesRequestsConcurrently: 256 proposals are in flight at once,
// so the actor's mailbox is never blocked by one. (Node writes: single VM
// writes that arrive while one is in flight wait in the api's group
// commit instead, see TestAPIGroupsConcurrentSingleWrites.)
func TestAPIServesRequestsConcurrently(t *testing.T) {
	gate := &gateReplica{release: make(chan struct{})}
	local := consensustest.NewLocal()
	gate.Replica = local
	e := newAPIEnv(t, actors.APIConfig{Replica: gate, ProposeTimeout: 30 * time.Second})
	const n = 256
	futures := make([]*actor.Future, n)
	for i := range futures {
		futures[i] = e.system.Root.RequestFuture(e.pid, &blixardpb.SetNodeSchedulableRequest{RequestId: fmt.Sprint(i), NodeId: 2, Schedulable: i%2 == 0}, 30*time.Second)
	}
	deadline := time.Now().Add(20 * time.Second)
	for gate.inFlight.Load() < n {
		if time.Now().After(deadline) {
			t.Fatalf("only %d of %d proposals in flight at once", gate.inFlight.Load(), n)
		}
		time.Sleep(5 * time.Millisecond)
	}
	// Reads still answer while the writes are held.
	if l := e.ask(&blixardpb.ListVmsRequest{Stale: true}).(*blixardpb.ListVmsResponse); l.GetError().GetCode() != blixardpb.Code_OK {
		t.Fatalf("list while writes are held: %v", l)
	}
	close(gate.release)
	for i, f := range futures {
		res, err := f.Result()
		if err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
		if code := res.(*blixardpb.NodeResponse).GetError().GetCode(); code != blixardpb.Code_NOT_FOUND {
			t.Fatalf("request %d: code %v, want NOT_FOUND", i, code)
		}
	}
}

func TestAPIWatch(t *testing.T) {
	e := newAPIEnv(t, actors.APIConfig{WatchPoll: 5 * time.Millisecond})
	rec := e.create("r1", "web").GetVm()
	watch := func(timeout time.Duration) *actor.Future {
		return e.system.Root.RequestFuture(e.pid, &blixardpb.WatchVmRequest{
			Name: "web", Generation: rec.GetGeneration(), Status: rec.GetStatus(), Desired: rec.GetDesired(),
			NodeId: rec.GetNodeId(), Restarts: rec.GetRestarts(), TimeoutMs: uint32(timeout / time.Millisecond),
		}, timeout+10*time.Second)
	}
	// Unchanged: the record comes back after the timeout.
	start := time.Now()
	res, err := watch(200 * time.Millisecond).Result()
	if err != nil || res.(*blixardpb.VmResponse).GetVm().GetGeneration() != rec.GetGeneration() {
		t.Fatalf("idle watch: %v %v", res, err)
	}
	if d := time.Since(start); d < 200*time.Millisecond {
		t.Fatalf("idle watch returned after %s, before its timeout", d)
	}
	// A change wakes it long before its timeout.
	f := watch(time.Minute)
	if r := e.ask(&blixardpb.StopVmRequest{RequestId: "r2", Name: "web"}).(*blixardpb.VmResponse); r.GetError().GetCode() != blixardpb.Code_OK {
		t.Fatal(r)
	}
	res, err = f.Result()
	if err != nil || res.(*blixardpb.VmResponse).GetVm().GetDesired() != blixardpb.DesiredState_DESIRED_STOPPED {
		t.Fatalf("watch after stop: %v %v", res, err)
	}
	rec = res.(*blixardpb.VmResponse).GetVm()
	// Deletion answers NOT_FOUND.
	f = watch(time.Minute)
	e.ask(&blixardpb.DeleteVmRequest{RequestId: "r3", Name: "web"})
	res, err = f.Result()
	if err != nil || res.(*blixardpb.VmResponse).GetError().GetCode() != blixardpb.Code_NOT_FOUND {
		t.Fatalf("watch after delete: %v %v", res, err)
	}
}

// fakeLogs serves a fixed console log for "web".
type fakeLogs struct{ data string }

func (f fakeLogs) Logs(_ context.Context, name string, offset int64, lastLines int) ([]byte, int64, error) {
	if name != "web" {
		return nil, 0, fmt.Errorf("console log of %s: %w", name, microvm.ErrNotFound)
	}
	if offset >= 0 {
		return []byte(f.data[offset:]), int64(len(f.data)), nil
	}
	lines := strings.SplitAfter(f.data, "\n")
	if lines[len(lines)-1] == "" {
		lines = lines[:len(lines)-1]
	}
	if lastLines > 0 && lastLines < len(lines) {
		lines = lines[len(lines)-lastLines:]
	}
	return []byte(strings.Join(lines, "")), int64(len(f.data)), nil
}

func TestAPILogs(t *testing.T) {
	e := newAPIEnv(t, actors.APIConfig{Logs: fakeLogs{data: "one\ntwo\nthree\n"}, ForwardTimeout: time.Second})
	// Pin web here (node 1) and db on node 2.
	for _, s := range []*blixardpb.VmSpec{{Name: "web", Vcpus: 1, MemoryMb: 128, NodeId: 1}, {Name: "db", Vcpus: 1, MemoryMb: 128, NodeId: 2}} {
		if r := e.ask(&blixardpb.CreateVmRequest{RequestId: s.Name, Spec: s}).(*blixardpb.VmResponse); r.GetError().GetCode() != blixardpb.Code_OK {
			t.Fatal(r)
		}
	}
	r := e.ask(&blixardpb.VmLogsRequest{Name: "web", Lines: 2}).(*blixardpb.VmLogsResponse)
	if r.GetError().GetCode() != blixardpb.Code_OK || string(r.GetData()) != "two\nthree\n" || r.GetNextOffset() != 14 {
		t.Fatalf("last 2 lines: %v", r)
	}
	r = e.ask(&blixardpb.VmLogsRequest{Name: "web", FromOffset: true, Offset: 4}).(*blixardpb.VmLogsResponse)
	if string(r.GetData()) != "two\nthree\n" {
		t.Fatalf("from offset 4: %v", r)
	}
	// db runs on node 2, whose api (127.0.0.1:7002 in its record) cannot
	// be reached from this remote-less system: the forward fails
	// DEADLINE_EXCEEDED (not retryable elsewhere), naming the node.
	r = e.ask(&blixardpb.VmLogsRequest{Name: "db"}).(*blixardpb.VmLogsResponse)
	if r.GetError().GetCode() != blixardpb.Code_DEADLINE_EXCEEDED || !strings.Contains(r.GetError().GetMessage(), "node 2") {
		t.Fatalf("logs of a vm on node 2: %v", r)
	}
	// A forwarded request is served locally, never forwarded again.
	r = e.ask(&blixardpb.VmLogsRequest{Name: "db", Forwarded: true}).(*blixardpb.VmLogsResponse)
	if r.GetError().GetCode() != blixardpb.Code_NOT_FOUND {
		t.Fatalf("forwarded logs of a vm not here: %v", r)
	}
	if r = e.ask(&blixardpb.VmLogsRequest{Name: "nope"}).(*blixardpb.VmLogsResponse); r.GetError().GetCode() != blixardpb.Code_NOT_FOUND {
		t.Fatalf("logs of unknown vm: %v", r)
	}
}

// fakeRaft reports node 2 as leader and nodes 1, 2 as voters.
type fakeRaft struct{}

func (fakeRaft) LeaderID() (uint64, uint64, bool) { return 2, 7, true }
func (fakeRaft) AppliedIndex() uint64             { return 0 }
func (fakeRaft) Membership(context.Context) (consensus.Membership, error) {
	return consensus.Membership{Voters: map[uint64]string{1: "a", 2: "b"}}, nil
}

func (fakeRaft) LocalVoters() (map[uint64]string, bool) {
	return map[uint64]string{1: "a", 2: "b"}, true
}

// leaderlessRaft has no leader: a membership read waits until its
// context ends, as the real one does without a quorum.
type leaderlessRaft struct{ fakeRaft }

func (leaderlessRaft) LeaderID() (uint64, uint64, bool) { return 0, 0, false }
func (leaderlessRaft) Membership(ctx context.Context) (consensus.Membership, error) {
	<-ctx.Done()
	return consensus.Membership{}, fmt.Errorf("%w: no leader", consensus.ErrUnavailable)
}

// TestAPIStaleClusterStatusWithoutLeader: the stale status that clients
// probe nodes with answers at once, with the locally known voters, while
// there is no leader; the linearizable one reports the lost quorum.
func TestAPIStaleClusterStatusWithoutLeader(t *testing.T) {
	e := newAPIEnv(t, actors.APIConfig{Raft: leaderlessRaft{}, ProposeTimeout: time.Minute})
	st := e.ask(&blixardpb.ClusterStatusRequest{Stale: true}).(*blixardpb.ClusterStatusResponse)
	if st.GetError().GetCode() != blixardpb.Code_OK || st.GetLeaderId() != 0 || len(st.GetNodes()) != 2 || !st.GetNodes()[0].GetVoter() {
		t.Fatalf("stale status without a leader: %v", st)
	}
	e2 := newAPIEnv(t, actors.APIConfig{Raft: leaderlessRaft{}, ProposeTimeout: 200 * time.Millisecond})
	st = e2.ask(&blixardpb.ClusterStatusRequest{}).(*blixardpb.ClusterStatusResponse)
	if st.GetError().GetCode() != blixardpb.Code_UNAVAILABLE {
		t.Fatalf("linearizable status without a leader: %v, want UNAVAILABLE", st)
	}
}

func TestAPIClusterStatus(t *testing.T) {
	e := newAPIEnv(t, actors.APIConfig{Raft: fakeRaft{}})
	e.ask(&blixardpb.CreateVmRequest{RequestId: "a", Spec: &blixardpb.VmSpec{Name: "web", Vcpus: 2, MemoryMb: 512, NodeId: 1}})
	st := e.ask(&blixardpb.ClusterStatusRequest{}).(*blixardpb.ClusterStatusResponse)
	if st.GetError().GetCode() != blixardpb.Code_OK || st.GetLeaderId() != 2 || st.GetTerm() != 7 || st.GetAppliedIndex() != e.local.Index() || len(st.GetNodes()) != 2 {
		t.Fatalf("cluster status: %v", st)
	}
	n1, n2 := st.GetNodes()[0], st.GetNodes()[1]
	if !n1.GetVoter() || n1.GetLeader() || n1.GetVcpusUsed() != 2 || n1.GetMemoryUsedMb() != 512 || n1.GetVms() != 1 {
		t.Errorf("node 1: %v", n1)
	}
	if !n2.GetVoter() || !n2.GetLeader() || n2.GetVms() != 0 {
		t.Errorf("node 2: %v", n2)
	}
	ln := e.ask(&blixardpb.ListNodesRequest{}).(*blixardpb.ListNodesResponse)
	if len(ln.GetNodes()) != 2 {
		t.Fatalf("list nodes: %v", ln)
	}
	sn := e.ask(&blixardpb.SetNodeSchedulableRequest{RequestId: "s", NodeId: 2, Schedulable: false}).(*blixardpb.NodeResponse)
	if sn.GetError().GetCode() != blixardpb.Code_OK || sn.GetNode().GetSchedulable() {
		t.Fatalf("set node 2 unschedulable: %v", sn)
	}
}

// TestAPIStopAnswersInFlight: stopping the actor answers held requests
// UNAVAILABLE and leaves no goroutine behind: node writes held in the
// replica, and VM writes, one held in the replica and the others waiting
// in the group commit behind it.
func TestAPIStopAnswersInFlight(t *testing.T) {
	gate := &gateReplica{release: make(chan struct{}), Replica: consensustest.NewLocal()}
	system := newTestSystem()
	defer system.Shutdown()
	pid := system.Root.Spawn(actors.NewAPI(actors.APIConfig{Replica: gate, Logger: quietLogger()}))
	var wg sync.WaitGroup
	codes := make([]blixardpb.Code, 8)
	for i := range codes {
		var req proto.Message = &blixardpb.StartVmRequest{RequestId: fmt.Sprint(i), Name: "web"}
		if i%2 == 1 {
			req = &blixardpb.SetNodeSchedulableRequest{RequestId: fmt.Sprint(i), NodeId: 2}
		}
		f := system.Root.RequestFuture(pid, req, 20*time.Second)
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			res, err := f.Result()
			if err != nil {
				codes[i] = blixardpb.Code_INTERNAL
				return
			}
			codes[i] = res.(interface{ GetError() *blixardpb.Error }).GetError().GetCode()
		}(i)
	}
	// The four node writes and the first VM write reach the replica.
	deadline := time.Now().Add(10 * time.Second)
	for gate.inFlight.Load() < int64(len(codes)/2+1) {
		if time.Now().After(deadline) {
			t.Fatal("requests never reached the replica")
		}
		time.Sleep(5 * time.Millisecond)
	}
	if err := system.Root.StopFuture(pid).Wait(); err != nil {
		t.Fatal(err)
	}
	if n := gate.inFlight.Load(); n != 0 {
		t.Fatalf("%d proposals still running after the actor stopped", n)
	}
	wg.Wait()
	for i, c := range codes {
		if c != blixardpb.Code_UNAVAILABLE {
			t.Errorf("request %d: %v, want UNAVAILABLE", i, c)
		}
	}
}

// TestAPIWriteBatch: a batch's writes are answered in order, each with
// its own result or refusal; the ones that pass the checks are committed
// in one entry; a retried batch changes nothing; an oversized batch is
// refused whole.
func TestAPIWriteBatch(t *testing.T) {
	e := newAPIEnv(t, actors.APIConfig{})
	before := e.local.Index()
	create := func(rid, name string) *blixardpb.VmWrite {
		return &blixardpb.VmWrite{Op: &blixardpb.VmWrite_Create{Create: &blixardpb.CreateVmRequest{
			RequestId: rid, Spec: &blixardpb.VmSpec{Name: name, Vcpus: 1, MemoryMb: 128}}}}
	}
	req := &blixardpb.VmWriteBatchRequest{Writes: []*blixardpb.VmWrite{
		create("b1", "alpha"),
		create("b2", "Not A Name"),
		{Op: &blixardpb.VmWrite_Delete{Delete: &blixardpb.DeleteVmRequest{RequestId: "b3", Name: "missing"}}},
		{Op: &blixardpb.VmWrite_Stop{Stop: &blixardpb.StopVmRequest{RequestId: "b4", Name: "alpha"}}},
		{},
		{Op: &blixardpb.VmWrite_Start{Start: &blixardpb.StartVmRequest{Name: "alpha"}}},
	}}
	res := e.ask(req).(*blixardpb.VmWriteBatchResponse)
	want := []blixardpb.Code{blixardpb.Code_OK, blixardpb.Code_INVALID_ARGUMENT, blixardpb.Code_NOT_FOUND,
		blixardpb.Code_OK, blixardpb.Code_INVALID_ARGUMENT, blixardpb.Code_INVALID_ARGUMENT}
	if res.GetError() != nil || len(res.GetResponses()) != len(want) {
		t.Fatalf("batch response %v, want %d responses", res, len(want))
	}
	for i, w := range want {
		if got := res.GetResponses()[i].GetError().GetCode(); got != w {
			t.Errorf("write %d: %v (%s), want %v", i, got, res.GetResponses()[i].GetError().GetMessage(), w)
		}
	}
	if vm := res.GetResponses()[3].GetVm(); vm.GetDesired() != blixardpb.DesiredState_DESIRED_STOPPED {
		t.Errorf("stop after create in the same batch: %v, want desired stopped", vm)
	}
	if got := e.local.Index(); got != before+1 {
		t.Errorf("the batch took %d entries, want 1", got-before)
	}
	again := e.ask(req).(*blixardpb.VmWriteBatchResponse)
	if !proto.Equal(again.GetResponses()[0], res.GetResponses()[0]) || !proto.Equal(again.GetResponses()[3], res.GetResponses()[3]) {
		t.Errorf("retried batch: %v, want the first results %v", again, res)
	}
	big := &blixardpb.VmWriteBatchRequest{}
	for i := 0; i <= consensus.MaxBatch; i++ {
		big.Writes = append(big.Writes, create(fmt.Sprintf("big-%d", i), fmt.Sprintf("big-%d", i)))
	}
	if r := e.ask(big).(*blixardpb.VmWriteBatchResponse); r.GetError().GetCode() != blixardpb.Code_INVALID_ARGUMENT || len(r.GetResponses()) != 0 {
		t.Fatalf("oversized batch: %v, want INVALID_ARGUMENT and no responses", r.GetError())
	}
	if g := e.ask(&blixardpb.GetVmRequest{Name: "big-0"}).(*blixardpb.VmResponse); g.GetError().GetCode() != blixardpb.Code_NOT_FOUND {
		t.Fatalf("an oversized batch created a vm: %v", g)
	}
}

// gatedReplica holds its first Propose until open is closed, and counts
// the commands ProposeBatch commits.
type gatedReplica struct {
	*consensustest.Local
	first   atomic.Bool
	open    chan struct{}
	batched atomic.Int64
}

func (g *gatedReplica) Propose(ctx context.Context, cmd *blixardpb.Command) (*blixardpb.Result, error) {
	if g.first.CompareAndSwap(false, true) {
		<-g.open
	}
	return g.Local.Propose(ctx, cmd)
}

func (g *gatedReplica) ProposeBatch(ctx context.Context, cmds []*blixardpb.Command) ([]*blixardpb.Result, error) {
	g.batched.Add(int64(len(cmds)))
	return g.Local.ProposeBatch(ctx, cmds)
}

// TestAPIGroupsConcurrentSingleWrites: single VM writes that arrive while
// a proposal is in flight are committed together in one Batch entry, each
// with its own result; a retry of one of them creates nothing new.
func TestAPIGroupsConcurrentSingleWrites(t *testing.T) {
	g := &gatedReplica{open: make(chan struct{})}
	e := newAPIEnv(t, actors.APIConfig{Replica: g})
	g.Local = e.local // before the first request
	before := e.local.Index()
	const n = 10
	create := func(i int) *blixardpb.CreateVmRequest {
		return &blixardpb.CreateVmRequest{RequestId: fmt.Sprintf("g-%d", i), NoStart: true,
			Spec: &blixardpb.VmSpec{Name: fmt.Sprintf("group-%d", i), Vcpus: 1, MemoryMb: 64}}
	}
	res := make([]*blixardpb.VmResponse, n+1)
	var wg sync.WaitGroup
	wg.Go(func() { res[0] = e.ask(create(0)).(*blixardpb.VmResponse) })
	for deadline := time.Now().Add(10 * time.Second); !g.first.Load(); time.Sleep(time.Millisecond) { // the first write is in flight
		if time.Now().After(deadline) {
			t.Fatal("the first write never reached the replica")
		}
	}
	for i := 1; i <= n; i++ {
		wg.Go(func() { res[i] = e.ask(create(i)).(*blixardpb.VmResponse) })
	}
	// The others reach the api while the first is held (they are not
	// proposed before it returns; if one were late it would only make a
	// later batch, which the checks below allow).
	time.Sleep(200 * time.Millisecond)
	close(g.open)
	wg.Wait()
	for i, r := range res {
		if r.GetError().GetCode() != blixardpb.Code_OK || r.GetVm().GetSpec().GetName() != fmt.Sprintf("group-%d", i) {
			t.Fatalf("write %d: %v, want its own vm created", i, r)
		}
	}
	entries := e.local.Index() - before
	if g.batched.Load() != n || entries >= n+1 {
		t.Fatalf("%d writes took %d entries, %d of them batched; want the %d queued writes batched", n+1, entries, g.batched.Load(), n)
	}
	again := e.ask(create(5)).(*blixardpb.VmResponse)
	if !proto.Equal(again, res[5]) {
		t.Fatalf("retried write: %v, want the first result %v", again, res[5])
	}
	if vms := e.ask(&blixardpb.ListVmsRequest{}).(*blixardpb.ListVmsResponse).GetVms(); len(vms) != n+1 {
		t.Fatalf("%d vms after the retry, want %d", len(vms), n+1)
	}
}
