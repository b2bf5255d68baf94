package systemd

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/blixard/blixard/microvm/qemu"
)

// inContainerCount is how often the in-container tests run (-test.count):
// more than once to catch races with systemd and journald.
const inContainerCount = "3"

// inContainer selects the tests that run inside the systemd container.
const inContainer = "BLIXARD_SYSTEMD_IN_CONTAINER"

// TestDockerSystemd runs this package's in-container tests against a real
// systemd as PID 1: it builds the host image (scripts/hostimage.sh), boots
// a container from it, copies this package's test binary in and runs the
// TestInContainer* tests there. The container is always removed.
func TestDockerSystemd(t *testing.T) {
	if os.Getenv(inContainer) != "" {
		t.Skip("inside the container already")
	}
	if testing.Short() {
		t.Skip("-short: skipping the Docker systemd test (boots a container)")
	}
	if _, err := exec.LookPath("docker"); err != nil {
		t.Skip("needs docker: no docker command")
	}
	if out, err := exec.Command("docker", "info", "--format", "{{.ServerVersion}}").CombinedOutput(); err != nil {
		t.Skipf("needs a Docker engine: docker info: %v: %s", err, bytes.TrimSpace(out))
	}
	start := time.Now()
	build := exec.Command("bash", filepath.Join("..", "..", "scripts", "hostimage.sh"))
	var stderr bytes.Buffer
	build.Stderr = &stderr
	out, err := build.Output()
	if err != nil {
		t.Skipf("cannot build the host image: %v\n%s", err, stderr.String())
	}
	image := strings.TrimSpace(string(out))
	t.Logf("host image %s ready in %s", image, time.Since(start).Round(time.Millisecond))

	// A static test binary: the container's libc need not match ours.
	bin := filepath.Join(t.TempDir(), "systemd.test")
	gobin, err := exec.LookPath("go")
	if err != nil {
		gobin = filepath.Join(runtime.GOROOT(), "bin", "go")
	}
	cc := exec.Command(gobin, "test", "-c", "-o", bin, ".")
	cc.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cc.CombinedOutput(); err != nil {
		t.Fatalf("go test -c: %v\n%s", err, out)
	}

	var suffix [4]byte
	rand.Read(suffix[:])
	name := "blixard-systemd-test-" + hex.EncodeToString(suffix[:])
	// Registered before the container exists, so a failed run leaves no
	// created-but-not-started container behind either.
	t.Cleanup(func() {
		if t.Failed() {
			logs, _ := exec.Command("docker", "exec", name, "journalctl", "--no-pager", "-n", "80").CombinedOutput()
			t.Logf("container journal (last 80 lines):\n%s", logs)
		}
		out, err := exec.Command("docker", "rm", "-f", name).CombinedOutput()
		if err != nil && !bytes.Contains(out, []byte("No such container")) {
			t.Errorf("removing container %s: %v\n%s", name, err, out)
		}
	})
	args := append([]string{"run", "-d", "--name", name}, SystemdContainerArgs...)
	if out, err := exec.Command("docker", append(args, image)...).CombinedOutput(); err != nil {
		t.Fatalf("docker run: %v\n%s", err, out)
	}

	booting := time.Now()
	var state string
	waitFor(t, 90*time.Second, "systemd in the container to finish booting", func() bool {
		out, _ := exec.Command("docker", "exec", name, "systemctl", "is-system-running").Output()
		state = strings.TrimSpace(string(out))
		return state == "running" || state == "degraded"
	})
	t.Logf("systemd %s in the container after %s", state, time.Since(booting).Round(time.Millisecond))
	if state == "degraded" {
		failed, _ := exec.Command("docker", "exec", name, "systemctl", "--failed", "--no-legend").Output()
		t.Logf("failed units (not ours):\n%s", failed)
	}

	if out, err := exec.Command("docker", "cp", bin, name+":/usr/local/bin/systemd.test").CombinedOutput(); err != nil {
		t.Fatalf("docker cp: %v\n%s", err, out)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	inner := exec.CommandContext(ctx, "docker", "exec", "-e", inContainer+"=1", "-w", "/tmp", name,
		"/usr/local/bin/systemd.test", "-test.run", "^TestInContainer", "-test.v", "-test.count="+inContainerCount)
	out, err = inner.CombinedOutput()
	t.Logf("in-container tests:\n%s", out)
	if err != nil {
		t.Fatalf("in-container tests failed: %v", err)
	}
	if !bytes.Contains(out, []byte("--- PASS: TestInContainerUnit")) {
		t.Fatal("the in-container tests did not run")
	}
}

// SystemdContainerArgs are the `docker run` options that boot systemd as
// PID 1 from the host image on a cgroup v1 Docker host. Not --privileged:
// where Docker itself runs in a container it may lack capabilities
// (CAP_SYS_RESOURCE here) that --privileged asks for and fail to start.
var SystemdContainerArgs = []string{
	"--cap-add", "SYS_ADMIN", "--cap-add", "NET_ADMIN",
	"--security-opt", "seccomp=unconfined", "--security-opt", "apparmor=unconfined",
	"--cgroupns=host", "-v", "/sys/fs/cgroup:/sys/fs/cgroup",
	"--tmpfs", "/run", "--tmpfs", "/run/lock", "--tmpfs", "/tmp",
	"--entrypoint", "/sbin/init",
}

// waitFor polls cond until it holds or timeout passes.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		<-tick.C
	}
}

