package consensus

import (
	"bytes"
	"strings"
	"testing"

	"github.com/blixard/blixard/proto/blixardpb"
)

const (
	codeInvalid  = blixardpb.Code_INVALID_ARGUMENT
	codeExists   = blixardpb.Code_ALREADY_EXISTS
	codeNotFound = blixardpb.Code_NOT_FOUND
	codeNoRoom   = blixardpb.Code_RESOURCE_EXHAUSTED
	codePrecond  = blixardpb.Code_FAILED_PRECONDITION
)

var (
	alive    = blixardpb.NodeStatus_NODE_STATUS_ALIVE
	down     = blixardpb.NodeStatus_NODE_STATUS_DOWN
	draining = blixardpb.NodeStatus_NODE_STATUS_DRAINING
	suspect  = blixardpb.NodeStatus_NODE_STATUS_SUSPECT
	left     = blixardpb.NodeStatus_NODE_STATUS_LEFT
)

// baseState: node 1 (8 vcpus, 16 GiB), node 2 (4 vcpus, 8 GiB) and vm
// "web" (2 vcpus, 1 GiB) placed on node 1 by spread.
func baseState(t *testing.T) *harness {
	h := newHarness(t)
	h.must(cmdNode(1, 8, 16384))
	h.must(cmdNode(2, 4, 8192))
	h.must(cmdCreateVM("web", 2, 1024))
	return h
}

func mutSpec(f func(*blixardpb.VmSpec)) *blixardpb.Command {
	sp := spec("app", 1, 256)
	f(sp)
	return cmdCreate(sp)
}

