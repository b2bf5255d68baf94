package consensus

import (
	"bytes"
	"fmt"
	"runtime"
	"sync"
	"testing"

	"github.com/blixard/blixard/proto/blixardpb"
)

// realisticSpec is what a typical VM carries: a kernel and initrd, a
// couple of kernel params, one volume, two labels.
func realisticSpec(name string) *blixardpb.VmSpec {
	return &blixardpb.VmSpec{
		Name: name, Tenant: "acme", Vcpus: 1, MemoryMb: 256,
		Kernel: "/var/lib/blixard/images/vmlinuz", Initrd: "/var/lib/blixard/images/initrd.img",
		KernelParams: []string{"console=ttyS0", "reboot=t"},
		Volumes:      []*blixardpb.Volume{{Name: "data", SizeMb: 1024, MountPoint: "/data"}},
		Labels:       map[string]string{"app": "web", "env": "prod"},
	}
}

// bigCluster builds nodes nodes big enough for vms VMs and creates them,
// in a /12 subnet.
func bigCluster(nodes, vms int) (*State, error) {
	s := NewState()
	idx := uint64(0)
	var err error
	apply := func(c *blixardpb.Command) {
		idx++
		c.TimeUnixMs = int64(idx)
		if r, _ := s.Apply(idx, c); r.GetError().GetCode() != blixardpb.Code_OK && err == nil {
			err = fmt.Errorf("%v: %v", c, r.GetError())
		}
	}
	apply(cmdInit(&blixardpb.ClusterConfig{Subnet: "10.0.0.0/12"}))
	for i := 1; i <= nodes; i++ {
		apply(&blixardpb.Command{Op: &blixardpb.Command_UpsertNode{UpsertNode: &blixardpb.UpsertNode{Node: &blixardpb.NodeRecord{
			Id: uint64(i), Vcpus: MaxNodeVcpus, MemoryMb: 1 << 30,
			ApiAddr: fmt.Sprintf("10.1.0.%d:7001", i%250), RaftAddr: fmt.Sprintf("10.1.0.%d:7002", i%250),
		}}}})
	}
	for i := 0; i < vms; i++ {
		apply(cmdCreate(realisticSpec(fmt.Sprintf("vm-%06d", i))))
	}
	return s, err
}

func mustCluster(tb testing.TB, nodes, vms int) *State {
	s, err := bigCluster(nodes, vms)
	if err != nil {
		tb.Fatal(err)
	}
	return s
}

// snap100k is the snapshot of 1,000 nodes and 100,000 VMs, built once.
var snap100k = sync.OnceValues(func() ([]byte, error) {
	s, err := bigCluster(1000, 100000)
	if err != nil {
		return nil, err
	}
	var buf bytes.Buffer
	err = s.Save(&buf)
	return buf.Bytes(), err
})

func load100k(b *testing.B) *State {
	data, err := snap100k()
	if err != nil {
		b.Fatal(err)
	}
	s := NewState()
	if err := s.Restore(bytes.NewReader(data)); err != nil {
		b.Fatal(err)
	}
	return s
}

func createCommands(n int, prefix string) []*blixardpb.Command {
	cmds := make([]*blixardpb.Command, n)
	for i := range cmds {
		cmds[i] = cmdCreate(realisticSpec(fmt.Sprintf("%s-%07d", prefix, i)))
	}
	return cmds
}

// BenchmarkApplyCreate: one CreateVm on a small cluster (10 nodes).
func BenchmarkApplyCreate(b *testing.B) {
	s := mustCluster(b, 10, 0)
	cmds := createCommands(b.N, "b")
	idx := s.AppliedIndex()
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		idx++
		if r, _ := s.Apply(idx, cmds[i]); r.Error.Code != blixardpb.Code_OK {
			b.Fatal(r.Error)
		}
	}
}

