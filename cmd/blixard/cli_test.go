package main

import (
	"bytes"
	"context"
	"encoding/json"
	"net"
	"sort"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/blixard/blixard/proto/blixardpb"
)

func runCLI(t *testing.T, env map[string]string, args ...string) (string, string, int) {
	t.Helper()
	var out, errb bytes.Buffer
	code := Main(context.Background(), args, &out, &errb, func(k string) string { return env[k] })
	return out.String(), errb.String(), code
}

// TestUsageErrorsExit2 covers bad flags, missing or extra arguments and
// bad values: exit 2 and exactly one "error: " line naming the problem.
// None of these contacts a node.
func TestUsageErrorsExit2(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"vm", "create", "web", "--bogus"}, "unknown flag: --bogus"},
		{[]string{"vm", "create"}, "missing NAME"},
		{[]string{"vm", "create", "a", "b"}, `unexpected argument "b"`},
		{[]string{"vm", "create", "web", "--restart", "foo"}, `invalid --restart "foo": want always|on-failure|never`},
		{[]string{"vm", "create", "web", "--hypervisor", "xen"}, `want qemu|cloud-hypervisor|firecracker`},
		{[]string{"vm", "create", "web", "--vcpus", "two"}, `invalid argument "two"`},
		{[]string{"vm", "create", "web", "--flake", ".#web", "--kernel", "/k"}, "--flake excludes --kernel and --initrd"},
		{[]string{"vm", "create", "web", "--initrd", "/i"}, "--initrd needs --kernel"},
		{[]string{"vm", "create", "web", "--timeout", "0s"}, "invalid --timeout"},
		{[]string{"vm", "list", "-o", "yaml"}, `invalid --output "yaml": want table or json`},
		{[]string{"vm", "status"}, "missing NAME"},
		{[]string{"vm", "logs", "web", "-n", "-1"}, "invalid -n -1"},
		{[]string{"vm", "frobnicate"}, `unknown command "frobnicate"`},
		{[]string{"frobnicate"}, `unknown command "frobnicate"`},
		{[]string{"node", "drain"}, "missing ID"},
		{[]string{"node", "drain", "x"}, `invalid node id "x"`},
		{[]string{"node", "eligible", "0"}, `invalid node id "0"`},
		{[]string{"run"}, "--node-id is required"},
		{[]string{"run", "--node-id", "1", "--driver", "xen"}, `invalid --driver "xen": want fake|qemu|nix`},
		{[]string{"run", "--node-id", "1", "--accel", "hvf"}, `want auto|kvm|tcg`},
		{[]string{"run", "--node-id", "1", "--log-format", "xml"}, `want auto|text|json`},
		{[]string{"run", "--node-id", "1", "--log-level", "loud"}, `invalid --log-level`},
		{[]string{"run", "--node-id", "1", "--api-addr", "nohost"}, `invalid --api-addr "nohost"`},
		{[]string{"run", "--node-id", "1", "--metrics-addr", "nohost"}, `invalid --metrics-addr "nohost": want host:port`},
		{[]string{"run", "--node-id", "1", "--dead-voter-grace", "-1s"}, `invalid --dead-voter-grace -1s`},
		{[]string{"run", "--node-id", "4", "--initial-cluster", "1=127.0.0.1:1,2=127.0.0.1:2"}, "does not list --node-id 4"},
		{[]string{"run", "--node-id", "1", "--initial-cluster", "1=127.0.0.1:1,1=127.0.0.1:2"}, "lists node 1 twice"},
		{[]string{"run", "--node-id", "1", "--initial-cluster", "one=127.0.0.1:1"}, "want id=host:port"},
		{[]string{"run", "--node-id", "1", "--initial-cluster", "1=127.0.0.1:1", "--join", "127.0.0.1:9"}, "exclude each other"},
		{[]string{"run", "--dev", "--initial-cluster", "1=127.0.0.1:1"}, "--dev runs a single node"},
		{[]string{"bench", "commit", "--concurrency", "0"}, "invalid --concurrency"},
	} {
		t.Run(strings.Join(tc.args, "_"), func(t *testing.T) {
			out, errOut, code := runCLI(t, nil, tc.args...)
			if code != exitUsage {
				t.Errorf("exit %d, want %d (stderr %q)", code, exitUsage, errOut)
			}
			lines := strings.Split(strings.TrimRight(errOut, "\n"), "\n")
			if len(lines) != 1 || !strings.HasPrefix(lines[0], "error: ") || !strings.Contains(lines[0], tc.want) {
				t.Errorf("stderr %q, want one line \"error: ...%s...\"", errOut, tc.want)
			}
			if out != "" {
				t.Errorf("stdout %q, want nothing", out)
			}
		})
	}
}