// TestApplyRejects checks every validation rule: the typed code, a message
// that names the bad field and what is allowed, no effects, and that the
// state (its snapshot) is unchanged but for the applied index.
func TestApplyRejects(t *testing.T) {
	longName := strings.Repeat("a", 64)
	cases := []struct {
		name  string
		fresh bool // start from an empty state instead of baseState
		setup []*blixardpb.Command
		cmd   *blixardpb.Command
		code  blixardpb.Code
		msg   string // exact unless it ends with "…"
	}{
		{name: "nil command", cmd: nil, code: codeInvalid, msg: "empty command"},
		{name: "no op", cmd: &blixardpb.Command{}, code: codeInvalid, msg: "command has no operation"},
		{name: "nil create", cmd: &blixardpb.Command{Op: &blixardpb.Command_CreateVm{}}, code: codeInvalid, msg: "missing vm spec"},
		{name: "nil spec", cmd: cmdCreate(nil), code: codeInvalid, msg: "missing vm spec"},
		{name: "bad name", cmd: cmdCreateVM("Web_1", 1, 256), code: codeInvalid,
			msg: `invalid vm name "Web_1": must be a DNS label (lowercase letters, digits and '-', 1-63 chars, starting and ending with a letter or digit)`},
		{name: "empty name", cmd: cmdCreateVM("", 1, 256), code: codeInvalid, msg: `invalid vm name "": must be a DNS label…`},
		{name: "long name", cmd: cmdCreateVM(longName, 1, 256), code: codeInvalid, msg: `invalid vm name "` + longName + `"…`},
		{name: "leading dash", cmd: cmdCreateVM("-web", 1, 256), code: codeInvalid, msg: `invalid vm name "-web"…`},
		{name: "trailing dash", cmd: cmdCreateVM("web-", 1, 256), code: codeInvalid, msg: `invalid vm name "web-"…`},
		{name: "bad tenant", cmd: mutSpec(func(s *blixardpb.VmSpec) { s.Tenant = "Acme" }), code: codeInvalid,
			msg: `invalid tenant "Acme": must be a DNS label…`},
		{name: "vcpus 0", cmd: cmdCreateVM("app", 0, 256), code: codeInvalid, msg: "vcpus 0 out of range: must be 1-64"},
		{name: "vcpus 65", cmd: cmdCreateVM("app", 65, 256), code: codeInvalid, msg: "vcpus 65 out of range: must be 1-64"},
		{name: "memory 32", cmd: cmdCreateVM("app", 1, 32), code: codeInvalid, msg: "memory_mb 32 out of range: must be 64-1048576"},
		{name: "memory huge", cmd: cmdCreateVM("app", 1, 1<<63), code: codeInvalid, msg: "memory_mb 9223372036854775808 out of range: must be 64-1048576"},
		{name: "hypervisor", cmd: mutSpec(func(s *blixardpb.VmSpec) { s.Hypervisor = "xen" }), code: codeInvalid,
			msg: `unknown hypervisor "xen": must be qemu, cloud-hypervisor or firecracker`},
		{name: "restart mode", cmd: mutSpec(func(s *blixardpb.VmSpec) { s.Restart = &blixardpb.RestartPolicy{Mode: "sometimes"} }), code: codeInvalid,
			msg: `unknown restart mode "sometimes": must be always, on-failure or never`},
		{name: "max restarts", cmd: mutSpec(func(s *blixardpb.VmSpec) { s.Restart = &blixardpb.RestartPolicy{MaxRestarts: 10001} }), code: codeInvalid,
			msg: "max_restarts 10001 out of range: must be 0 (default 5) to 10000"},
		{name: "restart window", cmd: mutSpec(func(s *blixardpb.VmSpec) { s.Restart = &blixardpb.RestartPolicy{WindowSeconds: 1 << 31} }), code: codeInvalid,
			msg: "window_seconds 2147483648 out of range: must be 0 (default 600) to 604800"},
		{name: "kernel and flake", cmd: mutSpec(func(s *blixardpb.VmSpec) { s.Kernel, s.Flake = "/k", ".#web" }), code: codeInvalid,
			msg: "flake and kernel/initrd are exclusive: give either a flake or a kernel (and initrd)"},
		{name: "initrd and flake", cmd: mutSpec(func(s *blixardpb.VmSpec) { s.Initrd, s.Flake = "/i", ".#web" }), code: codeInvalid,
			msg: "flake and kernel/initrd are exclusive…"},
		{name: "kernel relative", cmd: mutSpec(func(s *blixardpb.VmSpec) { s.Kernel = "build/guest/vmlinux" }), code: codeInvalid,
			msg: `kernel path "build/guest/vmlinux" is relative: must be absolute (it is opened on the node that runs the vm)`},
		{name: "initrd relative", cmd: mutSpec(func(s *blixardpb.VmSpec) { s.Kernel, s.Initrd = "/k", "initrd.img" }), code: codeInvalid,
			msg: `initrd path "initrd.img" is relative: must be absolute (it is opened on the node that runs the vm)`},
		{name: "initrd without kernel", cmd: mutSpec(func(s *blixardpb.VmSpec) { s.Initrd = "/i" }), code: codeInvalid,
			msg: `initrd "/i" given without a kernel: an initrd needs a kernel`},
		{name: "kernel not utf8", cmd: mutSpec(func(s *blixardpb.VmSpec) { s.Kernel = "/k\xff" }), code: codeInvalid,
			msg: `kernel "/k\xff" is not valid UTF-8`},
		{name: "kernel nul", cmd: mutSpec(func(s *blixardpb.VmSpec) { s.Kernel = "/k\x00" }), code: codeInvalid,
			msg: `kernel "/k\x00" contains a NUL byte`},
		{name: "kernel long", cmd: mutSpec(func(s *blixardpb.VmSpec) { s.Kernel = strings.Repeat("k", 1025) }), code: codeInvalid,
			msg: "kernel is 1025 bytes long: must be at most 1024"},
		{name: "many params", cmd: mutSpec(func(s *blixardpb.VmSpec) { s.KernelParams = make([]string, 65) }), code: codeInvalid,
			msg: "65 kernel_params: at most 64 allowed"},
		{name: "long params", cmd: mutSpec(func(s *blixardpb.VmSpec) {
			s.KernelParams = []string{strings.Repeat("p", 1000), strings.Repeat("p", 1000), strings.Repeat("p", 1000), strings.Repeat("p", 1000), strings.Repeat("p", 1000)}
		}), code: codeInvalid, msg: "kernel_params are 5005 bytes long: must be at most 4096"},
		{name: "nil volume", cmd: mutSpec(func(s *blixardpb.VmSpec) { s.Volumes = []*blixardpb.Volume{nil} }), code: codeInvalid, msg: "volume 0 is empty"},
		{name: "volume name", cmd: mutSpec(func(s *blixardpb.VmSpec) { s.Volumes = []*blixardpb.Volume{{Name: "Data", SizeMb: 1}} }), code: codeInvalid,
			msg: `invalid volume name "Data": must be a DNS label…`},
		{name: "volume duplicate", cmd: mutSpec(func(s *blixardpb.VmSpec) {
			s.Volumes = []*blixardpb.Volume{{Name: "data", SizeMb: 1}, {Name: "data", SizeMb: 2}}
		}), code: codeInvalid, msg: `duplicate volume name "data": volume names must be unique within a vm`},
		{name: "volume empty", cmd: mutSpec(func(s *blixardpb.VmSpec) { s.Volumes = []*blixardpb.Volume{{Name: "data"}} }), code: codeInvalid,
			msg: `volume "data" has neither an image nor a size_mb: give an image path or a size_mb of 1-16777216`},
		{name: "volume huge", cmd: mutSpec(func(s *blixardpb.VmSpec) { s.Volumes = []*blixardpb.Volume{{Name: "data", SizeMb: 1 << 40}} }), code: codeInvalid,
			msg: `volume "data" size_mb 1099511627776 out of range: must be at most 16777216`},
		{name: "volume mount", cmd: mutSpec(func(s *blixardpb.VmSpec) {
			s.Volumes = []*blixardpb.Volume{{Name: "data", SizeMb: 1, MountPoint: "srv"}}
		}), code: codeInvalid,
			msg: `volume "data" mount_point "srv": must be an absolute path`},
		{name: "many volumes", cmd: mutSpec(func(s *blixardpb.VmSpec) { s.Volumes = make([]*blixardpb.Volume, 17) }), code: codeInvalid,
			msg: "17 volumes: at most 16 allowed"},
		{name: "many labels", cmd: mutSpec(func(s *blixardpb.VmSpec) {
			s.Labels = map[string]string{}
			for i := 0; i < 33; i++ {
				s.Labels[strings.Repeat("k", i+1)] = "v"
			}
		}), code: codeInvalid, msg: "vm has 33 labels: at most 32 allowed"},
		{name: "empty label key", cmd: mutSpec(func(s *blixardpb.VmSpec) { s.Labels = map[string]string{"": "v"} }), code: codeInvalid,
			msg: "vm label key is empty: keys must be 1-63 bytes"},
		{name: "label value utf8", cmd: mutSpec(func(s *blixardpb.VmSpec) { s.Labels = map[string]string{"a": "ok", "b": "\xfe"} }), code: codeInvalid,
			msg: `vm label "b" "\xfe" is not valid UTF-8`},
		{name: "duplicate", cmd: cmdCreateVM("web", 1, 256), code: codeExists, msg: `vm "web" already exists`},
		{name: "larger than any node", cmd: cmdCreateVM("big", 16, 1024), code: codeInvalid,
			msg: "vm needs 16 vcpus / 1024 MiB but the largest node offers 8 vcpus / 16384 MiB (node 1)"},
		{name: "larger than any node, memory", cmd: cmdCreateVM("big", 1, 32768), code: codeInvalid,
			msg: "vm needs 1 vcpus / 32768 MiB but the largest node offers 8 vcpus / 16384 MiB (node 1)"},
		{name: "no room", cmd: cmdCreateVM("big", 8, 8192), code: codeNoRoom,
			msg: "no node has room for 8 vcpus / 8192 MiB (largest free: node 1 with 6 vcpus / 15360 MiB)"},
		{name: "no room, no nodes", fresh: true, cmd: cmdCreateVM("app", 1, 256), code: codeNoRoom,
			msg: "no node has room for 1 vcpus / 256 MiB (no node is alive and schedulable)"},
		{name: "no room, all down", setup: []*blixardpb.Command{cmdStatus(1, down), cmdStatus(2, down)},
			cmd: cmdCreateVM("app", 1, 256), code: codeNoRoom, msg: "no node has room for 1 vcpus / 256 MiB (no node is alive and schedulable)"},
		{name: "pin unknown", cmd: mutSpec(func(s *blixardpb.VmSpec) { s.NodeId = 9 }), code: codeNotFound, msg: "pinned node 9 not found"},
		{name: "pin unknown, no start", cmd: &blixardpb.Command{Op: &blixardpb.Command_CreateVm{CreateVm: &blixardpb.CreateVm{
			Spec: &blixardpb.VmSpec{Name: "app", Vcpus: 1, MemoryMb: 256, NodeId: 9}, NoStart: true}}},
			code: codeNotFound, msg: "pinned node 9 not found"},
		{name: "pin down", setup: []*blixardpb.Command{cmdStatus(2, down)}, cmd: mutSpec(func(s *blixardpb.VmSpec) { s.NodeId = 2 }),
			code: codePrecond, msg: "pinned node 2 is down: it must be alive"},
		{name: "pin unschedulable", setup: []*blixardpb.Command{cmdSchedulable(2, false)}, cmd: mutSpec(func(s *blixardpb.VmSpec) { s.NodeId = 2 }),
			code: codePrecond, msg: "pinned node 2 is not schedulable"},
		{name: "pin full", cmd: mutSpec(func(s *blixardpb.VmSpec) { s.NodeId, s.Vcpus = 1, 7 }),
			code: codeNoRoom, msg: "pinned node 1 has no room for 7 vcpus / 256 MiB (free: 6 vcpus / 15360 MiB)"},
		{name: "subnet exhausted", fresh: true,
			setup: []*blixardpb.Command{cmdInit(&blixardpb.ClusterConfig{Subnet: "10.1.0.0/30"}), cmdNode(1, 8, 8192), cmdCreateVM("a", 1, 256)},
			cmd:   cmdCreateVM("b", 1, 256), code: codeNoRoom, msg: "subnet 10.1.0.0/30 is exhausted (1 addresses in use)"},
		{name: "request id utf8", cmd: withRID(cmdCreateVM("app", 1, 256), "\xff"), code: codeInvalid, msg: `request_id "\xff" is not valid UTF-8`},
		{name: "request id long", cmd: withRID(cmdCreateVM("app", 1, 256), strings.Repeat("r", 129)), code: codeInvalid,
			msg: "request_id is 129 bytes long: must be at most 128"},

		{name: "start unknown", cmd: cmdStart("x"), code: codeNotFound, msg: `vm "x" not found`},
		{name: "start no room", setup: []*blixardpb.Command{cmdStop("web"), cmdCreateVM("fill1", 7, 1024), cmdCreateVM("fill2", 4, 1024)},
			cmd: cmdStart("web"), code: codeNoRoom, msg: "no node has room for 2 vcpus / 1024 MiB (largest free: node 1 with 1 vcpus / 15360 MiB)"},
		{name: "stop unknown", cmd: cmdStop("x"), code: codeNotFound, msg: `vm "x" not found`},
		{name: "delete unknown", cmd: cmdDelete("x"), code: codeNotFound, msg: `vm "x" not found`},
		{name: "migrate unknown", cmd: cmdMigrate("x", 2), code: codeNotFound, msg: `vm "x" not found`},
		{name: "migrate same node", cmd: cmdMigrate("web", 1), code: codePrecond, msg: `vm "web" is already on node 1`},
		{name: "migrate unknown node", cmd: cmdMigrate("web", 9), code: codeNotFound, msg: "target node 9 not found"},
		{name: "migrate to down node", setup: []*blixardpb.Command{cmdStatus(2, down)}, cmd: cmdMigrate("web", 2), code: codePrecond,
			msg: "target node 2 is down: it must be alive"},
		{name: "migrate to full node", setup: []*blixardpb.Command{mutSpec(func(s *blixardpb.VmSpec) { s.NodeId, s.Vcpus, s.MemoryMb = 2, 4, 1024 })}, cmd: cmdMigrate("web", 2), code: codeNoRoom,
			msg: "target node 2 has no room for 2 vcpus / 1024 MiB (free: 0 vcpus / 7168 MiB)"},
		{name: "migrate nowhere", setup: []*blixardpb.Command{cmdStatus(2, suspect)}, cmd: cmdMigrate("web", 0), code: codeNoRoom,
			msg: "no node has room for 2 vcpus / 1024 MiB (no other node is alive and schedulable)"},
		{name: "migrate pinned", setup: []*blixardpb.Command{mutSpec(func(s *blixardpb.VmSpec) { s.NodeId = 1 })},
			cmd: cmdMigrate("app", 2), code: codePrecond, msg: `vm "app" is pinned to node 1: it cannot move to node 2`},
		{name: "migrate pinned anywhere", setup: []*blixardpb.Command{mutSpec(func(s *blixardpb.VmSpec) { s.NodeId = 1 })},
			cmd: cmdMigrate("app", 0), code: codePrecond, msg: `vm "app" is pinned to node 1`},

		{name: "report bad status", cmd: cmdReport(&blixardpb.ReportVmStatus{Name: "web", NodeId: 1, Generation: 1}), code: codeInvalid,
			msg: "invalid vm status unspecified: must be pending, starting, running, stopping, stopped, failed or lost"},
		{name: "report unknown status", cmd: cmdReport(&blixardpb.ReportVmStatus{Name: "web", NodeId: 1, Generation: 1, Status: 42}), code: codeInvalid,
			msg: "invalid vm status 42: must be…"},
		{name: "report unknown vm", cmd: cmdReport(&blixardpb.ReportVmStatus{Name: "x", NodeId: 1, Generation: 1, Status: blixardpb.VmStatus_VM_STATUS_RUNNING}),
			code: codeNotFound, msg: `vm "x" not found`},
		{name: "report other vm id", cmd: cmdReport(&blixardpb.ReportVmStatus{Name: "web", VmId: 7, NodeId: 1, Generation: 1, Status: blixardpb.VmStatus_VM_STATUS_RUNNING}),
			code: codePrecond, msg: `stale report: vm "web" has id 1, the report is for id 7`},
		{name: "report other node", cmd: cmdReport(&blixardpb.ReportVmStatus{Name: "web", NodeId: 2, Generation: 1, Status: blixardpb.VmStatus_VM_STATUS_RUNNING}),
			code: codePrecond, msg: `stale report: vm "web" is placed on node 1, the report comes from node 2`},
		{name: "report old generation", setup: []*blixardpb.Command{cmdMigrate("web", 2)},
			cmd:  cmdReport(&blixardpb.ReportVmStatus{Name: "web", NodeId: 1, Generation: 1, Status: blixardpb.VmStatus_VM_STATUS_STOPPED}),
			code: codePrecond, msg: `stale report: vm "web" is at generation 2, the report is for generation 1`},
		{name: "report unplaced", setup: []*blixardpb.Command{cmdStatus(1, down), cmdStatus(2, down)},
			cmd:  cmdReport(&blixardpb.ReportVmStatus{Name: "web", NodeId: 0, Generation: 3, Status: blixardpb.VmStatus_VM_STATUS_RUNNING}),
			code: codePrecond, msg: `stale report: vm "web" is placed on node 0, the report comes from node 0`},

		{name: "nil upsert", cmd: &blixardpb.Command{Op: &blixardpb.Command_UpsertNode{UpsertNode: &blixardpb.UpsertNode{}}}, code: codeInvalid, msg: "missing node record"},
		{name: "node id 0", cmd: cmdNode(0, 1, 1), code: codeInvalid, msg: "node id 0 is invalid: must be 1 or more"},
		{name: "node addr utf8", cmd: &blixardpb.Command{Op: &blixardpb.Command_UpsertNode{UpsertNode: &blixardpb.UpsertNode{
			Node: &blixardpb.NodeRecord{Id: 3, ApiAddr: "\xc3"}}}}, code: codeInvalid, msg: `api_addr "\xc3" is not valid UTF-8`},
		{name: "node vcpus", cmd: cmdNode(3, 1<<20, 1), code: codeInvalid, msg: "node vcpus 1048576 out of range: must be 0-65536"},
		{name: "node memory", cmd: cmdNode(3, 1, 1<<41), code: codeInvalid, msg: "node memory_mb 2199023255552 out of range: must be 0-1099511627776"},
		{name: "node status", cmd: &blixardpb.Command{Op: &blixardpb.Command_UpsertNode{UpsertNode: &blixardpb.UpsertNode{
			Node: &blixardpb.NodeRecord{Id: 3, Status: 99}}}}, code: codeInvalid, msg: "invalid node status 99: must be alive, suspect, down, draining or left"},
		{name: "status unknown node", cmd: cmdStatus(9, down), code: codeNotFound, msg: "node 9 not found"},
		{name: "status unspecified", cmd: cmdStatus(1, 0), code: codeInvalid, msg: "invalid node status unspecified: must be alive, suspect, down, draining or left"},
		{name: "schedulable unknown node", cmd: cmdSchedulable(9, true), code: codeNotFound, msg: "node 9 not found"},
		{name: "remove unknown node", cmd: cmdRemove(9), code: codeNotFound, msg: "node 9 not found"},

		{name: "init bad subnet", fresh: true, cmd: cmdInit(&blixardpb.ClusterConfig{Subnet: "10.0.0.0"}), code: codeInvalid,
			msg: `invalid subnet "10.0.0.0": must be an IPv4 CIDR such as 10.0.0.0/24`},
		{name: "init ipv6", fresh: true, cmd: cmdInit(&blixardpb.ClusterConfig{Subnet: "fd00::/64"}), code: codeInvalid, msg: `invalid subnet "fd00::/64"…`},
		{name: "init /31", fresh: true, cmd: cmdInit(&blixardpb.ClusterConfig{Subnet: "10.0.0.0/31"}), code: codeInvalid,
			msg: "subnet 10.0.0.0/31 has prefix length /31: must be /8 to /30"},
		{name: "init /4", fresh: true, cmd: cmdInit(&blixardpb.ClusterConfig{Subnet: "0.0.0.0/4"}), code: codeInvalid,
			msg: "subnet 0.0.0.0/4 has prefix length /4: must be /8 to /30"},
		{name: "init host bits", fresh: true, cmd: cmdInit(&blixardpb.ClusterConfig{Subnet: "10.0.0.5/24"}), code: codeInvalid,
			msg: "subnet 10.0.0.5/24 has host bits set: use its network address 10.0.0.0/24"},
		{name: "init placement", fresh: true, cmd: cmdInit(&blixardpb.ClusterConfig{Placement: "random"}), code: codeInvalid,
			msg: `unknown placement "random": must be spread or binpack`},
		{name: "init twice", fresh: true, setup: []*blixardpb.Command{cmdInit(&blixardpb.ClusterConfig{ClusterId: "c1"})},
			cmd: cmdInit(&blixardpb.ClusterConfig{ClusterId: "c1", Placement: "binpack"}), code: codePrecond,
			msg: `cluster already initialised (cluster_id "c1", subnet 10.0.0.0/24, placement spread): InitCluster is accepted once`},
		{name: "init after addresses", cmd: cmdInit(&blixardpb.ClusterConfig{Subnet: "192.168.0.0/16"}), code: codePrecond,
			msg: "cannot change the subnet to 192.168.0.0/16: 1 vms already hold addresses in 10.0.0.0/24"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t)
			if !tc.fresh {
				h = baseState(t)
			}
			for _, c := range tc.setup {
				h.must(c)
			}
			before := saveNoIndex(t, h.s)
			idx := h.s.AppliedIndex() + 1
			res, eff := h.s.Apply(idx, tc.cmd)
			if got := res.GetError().GetCode(); got != tc.code {
				t.Fatalf("code = %v (%s), want %v", got, res.GetError().GetMessage(), tc.code)
			}
			msg := res.GetError().GetMessage()
			if prefix, ok := strings.CutSuffix(tc.msg, "…"); ok {
				if !strings.HasPrefix(msg, prefix) {
					t.Errorf("message = %q, want prefix %q", msg, prefix)
				}
			} else if msg != tc.msg {
				t.Errorf("message = %q\nwant        %q", msg, tc.msg)
			}
			if res.GetVm() != nil || res.GetNode() != nil {
				t.Errorf("failed result carries a record: %v", res)
			}
			if len(eff) != 0 {
				t.Errorf("failed command emitted %d effects", len(eff))
			}
			if h.s.AppliedIndex() != idx {
				t.Errorf("applied index = %d, want %d", h.s.AppliedIndex(), idx)
			}
			if after := saveNoIndex(t, h.s); !bytes.Equal(before, after) {
				t.Errorf("failed command changed the state")
			}
		})
	}
}

