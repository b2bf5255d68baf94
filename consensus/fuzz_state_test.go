package consensus

import (
	"bytes"
	"fmt"
	"math/rand"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/blixard/blixard/proto/blixardpb"
)

// fuzzBase is a small cluster for fuzzed commands to act on: three nodes
// (one down), a running, a stopped, a pinned, a lost and a waiting VM.
var fuzzBase = sync.OnceValue(func() []byte {
	s := NewState()
	cmds := []*blixardpb.Command{
		cmdInit(&blixardpb.ClusterConfig{Subnet: "10.0.0.0/28"}),
		cmdNode(1, 8, 8192), cmdNode(2, 4, 4096), cmdNode(3, 2, 2048),
		withRID(cmdCreateVM("web", 2, 1024), "r1"),
		cmdCreateVM("db", 2, 2048), cmdStop("db"),
		mutSpec(func(s *blixardpb.VmSpec) { s.NodeId = 2 }),
		cmdCreate(&blixardpb.VmSpec{Name: "batch", Vcpus: 1, MemoryMb: 512, Restart: &blixardpb.RestartPolicy{Mode: "never"}, NodeId: 3}),
		cmdCreateVM("big", 2, 2048),
		cmdStatus(3, down),
	}
	for i, c := range cmds {
		if r, _ := s.Apply(uint64(i+1), c); r.GetError().GetCode() != blixardpb.Code_OK {
			panic(fmt.Sprintf("fuzz base command %d: %v", i, r))
		}
	}
	var buf bytes.Buffer
	if err := s.Save(&buf); err != nil {
		panic(err)
	}
	return buf.Bytes()
})

// fuzzSeeds are the seed commands, written to testdata/fuzz/FuzzApply by
// TestFuzzCorpus -update and added with f.Add.
func fuzzSeeds() []*blixardpb.Command {
	return []*blixardpb.Command{
		cmdCreateVM("new", 1, 256),
		withRID(cmdCreateVM("web", 2, 1024), "r1"),
		mutSpec(func(s *blixardpb.VmSpec) {
			s.Kernel, s.Initrd, s.KernelParams = "/k", "/i", []string{"console=ttyS0"}
			s.Volumes = []*blixardpb.Volume{{Name: "data", SizeMb: 10, MountPoint: "/srv"}}
			s.Labels = map[string]string{"a": "b"}
			s.Restart = &blixardpb.RestartPolicy{Mode: "on-failure", MaxRestarts: 3, WindowSeconds: 60}
		}),
		{Op: &blixardpb.Command_CreateVm{CreateVm: &blixardpb.CreateVm{Spec: spec("cold", 1, 256), NoStart: true}}},
		cmdStart("db"), cmdStop("web"), cmdDelete("web"), cmdMigrate("web", 0), cmdMigrate("web", 2),
		cmdReport(&blixardpb.ReportVmStatus{Name: "web", NodeId: 1, Generation: 1, Status: blixardpb.VmStatus_VM_STATUS_FAILED, Restarts: 4, Message: "x"}),
		cmdStatus(1, down), cmdStatus(3, alive), cmdStatus(2, left), cmdStatus(2, draining),
		cmdSchedulable(1, false), cmdRemove(1), cmdRemove(3),
		cmdNode(4, 64, 65536),
		cmdInit(&blixardpb.ClusterConfig{Placement: "binpack"}),
		{Op: &blixardpb.Command_UpsertNode{UpsertNode: &blixardpb.UpsertNode{Node: &blixardpb.NodeRecord{Id: 2, Vcpus: 1, MemoryMb: 64, Status: blixardpb.NodeStatus_NODE_STATUS_DOWN}}}},
	}
}

