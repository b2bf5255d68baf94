package consensus

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"sort"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/blixard/blixard/proto/blixardpb"
)

// testCluster runs replicas in this process on 127.0.0.1, each with its
// own NodeHost, data dir and port, the way separate hosts would.
type testCluster struct {
	t     testing.TB
	tweak func(*ReplicaConfig)

	mu       sync.Mutex
	dirs     map[uint64]string
	addrs    map[uint64]string
	running  map[uint64]*Replica
	effects  map[uint64][]Effect // delivered to OnEffects, by receiving replica
	restores map[uint64]*atomic.Int64
}

// testLogger is shared by every replica in the test binary: dragonboat's
// logger is process-global and must never point at a finished test's T.
var testLogger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))

// verifyNoLeaks checks for leaked goroutines when the test ends, after
// every cleanup registered later (cleanups run last-in first-out), so
// after the replicas were closed. NodeHost.Close stops every goroutine
// dragonboat and pebble started, so nothing needs ignoring.
func verifyNoLeaks(t *testing.T) {
	t.Helper()
	t.Cleanup(func() { goleak.VerifyNone(t) })
}

func freeAddr(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("finding a free port: %v", err)
	}
	addr := l.Addr().String()
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	return addr
}

// newTestCluster starts n replicas (ids 1..n) bootstrapped together and
// waits until every one of them is ready.
func newTestCluster(t testing.TB, n int, tweak func(*ReplicaConfig)) *testCluster {
	t.Helper()
	c := &testCluster{
		t:        t,
		tweak:    tweak,
		dirs:     map[uint64]string{},
		addrs:    map[uint64]string{},
		running:  map[uint64]*Replica{},
		effects:  map[uint64][]Effect{},
		restores: map[uint64]*atomic.Int64{},
	}
	for id := uint64(1); id <= uint64(n); id++ {
		c.dirs[id] = t.TempDir()
		c.addrs[id] = freeAddr(t)
		c.restores[id] = &atomic.Int64{}
	}
	t.Cleanup(func() {
		for _, r := range c.replicas() {
			r.Close()
		}
	})
	for id := uint64(1); id <= uint64(n); id++ {
		c.start(id)
	}
	for _, r := range c.replicas() {
		c.waitReady(r)
	}
	return c
}

func (c *testCluster) config(id uint64) ReplicaConfig {
	cfg := ReplicaConfig{
		ReplicaID:      id,
		DataDir:        c.dirs[id],
		RaftAddr:       c.addrs[id],
		InitialMembers: c.addrs,
		Logger:         testLogger,
		OnEffects: func(effs []Effect) {
			c.mu.Lock()
			defer c.mu.Unlock()
			c.effects[id] = append(c.effects[id], effs...)
		},
		OnRestore: func() { c.restores[id].Add(1) },
	}
	if c.tweak != nil {
		c.tweak(&cfg)
	}
	return cfg
}

// start starts (or restarts, from its data dir) replica id.
func (c *testCluster) start(id uint64) *Replica {
	c.t.Helper()
	r, err := StartReplica(c.config(id))
	if err != nil {
		c.t.Fatalf("starting replica %d: %v", id, err)
	}
	c.mu.Lock()
	c.running[id] = r
	c.mu.Unlock()
	return r
}

// stop closes replica id's NodeHost: to its peers this is a crash.
func (c *testCluster) stop(id uint64) {
	c.t.Helper()
	c.mu.Lock()
	r := c.running[id]
	delete(c.running, id)
	c.mu.Unlock()
	if r == nil {
		c.t.Fatalf("replica %d is not running", id)
	}
	if err := r.Close(); err != nil {
		c.t.Fatalf("closing replica %d: %v", id, err)
	}
}

func (c *testCluster) replica(id uint64) *Replica {
	c.mu.Lock()
	defer c.mu.Unlock()
	r := c.running[id]
	if r == nil {
		c.t.Fatalf("replica %d is not running", id)
	}
	return r
}

// replicas returns the running replicas sorted by id.
func (c *testCluster) replicas() []*Replica {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []*Replica
	for _, r := range c.running {
		out = append(out, r)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID() < out[j].ID() })
	return out
}

func (c *testCluster) waitReady(r *Replica) {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := r.WaitReady(ctx); err != nil {
		c.t.Fatalf("replica %d not ready: %v", r.ID(), err)
	}
}

