package qemu

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/blixard/blixard/actors"
	"github.com/blixard/blixard/actors/drivertest"
	"github.com/blixard/blixard/microvm"
)

// Tests in this file run the real qemu (TCG) and the test guest that
// scripts/guest.sh builds. They skip, saying why, when either is missing;
// .ci installs both through scripts/guest.sh. Boots are few on purpose:
// each costs seconds of CPU.

// guest returns the test guest's kernel and initrd, or skips. It prefers
// the decompressed vmlinux (PVH boot), which saves seconds under TCG.
func guest(t *testing.T) (kernel, initrd string) {
	t.Helper()
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		t.Skip("qemu-system-x86_64 not installed (scripts/guest.sh installs it)")
	}
	dir := os.Getenv("BLIXARD_GUEST_DIR")
	if dir == "" {
		dir = filepath.Join("..", "..", "build", "guest")
	}
	dir, _ = filepath.Abs(dir)
	kernel, initrd = filepath.Join(dir, "vmlinuz"), filepath.Join(dir, "initrd.img")
	for _, f := range []string{kernel, initrd} {
		if _, err := os.Stat(f); err != nil {
			t.Skipf("test guest not built: %v (run scripts/guest.sh, or set BLIXARD_GUEST_DIR)", err)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "vmlinux")); err == nil {
		kernel = filepath.Join(dir, "vmlinux")
	}
	return kernel, initrd
}

