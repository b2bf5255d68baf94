package main

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Multi-process tests of gossip membership and failover: clusters formed
// with --join alone, node loss, the return of a lost node, and
// self-fencing. They reuse the harness of cluster_test.go.

// newJoinCluster prepares n nodes without starting them.
func newJoinCluster(t *testing.T, bin string, n int) *testCluster {
	ports := freePorts(t, 3*n)
	c := &testCluster{t: t, bin: bin}
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
	}
	t.Cleanup(func() {
		for _, nd := range c.nodes {
			c.kill(nd)
		}
		if t.Failed() {
			for _, nd := range c.nodes {
				b, _ := os.ReadFile(nd.logPath)
				t.Logf("---- node %d log (last 6 KiB) ----\n%s", nd.id, tail(b, 6144))
			}
		}
	})
	return c
}

// startJoin starts nd with --join (when given) instead of --initial-cluster.
func (c *testCluster) startJoin(nd *testNode, join string, extra ...string) {
	c.t.Helper()
	logf, err := os.OpenFile(nd.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		c.t.Fatal(err)
	}
	args := []string{"run",
		"--node-id", fmt.Sprint(nd.id),
		"--data-dir", nd.dataDir,
		"--api-addr", nd.api,
		"--raft-addr", nd.raft,
		"--gossip-addr", nd.gossip,
		"--driver", "fake",
		"--vcpus", "32",
		"--memory-mb", "65536",
		"--log-format", "json",
	}
	if join != "" {
		args = append(args, "--join", join)
	}
	args = append(args, extra...)
	cmd := exec.Command(c.bin, args...)
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

// waitMembers waits until the cluster status read through addr lists the
// ids given, all alive, with voter flags as in voters.
func (c *testCluster) waitMembers(addr string, d time.Duration, voters map[uint64]bool) clusterStatus {
	c.t.Helper()
	var got clusterStatus
	waitUntil(c.t, d, fmt.Sprintf("members %v alive", voters), func() (bool, string) {
		st, ok := c.status(addr)
		if !ok || st.LeaderID == 0 || len(st.Nodes) != len(voters) {
			return false, fmt.Sprintf("%+v", st)
		}
		for _, n := range st.Nodes {
			v, want := voters[n.ID]
			if !want || n.Status != "alive" || n.Voter != v {
				return false, fmt.Sprintf("%+v", st)
			}
		}
		got = st
		return true, ""
	})
	return got
}

// fakeRunning reads a node's fake driver state: the VMs whose latest run
// has not stopped.
func fakeRunning(t *testing.T, nd *testNode) map[string]bool {
	t.Helper()
	out := map[string]bool{}
	dir := filepath.Join(nd.dataDir, "fake")
	entries, err := os.ReadDir(dir)
	if err != nil {
		return out
	}
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join(dir, e.Name(), "state.json"))
		if err != nil {
			continue
		}
		var st struct {
			Runs []struct {
				StoppedAt time.Time
			}
		}
		if err := json.Unmarshal(b, &st); err != nil {
			continue // being rewritten
		}
		if n := len(st.Runs); n > 0 && st.Runs[n-1].StoppedAt.IsZero() {
			out[e.Name()] = true
		}
	}
	return out
}

// runningOnce checks, on the nodes given, that every VM of the list runs
// exactly once, on the node the cluster placed it on, with status
// running. It returns a description of what is wrong.
func runningOnce(t *testing.T, vms []listedVM, nodes []*testNode) (bool, string) {
	copies := map[string][]int{}
	for _, nd := range nodes {
		for name := range fakeRunning(t, nd) {
			copies[name] = append(copies[name], nd.id)
		}
	}
	var bad []string
	for _, v := range vms {
		c := copies[v.Name]
		if v.Status != "running" || len(c) != 1 || uint64(c[0]) != v.NodeID {
			bad = append(bad, fmt.Sprintf("%s: status %s on node %d, running on %v", v.Name, v.Status, v.NodeID, c))
		}
	}
	sort.Strings(bad)
	return len(bad) == 0, strings.Join(bad, "; ")
}

