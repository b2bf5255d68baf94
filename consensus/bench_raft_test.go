package consensus

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/lni/dragonboat/v4"
	sm "github.com/lni/dragonboat/v4/statemachine"
	"google.golang.org/protobuf/proto"

	"github.com/blixard/blixard/proto/blixardpb"
)

// The Raft benchmarks measure committed-and-applied commands per second
// on an in-process 3-replica cluster, for blixard (Replica + State) next
// to raw dragonboat running a trivial counter state machine with the
// same NodeHost and shard configuration and the same payloads. Commands
// are ~200-byte CreateVm/DeleteVm pairs; each proposer creates a VM and
// deletes it again. Reported: ops/s, p50-ms, p99-ms.
//
//	go test ./consensus/ -run '^$' -bench 'Raft' -benchtime 3000x
//
// BENCH_SNAPSHOT_ENTRIES overrides SnapshotEntries of the blixard cluster
// (the raw baseline's snapshots are free either way). cpu-µs/op is the
// CPU time of the whole process per command: on a shared machine it is
// steadier than ops/s.
//
// Targets: blixard ≥ 0.8× raw at every concurrency; p99 < 10 ms at 64.

var benchConcurrency = []int{1, 64, 256}

// benchCommand returns the CreateVm (odd i) or DeleteVm (even i) command
// of proposer p's i-th operation. The CreateVm encodes to about 200 bytes.
func benchCommand(p, i int) *blixardpb.Command {
	name := fmt.Sprintf("bench-%03d-%06d", p, i/2)
	if i%2 == 1 {
		return deleteBenchVM(name, i)
	}
	return &blixardpb.Command{
		RequestId: fmt.Sprintf("req-%03d-%07d", p, i),
		Op: &blixardpb.Command_CreateVm{CreateVm: &blixardpb.CreateVm{Spec: &blixardpb.VmSpec{
			Name:         name,
			Tenant:       "bench",
			Vcpus:        1,
			MemoryMb:     64,
			Kernel:       "/var/lib/blixard/kernels/vmlinuz-6.1",
			Initrd:       "/var/lib/blixard/kernels/initrd-6.1.img",
			KernelParams: []string{"console=ttyS0", "quiet"},
			Labels:       map[string]string{"app": "bench", "tier": "web", "owner": "benchmark"},
		}}},
	}
}

func deleteBenchVM(name string, i int) *blixardpb.Command {
	return &blixardpb.Command{
		RequestId: fmt.Sprintf("req-%s-%07d", name, i),
		Op:        &blixardpb.Command_DeleteVm{DeleteVm: &blixardpb.DeleteVm{Name: name}},
	}
}

