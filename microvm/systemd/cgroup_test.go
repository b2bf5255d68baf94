package systemd

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/blixard/blixard/microvm/qemu"
)

// fakeCgroupV1 makes a v1 layout whose VM cgroup files exist, as the
// kernel would create them on mkdir.
func fakeCgroupV1(t *testing.T, vm string) string {
	root := t.TempDir()
	for h, files := range map[string][]string{
		"memory": {"memory.limit_in_bytes", "cgroup.procs"},
		"cpu":    {"cpu.cfs_period_us", "cpu.cfs_quota_us", "cgroup.procs"},
	} {
		d := filepath.Join(root, h, "blixard", vm)
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
		for _, f := range files {
			if err := os.WriteFile(filepath.Join(d, f), nil, 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	return root
}

func readTrim(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(bytes.TrimSpace(b))
}

func TestApplyLimitsV1(t *testing.T) {
	root := fakeCgroupV1(t, "vm-web")
	made, err := applyLimits(root, "blixard", "vm-web", 4242, qemu.Resources{Vcpus: 3, MemoryMB: 1000})
	if err != nil {
		t.Fatal(err)
	}
	if len(made) != 2 {
		t.Fatalf("made %v, want the memory and cpu cgroups", made)
	}
	for file, want := range map[string]string{
		"memory/blixard/vm-web/memory.limit_in_bytes": strconv.FormatUint(MemoryMax(1000), 10),
		"memory/blixard/vm-web/cgroup.procs":          "4242",
		"cpu/blixard/vm-web/cpu.cfs_period_us":        "100000",
		"cpu/blixard/vm-web/cpu.cfs_quota_us":         "300000",
		"cpu/blixard/vm-web/cgroup.procs":             "4242",
	} {
		if got := readTrim(t, filepath.Join(root, file)); got != want {
			t.Errorf("%s = %q, want %q", file, got, want)
		}
	}
}

func TestApplyLimitsV2(t *testing.T) {
	root := t.TempDir()
	d := filepath.Join(root, "blixard", "vm-web")
	os.MkdirAll(d, 0o755)
	for _, f := range []string{filepath.Join(root, "cgroup.controllers"), filepath.Join(root, "cgroup.subtree_control"),
		filepath.Join(root, "blixard", "cgroup.subtree_control"),
		filepath.Join(d, "memory.max"), filepath.Join(d, "cpu.max"), filepath.Join(d, "cgroup.procs")} {
		os.WriteFile(f, nil, 0o644)
	}
	made, err := applyLimits(root, "blixard", "vm-web", 4242, qemu.Resources{Vcpus: 2, MemoryMB: 256})
	if err != nil {
		t.Fatal(err)
	}
	if len(made) != 1 || made[0] != d {
		t.Fatalf("made %v, want [%s]", made, d)
	}
	for file, want := range map[string]string{
		"blixard/vm-web/memory.max":      "341835776",
		"blixard/vm-web/cpu.max":         "200000 100000",
		"blixard/vm-web/cgroup.procs":    "4242",
		"blixard/cgroup.subtree_control": "+memory +cpu",
		"cgroup.subtree_control":         "+memory +cpu",
	} {
		if got := readTrim(t, filepath.Join(root, file)); got != want {
			t.Errorf("%s = %q, want %q", file, got, want)
		}
	}
}

func TestApplyLimitsUnwritable(t *testing.T) {
	if _, err := applyLimits(filepath.Join(t.TempDir(), "none"), "blixard", "vm-x", 1, qemu.Resources{MemoryMB: 64}); err == nil {
		t.Fatal("limits applied without a cgroup hierarchy")
	}
}

// TestLimitedExecReal runs a process under real cgroup limits where this
// host lets us write them (root, a writable /sys/fs/cgroup).
func TestLimitedExecReal(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to write cgroups")
	}
	probe := filepath.Join(cgroupRoot, "memory", "blixard-probe-"+strconv.Itoa(os.Getpid()))
	if _, err := os.Stat(filepath.Join(cgroupRoot, "cgroup.controllers")); err == nil {
		probe = filepath.Join(cgroupRoot, "blixard-probe-"+strconv.Itoa(os.Getpid()))
	}
	if err := os.Mkdir(probe, 0o755); err != nil {
		t.Skipf("cgroups are not writable here: %v", err)
	}
	os.Remove(probe)
	if _, err := exec.LookPath("sleep"); err != nil {
		t.Skip("needs sleep")
	}

	e := &LimitedExec{Parent: "blixard-test"}
	dir := t.TempDir()
	name := "lim" + strconv.Itoa(os.Getpid())
	p, err := e.StartVM(context.Background(), dir, []string{"sleep", "1000"}, filepath.Join(dir, "log"),
		qemu.Resources{Name: name, Vcpus: 1, MemoryMB: 64})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Signal(9); <-p.Done() })
	b, err := os.ReadFile("/proc/" + strconv.Itoa(p.PID()) + "/cgroup")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(b), "/blixard-test/vm-"+name) {
		t.Fatalf("process is not in its cgroup:\n%s", b)
	}
	var memDir string
	if _, err := os.Stat(filepath.Join(cgroupRoot, "cgroup.controllers")); err == nil {
		memDir = filepath.Join(cgroupRoot, "blixard-test", "vm-"+name)
		if got := readTrim(t, filepath.Join(memDir, "memory.max")); got != strconv.FormatUint(MemoryMax(64), 10) {
			t.Errorf("memory.max = %s", got)
		}
	} else {
		memDir = filepath.Join(cgroupRoot, "memory", "blixard-test", "vm-"+name)
		if got := readTrim(t, filepath.Join(memDir, "memory.limit_in_bytes")); got != strconv.FormatUint(MemoryMax(64), 10) {
			t.Errorf("memory.limit_in_bytes = %s", got)
		}
		if got := readTrim(t, filepath.Join(cgroupRoot, "cpu", "blixard-test", "vm-"+name, "cpu.cfs_quota_us")); got != "100000" {
			t.Errorf("cpu.cfs_quota_us = %s", got)
		}
	}
	p.Signal(9)
	<-p.Done()
	deadline := time.Now().Add(5 * time.Second)
	for {
		if _, err := os.Stat(memDir); os.IsNotExist(err) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("cgroup %s left behind after the process exited", memDir)
		}
		time.Sleep(20 * time.Millisecond)
	}
	os.Remove(filepath.Join(cgroupRoot, "memory", "blixard-test"))
	os.Remove(filepath.Join(cgroupRoot, "cpu", "blixard-test"))
	os.Remove(filepath.Join(cgroupRoot, "blixard-test"))
}