func liveNodes(c *testCluster, except ...*testNode) []*testNode {
	var out []*testNode
	for _, nd := range c.nodes {
		skip := nd.cmd == nil
		for _, e := range except {
			skip = skip || nd == e
		}
		if !skip {
			out = append(out, nd)
		}
	}
	return out
}

// logTime returns the time of the first JSON log line of nd matching re.
func logTime(nd *testNode, re *regexp.Regexp) (time.Time, bool) {
	b, err := os.ReadFile(nd.logPath)
	if err != nil {
		return time.Time{}, false
	}
	for _, line := range strings.Split(string(b), "\n") {
		if !re.MatchString(line) {
			continue
		}
		var rec struct {
			Time time.Time `json:"time"`
		}
		if json.Unmarshal([]byte(line), &rec) == nil && !rec.Time.IsZero() {
			return rec.Time, true
		}
	}
	return time.Time{}, false
}

func firstLogTime(nodes []*testNode, re *regexp.Regexp) (time.Time, bool) {
	var best time.Time
	for _, nd := range nodes {
		if at, ok := logTime(nd, re); ok && (best.IsZero() || at.Before(best)) {
			best = at
		}
	}
	return best, !best.IsZero()
}

func TestJoinFormsAndGrowsCluster(t *testing.T) {
	if testing.Short() {
		t.Skip("multi-process test: builds the binary and runs four nodes")
	}
	bin := buildBinary(t)
	c := newJoinCluster(t, bin, 5)
	n1, n2, n3, n4, n5 := c.nodes[0], c.nodes[1], c.nodes[2], c.nodes[3], c.nodes[4]
	// Gossip is encrypted with a shared key.
	keyFile := filepath.Join(t.TempDir(), "gossip.key")
	if err := os.WriteFile(keyFile, []byte("MDEyMzQ1Njc4OWFiY2RlZg==\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	opts := []string{"--max-voters", "3", "--gossip-key-file", keyFile}

	// Node 1 bootstraps alone; 2 and 3 join through it.
	c.startJoin(n1, "", opts...)
	c.waitMembers(n1.api, time.Minute, map[uint64]bool{1: true})
	c.startJoin(n2, n1.gossip, opts...)
	c.startJoin(n3, n1.gossip, opts...)
	c.waitMembers(n1.api, time.Minute, map[uint64]bool{1: true, 2: true, 3: true})
	c.mustCLI("--addr", n2.api, "vm", "create", "web", "--wait")

	// A 4th joins through node 3 and, beyond --max-voters 3, is non-voting;
	// it serves linearizable reads.
	joinAt := time.Now()
	c.startJoin(n4, n3.gossip, opts...)
	waitUntil(t, time.Minute, "node 4 serves linearizable reads", func() (bool, string) {
		vms, out, ok := c.vmList(n4.api, false)
		return ok && len(vms) == 1, out
	})
	t.Logf("MEASURE join of node 4 -> linearizable read served: %s", time.Since(joinAt).Round(time.Millisecond))
	c.waitMembers(n1.api, time.Minute, map[uint64]bool{1: true, 2: true, 3: true, 4: false})

	// Another process with a live member's id is refused.
	dup := &testNode{id: 2, api: n5.api, raft: n5.raft, gossip: n5.gossip, dataDir: n5.dataDir, logPath: n5.logPath}
	c.nodes[4] = dup
	c.startJoin(dup, n1.gossip, opts...)
	select {
	case <-dup.done:
	case <-time.After(time.Minute):
		t.Fatal("a node with a live member's id kept running")
	}
	code := dup.cmd.ProcessState.ExitCode()
	dup.cmd = nil
	if code == 0 {
		t.Fatal("duplicate node id exited 0")
	}
	b, _ := os.ReadFile(dup.logPath)
	if !strings.Contains(string(b), "already used by a live member") {
		t.Fatalf("duplicate node id: no clear refusal in its log:\n%s", tail(b, 2048))
	}

	// A joined node restarts from its data dir with the same flags.
	c.kill(n2)
	c.startJoin(n2, n1.gossip, opts...)
	waitUntil(t, time.Minute, "restarted node 2 serves linearizable reads", func() (bool, string) {
		vms, out, ok := c.vmList(n2.api, false)
		return ok && len(vms) == 1, out
	})
	c.waitMembers(n1.api, time.Minute, map[uint64]bool{1: true, 2: true, 3: true, 4: false})
}

func TestNodeLossReplacesVMsOnce(t *testing.T) {
	if testing.Short() {
		t.Skip("multi-process test: builds the binary and runs three nodes")
	}
	bin := buildBinary(t)
	c := newJoinCluster(t, bin, 3)
	n1, n2, n3 := c.nodes[0], c.nodes[1], c.nodes[2]
	c.startJoin(n1, "")
	c.waitMembers(n1.api, time.Minute, map[uint64]bool{1: true})
	c.startJoin(n2, n1.gossip)
	c.startJoin(n3, n1.gossip)
	st := c.waitMembers(n1.api, time.Minute, map[uint64]bool{1: true, 2: true, 3: true})
	for i := 0; i < 6; i++ {
		c.mustCLI("--addr", n1.api, "vm", "create", fmt.Sprintf("vm%d", i), "--wait")
	}
	vms, out, ok := c.vmList(n1.api, false)
	if !ok {
		t.Fatal(out)
	}
	if ok, why := runningOnce(t, vms, c.nodes); !ok {
		t.Fatalf("before the failure: %s", why)
	}
	// The victim: a follower hosting VMs.
	var victim *testNode
	for _, nd := range c.nodes {
		hosts := 0
		for _, v := range vms {
			if v.NodeID == uint64(nd.id) {
				hosts++
			}
		}
		if uint64(nd.id) != st.LeaderID && hosts > 0 && victim == nil {
			victim = nd
		}
	}
	if victim == nil {
		t.Fatalf("no follower hosts a VM: %+v", vms)
	}
	survivors := liveNodes(c, victim)

	killedAt := time.Now()
	c.kill(victim)
	var last []listedVM
	waitUntil(t, time.Minute, "every VM running exactly once on the survivors", func() (bool, string) {
		// Nothing runs twice at any sampled moment.
		for name, n := range countCopies(t, survivors) {
			if n > 1 {
				t.Fatalf("vm %s runs %d times on the survivors", name, n)
			}
		}
		vms, out, ok := c.vmList(survivors[0].api, false)
		if !ok {
			return false, out
		}
		last = vms
		for _, v := range vms {
			if v.NodeID == uint64(victim.id) {
				return false, fmt.Sprintf("%s still on node %d", v.Name, victim.id)
			}
		}
		return runningOnce(t, vms, survivors)
	})
	allRunning := time.Since(killedAt)
	victimName := fmt.Sprintf("node-%d", victim.id)
	detect, ok1 := firstLogTime(survivors, regexp.MustCompile(`Marking `+victimName+` as failed`))
	down, ok2 := firstLogTime(survivors, regexp.MustCompile(fmt.Sprintf(`"action":"set node %d down"`, victim.id)))
	if ok1 && ok2 && down.Sub(detect) < 4*time.Second {
		t.Fatalf("node %d set down %s after gossip declared it dead, before the 4s grace", victim.id, down.Sub(detect))
	}
	if ok1 && ok2 {
		t.Logf("MEASURE node SIGKILL -> all VMs running elsewhere: %s (detection %s, down proposed at %s, started %s after)",
			allRunning.Round(time.Millisecond), detect.Sub(killedAt).Round(time.Millisecond),
			down.Sub(killedAt).Round(time.Millisecond), (allRunning - down.Sub(killedAt)).Round(time.Millisecond))
	} else {
		t.Logf("MEASURE node SIGKILL -> all VMs running elsewhere: %s (phase log lines not found)", allRunning.Round(time.Millisecond))
	}

	// The victim returns: its stale copies stop, each VM runs once.
	c.startJoin(victim, n1.gossip)
	waitUntil(t, time.Minute, "the returned node alive and its stale copies stopped", func() (bool, string) {
		st, ok := c.status(n1.api)
		if !ok {
			return false, "no status"
		}
		for _, n := range st.Nodes {
			if n.ID == uint64(victim.id) && n.Status != "alive" {
				return false, fmt.Sprintf("node %d is %s", n.ID, n.Status)
			}
		}
		return runningOnce(t, last, c.nodes)
	})

	// Leader SIGKILL -> first successful write through another node.
	st, _ = c.status(n1.api)
	var leader *testNode
	for _, nd := range c.nodes {
		if uint64(nd.id) == st.LeaderID {
			leader = nd
		}
	}
	others := liveNodes(c, leader)
	killedAt = time.Now()
	c.kill(leader)
	for i := 0; ; i++ {
		_, _, code := c.cli("--addr", others[i%len(others)].api, "vm", "create", fmt.Sprintf("after-leader-%d", i), "--no-start")
		if code == 0 {
			break
		}
		if time.Since(killedAt) > time.Minute {
			t.Fatal("no successful write within a minute of the leader's death")
		}
	}
	t.Logf("MEASURE leader SIGKILL -> first successful write: %s", time.Since(killedAt).Round(time.Millisecond))
}

func countCopies(t *testing.T, nodes []*testNode) map[string]int {
	out := map[string]int{}
	for _, nd := range nodes {
		for name := range fakeRunning(t, nd) {
			out[name]++
		}
	}
	return out
}

// TestSelfFencing freezes two of three nodes (SIGSTOP): the third loses
// its quorum and must stop its VMs within --fence-timeout (plus one read
// timeout and the stop). Thawed, the cluster converges: every VM runs
// exactly once again.
func TestSelfFencing(t *testing.T) {
	if testing.Short() {
		t.Skip("multi-process test: builds the binary and runs three nodes")
	}
	bin := buildBinary(t)
	c := newJoinCluster(t, bin, 3)
	n1 := c.nodes[0]
	c.startJoin(n1, "")
	c.waitMembers(n1.api, time.Minute, map[uint64]bool{1: true})
	c.startJoin(c.nodes[1], n1.gossip)
	c.startJoin(c.nodes[2], n1.gossip)
	c.waitMembers(n1.api, time.Minute, map[uint64]bool{1: true, 2: true, 3: true})
	for i := 0; i < 6; i++ {
		c.mustCLI("--addr", n1.api, "vm", "create", fmt.Sprintf("vm%d", i), "--wait")
	}
	vms, out, ok := c.vmList(n1.api, false)
	if !ok {
		t.Fatal(out)
	}
	var isolated *testNode
	for _, nd := range c.nodes {
		if len(fakeRunning(t, nd)) > 0 {
			isolated = nd
			break
		}
	}
	if isolated == nil {
		t.Fatal("no node runs a VM")
	}
	frozen := liveNodes(c, isolated)
	for _, nd := range frozen {
		nd.cmd.Process.Signal(syscall.SIGSTOP)
	}
	stoppedAt := time.Now()
	thawed := false
	thaw := func() {
		if !thawed {
			thawed = true
			for _, nd := range frozen {
				nd.cmd.Process.Signal(syscall.SIGCONT)
			}
		}
	}
	t.Cleanup(thaw)
	waitUntil(t, 15*time.Second, fmt.Sprintf("isolated node %d stops its VMs", isolated.id), func() (bool, string) {
		r := fakeRunning(t, isolated)
		return len(r) == 0, fmt.Sprintf("still running: %v", r)
	})
	fencedIn := time.Since(stoppedAt)
	t.Logf("MEASURE quorum lost -> isolated node's VMs stopped: %s (fence timeout 3s)", fencedIn.Round(time.Millisecond))
	if fencedIn < 3*time.Second {
		t.Fatalf("fenced after %s, before the 3s fence timeout", fencedIn)
	}
	thaw()
	waitUntil(t, time.Minute, "every VM running exactly once after the thaw", func() (bool, string) {
		cur, out, ok := c.vmList(n1.api, false)
		if !ok {
			return false, out
		}
		if len(cur) != len(vms) {
			return false, fmt.Sprintf("%d vms, want %d", len(cur), len(vms))
		}
		return runningOnce(t, cur, c.nodes)
	})
}

// TestDrainMovesVMs drains a node hosting VMs: they move off it and run
// once elsewhere, new VMs avoid it, the last schedulable node cannot be
// drained, and eligible restores the node.
func TestDrainMovesVMs(t *testing.T) {
	if testing.Short() {
		t.Skip("multi-process test: builds the binary and runs three nodes")
	}
	bin := buildBinary(t)
	c := newJoinCluster(t, bin, 3)
	n1, n2, n3 := c.nodes[0], c.nodes[1], c.nodes[2]
	c.startJoin(n1, "")
	c.waitMembers(n1.api, time.Minute, map[uint64]bool{1: true})
	c.startJoin(n2, n1.gossip)
	c.startJoin(n3, n1.gossip)
	c.waitMembers(n1.api, time.Minute, map[uint64]bool{1: true, 2: true, 3: true})
	for i := 0; i < 6; i++ {
		c.mustCLI("--addr", n1.api, "vm", "create", fmt.Sprintf("vm%d", i), "--wait")
	}
	vms, _, _ := c.vmList(n1.api, false)
	on := func(vms []listedVM, id int) int {
		k := 0
		for _, v := range vms {
			if v.NodeID == uint64(id) {
				k++
			}
		}
		return k
	}
	if on(vms, 2) == 0 {
		t.Fatalf("node 2 hosts no VM to drain: %+v", vms)
	}
	out := c.mustCLI("--addr", n1.api, "node", "drain", "2", "--deadline", "1m")
	if !strings.Contains(out, "node 2 drained") {
		t.Fatalf("drain output: %s", out)
	}
	vms, _, _ = c.vmList(n1.api, false)
	if on(vms, 2) != 0 {
		t.Fatalf("VMs left on the drained node: %+v", vms)
	}
	waitUntil(t, 30*time.Second, "every VM running once off node 2", func() (bool, string) {
		vms, out, ok := c.vmList(n1.api, false)
		if !ok {
			return false, out
		}
		return runningOnce(t, vms, c.nodes)
	})
	c.mustCLI("--addr", n1.api, "vm", "create", "fresh", "--wait")
	vms, _, _ = c.vmList(n1.api, false)
	if on(vms, 2) != 0 {
		t.Fatalf("a new VM was placed on the drained node: %+v", vms)
	}
	c.mustCLI("--addr", n1.api, "node", "drain", "3")
	_, errOut, code := c.cli("--addr", n1.api, "node", "drain", "1")
	if code != 1 || !strings.Contains(errOut, "last schedulable node") {
		t.Fatalf("draining the last schedulable node: exit %d, stderr %q", code, errOut)
	}
	c.mustCLI("--addr", n1.api, "node", "eligible", "2")
	c.mustCLI("--addr", n1.api, "node", "eligible", "3")
	st, _ := c.status(n1.api)
	for _, n := range st.Nodes {
		if n.Status != "alive" {
			t.Fatalf("after eligible: %+v", st)
		}
	}
}

// TestGracefulLeaveAndRejoin: with --max-voters 3, a 4th node is
// non-voting; a voter run with --leave-on-exit leaves on SIGTERM (its VMs
// move, its record and replica go) and the non-voting node is promoted;
// the removed id is refused afterwards with a clear message; a new id
// joins in its place.
func TestGracefulLeaveAndRejoin(t *testing.T) {
	if testing.Short() {
		t.Skip("multi-process test: builds the binary and runs three nodes")
	}
	bin := buildBinary(t)
	c := newJoinCluster(t, bin, 5)
	n1, n2, n3, n4, n5 := c.nodes[0], c.nodes[1], c.nodes[2], c.nodes[3], c.nodes[4]
	mv := []string{"--max-voters", "3"}
	c.startJoin(n1, "", mv...)
	c.waitMembers(n1.api, time.Minute, map[uint64]bool{1: true})
	c.startJoin(n2, n1.gossip, mv...)
	c.startJoin(n3, n1.gossip, append(mv, "--leave-on-exit")...)
	c.waitMembers(n1.api, time.Minute, map[uint64]bool{1: true, 2: true, 3: true})
	c.startJoin(n4, n1.gossip, mv...)
	c.waitMembers(n1.api, time.Minute, map[uint64]bool{1: true, 2: true, 3: true, 4: false})
	for i := 0; i < 6; i++ {
		c.mustCLI("--addr", n1.api, "vm", "create", fmt.Sprintf("vm%d", i), "--wait")
	}
	if len(fakeRunning(t, n3)) == 0 {
		t.Fatal("node 3 runs no VM")
	}
	n3.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-n3.done:
	case <-time.After(time.Minute):
		t.Fatal("node 3 did not exit within a minute of SIGTERM")
	}
	if code := n3.cmd.ProcessState.ExitCode(); code != 0 {
		t.Fatalf("leaving node exited %d", code)
	}
	n3.cmd = nil
	if r := fakeRunning(t, n3); len(r) != 0 {
		t.Fatalf("the node left with VMs running: %v", r)
	}
	c.waitMembers(n1.api, time.Minute, map[uint64]bool{1: true, 2: true, 4: true})
	waitUntil(t, time.Minute, "every VM running once on nodes 1, 2 and 4", func() (bool, string) {
		vms, out, ok := c.vmList(n1.api, false)
		if !ok {
			return false, out
		}
		return runningOnce(t, vms, c.nodes)
	})

	// The removed id is refused, clearly.
	n3.dataDir = filepath.Join(t.TempDir(), "node3-again")
	c.startJoin(n3, n1.gossip)
	select {
	case <-n3.done:
	case <-time.After(time.Minute):
		t.Fatal("a removed node id kept running")
	}
	code := n3.cmd.ProcessState.ExitCode()
	n3.cmd = nil
	b, _ := os.ReadFile(n3.logPath)
	if code == 0 || !strings.Contains(string(b), "was removed from the cluster") {
		t.Fatalf("rejoin with a removed id: exit %d, log:\n%s", code, tail(b, 2048))
	}

	// A new id joins (non-voting: three voters again).
	c.startJoin(n5, n2.gossip, mv...)
	c.waitMembers(n1.api, time.Minute, map[uint64]bool{1: true, 2: true, 4: true, 5: false})
}

// TestBootstrapExpect: three fresh nodes with --bootstrap-expect 3 form a
// cluster as soon as they see each other; a fourth started the same way
// later joins it instead.
func TestBootstrapExpect(t *testing.T) {
	if testing.Short() {
		t.Skip("multi-process test: builds the binary and runs four nodes")
	}
	bin := buildBinary(t)
	c := newJoinCluster(t, bin, 4)
	n1, n2, n3, n4 := c.nodes[0], c.nodes[1], c.nodes[2], c.nodes[3]
	opt := []string{"--bootstrap-expect", "3"}
	c.startJoin(n3, n1.gossip, opt...)
	c.startJoin(n1, n2.gossip, opt...)
	c.startJoin(n2, n1.gossip, opt...)
	formed := c.waitMembers(n2.api, time.Minute, map[uint64]bool{1: true, 2: true, 3: true})
	if formed.ClusterID == "" {
		t.Fatalf("no cluster id: %+v", formed)
	}
	c.mustCLI("--addr", n3.api, "vm", "create", "web", "--wait")
	c.startJoin(n4, n3.gossip, opt...)
	c.waitMembers(n1.api, time.Minute, map[uint64]bool{1: true, 2: true, 3: true, 4: true})
	for _, nd := range c.nodes {
		if st, ok := c.status(nd.api); !ok || st.ClusterID != formed.ClusterID {
			t.Fatalf("node %d: status %+v", nd.id, st)
		}
	}
}

// TestLeaderLeaves: `blixard cluster leave ID`, sent to a follower (which
// forwards it), makes the Raft leader leave and exit; the other two elect
// a leader and keep accepting writes. Bad ids are refused first.
func TestLeaderLeaves(t *testing.T) {
	if testing.Short() {
		t.Skip("multi-process test: builds the binary and runs three nodes")
	}
	bin := buildBinary(t)
	c := newJoinCluster(t, bin, 3)
	n1 := c.nodes[0]
	c.startJoin(n1, "", "--leave-on-exit")
	c.waitMembers(n1.api, time.Minute, map[uint64]bool{1: true})
	c.startJoin(c.nodes[1], n1.gossip, "--leave-on-exit")
	c.startJoin(c.nodes[2], n1.gossip, "--leave-on-exit")
	st := c.waitMembers(n1.api, time.Minute, map[uint64]bool{1: true, 2: true, 3: true})
	c.mustCLI("--addr", n1.api, "vm", "create", "web", "--wait")
	leader := c.nodes[st.LeaderID-1]
	follower := c.nodes[st.LeaderID%3]
	if _, errOut, code := c.cli("--addr", follower.api, "cluster", "leave", "99"); code != 1 || !strings.Contains(errOut, "node 99 not found") {
		t.Fatalf("cluster leave 99: exit %d, stderr %q; want 1 and not found", code, errOut)
	}
	if _, errOut, code := c.cli("--addr", follower.api, "cluster", "leave", "x"); code != 2 {
		t.Fatalf("cluster leave x: exit %d, stderr %q; want a usage error", code, errOut)
	}
	out := c.mustCLI("--addr", follower.api, "cluster", "leave", fmt.Sprint(st.LeaderID))
	if !strings.Contains(out, fmt.Sprintf("node %d left the cluster", st.LeaderID)) {
		t.Fatalf("cluster leave printed %q", out)
	}
	select {
	case <-leader.done:
	case <-time.After(time.Minute):
		t.Fatal("the leader did not exit within a minute of leaving")
	}
	if code := leader.cmd.ProcessState.ExitCode(); code != 0 {
		t.Fatalf("leaving leader exited %d", code)
	}
	leader.cmd = nil
	rest := liveNodes(c)
	want := map[uint64]bool{}
	for _, nd := range rest {
		want[uint64(nd.id)] = true
	}
	c.waitMembers(rest[0].api, time.Minute, want)
	c.mustCLI("--addr", rest[1].api, "vm", "create", "after", "--wait")
	waitUntil(t, time.Minute, "both VMs running once", func() (bool, string) {
		vms, out, ok := c.vmList(rest[0].api, false)
		if !ok || len(vms) != 2 {
			return false, out
		}
		return runningOnce(t, vms, c.nodes)
	})
}

// A voter that stays down is replaced by a caught-up non-voting member
// (--dead-voter-grace): its record and replica go, the non-voting member
// votes, and the cluster again tolerates the loss of one more voter.
func TestDeadVoterReplaced(t *testing.T) {
	if testing.Short() {
		t.Skip("multi-process test: builds the binary and runs four nodes")
	}
	bin := buildBinary(t)
	c := newJoinCluster(t, bin, 4)
	n1, n2, n3, n4 := c.nodes[0], c.nodes[1], c.nodes[2], c.nodes[3]
	opts := []string{"--max-voters", "3", "--dead-voter-grace", "2s"}
	c.startJoin(n1, "", opts...)
	c.waitMembers(n1.api, time.Minute, map[uint64]bool{1: true})
	c.startJoin(n2, n1.gossip, opts...)
	c.startJoin(n3, n1.gossip, opts...)
	c.waitMembers(n1.api, time.Minute, map[uint64]bool{1: true, 2: true, 3: true})
	c.startJoin(n4, n1.gossip, opts...)
	c.waitMembers(n1.api, time.Minute, map[uint64]bool{1: true, 2: true, 3: true, 4: false})

	c.kill(n3)
	killed := time.Now()
	c.waitMembers(n1.api, time.Minute, map[uint64]bool{1: true, 2: true, 4: true})
	t.Logf("MEASURE voter 3 killed -> replaced by node 4: %s", time.Since(killed).Round(time.Millisecond))

	// With voters 1, 2, 4 all alive, losing one more still leaves a quorum.
	c.kill(n2)
	addrs := n1.api + "," + n4.api
	waitUntil(t, time.Minute, "a write with voter 2 also gone", func() (bool, string) {
		out, errOut, code := c.cli("--addr", addrs, "vm", "create", "after", "--no-start")
		return code == 0, out + errOut
	})
	// Node 3's record went with its replica.
	st, ok := c.status(n1.api)
	if !ok {
		t.Fatal("no cluster status from node 1")
	}
	for _, n := range st.Nodes {
		if n.ID == 3 {
			t.Fatalf("node 3's record is still listed after its replacement: %+v", st)
		}
	}
}