func TestApplyBytesUndecodable(t *testing.T) {
	h := baseState(t)
	before := saveNoIndex(t, h.s)
	res, eff := h.s.ApplyBytes(10, []byte{0xff, 0xff, 0xff})
	if res.GetError().GetCode() != codeInvalid || !strings.HasPrefix(res.GetError().GetMessage(), "undecodable command (3 bytes)") {
		t.Fatalf("result = %v", res)
	}
	if len(eff) != 0 || h.s.AppliedIndex() != 10 || !bytes.Equal(before, saveNoIndex(t, h.s)) {
		t.Fatalf("undecodable command changed state or emitted effects")
	}
}

func vmOf(t *testing.T, s *State, name string) *blixardpb.VmRecord {
	t.Helper()
	r, ok := s.VM(name)
	if !ok {
		t.Fatalf("vm %q not found", name)
	}
	return r
}

func TestApplyCreate(t *testing.T) {
	h := baseState(t)
	res, eff := h.must(cmdCreate(&blixardpb.VmSpec{Name: "db", Vcpus: 2, MemoryMb: 2048, Kernel: "/boot/vmlinuz", Initrd: "/boot/initrd",
		KernelParams: []string{"console=ttyS0"}, Volumes: []*blixardpb.Volume{{Name: "data", SizeMb: 100, MountPoint: "/srv"}},
		Labels: map[string]string{"role": "db"}}))
	got := res.GetVm()
	if got.GetId() != 2 || got.GetIp() != "10.0.0.3" || got.GetMac() != "02:00:0a:00:00:03" || got.GetTap() != "vm-2" {
		t.Errorf("id/ip/mac/tap = %d %s %s %s, want 2 10.0.0.3 02:00:0a:00:00:03 vm-2", got.GetId(), got.GetIp(), got.GetMac(), got.GetTap())
	}
	sp := got.GetSpec()
	if sp.GetTenant() != "default" || sp.GetHypervisor() != "qemu" || sp.GetRestart().GetMode() != "always" ||
		sp.GetRestart().GetMaxRestarts() != 5 || sp.GetRestart().GetWindowSeconds() != 600 {
		t.Errorf("defaults not filled in: %v", sp)
	}
	if sp.GetVolumes()[0].GetMountPoint() != "/srv" || sp.GetLabels()["role"] != "db" || sp.GetKernelParams()[0] != "console=ttyS0" {
		t.Errorf("spec fields lost: %v", sp)
	}
	if got.GetDesired() != blixardpb.DesiredState_DESIRED_RUNNING || got.GetStatus() != blixardpb.VmStatus_VM_STATUS_PENDING ||
		got.GetGeneration() != 1 || got.GetNodeId() != 1 || got.GetCreatedUnixMs() != 4000 || got.GetUpdatedUnixMs() != 4000 {
		t.Errorf("record = %v", got)
	}
	if len(eff) != 1 || eff[0].VM.GetSpec().GetName() != "db" || !eff[0].Concerns(1) || eff[0].Concerns(2) || eff[0].Deleted {
		t.Errorf("effects = %v", eff)
	}
	if u := h.s.NodeUsage(1); u != (Usage{Vcpus: 4, MemoryMB: 3072, VMs: 2}) {
		t.Errorf("usage of node 1 = %+v", u)
	}
	// The result and the effect are copies: changing them changes nothing.
	got.Spec.Name = "changed"
	eff[0].VM.NodeId = 9
	if r := vmOf(t, h.s, "db"); r.GetSpec().GetName() != "db" || r.GetNodeId() != 1 {
		t.Errorf("state aliased by result: %v", r)
	}

	// no_start: an address, no node, no capacity.
	res, _ = h.must(&blixardpb.Command{Op: &blixardpb.Command_CreateVm{CreateVm: &blixardpb.CreateVm{Spec: spec("cold", 1, 256), NoStart: true}}})
	if r := res.GetVm(); r.GetNodeId() != 0 || r.GetDesired() != blixardpb.DesiredState_DESIRED_STOPPED ||
		r.GetStatus() != blixardpb.VmStatus_VM_STATUS_STOPPED || r.GetIp() != "10.0.0.4" {
		t.Errorf("no_start record = %v", r)
	}
	if u := h.s.NodeUsage(1); u.VMs != 2 {
		t.Errorf("no_start vm counted on node 1: %+v", u)
	}
}

