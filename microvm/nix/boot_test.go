package nix

import (
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
	"github.com/blixard/blixard/microvm/vmproc"
)

// TestBootGuest is the whole nix path with a real guest: vm.json and the
// VM flake → nix build (stub inputs) → current/bin/microvm-run under the
// exec supervisor → qemu (TCG) boots the test guest from scripts/guest.sh
// → BLIXARD-GUEST-READY on the console → Stop through
// current/bin/microvm-shutdown (QMP power button) → the guest powers off
// and the exit is clean. One boot: each costs seconds of CPU under TCG.
func TestBootGuest(t *testing.T) {
	if testing.Short() {
		t.Skip("boots a kernel under TCG; skipped with -short")
	}
	needNix(t)
	kernel, initrd := testGuest(t)

	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	d, err := New(stubOptions(t, t.TempDir()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() }) // after the Destroy cleanup below
	spec := microvm.Spec{
		Name: "boot", ID: 1, Vcpus: 1, MemoryMB: 256, Kernel: kernel, Initrd: initrd,
		KernelParams: []string{
			// No PIT, HPET or kvmclock under TCG on the microvm machine.
			"tsc_early_khz=" + strconv.FormatUint(qemu.HostTSCKHz(), 10),
			`blixard.note=a"b${x}'c`,
		},
	}
	t.Cleanup(func() { d.Destroy(context.Background(), spec.Name) })

	t0 := time.Now()
	if err := d.Prepare(ctx, spec); err != nil {
		t.Fatal(err)
	}
	built := time.Since(t0)
	t1 := time.Now()
	in, err := d.Start(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	console := waitLog(t, d, spec.Name, "BLIXARD-GUEST-READY", 3*time.Minute)
	ready := time.Since(t1)
	if !strings.Contains(console, `blixard.note=a"b${x}'c`) {
		t.Errorf("the guest's command line lacks the verbatim kernel parameter:\n%s", console)
	}

	waited := make(chan microvm.Exit, 1)
	go func() {
		e, err := d.Wait(ctx, spec.Name)
		if err != nil {
			t.Errorf("Wait: %v", err)
		}
		waited <- e
	}()
	t2 := time.Now()
	if err := d.Stop(ctx, spec.Name, time.Minute); err != nil {
		t.Fatal(err)
	}
	e := <-waited
	if !e.Clean || e.Reason != "stopped" {
		t.Errorf("exit after Stop = %+v, want a clean stop within the grace period", e)
	}
	log, _, err := d.Logs(ctx, spec.Name, 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(log), "reboot: Power down") {
		t.Errorf("guest did not power off; console tail:\n%s", vmproc.LastLines(log, 20))
	}
	t.Logf("pid %d: nix build %s, start to READY %s, graceful stop %s",
		in.PID, built.Round(time.Millisecond), ready.Round(time.Millisecond), time.Since(t2).Round(time.Millisecond))
}

// testGuest returns the kernel (vmlinux: PVH boot, fast under TCG) and
// initrd that scripts/guest.sh builds, or skips saying why.
func testGuest(t *testing.T) (kernel, initrd string) {
	t.Helper()
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		t.Skip("qemu-system-x86_64 not installed (scripts/guest.sh installs it)")
	}
	gdir := os.Getenv("BLIXARD_GUEST_DIR")
	if gdir == "" {
		gdir = filepath.Join(repoDir(t), "build", "guest")
	}
	kernel, initrd = filepath.Join(gdir, "vmlinux"), filepath.Join(gdir, "initrd.img")
	for _, f := range []string{kernel, initrd} {
		if _, err := os.Stat(f); err != nil {
			t.Skipf("test guest not built: %v (run scripts/guest.sh, or set BLIXARD_GUEST_DIR)", err)
		}
	}
	return kernel, initrd
}

// waitLog polls name's console until it contains marker and returns it.
func waitLog(t *testing.T, d *Driver, name, marker string, timeout time.Duration) string {
	t.Helper()
	deadline := time.Now().Add(timeout)
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		b, _, err := d.Logs(context.Background(), name, 0, 0)
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(string(b), marker) {
			return string(b)
		}
		if time.Now().After(deadline) {
			t.Fatalf("%q not on %s's console within %s; tail:\n%s", marker, name, timeout, vmproc.LastLines(b, 20))
		}
		<-tick.C
	}
}
