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

	"github.com/blixard/blixard/microvm"
	"github.com/blixard/blixard/microvm/qemu"
)

// TestLimitedExecBoot boots the test guest (scripts/guest.sh) under the
// qemu driver with LimitedExec: the guest reaches userspace inside the
// memory and CPU limits, and its cgroup is gone after the stop.
func TestLimitedExecBoot(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: skipping a TCG boot")
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root to write cgroups")
	}
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		t.Skip("qemu-system-x86_64 not installed (scripts/guest.sh installs it)")
	}
	gdir := os.Getenv("BLIXARD_GUEST_DIR")
	if gdir == "" {
		gdir = filepath.Join("..", "..", "build", "guest")
	}
	gdir, _ = filepath.Abs(gdir)
	kernel, initrd := filepath.Join(gdir, "vmlinux"), filepath.Join(gdir, "initrd.img")
	for _, f := range []string{kernel, initrd} {
		if _, err := os.Stat(f); err != nil {
			t.Skipf("test guest not built: %v (run scripts/guest.sh)", err)
		}
	}
	if _, err := os.Stat(filepath.Join(cgroupRoot, "cgroup.controllers")); err == nil {
		t.Skip("checks the cgroup v1 layout of this host; v2 is covered by TestApplyLimitsV2")
	}
	probe := filepath.Join(cgroupRoot, "memory", "blixard-probe-"+strconv.Itoa(os.Getpid()))
	if err := os.Mkdir(probe, 0o755); err != nil {
		t.Skipf("cgroups are not writable here: %v", err)
	}
	os.Remove(probe)

	dir, err := os.MkdirTemp("", "lb")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	parent := "blixard-boot-test"
	d, err := qemu.New(qemu.Options{Dir: dir, Accel: qemu.AccelTCG, NoNetwork: true,
		Supervisor: &LimitedExec{Parent: parent}})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	spec := microvm.Spec{Name: "lim", ID: 1, Vcpus: 1, MemoryMB: 128, Kernel: kernel, Initrd: initrd}
	if err := d.Prepare(ctx, spec); err != nil {
		t.Fatal(err)
	}
	in, err := d.Start(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	cg := filepath.Join(cgroupRoot, "memory", parent, "vm-lim")
	t.Cleanup(func() {
		os.Remove(filepath.Join(cgroupRoot, "memory", parent))
		os.Remove(filepath.Join(cgroupRoot, "cpu", parent))
	})
	b, _ := os.ReadFile("/proc/" + strconv.Itoa(in.PID) + "/cgroup")
	if !strings.Contains(string(b), parent+"/vm-lim") {
		t.Fatalf("qemu (pid %d) is not in its cgroup:\n%s", in.PID, b)
	}
	console := filepath.Join(dir, "lim", "console.log")
	deadline := time.Now().Add(2 * time.Minute)
	for {
		c, _ := os.ReadFile(console)
		if bytes.Contains(c, []byte("BLIXARD-GUEST-READY")) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("guest not ready within 2m under the limits; console:\n%s", c)
		}
		time.Sleep(100 * time.Millisecond)
	}
	peak := readTrim(t, filepath.Join(cg, "memory.max_usage_in_bytes"))
	fails := readTrim(t, filepath.Join(cg, "memory.failcnt"))
	t.Logf("guest ready; peak memory %s of limit %d bytes, failcnt %s", peak, MemoryMax(128), fails)
	if err := d.Stop(ctx, "lim", 20*time.Second); err != nil {
		t.Fatal(err)
	}
	deadline = time.Now().Add(5 * time.Second)
	for {
		if _, err := os.Stat(cg); os.IsNotExist(err) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("cgroup %s left after the VM stopped", cg)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