func TestApplyStartStop(t *testing.T) {
	h := baseState(t)
	// Starting a running VM changes nothing.
	before := saveNoIndex(t, h.s)
	if _, eff := h.must(cmdStart("web")); len(eff) != 0 || !bytes.Equal(before, saveNoIndex(t, h.s)) {
		t.Fatalf("start of a running vm changed state")
	}
	_, eff := h.must(cmdStop("web"))
	r := vmOf(t, h.s, "web")
	if r.GetDesired() != blixardpb.DesiredState_DESIRED_STOPPED || r.GetGeneration() != 2 || r.GetNodeId() != 1 || len(eff) != 1 {
		t.Fatalf("after stop: %v, %d effects", r, len(eff))
	}
	if u := h.s.NodeUsage(1); u != (Usage{VMs: 1}) {
		t.Errorf("stopped vm holds capacity: %+v", u)
	}
	// Stopping again changes nothing.
	if _, eff := h.must(cmdStop("web")); len(eff) != 0 || vmOf(t, h.s, "web").GetGeneration() != 2 {
		t.Errorf("second stop changed state")
	}
	// Start again: same node (room there), gen 3.
	_, eff = h.must(cmdStart("web"))
	r = vmOf(t, h.s, "web")
	if r.GetNodeId() != 1 || r.GetGeneration() != 3 || r.GetStatus() != blixardpb.VmStatus_VM_STATUS_PENDING || len(eff) != 1 || eff[0].PrevNodeID != 0 {
		t.Fatalf("after start: %v %v", r, eff)
	}
	// Failed → start resets restarts and status, bumps the generation.
	h.must(cmdReport(&blixardpb.ReportVmStatus{Name: "web", NodeId: 1, Generation: 3, Status: blixardpb.VmStatus_VM_STATUS_FAILED, Restarts: 5, Message: "crashed"}))
	_, eff = h.must(cmdStart("web"))
	r = vmOf(t, h.s, "web")
	if r.GetStatus() != blixardpb.VmStatus_VM_STATUS_PENDING || r.GetRestarts() != 0 || r.GetMessage() != "" || r.GetGeneration() != 4 || len(eff) != 1 {
		t.Fatalf("start of failed vm: %v", r)
	}
	if u := h.s.NodeUsage(1); u.Vcpus != 2 {
		t.Errorf("capacity counted twice: %+v", u)
	}
	// Stop, fill node 1, start: placed anew on node 2 — once node 1 has
	// confirmed the stop. Before that it is handed over (node 1 told to
	// stop it, node 2 holding its room), as a migration is.
	h.must(cmdStop("web"))
	h.must(mutSpec(func(s *blixardpb.VmSpec) { s.NodeId, s.Vcpus = 1, 8 }))
	_, eff = h.must(cmdStart("web"))
	r = vmOf(t, h.s, "web")
	if r.GetNodeId() != 1 || r.GetMigrateTo() != 2 || len(eff) != 1 || !eff[0].Concerns(1) || eff[0].Concerns(2) {
		t.Fatalf("start without room on its node, stop not confirmed: %v %v", r, eff)
	}
	_, eff = h.must(cmdReport(&blixardpb.ReportVmStatus{Name: "web", NodeId: 1, Generation: r.GetGeneration(), Status: blixardpb.VmStatus_VM_STATUS_STOPPED}))
	r = vmOf(t, h.s, "web")
	if r.GetNodeId() != 2 || r.GetMigrateTo() != 0 || len(eff) != 1 || eff[0].PrevNodeID != 1 || !eff[0].Concerns(1) || !eff[0].Concerns(2) {
		t.Fatalf("after node 1 confirmed the stop: %v %v", r, eff)
	}
}

