package actors

import (
	"context"
	"errors"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/asynkron/protoactor-go/actor"

	"github.com/blixard/blixard/consensus"
	"github.com/blixard/blixard/microvm"
	"github.com/blixard/blixard/microvm/fake"
	"github.com/blixard/blixard/proto/blixardpb"
)

const (
	running  = blixardpb.VmStatus_VM_STATUS_RUNNING
	starting = blixardpb.VmStatus_VM_STATUS_STARTING
	stopped  = blixardpb.VmStatus_VM_STATUS_STOPPED
	failed   = blixardpb.VmStatus_VM_STATUS_FAILED
)

func startCmd(name string) *blixardpb.Command {
	return &blixardpb.Command{Op: &blixardpb.Command_StartVm{StartVm: &blixardpb.StartVm{Name: name}}}
}

func stopCmd(name string) *blixardpb.Command {
	return &blixardpb.Command{Op: &blixardpb.Command_StopVm{StopVm: &blixardpb.StopVm{Name: name}}}
}

// crashWhenRunning waits for start number n of name, then crashes it.
func crashWhenRunning(t *testing.T, drv *fake.Driver, name string, n int) {
	t.Helper()
	eventually(t, "start "+itoa(n)+" of "+name, func() bool {
		return drv.StartCount(name) == n && len(drv.Running()) > 0
	})
	if err := drv.Crash(name, 1); err != nil {
		t.Fatal(err)
	}
}

func itoa(n int) string { return string(rune('0'+n/10)) + string(rune('0'+n%10)) }

func TestVMStartsAndReportsRunning(t *testing.T) {
	c := newCluster(t, 1)
	n := c.addNode(1, nil)
	c.create("web", 1, "")
	rec := c.waitStatus("web", running)
	if got := n.drv.StartCount("web"); got != 1 {
		t.Errorf("StartCount = %d, want 1", got)
	}
	vms := c.localVMs(n)
	if len(vms) != 1 || vms[0].Name != "web" || vms[0].Status != running || vms[0].Generation != rec.GetGeneration() {
		t.Errorf("local view = %+v, want web running at generation %d", vms, rec.GetGeneration())
	}
	in, err := n.drv.Inspect(context.Background(), "web")
	if err != nil || !in.Running || in.ID != rec.GetId() {
		t.Errorf("driver sees %+v, %v; want web running with id %d", in, err, rec.GetId())
	}
}

func TestRestartAlwaysBacksOffThenFails(t *testing.T) {
	c := newCluster(t, 1)
	n := c.addNode(1, nil)
	c.create("web", 1, "always")
	c.waitStatus("web", running)

	want := []time.Duration{1, 2, 4, 8, 16}
	for i, w := range want {
		crashWhenRunning(t, n.drv, "web", i+1)
		p := c.waitPending(1)
		if p[0] != w*time.Second {
			t.Fatalf("restart %d: backoff %v, want %v", i+1, p[0], w*time.Second)
		}
		eventually(t, "restart "+itoa(i+1)+" reported", func() bool {
			rec := c.vm("web")
			return rec.GetStatus() == starting && rec.GetRestarts() == uint32(i+1)
		})
		c.clock.Advance(p[0])
	}
	crashWhenRunning(t, n.drv, "web", 6)
	rec := c.waitStatus("web", failed)
	if !strings.Contains(rec.GetMessage(), "restart limit") {
		t.Errorf("failed message = %q, want it to name the restart limit", rec.GetMessage())
	}
	if p := c.clock.Pending(); len(p) != 0 {
		t.Errorf("timers pending after failing: %v", p)
	}
	if got := n.drv.StartCount("web"); got != 6 {
		t.Errorf("StartCount = %d, want 6 (1 + 5 restarts)", got)
	}

	// An explicit start (a new generation) resets the count.
	c.propose(startCmd("web"))
	rec = c.waitStatus("web", running)
	if rec.GetRestarts() != 0 {
		t.Errorf("restarts after vm start = %d, want 0", rec.GetRestarts())
	}
	crashWhenRunning(t, n.drv, "web", 7)
	if p := c.waitPending(1); p[0] != time.Second {
		t.Errorf("first backoff after reset = %v, want 1s", p[0])
	}
}