// shortTempDir is a temp dir with a short path: unix socket paths are
// limited to 107 bytes and t.TempDir() paths carry the test name.
func shortTempDir(t *testing.T, pattern string) string {
	t.Helper()
	dir, err := os.MkdirTemp("", pattern)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// TestQemuAcceptsArgs hands qemu the hostile argv (commas, quotes and
// spaces in the name, kernel path, state dir and volume names) with -S, so
// no guest code runs, and asks qemu over QMP what it understood: every
// value must arrive whole, with no option injected.
func TestQemuAcceptsArgs(t *testing.T) {
	kernel, _ := guest(t)
	base := shortTempDir(t, "bq")
	stateDir := filepath.Join(base, `st,ate "x" y`)
	if err := os.MkdirAll(stateDir, 0o750); err != nil {
		t.Fatal(err)
	}
	oddKernel := filepath.Join(base, `k,ernel "1".bin`)
	if err := os.Symlink(kernel, oddKernel); err != nil {
		t.Fatal(err)
	}
	m := Machine{
		Spec: microvm.Spec{
			Name: `evil,debug-threads=on "q"`, Kernel: oddKernel, MemoryMB: 128,
			Volumes: []microvm.Volume{{Name: "d,file=shadow", SizeMB: 1}},
		},
		StateDir: stateDir, Accel: AccelTCG, TSCKHz: HostTSCKHz(),
	}
	ctx := testCtx(t, 60*time.Second)
	if err := createVolume(ctx, m.VolumePath(m.Spec.Volumes[0]), 1); err != nil {
		t.Fatal(err)
	}
	argv, err := m.Args()
	if err != nil {
		t.Fatal(err)
	}
	p, err := (&ExecSupervisor{}).Start(ctx, stateDir, append(argv, "-S"), m.ConsolePath())
	if err != nil {
		t.Fatal(err)
	}
	defer func() { p.Signal(syscall.SIGKILL); <-p.Done() }()
	var q *QMP
	for q == nil {
		q, err = DialQMP(ctx, m.QMPPath())
		select {
		case <-p.Done():
			b, _ := os.ReadFile(m.ConsolePath())
			t.Fatalf("qemu rejected the argv %q:\n%s", argv, b)
		case <-ctx.Done():
			t.Fatalf("no QMP socket: %v", err)
		case <-time.After(50 * time.Millisecond):
		}
	}
	defer q.Close()
	var name struct {
		Name string `json:"name"`
	}
	if err := q.Execute(ctx, "query-name", nil, &name); err != nil || name.Name != m.Spec.Name {
		t.Errorf("query-name = %q, %v; want %q", name.Name, err, m.Spec.Name)
	}
	var blocks []struct {
		Device   string `json:"device"`
		Inserted struct {
			File string `json:"file"`
			RO   bool   `json:"ro"`
		} `json:"inserted"`
	}
	if err := q.Execute(ctx, "query-block", nil, &blocks); err != nil {
		t.Fatal(err)
	}
	if len(blocks) != 1 || blocks[0].Device != "vda" || blocks[0].Inserted.File != m.VolumePath(m.Spec.Volumes[0]) {
		t.Errorf("query-block = %+v, want one drive vda backed by %q", blocks, m.VolumePath(m.Spec.Volumes[0]))
	}
	st, err := q.Status(ctx)
	if err != nil || st.Running || st.Status != "prelaunch" {
		t.Errorf("status = %+v, %v; want prelaunch (-S)", st, err)
	}
	if err := q.Quit(ctx); err != nil {
		t.Fatal(err)
	}
	select {
	case <-p.Done():
	case <-ctx.Done():
		t.Fatal("qemu did not exit after quit")
	}
}

// TestBootTCG boots the test guest, re-adopts it from a second driver
// (a restarted agent) and stops it gracefully through QMP.
func TestBootTCG(t *testing.T) {
	kernel, initrd := guest(t)
	dir := shortTempDir(t, "bt")
	opts := Options{Dir: dir, Accel: AccelTCG, NoNetwork: true}
	d1, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	defer d1.Close()
	ctx := testCtx(t, 5*time.Minute)
	spec := microvm.Spec{
		Name: "boot", ID: 1, Vcpus: 1, MemoryMB: 256, Kernel: kernel, Initrd: initrd,
		Volumes:      []microvm.Volume{{Name: "data", SizeMB: 16}},
		KernelParams: []string{"blixard.hostname=boot"},
	}
	if err := d1.Prepare(ctx, spec); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	in1, err := d1.Start(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	console := waitConsole(t, d1, spec.Name, "BLIXARD-GUEST-READY", 3*time.Minute)
	t.Logf("TCG boot: READY after %s wall (%s)", time.Since(start).Round(time.Millisecond),
		strings.TrimSpace(console[strings.LastIndex(console, "BLIXARD-GUEST-READY"):]))
	if !strings.Contains(console, "blixard-guest: disks: vda") {
		t.Errorf("the guest did not see its volume; console:\n%s", lastLines([]byte(console), 20))
	}

	// A restarted agent: a second driver over the same state dir.
	d2, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	defer d2.Close()
	in2, ok, err := d2.Recover(ctx, spec)
	if err != nil || !ok || in2.PID != in1.PID || !in2.StartedAt.Equal(in1.StartedAt) {
		t.Fatalf("Recover = %+v, %v, %v; want the running pid %d", in2, ok, err, in1.PID)
	}
	firstExit := make(chan microvm.Exit, 1)
	go func() { e, _ := d1.Wait(ctx, spec.Name); firstExit <- e }()

	const grace = 60 * time.Second
	stopStart := time.Now()
	if err := d2.Stop(ctx, spec.Name, grace); err != nil {
		t.Fatal(err)
	}
	took := time.Since(stopStart)
	t.Logf("graceful stop took %s", took.Round(time.Millisecond))
	if took >= grace {
		t.Errorf("Stop took %s: the guest did not power off within the grace", took)
	}
	e2, err := d2.Wait(ctx, spec.Name)
	if err != nil || !e2.Clean || e2.Reason != "stopped" {
		t.Errorf("exit seen by the adopting driver = %+v, %v; want a clean stop", e2, err)
	}
	// The original parent saw qemu exit 0 after the guest's ACPI poweroff.
	select {
	case e1 := <-firstExit:
		if e1.Code != 0 || e1.Signal != "" || e1.Reason != "guest powered off" {
			t.Errorf("exit seen by the parent = %+v; want qemu code 0 after a guest poweroff", e1)
		}
	case <-ctx.Done():
		t.Fatal("the first driver never saw the exit")
	}
	if procExists(in1.PID) {
		t.Errorf("qemu pid %d still exists after Stop", in1.PID)
	}
	if out, _, _ := d2.Logs(ctx, spec.Name, 0, 0); !strings.Contains(string(out), "blixard-guest: powering off") {
		t.Errorf("the guest did not run its shutdown; console tail:\n%s", lastLines(out, 10))
	}
}

// TestKillTCG kills qemu with SIGKILL right after it started (the guest is
// booting): Wait reports an unclean exit.
func TestKillTCG(t *testing.T) {
	kernel, initrd := guest(t)
	d, err := New(Options{Dir: shortTempDir(t, "bk"), Accel: AccelTCG, NoNetwork: true})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	ctx := testCtx(t, 3*time.Minute)
	spec := microvm.Spec{Name: "victim", Vcpus: 1, MemoryMB: 128, Kernel: kernel, Initrd: initrd}
	if err := d.Prepare(ctx, spec); err != nil {
		t.Fatal(err)
	}
	in, err := d.Start(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	if err := syscall.Kill(in.PID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	e, err := d.Wait(ctx, spec.Name)
	if err != nil || e.Clean || e.Signal != "SIGKILL" || e.Code != -1 {
		t.Fatalf("exit after kill -9 = %+v, %v; want unclean, SIGKILL", e, err)
	}
	if err := d.Destroy(ctx, spec.Name); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(d.vms.StateDir(spec.Name)); !os.IsNotExist(err) {
		t.Errorf("state dir left after Destroy: %v", err)
	}
}

// TestProbeBootsUnderTCG checks the accel probe's success path with the
// accelerator this machine has: the guest kernel, booted without a root
// file system, panics and qemu exits on its own.
func TestProbeBootsUnderTCG(t *testing.T) {
	if testing.Short() {
		t.Skip("boots a kernel under TCG; skipped with -short")
	}
	kernel, _ := guest(t)
	start := time.Now()
	ok, detail := bootToPanic(context.Background(), "qemu-system-x86_64", AccelTCG, kernel, HostTSCKHz(), 3*time.Minute)
	if !ok {
		t.Fatalf("probe kernel did not boot to its panic under TCG: %s", detail)
	}
	t.Logf("TCG probe boot to panic and exit: %s", time.Since(start).Round(time.Millisecond))
}

// TestContractRealQemu runs the driver contract against real TCG guests.
// It boots a dozen VMs, so it runs only when BLIXARD_QEMU_REAL_CONTRACT=1.
func TestContractRealQemu(t *testing.T) {
	if os.Getenv("BLIXARD_QEMU_REAL_CONTRACT") != "1" {
		t.Skip("boots many TCG guests; set BLIXARD_QEMU_REAL_CONTRACT=1 to run")
	}
	kernel, initrd := guest(t)
	drivertest.Run(t, drivertest.Harness{
		New: func(t *testing.T, dir string) actors.Driver {
			d, err := New(Options{Dir: dir, Accel: AccelTCG, NoNetwork: true})
			if err != nil {
				t.Fatal(err)
			}
			return d
		},
		Spec: func(name string) microvm.Spec {
			return microvm.Spec{Name: name, Vcpus: 1, MemoryMB: 128, Kernel: kernel, Initrd: initrd}
		},
		Kill:     killVM,
		Timeout:  2 * time.Minute,
		Parallel: 2,
		Grace:    20 * time.Second,
	})
}