func TestApplyDeleteReusesAddress(t *testing.T) {
	h := baseState(t)
	h.must(cmdCreateVM("db", 1, 256))
	_, eff := h.must(cmdDelete("web"))
	if len(eff) != 1 || !eff[0].Deleted || eff[0].VM.GetSpec().GetName() != "web" || eff[0].VM.GetGeneration() != 2 || !eff[0].Concerns(1) {
		t.Fatalf("delete effect = %v", eff)
	}
	if _, ok := h.s.VM("web"); ok {
		t.Fatal("deleted vm still there")
	}
	if u := h.s.NodeUsage(1); u != (Usage{Vcpus: 1, MemoryMB: 256, VMs: 1}) {
		t.Errorf("usage after delete = %+v", u)
	}
	res, _ := h.must(cmdCreateVM("web", 1, 256))
	if res.GetVm().GetIp() != "10.0.0.2" || res.GetVm().GetId() != 3 || res.GetVm().GetTap() != "vm-3" {
		t.Errorf("recreated vm = %v, want 10.0.0.2 reused and a fresh id 3", res.GetVm())
	}
}

func TestApplyMigrate(t *testing.T) {
	h := baseState(t)
	// A VM that is to run is handed over: it stays on node 1 (told to
	// stop it) and node 2 holds its room.
	_, eff := h.must(cmdMigrate("web", 2))
	r := vmOf(t, h.s, "web")
	if r.GetNodeId() != 1 || r.GetMigrateTo() != 2 || r.GetGeneration() != 2 || len(eff) != 1 || eff[0].VM.GetNodeId() != 1 || eff[0].VM.GetMigrateTo() != 2 {
		t.Fatalf("migrate: %v %v", r, eff)
	}
	both := Usage{Vcpus: 2, MemoryMB: 1024}
	if h.s.NodeUsage(1) != (Usage{Vcpus: 2, MemoryMB: 1024, VMs: 1}) || h.s.NodeUsage(2) != both {
		t.Errorf("usage during the hand-over: %+v %+v", h.s.NodeUsage(1), h.s.NodeUsage(2))
	}
	// A running report does not move it; stopped from node 1 does.
	h.must(cmdReport(&blixardpb.ReportVmStatus{Name: "web", NodeId: 1, Generation: 2, Status: blixardpb.VmStatus_VM_STATUS_RUNNING}))
	if r := vmOf(t, h.s, "web"); r.GetNodeId() != 1 {
		t.Fatalf("moved on a running report: %v", r)
	}
	_, eff = h.must(cmdReport(&blixardpb.ReportVmStatus{Name: "web", NodeId: 1, Generation: 2, Status: blixardpb.VmStatus_VM_STATUS_STOPPED}))
	r = vmOf(t, h.s, "web")
	if r.GetNodeId() != 2 || r.GetMigrateTo() != 0 || r.GetGeneration() != 3 || r.GetStatus() != blixardpb.VmStatus_VM_STATUS_PENDING || len(eff) != 1 || eff[0].PrevNodeID != 1 {
		t.Fatalf("after the hand-over: %v %v", r, eff)
	}
	if h.s.NodeUsage(1) != (Usage{}) || h.s.NodeUsage(2) != (Usage{Vcpus: 2, MemoryMB: 1024, VMs: 1}) {
		t.Errorf("usage not moved: %+v %+v", h.s.NodeUsage(1), h.s.NodeUsage(2))
	}
	// Target 0: any other node. A stopped VM moves at once.
	h.must(cmdStop("web"))
	h.must(cmdReport(&blixardpb.ReportVmStatus{Name: "web", NodeId: 2, Generation: 4, Status: blixardpb.VmStatus_VM_STATUS_STOPPED}))
	h.must(cmdMigrate("web", 0))
	if r := vmOf(t, h.s, "web"); r.GetNodeId() != 1 || r.GetMigrateTo() != 0 || r.GetGeneration() != 5 {
		t.Fatalf("migrate anywhere: %v", r)
	}
}