func needContainer(t *testing.T) {
	t.Helper()
	if os.Getenv(inContainer) == "" {
		t.Skip("runs inside the systemd container started by TestDockerSystemd")
	}
}

// show returns `systemctl show unit -p props` as a map.
func show(t *testing.T, unit string, props ...string) map[string]string {
	t.Helper()
	out, err := exec.Command("systemctl", "show", unit, "-p", strings.Join(props, ",")).Output()
	if err != nil {
		t.Fatalf("systemctl show %s: %v", unit, err)
	}
	m := map[string]string{}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		if k, v, ok := strings.Cut(line, "="); ok {
			m[k] = v
		}
	}
	return m
}

func awaitDone(t *testing.T, p qemu.Process, what string) {
	t.Helper()
	select {
	case <-p.Done():
	case <-time.After(20 * time.Second):
		t.Fatalf("%s: the process of pid %d was not seen to exit", what, p.PID())
	}
}

// TestInContainerUnit: a VM's unit carries the spec's limits, is re-adopted
// by a fresh supervisor, and an outside kill is observed.
func TestInContainerUnit(t *testing.T) {
	needContainer(t)
	ctx := context.Background()
	sup, err := SupervisorFor(ctx, "auto", nil)
	if err != nil {
		t.Fatal(err)
	}
	s, ok := sup.(*Supervisor)
	if !ok {
		t.Fatalf("auto under systemd as PID 1 chose %T", sup)
	}
	s.PollInterval = 50 * time.Millisecond
	t.Cleanup(func() { s.Close() })

	dir := filepath.Join(t.TempDir(), "t1")
	os.Mkdir(dir, 0o755)
	logPath := filepath.Join(dir, "console.log")
	argv := []string{"/bin/sh", "-c", `echo "blixard-hello from $0 in $(pwd)"; exec /bin/sleep 1000`, "t1"}
	p, err := s.StartVM(ctx, dir, argv, logPath, qemu.Resources{Name: "t1", Vcpus: 2, MemoryMB: 256})
	if err != nil {
		t.Fatal(err)
	}
	unit := UnitName("t1")
	got := show(t, unit, "MemoryMax", "CPUQuotaPerSecUSec", "Restart", "SyslogIdentifier", "KillMode",
		"WorkingDirectory", "MainPID", "ActiveState", "TimeoutStopUSec")
	want := map[string]string{
		"MemoryMax":          "341835776", // (256 + 6 + 64) MiB
		"CPUQuotaPerSecUSec": "2s",
		"Restart":            "no",
		"SyslogIdentifier":   "blixard-vm-t1",
		"KillMode":           "mixed",
		"WorkingDirectory":   dir,
		"MainPID":            strconv.Itoa(p.PID()),
		"ActiveState":        "active",
		"TimeoutStopUSec":    "30s",
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s: %s = %q, want %q", unit, k, got[k], v)
		}
	}
	t.Logf("systemctl show %s: %v", unit, got)
	checkCgroupV1(t, p.PID(), "memory", "memory.limit_in_bytes", "341835776")
	checkCgroupV1(t, p.PID(), "cpu", "cpu.cfs_quota_us", "200000")

	// A second start of a running VM is refused.
	if _, err := s.StartVM(ctx, dir, argv, logPath, qemu.Resources{Name: "t1"}); !errors.Is(err, ErrUnitRunning) {
		t.Errorf("second start: err = %v, want ErrUnitRunning", err)
	}

	// A restarted agent (a fresh supervisor) adopts exactly this run.
	s2 := &Supervisor{PollInterval: 50 * time.Millisecond}
	t.Cleanup(func() { s2.Close() })
	p2, ok, err := s2.Adopt(ctx, dir)
	if err != nil || !ok {
		t.Fatalf("adopt: ok=%v err=%v", ok, err)
	}
	if p2.PID() != p.PID() {
		t.Errorf("adopted pid %d, started pid %d", p2.PID(), p.PID())
	}

	// journald has what the runner printed, under the identifier.
	waitFor(t, 10*time.Second, "the runner's output in journald", func() bool {
		out, _ := exec.Command("journalctl", "--no-pager", "-o", "cat", "-t", "blixard-vm-t1").Output()
		return bytes.Contains(out, []byte("blixard-hello from t1 in "+dir))
	})

	firstRecord, err := os.ReadFile(filepath.Join(dir, recordFile))
	if err != nil {
		t.Fatal(err)
	}

	// An outside kill -9 is observed by both, with its signal.
	if err := syscall.Kill(p.PID(), syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	awaitDone(t, p, "started")
	awaitDone(t, p2, "adopted")
	if st := p.Status(); !st.Known || st.Signal != "SIGKILL" {
		t.Errorf("status after kill -9 = %+v, want SIGKILL", st)
	}
	if st := p2.Status(); st.Known && st.Signal != "SIGKILL" {
		t.Errorf("adopted run's status after kill -9 = %+v, want SIGKILL or unknown", st)
	}
	if _, err := os.Stat(filepath.Join(dir, recordFile)); !os.IsNotExist(err) {
		t.Errorf("%s left behind after the run ended: %v", recordFile, err)
	}
	if _, ok, err := s2.Adopt(ctx, dir); ok || err != nil {
		t.Errorf("adopt after exit: ok=%v err=%v, want false, nil", ok, err)
	}

	// The name is free again; Signal (the driver's stop after its grace)
	// kills the new run.
	p3, err := s.StartVM(ctx, dir, argv, logPath, qemu.Resources{Name: "t1", Vcpus: 1, MemoryMB: 64})
	if err != nil {
		t.Fatalf("restart after kill: %v", err)
	}
	if p3.PID() == p.PID() {
		t.Errorf("restarted run has the old pid %d", p.PID())
	}
	if got := show(t, unit, "CPUQuotaPerSecUSec")["CPUQuotaPerSecUSec"]; got != "1s" {
		t.Errorf("restarted run: CPUQuotaPerSecUSec = %q, want 1s", got)
	}
	// The first run's record does not adopt the second run of the unit.
	stale := t.TempDir()
	if err := os.WriteFile(filepath.Join(stale, recordFile), firstRecord, 0o640); err != nil {
		t.Fatal(err)
	}
	if _, ok, err := s2.Adopt(ctx, stale); ok || err != nil {
		t.Errorf("the first run's record adopted the second run: ok=%v err=%v", ok, err)
	}
	if p4, ok, err := s2.Adopt(ctx, dir); !ok || err != nil || p4.PID() != p3.PID() {
		t.Errorf("adopting the second run: ok=%v err=%v", ok, err)
	}
	if err := p3.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	awaitDone(t, p3, "signalled")
	if st := p3.Status(); !st.Known || st.Signal != "SIGKILL" {
		t.Errorf("status after Signal(SIGKILL) = %+v", st)
	}
}