// leader waits until every running replica names the same running
// leader and returns it.
func (c *testCluster) leader() *Replica {
	c.t.Helper()
	var leader uint64
	waitFor(c.t, 20*time.Second, "the running replicas to agree on a running leader", func() bool {
		leader = 0
		for _, r := range c.replicas() {
			id, _, ok := r.LeaderID()
			if !ok || (leader != 0 && id != leader) {
				return false
			}
			leader = id
		}
		c.mu.Lock()
		defer c.mu.Unlock()
		return c.running[leader] != nil
	})
	return c.replica(leader)
}

// follower returns a running replica that is not the leader.
func (c *testCluster) follower() *Replica {
	c.t.Helper()
	l := c.leader()
	for _, r := range c.replicas() {
		if r != l {
			return r
		}
	}
	c.t.Fatal("no running follower")
	return nil
}

// waitFor polls cond until it holds or the timeout passes.
func waitFor(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		<-tick.C
	}
}

// propose proposes cmd through r, retrying with the same request id
// while the cluster is unavailable (as a client would). It returns an
// error for anything but an acknowledged, successful command.
func propose(r *Replica, cmd *blixardpb.Command) (*blixardpb.Result, error) {
	deadline := time.Now().Add(20 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		res, err := r.Propose(ctx, cmd)
		cancel()
		if err == nil {
			if res.GetError().GetCode() != blixardpb.Code_OK {
				return nil, fmt.Errorf("proposal %s through replica %d failed: %v", cmd.GetRequestId(), r.ID(), res.GetError())
			}
			return res, nil
		}
		if !errors.Is(err, ErrUnavailable) {
			return nil, fmt.Errorf("proposal %s through replica %d: error does not wrap ErrUnavailable: %w", cmd.GetRequestId(), r.ID(), err)
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("proposal %s through replica %d: still unavailable: %w", cmd.GetRequestId(), r.ID(), err)
		}
	}
}

func mustPropose(t testing.TB, r *Replica, cmd *blixardpb.Command) *blixardpb.Result {
	t.Helper()
	res, err := propose(r, cmd)
	if err != nil {
		t.Fatal(err)
	}
	return res
}

func upsertNodeCmd(id uint64) *blixardpb.Command {
	return &blixardpb.Command{
		RequestId: fmt.Sprintf("node-%d", id),
		Op: &blixardpb.Command_UpsertNode{UpsertNode: &blixardpb.UpsertNode{Node: &blixardpb.NodeRecord{
			Id:          id,
			ApiAddr:     fmt.Sprintf("127.0.0.1:%d", 7000+id),
			RaftAddr:    fmt.Sprintf("127.0.0.1:%d", 8000+id),
			Vcpus:       256,
			MemoryMb:    1 << 20,
			Status:      blixardpb.NodeStatus_NODE_STATUS_ALIVE,
			Schedulable: true,
		}}},
	}
}

func createVMCmd(name string) *blixardpb.Command {
	return &blixardpb.Command{
		RequestId: "create-" + name,
		Op: &blixardpb.Command_CreateVm{CreateVm: &blixardpb.CreateVm{Spec: &blixardpb.VmSpec{
			Name:     name,
			Vcpus:    1,
			MemoryMb: 64,
			Kernel:   "/var/lib/blixard/kernels/vmlinuz",
			Labels:   map[string]string{"app": "web", "tier": "frontend"},
		}}},
	}
}

func deleteVMCmd(name string) *blixardpb.Command {
	return &blixardpb.Command{
		RequestId: "delete-" + name,
		Op:        &blixardpb.Command_DeleteVm{DeleteVm: &blixardpb.DeleteVm{Name: name}},
	}
}

// ledger records acknowledged writes: the VMs that must exist.
type ledger struct {
	mu  sync.Mutex
	vms map[string]bool
}

func (l *ledger) create(t *testing.T, r *Replica, name string) *blixardpb.VmRecord {
	t.Helper()
	vm, err := l.tryCreate(r, name)
	if err != nil {
		t.Fatal(err)
	}
	return vm
}