func TestApplyReport(t *testing.T) {
	h := baseState(t)
	res, eff := h.must(cmdReport(&blixardpb.ReportVmStatus{Name: "web", VmId: 1, NodeId: 1, Generation: 1,
		Status: blixardpb.VmStatus_VM_STATUS_RUNNING, Restarts: 2, Message: "up"}))
	r := res.GetVm()
	if len(eff) != 0 || r.GetStatus() != blixardpb.VmStatus_VM_STATUS_RUNNING || r.GetRestarts() != 2 || r.GetMessage() != "up" || r.GetGeneration() != 1 {
		t.Fatalf("report: %v, %d effects", r, len(eff))
	}
	// Messages are made valid UTF-8 and clipped.
	h.must(cmdReport(&blixardpb.ReportVmStatus{Name: "web", NodeId: 1, Generation: 1,
		Status: blixardpb.VmStatus_VM_STATUS_FAILED, Message: "\xff" + strings.Repeat("é", 1000)}))
	m := vmOf(t, h.s, "web").GetMessage()
	if len(m) > MaxMessageLen || !strings.HasPrefix(m, "\uFFFDé") || !strings.HasSuffix(m, "é") {
		t.Errorf("message not clipped cleanly: %d bytes %q…", len(m), m[:8])
	}
	saveBytes(t, h.s) // must marshal
}