// TestInContainerExit: exit codes are reported and the runner's last
// words are appended to the log the driver reads.
func TestInContainerExit(t *testing.T) {
	needContainer(t)
	ctx := context.Background()
	s := &Supervisor{PollInterval: 50 * time.Millisecond}
	t.Cleanup(func() { s.Close() })
	dir := t.TempDir()
	logPath := filepath.Join(dir, "console.log")

	p, err := s.StartVM(ctx, dir, []string{"/bin/sh", "-c", "echo qemu-says-no >&2; exit 3"}, logPath,
		qemu.Resources{Name: "t2", Vcpus: 1, MemoryMB: 64})
	if err != nil {
		t.Fatal(err)
	}
	awaitDone(t, p, "exit 3")
	if st := p.Status(); !st.Known || st.Code != 3 {
		t.Errorf("status = %+v, want code 3", st)
	}
	b, _ := os.ReadFile(logPath)
	if !bytes.Contains(b, []byte("qemu-says-no")) {
		t.Errorf("log %s lacks the runner's stderr; has %q", logPath, b)
	}

	if _, err := s.StartVM(ctx, dir, []string{"/nonexistent/qemu"}, logPath, qemu.Resources{Name: "t3"}); err == nil {
		t.Error("a runner that cannot be executed started")
	} else {
		t.Logf("start of a missing runner: %v", err)
	}
	if b, _ := os.ReadFile(logPath); !bytes.Contains(b, []byte("/nonexistent/qemu")) {
		t.Errorf("log %s does not say why the unit failed to start; has %q", logPath, b)
	}
	if st := show(t, UnitName("t3"), "ActiveState")["ActiveState"]; st == "failed" {
		t.Errorf("failed start left unit %s failed, not reset", UnitName("t3"))
	}
}

// checkCgroupV1 checks a cgroup v1 knob of pid's cgroup, when the host
// has that hierarchy (on cgroup v2 the unit properties are what we check).
func checkCgroupV1(t *testing.T, pid int, controller, file, want string) {
	t.Helper()
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cgroup")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		parts := strings.SplitN(line, ":", 3)
		if len(parts) != 3 || !slices.Contains(strings.Split(parts[1], ","), controller) {
			continue
		}
		path := filepath.Join("/sys/fs/cgroup", parts[1], parts[2], file)
		got, err := os.ReadFile(path)
		if err != nil {
			t.Errorf("reading %s: %v", path, err)
			return
		}
		if strings.TrimSpace(string(got)) != want {
			t.Errorf("%s = %s, want %s", path, bytes.TrimSpace(got), want)
		}
		t.Logf("enforced: %s = %s", path, bytes.TrimSpace(got))
		return
	}
	t.Logf("no cgroup v1 %s hierarchy for pid %d; not checking %s", controller, pid, file)
}