// benchRound runs b.N operations spread over conc proposers, each calling
// op(proposer, i) for its share, and reports throughput and latency.
// op reports a failed (not merely typed-error) command as an error.
func benchRound(b *testing.B, conc int, op func(p, i int) error) {
	b.Helper()
	perProposer := make([][]time.Duration, conc)
	var failed atomic.Int64
	var firstErr atomic.Value
	b.ResetTimer()
	cpu0 := processCPU()
	start := time.Now()
	var wg sync.WaitGroup
	for p := 0; p < conc; p++ {
		n := b.N / conc
		if p < b.N%conc {
			n++
		}
		wg.Go(func() {
			lat := make([]time.Duration, 0, n)
			for i := 0; i < n; i++ {
				t0 := time.Now()
				if err := op(p, i); err != nil {
					failed.Add(1)
					firstErr.CompareAndSwap(nil, err)
					continue
				}
				lat = append(lat, time.Since(t0))
			}
			perProposer[p] = lat
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	cpu := processCPU() - cpu0
	b.StopTimer()
	if n := failed.Load(); n > 0 {
		b.Fatalf("%d of %d commands failed, first: %v", n, b.N, firstErr.Load())
	}
	all := slices.Concat(perProposer...)
	slices.Sort(all)
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "ops/s")
	b.ReportMetric(ms(percentile(all, 0.50)), "p50-ms")
	b.ReportMetric(ms(percentile(all, 0.99)), "p99-ms")
	// CPU time of the whole process (3 replicas) per command: what the
	// shared 2-core machine's load does not distort.
	b.ReportMetric(float64(cpu.Microseconds())/float64(b.N), "cpu-µs/op")
	b.ReportMetric(0, "ns/op") // ns/op of a concurrent run says nothing
}

// processCPU is the user+system CPU time this process used so far.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func percentile(sorted []time.Duration, q float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	return sorted[min(len(sorted)-1, int(q*float64(len(sorted))))]
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// BenchmarkRaftBlixard proposes through Replica.Propose: marshal,
// SyncPropose, State.ApplyBytes on every replica, result decoding.
func BenchmarkRaftBlixard(b *testing.B) {
	c := newTestCluster(b, 3, func(cfg *ReplicaConfig) {
		// Agents consume effects; the test cluster's recorder would
		// hoard every VM record and inflate the heap the GC scans.
		cfg.OnEffects = func([]Effect) {}
		if v := os.Getenv("BENCH_SNAPSHOT_ENTRIES"); v != "" {
			if _, err := fmt.Sscan(v, &cfg.SnapshotEntries); err != nil {
				b.Fatalf("BENCH_SNAPSHOT_ENTRIES=%q: %v", v, err)
			}
		}
	})
	leader := c.leader()
	init := &blixardpb.Command{RequestId: "init", Op: &blixardpb.Command_InitCluster{InitCluster: &blixardpb.InitCluster{
		Config: &blixardpb.ClusterConfig{ClusterId: "bench", Subnet: "10.0.0.0/16"},
	}}}
	mustPropose(b, leader, init)
	for id := uint64(1); id <= 3; id++ {
		mustPropose(b, leader, upsertNodeCmd(id))
	}
	var round atomic.Int64
	for _, via := range []string{"leader", "follower"} {
		for _, conc := range benchConcurrency {
			b.Run(fmt.Sprintf("via=%s/proposers=%d", via, conc), func(b *testing.B) {
				r := c.leader()
				if via == "follower" {
					r = c.follower()
				}
				rd := int(round.Add(1))
				benchRound(b, conc, func(p, i int) error {
					ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
					defer cancel()
					res, err := r.Propose(ctx, benchCommand(rd*1000+p, i))
					if err != nil {
						return err
					}
					if res.GetError().GetCode() != blixardpb.Code_OK {
						return fmt.Errorf("command %d of proposer %d: %v", i, p, res.GetError())
					}
					return nil
				})
			})
		}
	}
}

// counterSM is the trivial state machine of the raw baseline: it counts
// applied entries.
type counterSM struct{ n uint64 }

func (s *counterSM) Update(e sm.Entry) (sm.Result, error) {
	s.n++
	return sm.Result{Value: s.n}, nil
}
func (s *counterSM) Lookup(any) (any, error) { return s.n, nil }
func (s *counterSM) SaveSnapshot(w io.Writer, _ sm.ISnapshotFileCollection, _ <-chan struct{}) error {
	_, err := fmt.Fprintf(w, "%d", s.n)
	return err
}
func (s *counterSM) RecoverFromSnapshot(r io.Reader, _ []sm.SnapshotFile, _ <-chan struct{}) error {
	_, err := fmt.Fscanf(r, "%d", &s.n)
	return err
}
func (s *counterSM) Close() error { return nil }

// BenchmarkRaftRawDragonboat is the baseline: the same NodeHost and shard
// configuration as Replica, the counter state machine, and the same
// payload bytes proposed with SyncPropose directly.
func BenchmarkRaftRawDragonboat(b *testing.B) {
	members := map[uint64]dragonboat.Target{}
	cfgs := map[uint64]ReplicaConfig{}
	for id := uint64(1); id <= 3; id++ {
		cfg := ReplicaConfig{ReplicaID: id, DataDir: filepath.Join(b.TempDir()), RaftAddr: freeAddr(b), Logger: testLogger}
		if err := cfg.setDefaults(); err != nil {
			b.Fatal(err)
		}
		installRaftLogger(cfg.Logger)
		cfgs[id] = cfg
		members[id] = cfg.RaftAddr
	}
	hosts := map[uint64]*dragonboat.NodeHost{}
	b.Cleanup(func() {
		for _, nh := range hosts {
			nh.Close()
		}
	})
	for id, cfg := range cfgs {
		nh, err := dragonboat.NewNodeHost(cfg.nodeHostConfig(&raftEvents{log: testLogger}))
		if err != nil {
			b.Fatal(err)
		}
		hosts[id] = nh
		if err := nh.StartReplica(members, false, func(uint64, uint64) sm.IStateMachine { return &counterSM{} }, cfg.shardConfig()); err != nil {
			b.Fatal(err)
		}
	}
	var leader uint64
	waitFor(b, 20*time.Second, "a leader known to every host", func() bool {
		leader = 0
		for _, nh := range hosts {
			id, _, ok, err := nh.GetLeaderID(DefaultShardID)
			if err != nil || !ok || (leader != 0 && id != leader) {
				return false
			}
			leader = id
		}
		return true
	})
	follower := leader%3 + 1
	var round atomic.Int64
	for _, via := range []string{"leader", "follower"} {
		for _, conc := range benchConcurrency {
			b.Run(fmt.Sprintf("via=%s/proposers=%d", via, conc), func(b *testing.B) {
				nh := hosts[leader]
				if via == "follower" {
					nh = hosts[follower]
				}
				session := nh.GetNoOPSession(DefaultShardID)
				rd := int(round.Add(1))
				benchRound(b, conc, func(p, i int) error {
					// Marshal here too so that both sides pay for encoding.
					data, err := proto.Marshal(benchCommand(rd*1000+p, i))
					if err != nil {
						return err
					}
					ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
					defer cancel()
					_, err = nh.SyncPropose(ctx, session, data)
					return err
				})
			})
		}
	}
}

// BenchmarkRaftSMUpdate is the state machine side alone: one replica's
// cost per committed command (decode, apply, effects, and result encoding
// on the proposing replica only), without Raft. Three replicas in one
// process pay it three times.
func BenchmarkRaftSMUpdate(b *testing.B) {
	for _, as := range []struct {
		name     string
		proposer uint64
	}{{"proposer", 1}, {"follower", 2}} {
		for _, per := range []int{1, 64} {
			name := "replica=" + as.name
			if per > 1 {
				name += fmt.Sprintf("/batch=%d", per)
			}
			b.Run(name, func(b *testing.B) { benchRaftSMUpdate(b, as.proposer, per) })
		}
	}
}

// benchRaftSMUpdate applies b.N commands, per to an entry (a Batch when
// per > 1), to replica 1 with proposer as the entries' proposer.
func benchRaftSMUpdate(b *testing.B, proposer uint64, per int) {
	m := &raftSM{replicaID: 1, state: NewState(), onEffects: func([]Effect) {}}
	idx := uint64(0)
	entry := func(cmd *blixardpb.Command) []byte {
		data, err := proto.MarshalOptions{}.MarshalAppend(encodeEntry(proposer), cmd)
		if err != nil {
			b.Fatal(err)
		}
		return appendTime(data, 1)
	}
	apply := func(data []byte) {
		idx++
		res, err := m.Update(sm.Entry{Index: idx, Cmd: data})
		if err != nil {
			b.Fatal(err)
		}
		if res.Value != uint64(blixardpb.Code_OK) {
			b.Fatalf("entry %d failed with code %d", idx, res.Value)
		}
	}
	apply(entry(&blixardpb.Command{Op: &blixardpb.Command_InitCluster{InitCluster: &blixardpb.InitCluster{
		Config: &blixardpb.ClusterConfig{Subnet: "10.0.0.0/16"}}}}))
	for id := uint64(1); id <= 3; id++ {
		apply(entry(upsertNodeCmd(id)))
	}
	// 256 proposers' create/delete pairs, as in the Raft benchmarks; in
	// batches, the creates of per proposers in one entry and their deletes
	// in the next.
	var entries [][]byte
	if per == 1 {
		for i := 0; i < b.N; i++ {
			entries = append(entries, entry(benchCommand(i/2%256, i/512*2+i%2)))
		}
	} else {
		for n := 0; n < b.N; n += per {
			k := n / per
			cmds := make([]*blixardpb.Command, per)
			for j := range cmds {
				g := k/2*per + j // the create/delete pair's number
				cmds[j] = benchCommand(g%256, g/256*2+k%2)
			}
			entries = append(entries, entry(&blixardpb.Command{Op: &blixardpb.Command_Batch{Batch: &blixardpb.Batch{Commands: cmds}}}))
		}
	}
	b.ReportAllocs()
	b.ResetTimer()
	cpu0 := processCPU()
	for _, e := range entries {
		apply(e)
	}
	b.ReportMetric(float64((processCPU()-cpu0).Nanoseconds())/float64(b.N), "cpu-ns/op")
	b.StopTimer()
	// Every pair created and deleted its VM: a failed command would leave
	// one behind or delete nothing (the entries always end on a delete
	// when b.N is a multiple of 2*per).
	if b.N%(2*per) == 0 && len(m.state.vms) != 0 {
		b.Fatalf("%d VMs left: some commands failed", len(m.state.vms))
	}
}