func TestBackoffIsCappedAndJittered(t *testing.T) {
	c := newCluster(t, 1)
	c.rand = rand.New(rand.NewPCG(1, 2))
	n := c.addNode(1, nil)
	c.propose(&blixardpb.Command{Op: &blixardpb.Command_CreateVm{CreateVm: &blixardpb.CreateVm{Spec: &blixardpb.VmSpec{
		Name: "web", Vcpus: 1, MemoryMb: 128, NodeId: 1,
		Restart: &blixardpb.RestartPolicy{Mode: "always", MaxRestarts: 10, WindowSeconds: 3600},
	}}}})
	c.waitStatus("web", running)
	nominal := []time.Duration{1, 2, 4, 8, 16, 32, 60, 60, 60}
	jittered := 0
	for i, w := range nominal {
		crashWhenRunning(t, n.drv, "web", i+1)
		p := c.waitPending(1)
		hi := w * time.Second
		lo := hi - hi/5
		if p[0] <= lo || p[0] > hi {
			t.Errorf("restart %d: backoff %v, want in (%v, %v]", i+1, p[0], lo, hi)
		}
		if p[0] != hi {
			jittered++
		}
		c.clock.Advance(p[0])
	}
	if jittered == 0 {
		t.Errorf("no backoff was jittered")
	}
}

func TestRestartOnFailure(t *testing.T) {
	c := newCluster(t, 1)
	n := c.addNode(1, nil)
	c.create("web", 1, "on-failure")
	c.waitStatus("web", running)

	crashWhenRunning(t, n.drv, "web", 1)
	c.clock.Advance(c.waitPending(1)[0])
	eventually(t, "restart after a crash", func() bool { return n.drv.StartCount("web") == 2 })
	c.waitStatus("web", running)

	if err := n.drv.PowerOff("web"); err != nil {
		t.Fatal(err)
	}
	rec := c.waitStatus("web", stopped)
	if !strings.Contains(rec.GetMessage(), "powered off") {
		t.Errorf("message = %q, want the clean exit's reason", rec.GetMessage())
	}
	if p := c.clock.Pending(); len(p) != 0 {
		t.Errorf("a clean exit scheduled a restart: %v", p)
	}
	if got := n.drv.StartCount("web"); got != 2 {
		t.Errorf("StartCount = %d, want 2", got)
	}
}

func TestRestartNever(t *testing.T) {
	c := newCluster(t, 1)
	n := c.addNode(1, nil)
	c.create("web", 1, "never")
	c.waitStatus("web", running)
	crashWhenRunning(t, n.drv, "web", 1)
	rec := c.waitStatus("web", failed)
	if !strings.Contains(rec.GetMessage(), "crashed") {
		t.Errorf("message = %q, want the exit reason", rec.GetMessage())
	}
	if p := c.clock.Pending(); len(p) != 0 || n.drv.StartCount("web") != 1 {
		t.Errorf("never restarted anyway: pending %v, starts %d", p, n.drv.StartCount("web"))
	}
}

func TestStartFailuresCountAsRestarts(t *testing.T) {
	c := newCluster(t, 1)
	n := c.addNode(1, nil)
	n.drv.SetFault("web", fake.Fault{StartFailures: 2})
	c.create("web", 1, "")
	for _, w := range []time.Duration{time.Second, 2 * time.Second} {
		if p := c.waitPending(1); p[0] != w {
			t.Fatalf("backoff after a failed start = %v, want %v", p[0], w)
		}
		c.clock.Advance(w)
	}
	rec := c.waitStatus("web", running)
	if rec.GetRestarts() != 2 || n.drv.StartCount("web") != 1 {
		t.Errorf("restarts = %d, starts = %d; want 2 and 1", rec.GetRestarts(), n.drv.StartCount("web"))
	}
}

func TestStopAndStart(t *testing.T) {
	c := newCluster(t, 1)
	n := c.addNode(1, nil)
	c.create("web", 1, "")
	c.waitStatus("web", running)
	c.propose(stopCmd("web"))
	c.waitStatus("web", stopped)
	if r := n.drv.Running(); len(r) != 0 {
		t.Fatalf("driver still runs %v after vm stop", r)
	}
	runs := n.drv.Runs("web")
	if len(runs) != 1 || runs[0].Exit == nil || !runs[0].Exit.Clean {
		t.Errorf("runs = %+v, want one cleanly stopped run", runs)
	}
	c.propose(startCmd("web"))
	c.waitStatus("web", running)
	if got := n.drv.StartCount("web"); got != 2 {
		t.Errorf("StartCount = %d, want 2", got)
	}
}

func vmPID(c *cluster, n *node, name string) *actor.PID {
	return actor.NewPID(c.sys.Address(), n.sup.Id+"/vm/"+name)
}