// FuzzApply decodes bytes as a Command, applies it twice (a retry) to a
// small cluster, and checks that apply does not panic, keeps its indexes
// consistent, and that the result survives a snapshot round trip.
func FuzzApply(f *testing.F) {
	for _, c := range fuzzSeeds() {
		data, err := proto.Marshal(c)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
	f.Add([]byte{})
	f.Add([]byte{0xff})
	base := fuzzBase()
	f.Fuzz(func(t *testing.T, data []byte) {
		checkFastDecoders(t, data)
		s := NewState()
		if err := s.Restore(bytes.NewReader(base)); err != nil {
			t.Fatal(err)
		}
		before := saveNoIndex(t, s)
		res, _ := s.ApplyBytes(100, data)
		if res.GetError().GetCode() != blixardpb.Code_OK && !bytes.Equal(before, saveNoIndex(t, s)) {
			t.Fatalf("failed command (%v) changed the state", res.GetError())
		}
		if _, err := proto.Marshal(res); err != nil {
			t.Fatalf("result does not marshal: %v", err)
		}
		s.ApplyBytes(101, data)
		checkInvariants(t, s)
		checkRoundTrip(t, s)
	})
}

// TestFuzzCorpus checks that the committed seed corpus matches fuzzSeeds;
// -update rewrites it.
func TestFuzzCorpus(t *testing.T) {
	dir := filepath.Join("testdata", "fuzz", "FuzzApply")
	for i, c := range fuzzSeeds() {
		data, err := proto.Marshal(c)
		if err != nil {
			t.Fatal(err)
		}
		want := "go test fuzz v1\n[]byte(" + strconv.Quote(string(data)) + ")\n"
		file := filepath.Join(dir, fmt.Sprintf("seed-%02d", i))
		if *update {
			if err := os.MkdirAll(dir, 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(file, []byte(want), 0o644); err != nil {
				t.Fatal(err)
			}
			continue
		}
		got, err := os.ReadFile(file)
		if err != nil || string(got) != want {
			t.Errorf("%s is stale or missing (run go test -run TestFuzzCorpus -update): %v", file, err)
		}
	}
}

// checkFastDecoders: whenever a hand-written decoder accepts data,
// proto.Unmarshal accepts it too and yields the same message.
func checkFastDecoders(t *testing.T, data []byte) {
	t.Helper()
	if got, ok := decodeVMCommand(data); ok {
		var want blixardpb.Command
		if err := proto.Unmarshal(data, &want); err != nil {
			t.Fatalf("fast command decoder accepted %x, proto.Unmarshal: %v", data, err)
		}
		if !proto.Equal(got, &want) {
			t.Fatalf("decoding command %x:\n got %v\nwant %v", data, got, &want)
		}
	}
	if got, ok := decodeVMResult(data); ok {
		var want blixardpb.Result
		if err := proto.Unmarshal(data, &want); err != nil {
			t.Fatalf("fast result decoder accepted %x, proto.Unmarshal: %v", data, err)
		}
		if !proto.Equal(got, &want) {
			t.Fatalf("decoding result %x:\n got %v\nwant %v", data, got, &want)
		}
	}
}

// TestCommandDecoder: the hand-written decoder takes the fast path for the
// VM commands and agrees with proto.Unmarshal on them, on every other
// command and on mangled copies.
func TestCommandDecoder(t *testing.T) {
	r := rand.New(rand.NewSource(3))
	s := NewState()
	cmds := fuzzSeeds()
	for i := 0; i < 500; i++ {
		cmds = append(cmds, randomCommand(r, s))
	}
	full := realisticSpec("full")
	full.Flake, full.Kernel, full.Initrd = "github:acme/vms#web", "", ""
	full.Volumes = append(full.Volumes, &blixardpb.Volume{Name: "ro", Image: "/i", ReadOnly: true})
	full.Restart = &blixardpb.RestartPolicy{Mode: "never", MaxRestarts: 3, WindowSeconds: 60}
	full.NodeId = 2
	cmds = append(cmds, withRID(cmdCreate(full), "req-ü"), cmdCreate(realisticSpec("x")),
		&blixardpb.Command{TimeUnixMs: -5, Op: &blixardpb.Command_CreateVm{CreateVm: &blixardpb.CreateVm{NoStart: true}}})
	fast := 0
	for _, c := range cmds {
		data, err := proto.Marshal(c)
		if err != nil {
			t.Fatal(err)
		}
		switch c.GetOp().(type) {
		case *blixardpb.Command_CreateVm, *blixardpb.Command_StartVm, *blixardpb.Command_StopVm, *blixardpb.Command_DeleteVm:
			got, ok := decodeVMCommand(data)
			if !ok || !proto.Equal(got, c) {
				t.Fatalf("fast path (%v) decoded %v as %v", ok, c, got)
			}
			fast++
		}
		checkFastDecoders(t, data)
		for k := 0; k < 10 && len(data) > 0; k++ {
			in := bytes.Clone(data)
			if k%3 == 0 {
				in = in[:r.Intn(len(in))]
			} else {
				in[r.Intn(len(in))] = byte(r.Intn(256))
			}
			checkFastDecoders(t, in)
		}
	}
	if fast < 100 {
		t.Fatalf("only %d commands took the fast path", fast)
	}
}