// BenchmarkPlacement: one CreateVm with 1,000 nodes and 100,000 VMs.
func BenchmarkPlacement(b *testing.B) {
	s := load100k(b)
	cmds := createCommands(b.N, "p")
	idx := s.AppliedIndex()
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		idx++
		if r, _ := s.Apply(idx, cmds[i]); r.Error.Code != blixardpb.Code_OK {
			b.Fatal(r.Error)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Microseconds())/float64(b.N), "µs/create")
}

// BenchmarkPick isolates the placement scan over 1,000 nodes.
func BenchmarkPick(b *testing.B) {
	s := load100k(b)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if s.pick(2, 1024, 0) == nil {
			b.Fatal("no node")
		}
	}
}

func BenchmarkSnapshotSave(b *testing.B) {
	s := load100k(b)
	var buf bytes.Buffer
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		buf.Reset()
		if err := s.Save(&buf); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(buf.Len())/float64(s.NumVMs()), "bytes/VM")
}

func BenchmarkSnapshotRestore(b *testing.B) {
	data, err := snap100k()
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		s := NewState()
		if err := s.Restore(bytes.NewReader(data)); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(len(data))/100000, "bytes/VM")
}

// BenchmarkHeapPerVM reports the live heap that 100,000 VMs (built by
// applying CreateVm commands on 1,000 nodes) take, per VM.
func BenchmarkHeapPerVM(b *testing.B) {
	for i := 0; i < b.N; i++ {
		perVM := heapPerVM(b, 1000, 100000)
		b.ReportMetric(perVM, "heap-bytes/VM")
	}
}

func heapPerVM(tb testing.TB, nodes, n int) float64 {
	var before, after runtime.MemStats
	s := mustCluster(tb, nodes, 0)
	runtime.GC()
	runtime.ReadMemStats(&before)
	idx := s.AppliedIndex()
	for i := 0; i < n; i++ {
		idx++
		// Built on the fly: the commands are garbage once applied.
		c := cmdCreate(realisticSpec(fmt.Sprintf("h-%07d", i)))
		if r, _ := s.Apply(idx, c); r.Error.Code != blixardpb.Code_OK {
			tb.Fatal(r.Error)
		}
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	runtime.KeepAlive(s)
	return float64(int64(after.HeapAlloc)-int64(before.HeapAlloc)) / float64(n)
}

// TestHeapPerVM keeps the 2 KiB per VM budget honest (at 20,000 VMs on
// 100 nodes, to stay quick).
func TestHeapPerVM(t *testing.T) {
	if testing.Short() {
		t.Skip("allocates a large state")
	}
	if perVM := heapPerVM(t, 100, 20000); perVM > 2048 {
		t.Fatalf("%.0f heap bytes per VM, budget 2048", perVM)
	} else {
		t.Logf("%.0f heap bytes per VM", perVM)
	}
}

// BenchmarkNodeUpdateWithWaiting: a node update (which retries placing
// waiting VMs) while 10,000 VMs wait for room on a full 1,000-node cluster.
func BenchmarkNodeUpdateWithWaiting(b *testing.B) {
	s := NewState()
	idx := uint64(0)
	apply := func(c *blixardpb.Command) {
		idx++
		if r, _ := s.Apply(idx, c); r.Error.Code != blixardpb.Code_OK {
			b.Fatal(r.Error)
		}
	}
	apply(cmdInit(&blixardpb.ClusterConfig{Subnet: "10.0.0.0/16"}))
	for i := 1; i <= 1000; i++ {
		apply(cmdNode(uint64(i), 1, 1024))
		apply(cmdCreateVM(fmt.Sprintf("fill-%d", i), 1, 1024))
	}
	apply(cmdNode(1001, MaxNodeVcpus, 1<<30))
	for i := 0; i < 10000; i++ {
		apply(cmdCreateVM(fmt.Sprintf("w-%d", i), 1, 256))
	}
	apply(cmdStatus(1001, down))
	if len(s.waiting) != 10000 {
		b.Fatalf("%d waiting", len(s.waiting))
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		apply(cmdNode(1, 1, 1024))
	}
}