func TestPanickingActorReadoptsWithoutSecondStart(t *testing.T) {
	c := newCluster(t, 1)
	n := c.addNode(1, nil)
	c.create("web", 1, "")
	c.waitStatus("web", running)

	c.sys.Root.Send(vmPID(c, n, "web"), &vmPanic{})
	eventually(t, "the restarted actor to re-adopt web", func() bool {
		logs, _, _ := n.drv.Logs(context.Background(), "web", 0, 0)
		return strings.Contains(string(logs), "re-adopted")
	})
	if got := n.drv.StartCount("web"); got != 1 {
		t.Fatalf("StartCount after the actor's restart = %d, want 1", got)
	}
	if runs := n.drv.Runs("web"); len(runs) != 1 || !runs[0].Running() {
		t.Fatalf("runs = %+v, want the one original run still running", runs)
	}
	// The re-adopted VM is watched: a crash is restarted.
	crashWhenRunning(t, n.drv, "web", 1)
	c.clock.Advance(c.waitPending(1)[0])
	eventually(t, "the restart after a crash", func() bool { return n.drv.StartCount("web") == 2 })
}

func TestReconcileAdoptsStartsAndRemoves(t *testing.T) {
	c := newCluster(t, 1)
	drv := c.newDriver(c.tempDir())
	// Desired: adopt and missing on node 1; no agent is listening yet.
	adopt := c.create("adopt", 1, "")
	c.create("missing", 1, "")
	// Actual: adopt and orphan run.
	ctx := context.Background()
	for _, s := range []microvm.Spec{{Name: "adopt", ID: adopt.GetId()}, {Name: "orphan", ID: 99}} {
		if err := drv.Prepare(ctx, s); err != nil {
			t.Fatal(err)
		}
		if _, err := drv.Start(ctx, s); err != nil {
			t.Fatal(err)
		}
	}

	n := c.addNode(1, drv) // reconciles on start
	c.waitStatus("adopt", running)
	c.waitStatus("missing", running)
	eventually(t, "orphan destroyed and its actor gone", func() bool {
		_, err := drv.Inspect(ctx, "orphan")
		return errors.Is(err, microvm.ErrNotFound) && len(c.localVMs(n)) == 2
	})
	if got := drv.StartCount("adopt"); got != 1 {
		t.Errorf("StartCount(adopt) = %d, want 1 (adopted, not restarted)", got)
	}
	if !strings.Contains(n.log.String(), "reconcile: adopted 1, started 1, removed 1") {
		t.Errorf("log lacks the reconcile summary:\n%s", n.log.String())
	}
	// A second pass finds nothing to do.
	if res := c.reconcile(n); res.Err != nil || res.Adopted+res.Started+res.Removed != 0 {
		t.Errorf("second reconcile = %+v, want nothing to do", res)
	}
}

func TestAgentRestartRecoversRunningVMs(t *testing.T) {
	c := newCluster(t, 1)
	dir := c.tempDir()
	drv := c.newDriver(dir)
	c.addNode(1, drv)
	c.create("web", 1, "")
	c.waitStatus("web", running)
	c.stopNode(1)
	if r := drv.Running(); len(r) != 1 {
		t.Fatalf("stopping the agent stopped the VMs: running %v", r)
	}

	reports := c.proposalCount("web")
	drv2 := c.newDriver(dir)
	n := c.addNode(1, drv2)
	eventually(t, "web re-adopted", func() bool {
		vms := c.localVMs(n)
		return len(vms) == 1 && vms[0].Status == running
	})
	if got := drv2.StartCount("web"); got != 0 {
		t.Errorf("the new agent started web %d times, want 0", got)
	}
	if runs := drv2.Runs("web"); len(runs) != 1 || !runs[0].Running() {
		t.Errorf("runs = %+v, want the original run", runs)
	}
	if got := c.proposalCount("web"); got != reports {
		t.Errorf("the new agent proposed %d status reports for web; the state already said running", got-reports)
	}
}

func TestNewAgentKeepsFailedVMDown(t *testing.T) {
	c := newCluster(t, 1)
	dir := c.tempDir()
	drv := c.newDriver(dir)
	c.addNode(1, drv)
	c.create("web", 1, "never")
	c.waitStatus("web", running)
	crashWhenRunning(t, drv, "web", 1)
	c.waitStatus("web", failed)
	c.stopNode(1)

	drv2 := c.newDriver(dir)
	n := c.addNode(1, drv2)
	if res := c.reconcile(n); res.Err != nil {
		t.Fatal(res.Err)
	}
	eventually(t, "the new agent's view of web", func() bool {
		vms := c.localVMs(n)
		return len(vms) == 1 && vms[0].Status == failed
	})
	if got := drv2.StartCount("web"); got != 0 {
		t.Errorf("the new agent restarted a failed VM %d times", got)
	}
}

