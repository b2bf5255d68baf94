package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"
)

// The multi-process test: three `blixard run` processes on loopback with
// the fake driver, driven through the CLI binary exactly as an operator
// would. It checks the user contract of DESIGN.md §7 end to end: writes
// through any node, agreement across nodes, leader failure, recovery of a
// restarted node, error messages and exit codes, and that rejected
// commands change nothing.

// buildBinary compiles cmd/blixard (without -race, to keep it fast).
func buildBinary(t testing.TB) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "blixard")
	goTool := filepath.Join(runtime.GOROOT(), "bin", "go")
	if _, err := os.Stat(goTool); err != nil {
		if goTool, err = exec.LookPath("go"); err != nil {
			t.Skip("no go tool to build the binary with")
		}
	}
	cmd := exec.Command(goTool, "build", "-o", bin, ".")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// freePorts returns n distinct loopback ports that were free a moment ago.
func freePorts(t testing.TB, n int) []int {
	t.Helper()
	var ls []net.Listener
	var ports []int
	for i := 0; i < n; i++ {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	for _, l := range ls {
		l.Close()
	}
	return ports
}

type testNode struct {
	id                         int
	api, raft, gossip, dataDir string
	logPath                    string
	cmd                        *exec.Cmd
	done                       chan struct{}
}

type testCluster struct {
	t       *testing.T
	bin     string
	nodes   []*testNode
	initial string
}

func newTestCluster(t *testing.T, bin string, n int) *testCluster {
	ports := freePorts(t, 3*n)
	c := &testCluster{t: t, bin: bin}
	var members []string
	for i := 0; i < n; i++ {
		nd := &testNode{
			id:      i + 1,
			api:     fmt.Sprintf("127.0.0.1:%d", ports[3*i]),
			raft:    fmt.Sprintf("127.0.0.1:%d", ports[3*i+1]),
			gossip:  fmt.Sprintf("127.0.0.1:%d", ports[3*i+2]),
			dataDir: filepath.Join(t.TempDir(), fmt.Sprintf("node%d", i+1)),
		}
		nd.logPath = filepath.Join(t.TempDir(), fmt.Sprintf("node%d.log", i+1))
		c.nodes = append(c.nodes, nd)
		members = append(members, fmt.Sprintf("%d=%s", nd.id, nd.raft))
	}
	c.initial = strings.Join(members, ",")
	t.Cleanup(func() {
		for _, nd := range c.nodes {
			c.kill(nd)
		}
		if t.Failed() {
			for _, nd := range c.nodes {
				b, _ := os.ReadFile(nd.logPath)
				t.Logf("---- node %d log (last 4 KiB) ----\n%s", nd.id, tail(b, 4096))
			}
		}
	})
	for _, nd := range c.nodes {
		c.start(nd)
	}
	return c
}

func tail(b []byte, n int) []byte {
	if len(b) > n {
		return b[len(b)-n:]
	}
	return b
}

func (c *testCluster) start(nd *testNode) {
	c.t.Helper()
	logf, err := os.OpenFile(nd.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		c.t.Fatal(err)
	}
	cmd := exec.Command(c.bin, "run",
		"--node-id", fmt.Sprint(nd.id),
		"--data-dir", nd.dataDir,
		"--api-addr", nd.api,
		"--raft-addr", nd.raft,
		"--gossip-addr", nd.gossip,
		"--initial-cluster", c.initial,
		"--driver", "fake",
		"--vcpus", "32",
		"--memory-mb", "65536",
		"--log-format", "json",
	)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		c.t.Fatal(err)
	}
	nd.cmd = cmd
	nd.done = make(chan struct{})
	go func() {
		cmd.Wait()
		logf.Close()
		close(nd.done)
	}()
}

// kill SIGKILLs the node's process (if running) and reaps it.
func (c *testCluster) kill(nd *testNode) {
	if nd.cmd == nil {
		return
	}
	nd.cmd.Process.Signal(syscall.SIGKILL)
	<-nd.done
	nd.cmd = nil
}