func TestHelpExits0(t *testing.T) {
	for _, args := range [][]string{{"--help"}, {"vm", "create", "--help"}, {}, {"vm"}, {"version"}, {"completion", "bash"}} {
		out, errOut, code := runCLI(t, nil, args...)
		if code != exitOK || out == "" || errOut != "" {
			t.Errorf("blixard %v: exit %d, stdout %d bytes, stderr %q", args, code, len(out), errOut)
		}
	}
	out, _, _ := runCLI(t, nil, "run", "--help")
	for _, flag := range []string{"--node-id", "--data-dir", "--api-addr", "--raft-addr", "--gossip-addr", "--initial-cluster", "--join", "--driver", "--accel", "--vcpus", "--memory-mb", "--dev", "--log-format", "--stop-vms-on-exit"} {
		if !strings.Contains(out, flag) {
			t.Errorf("run --help lacks %s", flag)
		}
	}
	for _, flag := range []string{"--gossip-key-file", "--fence-timeout", "--down-grace", "--no-network"} {
		if !strings.Contains(out, flag) {
			t.Errorf("run --help lacks %s", flag)
		}
	}
}

// TestUnreachableNodeExits1 is the one test here that starts a client
// (one protoactor remote per test process: see client's tests).
func TestUnreachableNodeExits1(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := l.Addr().String()
	l.Close()
	// The address comes from BLIXARD_ADDR when --addr is not given.
	_, errOut, code := runCLI(t, map[string]string{"BLIXARD_ADDR": dead}, "vm", "list")
	if code != exitFailed {
		t.Fatalf("exit %d, want 1 (stderr %q)", code, errOut)
	}
	if lines := strings.Split(strings.TrimRight(errOut, "\n"), "\n"); len(lines) != 1 || !strings.HasPrefix(errOut, "error: ") || !strings.Contains(errOut, dead) {
		t.Fatalf("stderr %q, want one error line naming %s", errOut, dead)
	}
}

func jsonKeys(t *testing.T, v any) []string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	var keys []string
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

func hasKeys(t *testing.T, what string, got, want []string) {
	t.Helper()
	set := map[string]bool{}
	for _, k := range got {
		set[k] = true
	}
	for _, k := range want {
		if !set[k] {
			t.Errorf("%s JSON lacks key %q (has %v)", what, k, got)
		}
	}
}

func sampleVM() *blixardpb.VmRecord {
	return &blixardpb.VmRecord{
		Id:       7,
		Spec:     &blixardpb.VmSpec{Name: "web", Vcpus: 2, MemoryMb: 1024},
		Desired:  blixardpb.DesiredState_DESIRED_RUNNING,
		NodeId:   2,
		Status:   blixardpb.VmStatus_VM_STATUS_STARTING,
		Restarts: 1,
		Ip:       "10.0.0.7",
		Mac:      "02:00:0a:00:00:07",
		Tap:      "vm-7",
	}
}

