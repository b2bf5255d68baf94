package actors

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/asynkron/protoactor-go/actor"
	"go.uber.org/goleak"

	"github.com/blixard/blixard/consensus"
	"github.com/blixard/blixard/consensus/consensustest"
	"github.com/blixard/blixard/microvm/fake"
	"github.com/blixard/blixard/proto/blixardpb"
)

// These tests drive the vms supervisor against consensustest.Local (the
// real state machine, in memory) and the fake driver, on a ManualClock.

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

var epoch = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

// fixedRand returns the same jitter draw every time.
type fixedRand float64

func (r fixedRand) Float64() float64 { return float64(r) }

// logBuffer collects log lines for assertions.
type logBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// node is one agent: a supervisor over its own fake driver.
type node struct {
	id  uint64
	drv *fake.Driver
	sup *actor.PID
	log *logBuffer
}

type cluster struct {
	t       *testing.T
	sys     *actor.ActorSystem
	clock   *ManualClock
	replica *consensustest.Local
	rand    Rand
	base    string
	// configure, when set, adjusts each node's supervisor config.
	configure func(*VMSupervisorConfig)

	mu    sync.Mutex
	nodes map[uint64]*node
	// proposals counts ReportVmStatus proposals per VM name.
	proposals map[string]int
}

type countingReplica struct {
	c *cluster
	r Replica
}

// count records cmd when it is a status report.
func (r countingReplica) count(cmd *blixardpb.Command) {
	if rep := cmd.GetReportVmStatus(); rep != nil {
		r.c.mu.Lock()
		r.c.proposals[rep.GetName()]++
		r.c.mu.Unlock()
	}
}

func (r countingReplica) Propose(ctx context.Context, cmd *blixardpb.Command) (*blixardpb.Result, error) {
	r.count(cmd)
	return r.r.Propose(ctx, cmd)
}

func (r countingReplica) ProposeBatch(ctx context.Context, cmds []*blixardpb.Command) ([]*blixardpb.Result, error) {
	for _, c := range cmds {
		r.count(c)
	}
	return r.r.ProposeBatch(ctx, cmds)
}

func (r countingReplica) Read(ctx context.Context, stale bool, fn func(*consensus.State)) error {
	return r.r.Read(ctx, stale, fn)
}

// newCluster starts an actor system and a Local replica whose effects go
// to every node they concern. Nodes are added with addNode.
func newCluster(t *testing.T, nodeIDs ...uint64) *cluster {
	t.Helper()
	base := t.TempDir() // removed after c.stop: cleanups run last-in first-out
	c := &cluster{
		t:         t,
		base:      base,
		sys:       actor.NewActorSystem(actor.WithLoggerFactory(func(*actor.ActorSystem) *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) })),
		clock:     NewManualClock(epoch),
		rand:      fixedRand(0),
		nodes:     make(map[uint64]*node),
		proposals: make(map[string]int),
	}
	// Local delivers every effect; deliver forwards each to the nodes it
	// concerns.
	c.replica = consensustest.NewLocal(
		consensustest.WithClock(func() int64 { return c.clock.Now().UnixMilli() }),
		consensustest.WithEffects(0, c.deliver),
	)
	t.Cleanup(c.stop)
	for _, id := range nodeIDs {
		c.propose(&blixardpb.Command{Op: &blixardpb.Command_UpsertNode{UpsertNode: &blixardpb.UpsertNode{Node: &blixardpb.NodeRecord{
			Id: id, Vcpus: 64, MemoryMb: 1 << 20, Status: blixardpb.NodeStatus_NODE_STATUS_ALIVE, Schedulable: true,
		}}}})
	}
	return c
}

// tempDir returns a new directory that outlives the actors.
func (c *cluster) tempDir() string {
	c.t.Helper()
	d, err := os.MkdirTemp(c.base, "node")
	if err != nil {
		c.t.Fatal(err)
	}
	return d
}

func (c *cluster) newDriver(dir string) *fake.Driver {
	c.t.Helper()
	d, err := fake.New(dir, fake.WithClock(c.clock))
	if err != nil {
		c.t.Fatal(err)
	}
	return d
}

func (c *cluster) deliver(effects []consensus.Effect) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, n := range c.nodes {
		var mine []consensus.Effect
		for _, e := range effects {
			if e.Concerns(n.id) {
				mine = append(mine, e)
			}
		}
		if len(mine) > 0 && n.sup != nil {
			c.sys.Root.Send(n.sup, &ApplyEffects{Effects: mine})
		}
	}
}

