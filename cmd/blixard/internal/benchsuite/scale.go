package benchsuite

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"runtime"
	"runtime/debug"
	"strings"
	"sync"
	"time"

	"github.com/asynkron/protoactor-go/actor"

	"github.com/blixard/blixard/actors"
	"github.com/blixard/blixard/consensus"
	"github.com/blixard/blixard/consensus/consensustest"
	"github.com/blixard/blixard/microvm/fake"
	"github.com/blixard/blixard/proto/blixardpb"
)

// RealisticSpec is what a typical VM carries: a kernel and initrd, a
// couple of kernel params, one volume, two labels.
func RealisticSpec(name string) *blixardpb.VmSpec {
	return &blixardpb.VmSpec{
		Name: name, Tenant: "acme", Vcpus: 1, MemoryMb: 256,
		Kernel: "/var/lib/blixard/images/vmlinuz", Initrd: "/var/lib/blixard/images/initrd.img",
		KernelParams: []string{"console=ttyS0", "reboot=t"},
		Volumes:      []*blixardpb.Volume{{Name: "data", SizeMb: 1024, MountPoint: "/data"}},
		Labels:       map[string]string{"app": "web", "env": "prod"},
	}
}

// StateBuilder applies commands to a State with increasing indexes.
type StateBuilder struct {
	S   *consensus.State
	idx uint64
}

// Apply applies cmd and returns an error unless it succeeded.
func (b *StateBuilder) Apply(cmd *blixardpb.Command) error {
	b.idx++
	cmd.TimeUnixMs = int64(b.idx)
	r, _ := b.S.Apply(b.idx, cmd)
	if c := r.GetError().GetCode(); c != blixardpb.Code_OK {
		return fmt.Errorf("applying %v: %v", cmd.GetOp(), r.GetError())
	}
	return nil
}

// CreateVMs applies CreateVm commands of RealisticSpec VMs named
// prefix-0000000 on.
func (b *StateBuilder) CreateVMs(prefix string, n int) error {
	for i := 0; i < n; i++ {
		cmd := &blixardpb.Command{Op: &blixardpb.Command_CreateVm{CreateVm: &blixardpb.CreateVm{Spec: RealisticSpec(fmt.Sprintf("%s-%07d", prefix, i))}}}
		if err := b.Apply(cmd); err != nil {
			return err
		}
	}
	return nil
}

// NewStateBuilder returns a State with a /12 subnet and nodes alive
// nodes, each big enough for any number of VMs.
func NewStateBuilder(nodes int) (*StateBuilder, error) {
	b := &StateBuilder{S: consensus.NewState()}
	if err := b.Apply(&blixardpb.Command{Op: &blixardpb.Command_InitCluster{InitCluster: &blixardpb.InitCluster{
		Config: &blixardpb.ClusterConfig{Subnet: "10.0.0.0/12"}}}}); err != nil {
		return nil, err
	}
	for i := 1; i <= nodes; i++ {
		if err := b.Apply(&blixardpb.Command{Op: &blixardpb.Command_UpsertNode{UpsertNode: &blixardpb.UpsertNode{Node: &blixardpb.NodeRecord{
			Id: uint64(i), Vcpus: consensus.MaxNodeVcpus, MemoryMb: 1 << 30,
			ApiAddr: fmt.Sprintf("10.1.%d.%d:7001", i/250, i%250), RaftAddr: fmt.Sprintf("10.1.%d.%d:7002", i/250, i%250),
			Status: blixardpb.NodeStatus_NODE_STATUS_ALIVE, Schedulable: true,
		}}}}); err != nil {
			return nil, err
		}
	}
	return b, nil
}

// StateScale is what the state-machine half of the scale suite measured.
type StateScale struct {
	Nodes, VMs       int
	PlacementPerVM   time.Duration // one CreateVm applied on top of VMs
	HeapPerVM        float64       // bytes
	SnapshotBytes    int
	SnapshotSave     time.Duration
	SnapshotRestore  time.Duration
	PlacementSamples int
	// CPU time of this process (all threads, GC included) for the same
	// operations: steadier than wall-clock on a loaded machine.
	PlacementCPUPerVM  time.Duration
	SnapshotSaveCPU    time.Duration
	SnapshotRestoreCPU time.Duration
}