func TestVMJSONShape(t *testing.T) {
	hasKeys(t, "vm", jsonKeys(t, toVMJSON(sampleVM())), []string{"name", "id", "tenant", "desired", "status", "node_id", "vcpus", "memory_mb", "hypervisor", "ip", "mac", "tap", "restarts", "message"})
	got := toVMJSON(sampleVM())
	want := vmJSON{Name: "web", ID: 7, Tenant: "default", Desired: "running", Status: "starting", NodeID: 2, Vcpus: 2, MemoryMB: 1024,
		Hypervisor: "qemu", IP: "10.0.0.7", MAC: "02:00:0a:00:00:07", Tap: "vm-7", Restarts: 1, Restart: "always"}
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("toVMJSON (-want +got):\n%s", d)
	}
	for st, name := range map[blixardpb.VmStatus]string{
		blixardpb.VmStatus_VM_STATUS_PENDING: "pending", blixardpb.VmStatus_VM_STATUS_RUNNING: "running",
		blixardpb.VmStatus_VM_STATUS_STOPPING: "stopping", blixardpb.VmStatus_VM_STATUS_STOPPED: "stopped",
		blixardpb.VmStatus_VM_STATUS_FAILED: "failed", blixardpb.VmStatus_VM_STATUS_LOST: "lost",
	} {
		r := sampleVM()
		r.Status = st
		if got := toVMJSON(r).Status; got != name {
			t.Errorf("status %v prints %q, want %q", st, got, name)
		}
	}
}

func TestClusterJSONShape(t *testing.T) {
	st := &blixardpb.ClusterStatusResponse{
		ClusterId: "c1", LeaderId: 1, Term: 3, AppliedIndex: 42,
		Nodes: []*blixardpb.NodeInfo{{
			Node:  &blixardpb.NodeRecord{Id: 1, ApiAddr: "127.0.0.1:7001", RaftAddr: "127.0.0.1:7002", Vcpus: 8, MemoryMb: 4096, Status: blixardpb.NodeStatus_NODE_STATUS_DRAINING, Schedulable: true},
			Voter: true, Leader: true, VcpusUsed: 2, MemoryUsedMb: 512, Vms: 1,
		}},
	}
	cj := toClusterJSON(st)
	hasKeys(t, "cluster status", jsonKeys(t, cj), []string{"cluster_id", "leader_id", "term", "applied_index", "nodes"})
	hasKeys(t, "node", jsonKeys(t, cj.Nodes[0]), []string{"id", "api_addr", "raft_addr", "status", "voter", "vcpus", "memory_mb", "vcpus_used", "memory_used_mb", "vms"})
	if cj.Nodes[0].Status != "draining" || !cj.Nodes[0].Voter || cj.Nodes[0].VcpusUsed != 2 {
		t.Errorf("node json %+v", cj.Nodes[0])
	}
	// No nodes still prints "nodes": [] (not null) for scripts.
	b, _ := json.Marshal(toClusterJSON(&blixardpb.ClusterStatusResponse{}))
	if !strings.Contains(string(b), `"nodes":[]`) {
		t.Errorf("empty cluster JSON %s", b)
	}
}

func TestTablesAreAligned(t *testing.T) {
	var buf bytes.Buffer
	long := sampleVM()
	long.Spec.Name = "a-much-longer-vm-name"
	if err := writeVMTable(&buf, []*blixardpb.VmRecord{sampleVM(), long}); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimRight(buf.String(), "\n"), "\n")
	if len(lines) != 3 || !strings.HasPrefix(lines[0], "NAME ") {
		t.Fatalf("table:\n%s", buf.String())
	}
	col := strings.Index(lines[0], "STATUS")
	for _, l := range lines[1:] {
		if !strings.HasPrefix(l[col:], "starting") {
			t.Errorf("STATUS column not aligned at %d:\n%s", col, buf.String())
		}
	}
}

func TestInitialClusterAndClusterID(t *testing.T) {
	m, err := parseInitialCluster("1=127.0.0.1:7002, 2=127.0.0.1:7012,3=127.0.0.1:7022")
	if err != nil {
		t.Fatal(err)
	}
	want := map[uint64]string{1: "127.0.0.1:7002", 2: "127.0.0.1:7012", 3: "127.0.0.1:7022"}
	if d := cmp.Diff(want, m); d != "" {
		t.Fatalf("(-want +got):\n%s", d)
	}
	m2, _ := parseInitialCluster("3=127.0.0.1:7022,1=127.0.0.1:7002,2=127.0.0.1:7012")
	if clusterIDFor(m) != clusterIDFor(m2) {
		t.Error("cluster id depends on the order of --initial-cluster")
	}
	m3, _ := parseInitialCluster("1=127.0.0.1:7002")
	if clusterIDFor(m) == clusterIDFor(m3) {
		t.Error("different clusters share a cluster id")
	}
}