// cli runs the blixard CLI and returns its stdout, stderr and exit code.
func (c *testCluster) cli(args ...string) (string, string, int) {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, c.bin, args...)
	cmd.Env = append(os.Environ(), "BLIXARD_ADDR=")
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code := 0
	if err != nil {
		ee, ok := err.(*exec.ExitError)
		if !ok {
			c.t.Fatalf("running blixard %s: %v", strings.Join(args, " "), err)
		}
		code = ee.ExitCode()
	}
	return out.String(), errb.String(), code
}

// mustCLI runs the CLI and fails the test unless it exits 0.
func (c *testCluster) mustCLI(args ...string) string {
	c.t.Helper()
	out, errOut, code := c.cli(args...)
	if code != 0 {
		c.t.Fatalf("blixard %s: exit %d\nstdout: %s\nstderr: %s", strings.Join(args, " "), code, out, errOut)
	}
	return out
}

// waitUntil polls cond until it returns true or the deadline passes;
// cond's string says what it saw last.
func waitUntil(t testing.TB, d time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(d)
	var last string
	for {
		ok, seen := cond()
		if ok {
			return
		}
		last = seen
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s; last seen: %s", d, what, last)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

type listedVM struct {
	Name       string `json:"name"`
	ID         uint64 `json:"id"`
	Desired    string `json:"desired"`
	Status     string `json:"status"`
	NodeID     uint64 `json:"node_id"`
	Generation uint64 `json:"generation"`
}

// vmList runs `vm list -o json` against addr; ok is false when the
// command failed.
func (c *testCluster) vmList(addr string, stale bool) ([]listedVM, string, bool) {
	args := []string{"--addr", addr, "vm", "list", "-o", "json"}
	if stale {
		args = append(args, "--stale")
	}
	out, errOut, code := c.cli(args...)
	if code != 0 {
		return nil, errOut, false
	}
	var vms []listedVM
	if err := json.Unmarshal([]byte(out), &vms); err != nil {
		c.t.Fatalf("vm list -o json printed invalid JSON: %v\n%s", err, out)
	}
	return vms, out, true
}

// commandState is the part of a VM list that only commands change.
func commandState(vms []listedVM) string {
	var parts []string
	for _, v := range vms {
		parts = append(parts, fmt.Sprintf("%s/%d/%s/%d/%d", v.Name, v.ID, v.Desired, v.NodeID, v.Generation))
	}
	sort.Strings(parts)
	return strings.Join(parts, " ")
}

type clusterStatus struct {
	ClusterID string `json:"cluster_id"`
	LeaderID  uint64 `json:"leader_id"`
	Term      uint64 `json:"term"`
	Nodes     []struct {
		ID     uint64 `json:"id"`
		Status string `json:"status"`
		Voter  bool   `json:"voter"`
	} `json:"nodes"`
}

func (c *testCluster) status(addr string) (clusterStatus, bool) {
	out, _, code := c.cli("--addr", addr, "cluster", "status", "-o", "json")
	var st clusterStatus
	if code != 0 {
		return st, false
	}
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		c.t.Fatalf("cluster status -o json printed invalid JSON: %v\n%s", err, out)
	}
	return st, true
}

func (c *testCluster) addrs(except *testNode) string {
	var as []string
	for _, nd := range c.nodes {
		if nd != except {
			as = append(as, nd.api)
		}
	}
	return strings.Join(as, ",")
}

func TestThreeProcessCluster(t *testing.T) {
	if testing.Short() {
		t.Skip("multi-process test: builds the binary and runs three nodes")
	}
	bin := buildBinary(t)
	c := newTestCluster(t, bin, 3)
	n1, n2, n3 := c.nodes[0], c.nodes[1], c.nodes[2]

	// The cluster forms: a leader, three registered alive voters.
	waitUntil(t, 2*time.Minute, "three alive voters and a leader", func() (bool, string) {
		st, ok := c.status(n1.api)
		if !ok || st.LeaderID == 0 || len(st.Nodes) != 3 || st.ClusterID == "" {
			return false, fmt.Sprintf("%+v", st)
		}
		for _, n := range st.Nodes {
			if n.Status != "alive" || !n.Voter {
				return false, fmt.Sprintf("%+v", st)
			}
		}
		return true, ""
	})

	t.Log("cluster formed")
	// Writes through different nodes.
	for i, nd := range c.nodes {
		name := fmt.Sprintf("vm%d", i+1)
		out := c.mustCLI("--addr", nd.api, "vm", "create", name, "--memory", "128", "--wait", "--timeout", "2m")
		if !strings.Contains(out, "vm "+name+": running") {
			t.Fatalf("vm create --wait output lacks the running phase:\n%s", out)
		}
	}

	// Every node lists the same VMs, all running.
	agree := func(nodes []*testNode, stale bool, want int) {
		t.Helper()
		waitUntil(t, time.Minute, "all nodes to list the same running VMs", func() (bool, string) {
			var first string
			for _, nd := range nodes {
				vms, raw, ok := c.vmList(nd.api, stale)
				if !ok {
					return false, fmt.Sprintf("node %d: %s", nd.id, raw)
				}
				if len(vms) != want {
					return false, fmt.Sprintf("node %d lists %d vms: %s", nd.id, len(vms), raw)
				}
				for _, v := range vms {
					if v.Status != "running" {
						return false, fmt.Sprintf("node %d: vm %s is %s", nd.id, v.Name, v.Status)
					}
				}
				if first == "" {
					first = raw
				} else if raw != first {
					return false, fmt.Sprintf("node %d disagrees:\n%s\nvs\n%s", nd.id, raw, first)
				}
			}
			return true, ""
		})
	}
	t.Log("created through every node")
	agree(c.nodes, false, 3)
	t.Log("all nodes agree")

	// Console logs come from the VM's node, whichever node is asked.
	for _, nd := range c.nodes {
		out := c.mustCLI("--addr", nd.api, "vm", "logs", "vm1")
		if !strings.Contains(out, "started vm1") {
			t.Fatalf("vm logs vm1 via node %d:\n%s", nd.id, out)
		}
	}

	// node drain / eligible flip schedulability.
	c.mustCLI("--addr", n1.api, "node", "drain", "3")
	nodesOut := c.mustCLI("--addr", n2.api, "node", "list", "-o", "json")
	var nodes []struct {
		ID          uint64 `json:"id"`
		Schedulable bool   `json:"schedulable"`
	}
	if err := json.Unmarshal([]byte(nodesOut), &nodes); err != nil || len(nodes) != 3 || nodes[2].Schedulable || !nodes[0].Schedulable {
		t.Fatalf("node list after drain 3 (%v):\n%s", err, nodesOut)
	}
	c.mustCLI("--addr", n1.api, "node", "eligible", "3")

	// Kill the leader; the survivors elect another and keep taking writes.
	st, ok := c.status(n1.api)
	if !ok || st.LeaderID == 0 {
		t.Fatalf("no leader: %+v", st)
	}
	leader := c.nodes[st.LeaderID-1]
	t.Logf("killing leader node %d", leader.id)
	c.kill(leader)
	var survivors []*testNode
	for _, nd := range c.nodes {
		if nd != leader {
			survivors = append(survivors, nd)
		}
	}
	survivorAddrs := c.addrs(leader)
	// A dead first address fails over to the next.
	if vms, raw, ok := c.vmList(leader.api+","+survivorAddrs, false); !ok || len(vms) != 3 {
		t.Fatalf("vm list with the dead leader first in --addr: %s", raw)
	}
	for i := 0; i < 3; i++ {
		name := fmt.Sprintf("after%d", i)
		// Pin to a survivor: nothing marks the dead node down until gossip
		// membership lands, so the scheduler could still choose it.
		target := survivors[i%2]
		out := c.mustCLI("--addr", survivorAddrs, "vm", "create", name, "--memory", "128", "--node", fmt.Sprint(target.id), "--wait", "--timeout", "2m")
		if !strings.Contains(out, fmt.Sprintf("vm %s: scheduled on node %d", name, target.id)) || !strings.Contains(out, "vm "+name+": running") {
			t.Fatalf("unexpected create output:\n%s", out)
		}
	}
	t.Log("created through survivors")
	waitUntil(t, time.Minute, "a new leader", func() (bool, string) {
		st, ok := c.status(survivors[0].api)
		return ok && st.LeaderID != 0 && st.LeaderID != uint64(leader.id), fmt.Sprintf("%+v", st)
	})

	// The killed node restarts from its data dir and converges: its local
	// (stale) state matches, and its VMs are re-adopted and running.
	c.start(leader)
	agree(c.nodes, true, 6)
	agree(c.nodes, false, 6)
	t.Logf("node %d restarted and converged", leader.id)

	// Rejected commands: each exits 1 with one line naming the problem and
	// changes nothing.
	before, raw, ok := c.vmList(n2.api, false)
	if !ok {
		t.Fatalf("vm list: %s", raw)
	}
	for _, tc := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"--addr", n1.api, "vm", "create", "vm1"}, 1, `already exists`},
		{[]string{"--addr", n2.api, "vm", "create", "Bad_Name"}, 1, `must be a DNS label`},
		{[]string{"--addr", n3.api, "vm", "status", "nope"}, 1, `not found`},
		{[]string{"--addr", n3.api, "vm", "delete", "nope"}, 1, `not found`},
		{[]string{"--addr", n1.api, "vm", "create", "big", "--vcpus", "100"}, 1, `vcpus`},
		{[]string{"--addr", n1.api, "vm", "create", "x", "--bogus"}, 2, `unknown flag: --bogus`},
		{[]string{"--addr", n1.api, "vm", "create", "x", "--restart", "foo"}, 2, `always|on-failure|never`},
		{[]string{"--addr", n1.api, "vm", "create"}, 2, `missing NAME`},
		{[]string{"--addr", n1.api, "vm", "list", "-o", "yaml"}, 2, `table or json`},
	} {
		out, errOut, code := c.cli(tc.args...)
		lines := strings.Split(strings.TrimRight(errOut, "\n"), "\n")
		if code != tc.code || len(lines) != 1 || !strings.HasPrefix(lines[0], "error: ") || !strings.Contains(errOut, tc.want) {
			t.Errorf("blixard %s: exit %d, stderr %q; want exit %d and one line \"error: ...%s...\" (stdout %q)",
				strings.Join(tc.args, " "), code, errOut, tc.code, tc.want, out)
		}
	}
	after, raw, ok := c.vmList(n1.api, false)
	if !ok {
		t.Fatalf("vm list: %s", raw)
	}
	if commandState(before) != commandState(after) {
		t.Fatalf("rejected commands changed the state:\nbefore %s\nafter  %s", commandState(before), commandState(after))
	}

	t.Log("rejected commands checked")
	// Lifecycle through the CLI: stop, start and delete with --wait.
	c.mustCLI("--addr", n2.api, "vm", "stop", "vm1", "--wait", "--timeout", "2m")
	c.mustCLI("--addr", n3.api, "vm", "start", "vm1", "--wait", "--timeout", "2m")
	out := c.mustCLI("--addr", n1.api, "vm", "delete", "vm2", "--wait", "--timeout", "2m")
	if !strings.Contains(out, "vm vm2: deleted") {
		t.Fatalf("delete --wait output: %s", out)
	}
	if _, errOut, code := c.cli("--addr", n2.api, "vm", "status", "vm2"); code != 1 || !strings.Contains(errOut, "not found") {
		t.Fatalf("deleted vm: exit %d, %s", code, errOut)
	}
}