func TestApplyNodes(t *testing.T) {
	h := baseState(t)
	// Upsert of a known node updates its fields but keeps status and
	// schedulable (owned by SetNodeStatus / SetNodeSchedulable).
	h.must(cmdSchedulable(2, false))
	res, _ := h.must(&blixardpb.Command{Op: &blixardpb.Command_UpsertNode{UpsertNode: &blixardpb.UpsertNode{
		Node: &blixardpb.NodeRecord{Id: 2, Vcpus: 16, MemoryMb: 32768, ApiAddr: "h2:7001", Labels: map[string]string{"zone": "a"}}}}})
	n := res.GetNode()
	if n.GetVcpus() != 16 || n.GetSchedulable() || n.GetStatus() != alive || n.GetApiAddr() != "h2:7001" || n.GetLabels()["zone"] != "a" {
		t.Fatalf("upsert: %v", n)
	}
	// Draining makes it unschedulable; schedulable again undoes the drain.
	h.must(cmdSchedulable(2, true))
	res, _ = h.must(cmdStatus(2, draining))
	if n := res.GetNode(); n.GetSchedulable() || n.GetStatus() != draining {
		t.Fatalf("draining: %v", n)
	}
	res, _ = h.must(cmdSchedulable(2, true))
	if n := res.GetNode(); !n.GetSchedulable() || n.GetStatus() != alive {
		t.Fatalf("eligible after drain: %v", n)
	}
	// Down re-places web (node 1) onto node 2.
	_, eff := h.must(cmdStatus(1, down))
	if r := vmOf(t, h.s, "web"); r.GetNodeId() != 2 || r.GetGeneration() != 2 || len(eff) != 1 || eff[0].PrevNodeID != 1 {
		t.Fatalf("down: %v %v", r, eff)
	}
	// Remove node 2: web waits, unplaced, with a message.
	_, eff = h.must(cmdRemove(2))
	r := vmOf(t, h.s, "web")
	if _, ok := h.s.Node(2); ok || r.GetNodeId() != 0 || r.GetStatus() != blixardpb.VmStatus_VM_STATUS_PENDING || r.GetMessage() == "" || len(eff) != 1 {
		t.Fatalf("remove: %v %v", r, eff)
	}
	if ns := h.s.Nodes(); len(ns) != 1 || ns[0].GetId() != 1 {
		t.Fatalf("nodes = %v", ns)
	}
	// Node 1 alive again: web is placed there.
	_, eff = h.must(cmdStatus(1, alive))
	if r := vmOf(t, h.s, "web"); r.GetNodeId() != 1 || r.GetMessage() != "" || len(eff) != 1 {
		t.Fatalf("alive: %v %v", r, eff)
	}
}