// MeasureState builds a state of nodes nodes and vms VMs and measures
// placement (samples further creates), snapshot save and restore, and
// the heap the VMs take.
func MeasureState(nodes, vms, samples int) (StateScale, error) {
	r := StateScale{Nodes: nodes, VMs: vms, PlacementSamples: samples}
	b, err := NewStateBuilder(nodes)
	if err != nil {
		return r, err
	}
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	if err := b.CreateVMs("vm", vms); err != nil {
		return r, err
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	r.HeapPerVM = float64(int64(after.HeapAlloc)-int64(before.HeapAlloc)) / float64(vms)

	var buf bytes.Buffer
	runtime.GC()
	t0, c0 := time.Now(), selfCPU()
	if err := b.S.Save(&buf); err != nil {
		return r, err
	}
	r.SnapshotSave, r.SnapshotSaveCPU = time.Since(t0), selfCPU()-c0
	r.SnapshotBytes = buf.Len()

	restored := consensus.NewState()
	runtime.GC()
	t0, c0 = time.Now(), selfCPU()
	if err := restored.Restore(bytes.NewReader(buf.Bytes())); err != nil {
		return r, err
	}
	r.SnapshotRestore, r.SnapshotRestoreCPU = time.Since(t0), selfCPU()-c0
	if restored.NumVMs() != vms {
		return r, fmt.Errorf("restored %d VMs, want %d", restored.NumVMs(), vms)
	}

	// Placement: creates applied on top, commands built beforehand.
	cmds := make([]*blixardpb.Command, samples)
	for i := range cmds {
		cmds[i] = &blixardpb.Command{Op: &blixardpb.Command_CreateVm{CreateVm: &blixardpb.CreateVm{Spec: RealisticSpec(fmt.Sprintf("p-%07d", i))}}}
	}
	runtime.GC()
	t0, c0 = time.Now(), selfCPU()
	for _, c := range cmds {
		if err := b.Apply(c); err != nil {
			return r, err
		}
	}
	r.PlacementPerVM = time.Since(t0) / time.Duration(samples)
	r.PlacementCPUPerVM = (selfCPU() - c0) / time.Duration(samples)
	runtime.KeepAlive(restored)
	return r, nil
}

// runningCounter wraps a replica and closes done once every VM has had a
// RUNNING report accepted.
type runningCounter struct {
	actors.Replica
	want int
	mu   sync.Mutex
	seen map[string]bool
	done chan struct{}
}

func (r *runningCounter) Propose(ctx context.Context, cmd *blixardpb.Command) (*blixardpb.Result, error) {
	res, err := r.Replica.Propose(ctx, cmd)
	if rep := cmd.GetReportVmStatus(); rep != nil && err == nil && res.GetError().GetCode() == blixardpb.Code_OK &&
		rep.GetStatus() == blixardpb.VmStatus_VM_STATUS_RUNNING {
		r.mu.Lock()
		if !r.seen[rep.GetName()] {
			r.seen[rep.GetName()] = true
			if len(r.seen) == r.want {
				close(r.done)
			}
		}
		r.mu.Unlock()
	}
	return res, err
}

func (r *runningCounter) count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.seen)
}

// ActorScale is what the VM-actor half of the scale suite measured.
type ActorScale struct {
	VMs            int
	SpawnToRunning time.Duration
	RSSPerVM       float64 // bytes of resident memory per VM actor
	HeapPerVM      float64 // Go heap + goroutine stacks per VM actor
}

