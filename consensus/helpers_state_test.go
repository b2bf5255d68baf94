package consensus

import (
	"bytes"
	"strings"
	"testing"

	"github.com/blixard/blixard/proto/blixardpb"
)

// Command builders for the state machine tests.

func cmdNode(id uint64, vcpus uint32, memMB uint64) *blixardpb.Command {
	return &blixardpb.Command{Op: &blixardpb.Command_UpsertNode{UpsertNode: &blixardpb.UpsertNode{
		Node: &blixardpb.NodeRecord{Id: id, Vcpus: vcpus, MemoryMb: memMB},
	}}}
}

func cmdCreate(spec *blixardpb.VmSpec) *blixardpb.Command {
	return &blixardpb.Command{Op: &blixardpb.Command_CreateVm{CreateVm: &blixardpb.CreateVm{Spec: spec}}}
}

func spec(name string, vcpus uint32, memMB uint64) *blixardpb.VmSpec {
	return &blixardpb.VmSpec{Name: name, Vcpus: vcpus, MemoryMb: memMB}
}

func cmdCreateVM(name string, vcpus uint32, memMB uint64) *blixardpb.Command {
	return cmdCreate(spec(name, vcpus, memMB))
}

func cmdStart(name string) *blixardpb.Command {
	return &blixardpb.Command{Op: &blixardpb.Command_StartVm{StartVm: &blixardpb.StartVm{Name: name}}}
}

func cmdStop(name string) *blixardpb.Command {
	return &blixardpb.Command{Op: &blixardpb.Command_StopVm{StopVm: &blixardpb.StopVm{Name: name}}}
}

func cmdDelete(name string) *blixardpb.Command {
	return &blixardpb.Command{Op: &blixardpb.Command_DeleteVm{DeleteVm: &blixardpb.DeleteVm{Name: name}}}
}

func cmdMigrate(name string, to uint64) *blixardpb.Command {
	return &blixardpb.Command{Op: &blixardpb.Command_MigrateVm{MigrateVm: &blixardpb.MigrateVm{Name: name, TargetNodeId: to}}}
}

func cmdStatus(id uint64, st blixardpb.NodeStatus) *blixardpb.Command {
	return &blixardpb.Command{Op: &blixardpb.Command_SetNodeStatus{SetNodeStatus: &blixardpb.SetNodeStatus{NodeId: id, Status: st}}}
}

func cmdSchedulable(id uint64, on bool) *blixardpb.Command {
	return &blixardpb.Command{Op: &blixardpb.Command_SetNodeSchedulable{SetNodeSchedulable: &blixardpb.SetNodeSchedulable{NodeId: id, Schedulable: on}}}
}

func cmdRemove(id uint64) *blixardpb.Command {
	return &blixardpb.Command{Op: &blixardpb.Command_RemoveNode{RemoveNode: &blixardpb.RemoveNode{NodeId: id}}}
}

func cmdInit(cfg *blixardpb.ClusterConfig) *blixardpb.Command {
	return &blixardpb.Command{Op: &blixardpb.Command_InitCluster{InitCluster: &blixardpb.InitCluster{Config: cfg}}}
}

func cmdReport(r *blixardpb.ReportVmStatus) *blixardpb.Command {
	return &blixardpb.Command{Op: &blixardpb.Command_ReportVmStatus{ReportVmStatus: r}}
}

func withRID(c *blixardpb.Command, rid string) *blixardpb.Command {
	c.RequestId = rid
	return c
}

// harness applies commands at increasing indexes.
type harness struct {
	t *testing.T
	s *State
}

func newHarness(t *testing.T) *harness { return &harness{t: t, s: NewState()} }

func (h *harness) apply(c *blixardpb.Command) (*blixardpb.Result, []Effect) {
	idx := h.s.AppliedIndex() + 1
	if c != nil && c.TimeUnixMs == 0 {
		c.TimeUnixMs = int64(idx) * 1000
	}
	return h.s.Apply(idx, c)
}

// must applies c and fails the test unless it succeeds.
func (h *harness) must(c *blixardpb.Command) (*blixardpb.Result, []Effect) {
	h.t.Helper()
	res, eff := h.apply(c)
	if res.GetError().GetCode() != blixardpb.Code_OK {
		h.t.Fatalf("command %v: %v %s", c, res.GetError().GetCode(), res.GetError().GetMessage())
	}
	return res, eff
}

// saveBytes returns the snapshot of s.
func saveBytes(t testing.TB, s *State) []byte {
	t.Helper()
	var buf bytes.Buffer
	if err := s.Save(&buf); err != nil {
		t.Fatalf("Save: %v", err)
	}
	return buf.Bytes()
}

// saveNoIndex returns the snapshot of s with the applied index zeroed, so
// two snapshots compare equal when only the applied index differs.
func saveNoIndex(t testing.TB, s *State) []byte {
	t.Helper()
	idx := s.applied
	s.applied = 0
	defer func() { s.applied = idx }()
	return saveBytes(t, s)
}

// recordSpecs are specs with every optional part of a VM record absent,
// typical, or present at its limits (the wire-format encoder and decoder
// tests run them all).
func recordSpecs() []*blixardpb.VmSpec {
	return []*blixardpb.VmSpec{
		{Name: "min", Vcpus: 1, MemoryMb: 64},
		realisticSpec("real"),
		{Name: "full", Tenant: "t-1", Hypervisor: "firecracker", Vcpus: 64, MemoryMb: MaxMemoryMB,
			Flake: "github:acme/vms#web", KernelParams: []string{"a=1", "", "ü=2"},
			Volumes: []*blixardpb.Volume{
				{Name: "a", SizeMb: 1},
				{Name: "b", Image: "/img/b.raw", MountPoint: "/b", ReadOnly: true, SizeMb: MaxVolumeMB},
			},
			Restart: &blixardpb.RestartPolicy{Mode: "never", MaxRestarts: MaxRestarts, WindowSeconds: MaxWindowSec},
			NodeId:  1,
			Labels:  map[string]string{"z": "", "a": "x", "m": strings.Repeat("v", maxLabelValue), "é": "1"}},
	}
}