func (c *cluster) config(id uint64, drv *fake.Driver, log *logBuffer) VMSupervisorConfig {
	cfg := VMSupervisorConfig{
		NodeID:  id,
		Driver:  drv,
		Replica: countingReplica{c: c, r: c.replica},
		Logger:  slog.New(slog.NewTextHandler(log, nil)),
		Clock:   c.clock,
		Rand:    c.rand,
	}
	if c.configure != nil {
		c.configure(&cfg)
	}
	return cfg
}

// addNode starts node id's supervisor over drv (a new fake driver when nil).
func (c *cluster) addNode(id uint64, drv *fake.Driver) *node {
	c.t.Helper()
	if drv == nil {
		drv = c.newDriver(c.tempDir())
	}
	n := &node{id: id, drv: drv, log: &logBuffer{}}
	pid, err := c.sys.Root.SpawnNamed(NewVMSupervisor(c.config(id, drv, n.log)), fmt.Sprintf("vms-%d-%d", id, time.Now().UnixNano()))
	if err != nil {
		c.t.Fatal(err)
	}
	n.sup = pid
	c.mu.Lock()
	c.nodes[id] = n
	c.mu.Unlock()
	return n
}

// stopNode stops node id's supervisor (its VMs keep running in the driver).
func (c *cluster) stopNode(id uint64) {
	c.mu.Lock()
	n := c.nodes[id]
	delete(c.nodes, id)
	c.mu.Unlock()
	if n != nil && n.sup != nil {
		if err := c.sys.Root.StopFuture(n.sup).Wait(); err != nil {
			c.t.Errorf("stopping node %d: %v", id, err)
		}
	}
}

func (c *cluster) stop() {
	c.mu.Lock()
	ids := make([]uint64, 0, len(c.nodes))
	for id := range c.nodes {
		ids = append(ids, id)
	}
	c.mu.Unlock()
	for _, id := range ids {
		c.stopNode(id)
	}
	c.sys.Shutdown()
}

func (c *cluster) propose(cmd *blixardpb.Command) *blixardpb.VmRecord {
	c.t.Helper()
	res, err := c.replica.Propose(context.Background(), cmd)
	if err != nil {
		c.t.Fatal(err)
	}
	if res.GetError().GetCode() != blixardpb.Code_OK {
		c.t.Fatalf("%v: %v", cmd, res.GetError())
	}
	return res.GetVm()
}

func (c *cluster) create(name string, node uint64, restart string) *blixardpb.VmRecord {
	c.t.Helper()
	return c.propose(&blixardpb.Command{Op: &blixardpb.Command_CreateVm{CreateVm: &blixardpb.CreateVm{Spec: &blixardpb.VmSpec{
		Name: name, Vcpus: 1, MemoryMb: 128, NodeId: node, Kernel: "/boot/vmlinuz",
		Restart: &blixardpb.RestartPolicy{Mode: restart},
	}}}})
}

func (c *cluster) vm(name string) *blixardpb.VmRecord {
	var rec *blixardpb.VmRecord
	c.replica.Read(context.Background(), true, func(s *consensus.State) { rec, _ = s.VM(name) })
	return rec
}

// eventually waits until cond holds, failing the test after 10 s. It
// polls: there is nothing to block on across the actor system.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

// waitStatus waits until the replicated record of name shows st.
func (c *cluster) waitStatus(name string, st blixardpb.VmStatus) *blixardpb.VmRecord {
	c.t.Helper()
	var rec *blixardpb.VmRecord
	eventually(c.t, fmt.Sprintf("%s to be %s", name, st), func() bool {
		rec = c.vm(name)
		return rec.GetStatus() == st
	})
	return rec
}

// waitPending waits until the clock has exactly n timers pending and
// returns their delays.
func (c *cluster) waitPending(n int) []time.Duration {
	c.t.Helper()
	var p []time.Duration
	eventually(c.t, fmt.Sprintf("%d timers pending", n), func() bool {
		p = c.clock.Pending()
		return len(p) == n
	})
	return p
}

func (c *cluster) localVMs(n *node) []LocalVM {
	c.t.Helper()
	res, err := c.sys.Root.RequestFuture(n.sup, &LocalVMsRequest{}, 5*time.Second).Result()
	if err != nil {
		c.t.Fatal(err)
	}
	return res.(*LocalVMs).VMs
}

func (c *cluster) reconcile(n *node) *ReconcileResult {
	c.t.Helper()
	res, err := c.sys.Root.RequestFuture(n.sup, &Reconcile{}, 5*time.Second).Result()
	if err != nil {
		c.t.Fatal(err)
	}
	return res.(*ReconcileResult)
}

func (c *cluster) proposalCount(name string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.proposals[name]
}
