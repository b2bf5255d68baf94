package actors

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/asynkron/protoactor-go/actor"

	"github.com/blixard/blixard/consensus"
	"github.com/blixard/blixard/consensus/consensustest"
	"github.com/blixard/blixard/microvm/fake"
	"github.com/blixard/blixard/proto/blixardpb"
)

// runningCounter wraps a replica and closes done once every VM has had a
// RUNNING report accepted.
type runningCounter struct {
	Replica
	want int
	mu   sync.Mutex
	seen map[string]bool
	done chan struct{}
}

func (r *runningCounter) Propose(ctx context.Context, cmd *blixardpb.Command) (*blixardpb.Result, error) {
	res, err := r.Replica.Propose(ctx, cmd)
	if rep := cmd.GetReportVmStatus(); rep != nil && err == nil && res.GetError().GetCode() == blixardpb.Code_OK && rep.GetStatus() == running {
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

// BenchmarkTenThousandVMs places 10,000 VMs on one node (fake driver, in
// memory) and measures the time from spawning the supervisor until every
// VM's RUNNING status is committed, and the memory each VM costs the
// agent (heap and goroutine stacks, after GC, including the fake
// driver's own record of the VM).
//
//	go test ./actors/ -run '^$' -bench TenThousand -benchtime 1x
func BenchmarkTenThousandVMs(b *testing.B) {
	const n = 10000
	for i := 0; i < b.N; i++ {
		local := consensustest.NewLocal()
		ctx := context.Background()
		mustOK := func(cmd *blixardpb.Command) {
			res, err := local.Propose(ctx, cmd)
			if err != nil || res.GetError().GetCode() != blixardpb.Code_OK {
				b.Fatalf("%v: %v %v", cmd, err, res.GetError())
			}
		}
		mustOK(&blixardpb.Command{Op: &blixardpb.Command_InitCluster{InitCluster: &blixardpb.InitCluster{Config: &blixardpb.ClusterConfig{Subnet: "10.0.0.0/16"}}}})
		mustOK(&blixardpb.Command{Op: &blixardpb.Command_UpsertNode{UpsertNode: &blixardpb.UpsertNode{Node: &blixardpb.NodeRecord{
			Id: 1, Vcpus: 1 << 14, MemoryMb: 1 << 30, Status: blixardpb.NodeStatus_NODE_STATUS_ALIVE, Schedulable: true,
		}}}})
		for j := 0; j < n; j++ {
			mustOK(&blixardpb.Command{Op: &blixardpb.Command_CreateVm{CreateVm: &blixardpb.CreateVm{Spec: &blixardpb.VmSpec{
				Name: fmt.Sprintf("vm%05d", j), Vcpus: 1, MemoryMb: 64, NodeId: 1,
			}}}})
		}
		drv, err := fake.New("")
		if err != nil {
			b.Fatal(err)
		}
		rc := &runningCounter{Replica: local, want: n, seen: make(map[string]bool, n), done: make(chan struct{})}
		sys := actor.NewActorSystem(actor.WithLoggerFactory(func(*actor.ActorSystem) *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }))
		quiet := slog.New(slog.NewTextHandler(io.Discard, nil))

		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		start := time.Now()
		pid := sys.Root.Spawn(NewVMSupervisor(VMSupervisorConfig{NodeID: 1, Driver: drv, Replica: rc, Logger: quiet}))
		select {
		case <-rc.done:
		case <-time.After(2 * time.Minute):
			b.Fatalf("only %d of %d VMs running after 2 min", len(rc.seen), n)
		}
		elapsed := time.Since(start)
		runtime.GC()
		runtime.ReadMemStats(&after)
		var nRunning int
		local.Read(ctx, true, func(s *consensus.State) {
			for _, v := range s.VMs() {
				if v.GetStatus() == running {
					nRunning++
				}
			}
		})
		if nRunning != n {
			b.Fatalf("%d VMs recorded running, want %d", nRunning, n)
		}
		if err := sys.Root.StopFuture(pid).Wait(); err != nil {
			b.Fatal(err)
		}
		sys.Shutdown()

		heap := float64(after.HeapAlloc) - float64(before.HeapAlloc)
		stacks := float64(after.StackInuse) - float64(before.StackInuse)
		b.ReportMetric(elapsed.Seconds(), "s-to-all-running")
		b.ReportMetric((heap+stacks)/n, "B/vm")
		b.ReportMetric(heap/n, "heap-B/vm")
		b.ReportMetric(stacks/n, "stack-B/vm")
		b.ReportMetric((float64(after.Sys)-float64(before.Sys))/n, "sys-B/vm")
	}
}