func TestMovedVMStopsOnOldNodeAndStartsOnNew(t *testing.T) {
	c := newCluster(t, 1)
	n1 := c.addNode(1, nil)
	c.create("web", 0, "")
	c.waitStatus("web", running)
	c.propose(&blixardpb.Command{Op: &blixardpb.Command_UpsertNode{UpsertNode: &blixardpb.UpsertNode{Node: &blixardpb.NodeRecord{
		Id: 2, Vcpus: 64, MemoryMb: 1 << 20,
	}}}})
	n2 := c.addNode(2, nil)

	// The migration hands over: the record stays on node 1 until node 1
	// has stopped the VM, and node 2 starts it only then.
	rec := c.propose(&blixardpb.Command{Op: &blixardpb.Command_MigrateVm{MigrateVm: &blixardpb.MigrateVm{Name: "web", TargetNodeId: 2}}})
	if rec.GetNodeId() != 1 || rec.GetMigrateTo() != 2 || n2.drv.StartCount("web") != 0 {
		t.Fatalf("migrate answered node %d, moving to %d, node 2 started it %d times; want node 1 moving to 2, no start", rec.GetNodeId(), rec.GetMigrateTo(), n2.drv.StartCount("web"))
	}
	eventually(t, "web destroyed on node 1", func() bool {
		_, err := n1.drv.Inspect(context.Background(), "web")
		return errors.Is(err, microvm.ErrNotFound) && len(c.localVMs(n1)) == 0
	})
	var got *blixardpb.VmRecord
	eventually(t, "web running on node 2", func() bool {
		got = c.vm("web")
		return got.GetNodeId() == 2 && got.GetStatus() == running
	})
	if got.GetMigrateTo() != 0 || n2.drv.StartCount("web") != 1 {
		t.Errorf("after the move: %v, node 2 starts %d; want no hand-over left, 1 start", got, n2.drv.StartCount("web"))
	}
	if cur := n2.drv.Runs("web"); len(cur) != 1 || !cur[0].Running() {
		t.Errorf("node 2 runs = %+v, want one running", cur)
	}

	// And back: node 2 destroys, node 1 starts it again.
	c.propose(&blixardpb.Command{Op: &blixardpb.Command_MigrateVm{MigrateVm: &blixardpb.MigrateVm{Name: "web", TargetNodeId: 1}}})
	eventually(t, "web destroyed on node 2", func() bool {
		_, err := n2.drv.Inspect(context.Background(), "web")
		return errors.Is(err, microvm.ErrNotFound) && len(c.localVMs(n2)) == 0
	})
	eventually(t, "web running on node 1", func() bool {
		got = c.vm("web")
		return got.GetNodeId() == 1 && got.GetStatus() == running
	})
	if n1.drv.StartCount("web") != 2 {
		t.Errorf("after moving back: record on node %d, node 1 starts %d; want node 1, 2 starts", got.GetNodeId(), n1.drv.StartCount("web"))
	}

	// Delete: the actor destroys the VM and goes away.
	c.propose(&blixardpb.Command{Op: &blixardpb.Command_DeleteVm{DeleteVm: &blixardpb.DeleteVm{Name: "web"}}})
	eventually(t, "web destroyed on node 1", func() bool {
		_, err := n1.drv.Inspect(context.Background(), "web")
		return errors.Is(err, microvm.ErrNotFound) && len(c.localVMs(n1)) == 0
	})
}

func TestStaleEffectsAreDropped(t *testing.T) {
	c := newCluster(t, 1)
	n := c.addNode(1, nil)
	rec := c.create("web", 1, "")
	c.waitStatus("web", running)
	c.propose(stopCmd("web"))
	c.waitStatus("web", stopped)
	// Replaying the older (running) record changes nothing.
	c.sys.Root.Send(n.sup, ApplyEffects{Effects: []consensus.Effect{{VM: rec}}})
	if res := c.reconcile(n); res.Err != nil {
		t.Fatal(res.Err)
	}
	if r := n.drv.Running(); len(r) != 0 {
		t.Errorf("a stale effect restarted the VM: %v", r)
	}
}