// SpawnVMActors places n VMs on one node (in-memory replica, fake
// driver), spawns the VM supervisor and measures the time until every
// VM's RUNNING status is committed, and the memory the agent holds per
// VM then (process RSS and Go heap plus stacks, after a GC; the fake
// driver's own record of each VM included).
func SpawnVMActors(ctx context.Context, n int, timeout time.Duration) (ActorScale, error) {
	r := ActorScale{VMs: n}
	local := consensustest.NewLocal()
	mustOK := func(cmd *blixardpb.Command) error {
		res, err := local.Propose(ctx, cmd)
		if err != nil {
			return err
		}
		if res.GetError().GetCode() != blixardpb.Code_OK {
			return fmt.Errorf("%v: %v", cmd.GetOp(), res.GetError())
		}
		return nil
	}
	if err := mustOK(&blixardpb.Command{Op: &blixardpb.Command_InitCluster{InitCluster: &blixardpb.InitCluster{Config: &blixardpb.ClusterConfig{Subnet: "10.0.0.0/16"}}}}); err != nil {
		return r, err
	}
	if err := mustOK(&blixardpb.Command{Op: &blixardpb.Command_UpsertNode{UpsertNode: &blixardpb.UpsertNode{Node: &blixardpb.NodeRecord{
		Id: 1, Vcpus: 1 << 14, MemoryMb: 1 << 30, Status: blixardpb.NodeStatus_NODE_STATUS_ALIVE, Schedulable: true,
	}}}}); err != nil {
		return r, err
	}
	for j := 0; j < n; j++ {
		if err := mustOK(&blixardpb.Command{Op: &blixardpb.Command_CreateVm{CreateVm: &blixardpb.CreateVm{Spec: &blixardpb.VmSpec{
			Name: fmt.Sprintf("vm%05d", j), Vcpus: 1, MemoryMb: 64, NodeId: 1,
		}}}}); err != nil {
			return r, err
		}
	}
	drv, err := fake.New("")
	if err != nil {
		return r, err
	}
	rc := &runningCounter{Replica: local, want: n, seen: make(map[string]bool, n), done: make(chan struct{})}
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	sys := actor.NewActorSystem(actor.WithLoggerFactory(func(*actor.ActorSystem) *slog.Logger { return quiet }))
	defer sys.Shutdown()

	var before, after runtime.MemStats
	runtime.GC()
	debug.FreeOSMemory()
	rss0 := selfRSS()
	runtime.ReadMemStats(&before)
	start := time.Now()
	pid := sys.Root.Spawn(actors.NewVMSupervisor(actors.VMSupervisorConfig{NodeID: 1, Driver: drv, Replica: rc, Logger: quiet}))
	defer func() { sys.Root.StopFuture(pid).Wait() }()
	select {
	case <-rc.done:
	case <-time.After(timeout):
		return r, fmt.Errorf("only %d of %d VMs running after %s", rc.count(), n, timeout)
	case <-ctx.Done():
		return r, ctx.Err()
	}
	r.SpawnToRunning = time.Since(start)
	runtime.GC()
	runtime.ReadMemStats(&after)
	rss1 := selfRSS()
	r.RSSPerVM = float64(rss1-rss0) / float64(n)
	r.HeapPerVM = (float64(after.HeapAlloc) - float64(before.HeapAlloc) + float64(after.StackInuse) - float64(before.StackInuse)) / float64(n)
	return r, nil
}

// selfRSS is this process's resident set size in bytes (0 if unknown).
func selfRSS() int64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "VmRSS:"); ok {
			var kb int64
			fmt.Sscanf(strings.TrimSpace(v), "%d", &kb)
			return kb << 10
		}
	}
	return 0
}