func (l *ledger) tryCreate(r *Replica, name string) (*blixardpb.VmRecord, error) {
	res, err := propose(r, createVMCmd(name))
	if err != nil {
		return nil, err
	}
	if res.GetVm().GetSpec().GetName() != name {
		return nil, fmt.Errorf("creating %s: result holds vm %q", name, res.GetVm().GetSpec().GetName())
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.vms == nil {
		l.vms = map[string]bool{}
	}
	l.vms[name] = true
	return res.GetVm(), nil
}

func (l *ledger) tryDelete(r *Replica, name string) error {
	if _, err := propose(r, deleteVMCmd(name)); err != nil {
		return err
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	delete(l.vms, name)
	return nil
}

// churn writes n create/delete commands through r from 4 goroutines,
// leaving no VM behind.
func (l *ledger) churn(t *testing.T, r *Replica, prefix string, n int) {
	t.Helper()
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	for w := 0; w < 4; w++ {
		wg.Go(func() {
			for i := w; i < n/2; i += 4 {
				name := fmt.Sprintf("%s-%d", prefix, i)
				if _, err := l.tryCreate(r, name); err != nil {
					errs <- err
					return
				}
				if err := l.tryDelete(r, name); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if t.Failed() {
		t.FailNow()
	}
}

func (l *ledger) names() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []string
	for n := range l.vms {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

// assertConverged checks that every running replica holds exactly the
// acknowledged VMs and nodes, and that their snapshots are byte-identical.
// The linearizable read on each replica makes it apply everything
// committed so far first.
func (c *testCluster) assertConverged(l *ledger, nodes int) {
	c.t.Helper()
	want := l.names()
	var first []byte
	var firstID uint64
	for _, r := range c.replicas() {
		var names []string
		var nodeCount int
		var snap bytes.Buffer
		var saveErr error
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		err := r.Read(ctx, false, func(s *State) {
			for _, v := range s.VMs() {
				names = append(names, v.GetSpec().GetName())
			}
			nodeCount = len(s.Nodes())
			saveErr = s.Save(&snap)
		})
		cancel()
		if err != nil {
			c.t.Fatalf("reading replica %d: %v", r.ID(), err)
		}
		if saveErr != nil {
			c.t.Fatalf("saving replica %d's state: %v", r.ID(), saveErr)
		}
		if fmt.Sprint(names) != fmt.Sprint(want) {
			c.t.Errorf("replica %d holds vms %v, want the acknowledged %v", r.ID(), names, want)
		}
		if nodeCount != nodes {
			c.t.Errorf("replica %d holds %d nodes, want %d", r.ID(), nodeCount, nodes)
		}
		if first == nil {
			first, firstID = snap.Bytes(), r.ID()
			continue
		}
		if !bytes.Equal(first, snap.Bytes()) {
			c.t.Errorf("replica %d's snapshot (%d bytes) differs from replica %d's (%d bytes)",
				r.ID(), snap.Len(), firstID, len(first))
		}
	}
}

// TestClusterLifecycle walks a 3-replica cluster through the life the
// design expects: writes through a follower, the leader dying, a
// restart from the data dir, and a replica so far behind that it must
// catch up from a snapshot. Every acknowledged write must survive on
// every replica, and all replicas must end with identical snapshots.
func TestClusterLifecycle(t *testing.T) {
	verifyNoLeaks(t)
	const snapshotEntries = 40
	c := newTestCluster(t, 3, func(cfg *ReplicaConfig) {
		cfg.SnapshotEntries = snapshotEntries
		cfg.CompactionOverhead = 10
	})
	var l ledger

	t.Log("writes through a follower reach every replica")
	f := c.follower()
	for id := uint64(1); id <= 3; id++ {
		res := mustPropose(t, f, upsertNodeCmd(id))
		if res.GetNode().GetId() != id {
			t.Fatalf("upserting node %d: result holds node %d", id, res.GetNode().GetId())
		}
	}
	placed := map[string]uint64{}
	for i := 0; i < 6; i++ {
		name := fmt.Sprintf("web-%d", i)
		vm := l.create(t, f, name)
		if vm.GetNodeId() == 0 {
			t.Fatalf("vm %s was not placed", name)
		}
		placed[name] = vm.GetNodeId()
	}
	c.assertConverged(&l, 3)
	c.mu.Lock()
	for id, effs := range c.effects {
		for _, e := range effs {
			if !e.Concerns(id) {
				t.Errorf("replica %d got an effect for vm %s on node %d", id, e.VM.GetSpec().GetName(), e.VM.GetNodeId())
			}
		}
	}
	for name, node := range placed {
		found := false
		for _, e := range c.effects[node] {
			found = found || e.VM.GetSpec().GetName() == name
		}
		if !found {
			t.Errorf("replica %d got no effect for vm %s placed on it", node, name)
		}
	}
	c.mu.Unlock()

	t.Log("the leader dies: a new leader is elected and writes continue")
	old := c.leader()
	_, oldTerm, _ := old.LeaderID()
	c.stop(old.ID())
	// The first write after the crash, through a survivor that still
	// believes in the dead leader: its proposal is forwarded into the void
	// until the election, then proposed again to the new leader.
	stopped := time.Now()
	survivor := c.replicas()[0]
	if _, err := l.tryCreate(survivor, "first-after-crash"); err != nil {
		t.Fatal(err)
	}
	gap := time.Since(stopped)
	t.Logf("write gap after the leader crashed: %v", gap)
	if gap > 5*time.Second {
		t.Errorf("the first write after the leader crashed took %v", gap)
	}
	nl := c.leader()
	if nl.ID() == old.ID() {
		t.Fatalf("replica %d is still the leader after it stopped", old.ID())
	}
	if _, term, _ := nl.LeaderID(); term <= oldTerm {
		t.Errorf("new leader %d has term %d, not beyond the old term %d", nl.ID(), term, oldTerm)
	}
	for _, r := range c.replicas() {
		l.create(t, r, fmt.Sprintf("after-failover-%d", r.ID()))
	}
	c.assertConverged(&l, 3)

	t.Log("the old leader restarts from its data dir and catches up")
	back := c.start(old.ID())
	c.waitReady(back)
	l.create(t, back, "after-restart")
	c.assertConverged(&l, 3)

	t.Log("a replica offline for more than SnapshotEntries entries catches up from a snapshot")
	lag := c.follower()
	lagID := lag.ID()
	lagIndex := lag.AppliedIndex()
	c.stop(lagID)
	l.churn(t, c.leader(), "churn", 4*snapshotEntries)
	l.create(t, c.leader(), "while-offline")
	restoresBefore := c.restores[lagID].Load()
	lag = c.start(lagID)
	c.waitReady(lag)
	if got := lag.events.snapshotsReceived.Load(); got == 0 {
		t.Errorf("replica %d caught up without receiving a snapshot", lagID)
	}
	if c.restores[lagID].Load() <= restoresBefore {
		t.Errorf("OnRestore was not called on replica %d", lagID)
	}
	if got := lag.sm.restoredIndex.Load(); got <= lagIndex {
		t.Errorf("replica %d restored a snapshot at index %d, not beyond its index %d before going offline", lagID, got, lagIndex)
	}
	c.assertConverged(&l, 3)
}

// TestClusterNoQuorum checks that with two of three replicas down a
// proposal fails with ErrUnavailable once its context ends, and succeeds
// again when quorum returns.
func TestClusterNoQuorum(t *testing.T) {
	verifyNoLeaks(t)
	c := newTestCluster(t, 3, nil)
	var l ledger
	mustPropose(t, c.follower(), upsertNodeCmd(1))
	l.create(t, c.follower(), "before")

	survivor := c.follower()
	for _, r := range c.replicas() {
		if r != survivor {
			c.stop(r.ID())
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	start := time.Now()
	_, err := survivor.Propose(ctx, createVMCmd("no-quorum"))
	cancel()
	if !errors.Is(err, ErrUnavailable) {
		t.Fatalf("propose without quorum: got %v, want an error wrapping ErrUnavailable", err)
	}
	if took := time.Since(start); took > 2*time.Second {
		t.Errorf("propose without quorum took %v, beyond its 300ms context", took)
	}
	t.Logf("propose without quorum: %v", err)

	ctx, cancel = context.WithTimeout(context.Background(), 300*time.Millisecond)
	err = survivor.Read(ctx, false, func(*State) {})
	cancel()
	if !errors.Is(err, ErrUnavailable) {
		t.Fatalf("linearizable read without quorum: got %v, want an error wrapping ErrUnavailable", err)
	}
	var stale []string
	if err := survivor.Read(context.Background(), true, func(s *State) {
		for _, v := range s.VMs() {
			stale = append(stale, v.GetSpec().GetName())
		}
	}); err != nil {
		t.Fatalf("stale read without quorum: %v", err)
	}
	if fmt.Sprint(stale) != "[before]" {
		t.Errorf("stale read without quorum saw %v, want [before]", stale)
	}

	for id := uint64(1); id <= 3; id++ {
		if id != survivor.ID() {
			c.start(id)
			break
		}
	}
	// The proposal that timed out may or may not have committed; the
	// retry with the same request id settles it either way.
	l.create(t, survivor, "no-quorum")
	c.assertConverged(&l, 1)
}