func TestRecreatedVMUnderSameName(t *testing.T) {
	c := newCluster(t, 1)
	n := c.addNode(1, nil)
	old := c.create("web", 1, "")
	c.waitStatus("web", running)
	c.propose(&blixardpb.Command{Op: &blixardpb.Command_DeleteVm{DeleteVm: &blixardpb.DeleteVm{Name: "web"}}})
	fresh := c.create("web", 1, "") // generation 1 again, a higher id
	if fresh.GetId() <= old.GetId() || fresh.GetGeneration() >= old.GetGeneration()+1 {
		t.Fatalf("ids %d → %d, generations %d → %d: the test needs a lower generation under a new id",
			old.GetId(), fresh.GetId(), old.GetGeneration(), fresh.GetGeneration())
	}
	eventually(t, "the new web running", func() bool {
		rec := c.vm("web")
		in, err := n.drv.Inspect(context.Background(), "web")
		return rec.GetStatus() == running && err == nil && in.Running && in.ID == fresh.GetId()
	})
}

func TestReconcileRetriesWhileUnavailable(t *testing.T) {
	c := newCluster(t, 1)
	c.create("web", 1, "")
	c.replica.SetUnavailable(true)
	n := c.addNode(1, nil)
	if p := c.waitPending(1); p[0] != time.Second {
		t.Fatalf("reconcile retry in %v, want 1s", p[0])
	}
	c.clock.Advance(time.Second)
	if p := c.waitPending(1); p[0] != 2*time.Second {
		t.Fatalf("second reconcile retry in %v, want 2s", p[0])
	}
	c.replica.SetUnavailable(false)
	c.clock.Advance(2 * time.Second)
	c.waitStatus("web", running)
	if !strings.Contains(n.log.String(), "reconcile: adopted 0, started 1, removed 0") {
		t.Errorf("log lacks the reconcile summary:\n%s", n.log.String())
	}
}

func TestActorThatKeepsPanickingIsReportedFailed(t *testing.T) {
	c := newCluster(t, 1)
	n := c.addNode(1, nil)
	c.create("web", 1, "")
	c.waitStatus("web", running)
	// The default limit is 10 restarts a minute: the 11th panic stops it.
	// One panic at a time, so none lands in a stopped actor's mailbox.
	readoptions := func() int {
		logs, _, _ := n.drv.Logs(context.Background(), "web", 0, 0)
		return strings.Count(string(logs), "re-adopted")
	}
	for i := 1; i <= 10; i++ {
		c.sys.Root.Send(vmPID(c, n, "web"), &vmPanic{})
		eventually(t, "re-adoption "+itoa(i), func() bool { return readoptions() == i })
	}
	c.sys.Root.Send(vmPID(c, n, "web"), &vmPanic{})
	rec := c.waitStatus("web", failed)
	if !strings.Contains(rec.GetMessage(), "failed repeatedly") {
		t.Errorf("message = %q", rec.GetMessage())
	}
	if got := n.drv.StartCount("web"); got != 1 {
		t.Errorf("StartCount = %d, want 1: restarts of the actor re-adopt", got)
	}
	// Reconciliation gives the VM a fresh actor, which re-adopts it.
	if res := c.reconcile(n); res.Adopted != 1 {
		t.Errorf("reconcile after the actor was stopped = %+v, want it adopted", res)
	}
	eventually(t, "web re-adopted", func() bool {
		vms := c.localVMs(n)
		return len(vms) == 1 && vms[0].Status == running
	})
	if got := n.drv.StartCount("web"); got != 1 {
		t.Errorf("StartCount = %d, want 1", got)
	}
}

func TestPeriodicReconcileRemovesOrphans(t *testing.T) {
	c := newCluster(t, 1)
	c.configure = func(cfg *VMSupervisorConfig) { cfg.ReconcileInterval = time.Minute }
	n := c.addNode(1, nil)
	c.create("web", 1, "")
	c.waitStatus("web", running)
	if p := c.waitPending(1); p[0] != time.Minute {
		t.Fatalf("pending %v, want the 1m reconcile", p)
	}
	ctx := context.Background()
	stray := microvm.Spec{Name: "stray", ID: 42}
	if err := n.drv.Prepare(ctx, stray); err != nil {
		t.Fatal(err)
	}
	if _, err := n.drv.Start(ctx, stray); err != nil {
		t.Fatal(err)
	}
	c.clock.Advance(time.Minute)
	eventually(t, "stray removed and its actor gone", func() bool {
		_, err := n.drv.Inspect(ctx, "stray")
		return errors.Is(err, microvm.ErrNotFound) && len(c.localVMs(n)) == 1
	})
	if got := n.drv.StartCount("web"); got != 1 {
		t.Errorf("StartCount(web) = %d, want 1", got)
	}
}