func runScale(ctx context.Context, e *env) ([]Table, error) {
	nodes, vms, samples, actorsN := 1000, 100000, 10000, 10000
	if e.quick() {
		vms, samples, actorsN = 10000, 1000, 1000
	}
	// The actors first, while the heap is small: RSS deltas are cleaner.
	e.log("scale: %d VM actors on one node", actorsN)
	as, err := SpawnVMActors(ctx, actorsN, 5*time.Minute)
	if err != nil {
		return nil, fmt.Errorf("vm actors: %w", err)
	}
	runtime.GC()
	debug.FreeOSMemory()
	e.log("scale: state with %d VMs on %d nodes", vms, nodes)
	ss, err := MeasureState(nodes, vms, samples)
	if err != nil {
		return nil, fmt.Errorf("state: %w", err)
	}
	snapPerVM := float64(ss.SnapshotBytes) / float64(vms)
	ms1 := func(d time.Duration) string { return d.Round(time.Millisecond).String() }
	t := Table{Suite: "scale", Title: "scale — state machine and VM actors",
		Header: []string{"what", "wall-clock", "CPU (process)"},
		Rows: [][]string{
			{fmt.Sprintf("placement, %d nodes / %d VMs, per create (mean of %d)", nodes, vms, samples), fmt.Sprintf("%.1f µs", us(ss.PlacementPerVM)), fmt.Sprintf("%.1f µs", us(ss.PlacementCPUPerVM))},
			{fmt.Sprintf("snapshot save, %d VMs (%d bytes, %.0f B/VM)", vms, ss.SnapshotBytes, snapPerVM), ms1(ss.SnapshotSave), ms1(ss.SnapshotSaveCPU)},
			{fmt.Sprintf("snapshot restore, %d VMs", vms), ms1(ss.SnapshotRestore), ms1(ss.SnapshotRestoreCPU)},
			{"heap per VM in the state", fmt.Sprintf("%.0f B", ss.HeapPerVM), ""},
			{fmt.Sprintf("%d VM actors on one node: spawn → all running", actorsN), ms1(as.SpawnToRunning), ""},
			{"RSS per VM actor (process RSS delta)", fmt.Sprintf("%.1f KiB", as.RSSPerVM/1024), ""},
			{"Go heap + stacks per VM actor", fmt.Sprintf("%.1f KiB", as.HeapPerVM/1024), ""},
		},
	}
	scaleTo := time.Duration(100000 / vms)
	restoreTarget := "snapshot restore of 100,000 VMs ≤ 1 s (CPU time)"
	restoreMeasured := fmt.Sprintf("CPU %s, wall %s", ms1(ss.SnapshotRestoreCPU), ms1(ss.SnapshotRestore))
	if vms != 100000 {
		restoreTarget = fmt.Sprintf("snapshot restore ≤ 1 s per 100,000 VMs (CPU time, scaled from %d)", vms)
		restoreMeasured += fmt.Sprintf(" for %d; CPU %s per 100,000", vms, ms1(ss.SnapshotRestoreCPU*scaleTo))
	}
	t.Targets = []Target{
		{What: "placement ≤ 100 µs per create at 1,000 nodes (CPU time)", Measured: fmt.Sprintf("CPU %.1f µs, wall %.1f µs", us(ss.PlacementCPUPerVM), us(ss.PlacementPerVM)), Met: ss.PlacementCPUPerVM <= 100*time.Microsecond},
		{What: restoreTarget, Measured: restoreMeasured, Met: ss.SnapshotRestoreCPU*scaleTo <= time.Second},
		{What: "≤ 2 KiB state per VM (heap; snapshot bytes shown too)", Measured: fmt.Sprintf("heap %.0f B, snapshot %.0f B", ss.HeapPerVM, snapPerVM), Met: ss.HeapPerVM <= 2048 && snapPerVM <= 2048},
		{What: "≤ 20 KiB RSS per idle VM actor", Measured: fmt.Sprintf("%.1f KiB", as.RSSPerVM/1024), Met: as.RSSPerVM <= 20*1024},
	}
	t.Notes = append(t.Notes, "Time targets are judged on the CPU time the harness process spent (all threads, GC included), "+
		"because wall-clock on a shared machine stretches with its load average (see the machine line); both are shown.")
	t.Notes = append(t.Notes, "In the harness process: the state machine driven by CreateVm commands (realistic specs: kernel, initrd, "+
		"params, one volume, two labels) on nodes with unbounded room; the VM actors under one VM supervisor with the fake "+
		"driver and an in-memory replica, memory measured after a GC once all report running.")
	return []Table{t}, nil
}

func us(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }
