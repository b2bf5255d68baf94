package main

import (
	"bytes"
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

	"github.com/blixard/blixard/cmd/blixard/internal/benchsuite"
)

// The real-qemu agent test: one single-node `blixard run --driver qemu
// --accel tcg --no-network` process whose VMs are TCG microVMs booting the test
// guest of scripts/guest.sh. It checks the VM actor's contract against a
// real hypervisor: a killed qemu is restarted under --restart always and
// left failed under --restart never, an agent restart re-adopts running
// VMs without restarting them, and delete leaves no process or state dir.

// guestReady is what the test guest prints on its console once booted.
const guestReady = "BLIXARD-GUEST-READY"

// qemuGuest returns the test guest's kernel and initrd, or skips when
// qemu or the guest is missing.
func qemuGuest(tb testing.TB) (kernel, initrd string) {
	tb.Helper()
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		tb.Skip("qemu-system-x86_64 not on PATH (apt-get install qemu-system-x86)")
	}
	if _, err := os.Stat("/proc/self/cmdline"); err != nil {
		tb.Skip("no /proc to find qemu processes in")
	}
	root, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		tb.Fatal(err)
	}
	kernel = filepath.Join(root, "build", "guest", "vmlinux")
	initrd = filepath.Join(root, "build", "guest", "initrd.img")
	for _, p := range []string{kernel, initrd} {
		if _, err := os.Stat(p); err != nil {
			tb.Skipf("test guest missing (%v): build it with scripts/guest.sh", err)
		}
	}
	return kernel, initrd
}

// qemuAgentFlags are the `blixard run` flags of a single qemu node on
// nd's data dir and ports. Not --dev: it ignores --data-dir for a
// temporary dir removed on exit, so an agent restart could re-adopt
// nothing.
func qemuAgentFlags(nd *testNode) []string {
	return []string{
		"--node-id", "1",
		"--initial-cluster", "1=" + nd.raft,
		"--driver", "qemu", "--accel", "tcg", "--no-network",
		"--data-dir", nd.dataDir,
		"--api-addr", nd.api,
		"--raft-addr", nd.raft,
		"--gossip-addr", nd.gossip,
		"--log-format", "json",
	}
}

// qemuAgent is one single-node `blixard run --driver qemu` process; it reuses
// testCluster's binary, CLI and node plumbing.
type qemuAgent struct {
	c  *testCluster
	nd *testNode
}

func newQemuAgent(t *testing.T, bin string) *qemuAgent {
	ports := freePorts(t, 3)
	nd := &testNode{
		id:      1,
		api:     fmt.Sprintf("127.0.0.1:%d", ports[0]),
		raft:    fmt.Sprintf("127.0.0.1:%d", ports[1]),
		gossip:  fmt.Sprintf("127.0.0.1:%d", ports[2]),
		dataDir: filepath.Join(t.TempDir(), "node1"),
		logPath: filepath.Join(t.TempDir(), "node1.log"),
	}
	a := &qemuAgent{c: &testCluster{t: t, bin: bin, nodes: []*testNode{nd}}, nd: nd}
	t.Cleanup(func() {
		a.c.kill(nd)
		// VMs outlive the agent by design: kill what it left behind.
		for _, pid := range benchsuite.QemuPids(a.vmsDir()) {
			syscall.Kill(pid, syscall.SIGKILL)
		}
		if t.Failed() {
			b, _ := os.ReadFile(nd.logPath)
			t.Logf("---- agent log (last 6 KiB) ----\n%s", tail(b, 6144))
		}
	})
	a.start()
	return a
}

func (a *qemuAgent) vmsDir() string              { return filepath.Join(a.nd.dataDir, "vms") }
func (a *qemuAgent) stateDir(name string) string { return filepath.Join(a.vmsDir(), name) }

// start runs the agent and waits until its API answers.
func (a *qemuAgent) start() {
	t, nd := a.c.t, a.nd
	t.Helper()
	logf, err := os.OpenFile(nd.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(a.c.bin, append([]string{"run"}, qemuAgentFlags(nd)...)...)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	nd.cmd, nd.done = cmd, make(chan struct{})
	done := nd.done
	go func() {
		cmd.Wait()
		logf.Close()
		close(done)
	}()
	waitUntil(t, 60*time.Second, "the agent's API", func() (bool, string) {
		select {
		case <-done:
			t.Fatalf("agent exited before serving its API")
		default:
		}
		_, out, ok := a.c.vmList(nd.api, false)
		return ok, out
	})
}

// stop sends SIGTERM and waits for the agent to exit.
func (a *qemuAgent) stop() {
	t, nd := a.c.t, a.nd
	t.Helper()
	nd.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-nd.done:
	case <-time.After(60 * time.Second):
		t.Fatalf("agent did not exit within 60s of SIGTERM")
	}
	nd.cmd = nil
}

func (a *qemuAgent) cli(args ...string) (string, string, int) {
	return a.c.cli(append([]string{"--addr", a.nd.api}, args...)...)
}

func (a *qemuAgent) mustCLI(args ...string) string {
	return a.c.mustCLI(append([]string{"--addr", a.nd.api}, args...)...)
}

type qemuVMStatus struct {
	Status   string `json:"status"`
	Restarts uint32 `json:"restarts"`
	Message  string `json:"message"`
	NodeID   uint64 `json:"node_id"`
}

// vmStatus runs `vm status NAME -o json`; ok is false when it failed.
func (a *qemuAgent) vmStatus(name string) (qemuVMStatus, string, bool) {
	out, errOut, code := a.cli("vm", "status", name, "-o", "json")
	var st qemuVMStatus
	if code != 0 {
		return st, errOut, false
	}
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		a.c.t.Fatalf("vm status -o json printed invalid JSON: %v\n%s", err, out)
	}
	return st, out, true
}

func (a *qemuAgent) waitReady(name string) {
	waitUntil(a.c.t, 90*time.Second, name+" printing "+guestReady, func() (bool, string) {
		out, errOut, code := a.cli("vm", "logs", name, "-n", "0")
		if code != 0 {
			return false, errOut
		}
		return strings.Contains(out, guestReady), string(tail([]byte(out), 300))
	})
}

// onePid waits until exactly one qemu runs in name's state dir and
// returns its pid.
func (a *qemuAgent) onePid(name string) int {
	var pid int
	waitUntil(a.c.t, 60*time.Second, "one qemu process for "+name, func() (bool, string) {
		pids := benchsuite.QemuPids(a.stateDir(name))
		if len(pids) == 1 {
			pid = pids[0]
		}
		return len(pids) == 1, fmt.Sprint(pids)
	})
	return pid
}

func TestQemuAgentLifecycle(t *testing.T) {
	kernel, initrd := qemuGuest(t)
	a := newQemuAgent(t, buildBinary(t))
	create := func(name, restart string) {
		a.mustCLI("vm", "create", name, "--kernel", kernel, "--initrd", initrd,
			"--restart", restart, "--wait", "--timeout", "90s")
		if st, out, ok := a.vmStatus(name); !ok || st.Status != "running" {
			t.Fatalf("%s after create --wait: want running, got %s", name, out)
		}
	}

	// Boot 1: a1 under --restart always.
	create("a1", "always")
	a.waitReady("a1")
	first := a.onePid("a1")

	// Boot 2: its qemu killed, the VM actor restarts it.
	if err := syscall.Kill(first, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	var restarted int
	waitUntil(t, 90*time.Second, "a1 running again with restarts 1 and a new qemu", func() (bool, string) {
		st, out, ok := a.vmStatus("a1")
		pids := benchsuite.QemuPids(a.stateDir("a1"))
		seen := fmt.Sprintf("%s pids=%v", out, pids)
		if !ok || st.Status != "running" || st.Restarts != 1 || len(pids) != 1 || pids[0] == first {
			return false, seen
		}
		restarted = pids[0]
		return true, seen
	})
	a.waitReady("a1")

	// Boot 3: n1 under --restart never; killed, it stays failed.
	create("n1", "never")
	n1 := a.onePid("n1")
	if err := syscall.Kill(n1, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, 60*time.Second, "n1 failed with a message", func() (bool, string) {
		st, out, ok := a.vmStatus("n1")
		return ok && st.Status == "failed" && st.Message != "", out
	})
	// failed is terminal under --restart never: the status and the
	// absence of a qemu hold across a few more status round trips.
	for i := 0; i < 5; i++ {
		if pids := benchsuite.QemuPids(a.stateDir("n1")); len(pids) != 0 {
			t.Fatalf("n1 (--restart never) has qemu %v after failing", pids)
		}
		if st, out, ok := a.vmStatus("n1"); !ok || st.Status != "failed" {
			t.Fatalf("n1 left failed: %s", out)
		}
	}

	// Agent restart: VMs keep running and are re-adopted, not restarted.
	a.stop()
	if pids := benchsuite.QemuPids(a.stateDir("a1")); len(pids) != 1 || pids[0] != restarted {
		t.Fatalf("a1's qemu after agent SIGTERM: want [%d] still running, got %v", restarted, pids)
	}
	a.start()
	waitUntil(t, 60*time.Second, "a1 re-adopted as running", func() (bool, string) {
		st, out, ok := a.vmStatus("a1")
		return ok && st.Status == "running", out
	})
	st, out, _ := a.vmStatus("a1")
	if st.Restarts != 1 {
		t.Fatalf("a1 after agent restart: want restarts 1 (re-adopted), got %s", out)
	}
	if pids := benchsuite.QemuPids(a.stateDir("a1")); len(pids) != 1 || pids[0] != restarted {
		t.Fatalf("a1 after agent restart: want its qemu %d re-adopted, got %v", restarted, pids)
	}
	// n1's failure outlives the agent: the new agent keeps it down.
	if st, out, ok := a.vmStatus("n1"); !ok || st.Status != "failed" || st.Message == "" {
		t.Fatalf("n1 after agent restart: want still failed with a message, got %s", out)
	}
	if pids := benchsuite.QemuPids(a.stateDir("n1")); len(pids) != 0 {
		t.Fatalf("n1 (--restart never, failed) started again by the new agent: qemu %v", pids)
	}

	// Delete: no process and no state dir remain.
	a.mustCLI("vm", "delete", "a1", "--wait", "--timeout", "60s")
	waitUntil(t, 60*time.Second, "a1's qemu and state dir gone", func() (bool, string) {
		pids := benchsuite.QemuPids(a.stateDir("a1"))
		_, err := os.Stat(a.stateDir("a1"))
		return len(pids) == 0 && os.IsNotExist(err), fmt.Sprintf("pids=%v stat=%v", pids, err)
	})
	if _, out, ok := a.vmStatus("a1"); ok {
		t.Fatalf("a1 still reported after delete: %s", out)
	}
	if pids := benchsuite.QemuPids(a.stateDir("n1")); len(pids) != 0 {
		t.Fatalf("n1 (--restart never, failed) started again by the new agent: qemu %v", pids)
	}
}

// BenchmarkBootRatio compares booting the test guest through the agent
// (A: vm create --wait, then READY in vm logs) with launching the same
// qemu command line by hand (B: READY in its console file), interleaved
// A B A B so drift in machine load hits both alike. B's argv is the one
// the driver ran for the first A, read from /proc, with the state dir
// rewritten to a fresh directory.
func BenchmarkBootRatio(b *testing.B) {
	kernel, initrd := qemuGuest(b)
	const pairs = 5
	h := newBenchAgent(b)
	var as, bs, ratios []float64
	var argv []string
	var argvDir string
	for i := 0; i < pairs; i++ {
		name := fmt.Sprintf("bench%d", i)
		dir := filepath.Join(h.dataDir, "vms", name)
		t0 := time.Now()
		h.must("vm", "create", name, "--kernel", kernel, "--initrd", initrd,
			"--restart", "never", "--wait", "--timeout", "90s")
		h.waitFor(90*time.Second, name+" printing "+guestReady, func() bool {
			out, _, code := h.cli("vm", "logs", name, "-n", "0")
			return code == 0 && strings.Contains(out, guestReady)
		})
		da := time.Since(t0)
		if argv == nil {
			pids := benchsuite.QemuPids(dir)
			if len(pids) != 1 {
				b.Fatalf("want one qemu for %s, got %v", name, pids)
			}
			raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pids[0]))
			if err != nil {
				b.Fatal(err)
			}
			argv = strings.Split(strings.TrimRight(string(raw), "\x00"), "\x00")
			argvDir = dir
			b.Logf("driver argv: %q", argv)
		}
		h.must("vm", "delete", name, "--wait", "--timeout", "60s")
		h.waitFor(60*time.Second, name+"'s qemu gone", func() bool { return len(benchsuite.QemuPids(dir)) == 0 })

		db := h.bootByHand(argv, argvDir, filepath.Join(h.tmp, fmt.Sprintf("hand%d", i)))
		as, bs = append(as, da.Seconds()), append(bs, db.Seconds())
		ratios = append(ratios, da.Seconds()/db.Seconds())
		b.Logf("pair %d: A %.2fs B %.2fs A/B %.2f", i, da.Seconds(), db.Seconds(), da.Seconds()/db.Seconds())
	}
	b.ReportMetric(median(as), "A-s")
	b.ReportMetric(median(bs), "B-s")
	b.ReportMetric(median(ratios), "A/B")
}

func median(xs []float64) float64 {
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	n := len(s)
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}

// benchAgent is the benchmark's qemu agent. The multi-process helpers of
// cluster_test.go take *testing.T, which a benchmark has not, so this is
// the small testing.TB subset of them the benchmark needs.
type benchAgent struct {
	tb           testing.TB
	bin, tmp     string
	api, dataDir string
}

func newBenchAgent(tb testing.TB) *benchAgent {
	tb.Helper()
	h := &benchAgent{tb: tb, tmp: tb.TempDir()}
	h.dataDir = filepath.Join(h.tmp, "node1")
	h.bin = filepath.Join(h.tmp, "blixard")
	build := exec.Command(filepath.Join(runtime.GOROOT(), "bin", "go"), "build", "-o", h.bin, ".")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		tb.Fatalf("go build: %v\n%s", err, out)
	}
	var ls []net.Listener
	var addrs []string
	for i := 0; i < 3; i++ {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			tb.Fatal(err)
		}
		ls = append(ls, l)
		addrs = append(addrs, l.Addr().String())
	}
	for _, l := range ls {
		l.Close()
	}
	h.api = addrs[0]
	logPath := filepath.Join(h.tmp, "node1.log")
	logf, err := os.Create(logPath)
	if err != nil {
		tb.Fatal(err)
	}
	cmd := exec.Command(h.bin, append([]string{"run"}, qemuAgentFlags(&testNode{
		dataDir: h.dataDir, api: addrs[0], raft: addrs[1], gossip: addrs[2]})...)...)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		tb.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		cmd.Wait()
		logf.Close()
		close(done)
	}()
	tb.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGKILL)
		<-done
		for _, pid := range benchsuite.QemuPids(filepath.Join(h.dataDir, "vms")) {
			syscall.Kill(pid, syscall.SIGKILL)
		}
		if tb.Failed() {
			b, _ := os.ReadFile(logPath)
			tb.Logf("---- agent log (last 4 KiB) ----\n%s", tail(b, 4096))
		}
	})
	h.waitFor(60*time.Second, "the agent's API", func() bool {
		_, _, code := h.cli("vm", "list")
		return code == 0
	})
	return h
}

func (h *benchAgent) cli(args ...string) (string, string, int) {
	cmd := exec.Command(h.bin, append([]string{"--addr", h.api}, args...)...)
	cmd.Env = append(os.Environ(), "BLIXARD_ADDR=")
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	if ee, ok := err.(*exec.ExitError); ok {
		return out.String(), errb.String(), ee.ExitCode()
	} else if err != nil {
		h.tb.Fatalf("running blixard %s: %v", strings.Join(args, " "), err)
	}
	return out.String(), errb.String(), 0
}

func (h *benchAgent) must(args ...string) {
	h.tb.Helper()
	if out, errOut, code := h.cli(args...); code != 0 {
		h.tb.Fatalf("blixard %s: exit %d\nstdout: %s\nstderr: %s", strings.Join(args, " "), code, out, errOut)
	}
}

func (h *benchAgent) waitFor(d time.Duration, what string, cond func() bool) {
	h.tb.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			h.tb.Fatalf("timed out after %s waiting for %s", d, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// bootByHand runs argv with every mention of fromDir rewritten to toDir,
// waits for READY in the console file and kills qemu; it returns the
// time from exec to READY.
func (h *benchAgent) bootByHand(argv []string, fromDir, toDir string) time.Duration {
	h.tb.Helper()
	if err := os.MkdirAll(toDir, 0o750); err != nil {
		h.tb.Fatal(err)
	}
	args := make([]string, len(argv))
	var console string
	for i, a := range argv {
		args[i] = strings.ReplaceAll(a, fromDir, toDir)
		if strings.HasPrefix(args[i], "file,id=console,path=") {
			console = strings.TrimPrefix(args[i], "file,id=console,path=")
			console, _, _ = strings.Cut(console, ",")
		}
	}
	if console == "" {
		h.tb.Fatalf("no console file chardev in the driver's argv %q", argv)
	}
	out, err := os.Create(filepath.Join(toDir, "qemu.out"))
	if err != nil {
		h.tb.Fatal(err)
	}
	defer out.Close()
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Stdout, cmd.Stderr = out, out
	t0 := time.Now()
	if err := cmd.Start(); err != nil {
		h.tb.Fatal(err)
	}
	exited := make(chan struct{})
	go func() {
		cmd.Wait()
		close(exited)
	}()
	defer func() {
		cmd.Process.Signal(syscall.SIGKILL)
		<-exited
	}()
	h.waitFor(90*time.Second, "READY from the hand-run qemu", func() bool {
		select {
		case <-exited:
			b, _ := os.ReadFile(out.Name())
			h.tb.Fatalf("hand-run qemu exited before READY: %s", tail(b, 2048))
		default:
		}
		b, _ := os.ReadFile(console)
		return bytes.Contains(b, []byte(guestReady))
	})
	return time.Since(t0)
}