func TestApplyInitCluster(t *testing.T) {
	h := newHarness(t)
	if c := h.s.Config(); c.GetSubnet() != "10.0.0.0/24" || c.GetPlacement() != "spread" {
		t.Fatalf("default config = %v", c)
	}
	cfg := &blixardpb.ClusterConfig{ClusterId: "prod", Subnet: "172.16.0.0/16", Placement: "binpack"}
	h.must(cmdInit(cfg))
	h.must(cmdInit(cfg)) // the same config again is accepted
	if c := h.s.Config(); c.GetClusterId() != "prod" || c.GetSubnet() != "172.16.0.0/16" || c.GetPlacement() != "binpack" {
		t.Fatalf("config = %v", c)
	}
	h.must(cmdNode(1, 4, 4096))
	res, _ := h.must(cmdCreateVM("web", 1, 256))
	if res.GetVm().GetIp() != "172.16.0.2" || res.GetVm().GetMac() != "02:00:ac:10:00:02" {
		t.Fatalf("vm = %v", res.GetVm())
	}
}

func TestApplyRequestID(t *testing.T) {
	h := baseState(t)
	first, eff := h.must(withRID(cmdCreateVM("db", 1, 256), "req-1"))
	if len(eff) != 1 {
		t.Fatalf("effects = %v", eff)
	}
	before := saveNoIndex(t, h.s)
	again, eff := h.apply(withRID(cmdCreateVM("db", 1, 256), "req-1"))
	if len(eff) != 0 || !bytes.Equal(before, saveNoIndex(t, h.s)) {
		t.Fatalf("retry changed state")
	}
	if again.String() != first.String() {
		t.Fatalf("retry result = %v, want %v", again, first)
	}
	// A retry returns the first result even when it would fail now.
	h.must(cmdDelete("db"))
	if again, _ := h.apply(withRID(cmdStop("db"), "req-1")); again.GetError().GetCode() != blixardpb.Code_OK || again.GetVm().GetSpec().GetName() != "db" {
		t.Fatalf("retry after delete = %v", again)
	}
	// Failed commands are remembered too: the retry returns the failure
	// even once the command would succeed (TestFailedRequestIsNotAppliedLater).
	if r, _ := h.apply(withRID(cmdStart("x"), "req-2")); r.GetError().GetCode() != codeNotFound {
		t.Fatalf("got %v", r)
	}
	h.must(withRID(cmdCreateVM("x", 1, 256), "req-3"))
	h.s.Apply(h.s.AppliedIndex()+1, cmdStop("x"))
	if r, _ := h.apply(withRID(cmdStart("x"), "req-2")); r.GetError().GetCode() != codeNotFound {
		t.Fatalf("retry of a failed command = %v, want its first result", r)
	}
	if v, _ := h.s.VM("x"); v.GetDesired() != blixardpb.DesiredState_DESIRED_STOPPED {
		t.Fatalf("the retry of a failed start started x")
	}
}

func TestRequestTableEvictsOldestFirst(t *testing.T) {
	h := newHarness(t)
	h.must(withRID(cmdNode(1, 8, 8192), "r-0"))
	for i := 1; i <= MaxRequests; i++ {
		h.must(withRID(cmdNode(1, 8, 8192), "r-"+u64(uint64(i))))
	}
	if n := h.s.requests.len(); n != MaxRequests {
		t.Fatalf("table holds %d entries, want %d", n, MaxRequests)
	}
	if _, ok := h.s.requests.get("r-0"); ok {
		t.Error("oldest entry r-0 not evicted")
	}
	if _, ok := h.s.requests.get("r-1"); !ok {
		t.Error("entry r-1 evicted too early")
	}
	if e := h.s.requests.entries(); e[0].id != "r-1" || e[len(e)-1].id != "r-10000" {
		t.Errorf("order: first %s last %s", e[0].id, e[len(e)-1].id)
	}
	// r-0 is forgotten: the command runs again (here: a node update).
	res, _ := h.apply(withRID(cmdNode(1, 4, 4096), "r-0"))
	if res.GetNode().GetVcpus() != 4 {
		t.Errorf("evicted request id not re-run: %v", res)
	}
}

// An agent that reports its VM lost gets it back with start, like failed.
func TestApplyStartAfterReportedLost(t *testing.T) {
	h := baseState(t)
	h.must(cmdReport(&blixardpb.ReportVmStatus{Name: "web", NodeId: 1, Generation: 1, Status: blixardpb.VmStatus_VM_STATUS_LOST, Restarts: 2}))
	_, eff := h.must(cmdStart("web"))
	r := vmOf(t, h.s, "web")
	if len(eff) != 1 || r.GetStatus() != blixardpb.VmStatus_VM_STATUS_PENDING || r.GetGeneration() != 2 || r.GetRestarts() != 0 || r.GetNodeId() != 1 {
		t.Fatalf("start after lost: %v %v", r, eff)
	}
	if u := h.s.NodeUsage(1); u.Vcpus != 2 {
		t.Errorf("usage = %+v", u)
	}
}
