package qemu

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/blixard/blixard/actors"
	"github.com/blixard/blixard/actors/drivertest"
	"github.com/blixard/blixard/microvm"
	"github.com/blixard/blixard/microvm/vmproc"
)

var _ actors.Driver = (*Driver)(nil)
var _ actors.DriverCloser = (*Driver)(nil)

// The test binary doubles as a fake qemu: with BLIXARD_FAKE_QEMU=1 it reads
// the -qmp and -chardev arguments of the argv the driver built, writes a
// console log, serves QMP and exits like qemu does on a guest poweroff.
func TestMain(m *testing.M) {
	if os.Getenv("BLIXARD_FAKE_QEMU") == "1" {
		os.Exit(fakeQemu(os.Args[1:]))
	}
	os.Exit(m.Run())
}

func fakeQemu(args []string) int {
	var qmpPath, consolePath string
	for i := 0; i+1 < len(args); i++ {
		switch args[i] {
		case "-qmp":
			qmpPath = splitOpts(strings.TrimPrefix(args[i+1], "unix:"))[0]
		case "-chardev":
			for _, o := range splitOpts(args[i+1]) {
				if p, ok := strings.CutPrefix(o, "path="); ok {
					consolePath = p
				}
			}
		}
	}
	if qmpPath == "" || consolePath == "" {
		fmt.Fprintln(os.Stderr, "fake qemu: no -qmp or console chardev")
		return 1
	}
	console, err := os.OpenFile(consolePath, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o640)
	if err != nil {
		fmt.Fprintln(os.Stderr, "fake qemu:", err)
		return 1
	}
	fmt.Fprintln(console, "fake qemu: booting")
	ln, err := net.Listen("unix", qmpPath)
	if err != nil {
		fmt.Fprintln(os.Stderr, "fake qemu:", err)
		return 1
	}
	fmt.Fprintln(console, "BLIXARD-GUEST-READY 0.01")
	exit := make(chan int, 1)
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	go func() {
		s := <-sigs
		fmt.Fprintf(console, "qemu-system-x86_64: terminating on signal %d\n", s.(syscall.Signal))
		exit <- 0
	}()
	// "all" ignores every power-button press, a number the first N (a
	// guest still booting).
	ignore := os.Getenv("BLIXARD_FAKE_QEMU_IGNORE_POWERDOWN")
	ignoreN, _ := strconv.Atoi(ignore)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			serveQMP(c, testGreeting, func(cmd string, _ json.RawMessage) (any, []string, bool) {
				switch cmd {
				case "query-status":
					return QMPStatus{Running: true, Status: "running"}, nil, false
				case "system_powerdown":
					if ignoreN > 0 {
						ignoreN--
					} else if ignore != "all" {
						go func() {
							time.Sleep(50 * time.Millisecond)
							fmt.Fprintln(console, "blixard-guest: powering off")
							fmt.Fprintln(console, "reboot: Power down")
							exit <- 0
						}()
					}
					return nil, []string{"POWERDOWN"}, false
				case "quit":
					exit <- 0
					return nil, nil, true
				}
				return nil, nil, false
			})
		}
	}()
	return <-exit
}

// fakeDriver returns a driver whose "qemu" is this test binary.
func fakeDriver(t *testing.T, dir string, env ...string) *Driver {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	d, err := New(Options{
		Dir: dir, Binary: self, Accel: AccelTCG, NoNetwork: true,
		Supervisor: &ExecSupervisor{Env: append([]string{"BLIXARD_FAKE_QEMU=1"}, env...), PollInterval: 20 * time.Millisecond},
	})
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func fakeSpec(name string) microvm.Spec {
	return microvm.Spec{
		Name: name, ID: 7, Hypervisor: "qemu", Vcpus: 2, MemoryMB: 128,
		Kernel: "/fake/vmlinuz", Initrd: "/fake/initrd.img",
		Volumes: []microvm.Volume{{Name: "data", SizeMB: 4}},
		IP:      "10.0.0.5", MAC: "02:0a:00:00:00:05", TAP: "vm-5", Gateway: "10.0.0.1",
	}
}

func killVM(t *testing.T, d actors.Driver, name string) {
	t.Helper()
	in, err := d.Inspect(context.Background(), name)
	if err != nil || in.PID == 0 {
		t.Fatalf("Inspect %s: %+v, %v", name, in, err)
	}
	if err := syscall.Kill(in.PID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
}

// TestContract runs the node agent's driver contract against the driver
// with the fake qemu process: real processes, pidfiles, QMP and re-adoption,
// without the cost of booting guests.
func TestContract(t *testing.T) {
	if _, err := exec.LookPath("mkfs.ext4"); err != nil {
		t.Skip("mkfs.ext4 not installed (e2fsprogs; scripts/guest.sh installs it)")
	}
	drivertest.Run(t, drivertest.Harness{
		New:      func(t *testing.T, dir string) actors.Driver { return fakeDriver(t, dir) },
		Spec:     fakeSpec,
		Kill:     killVM,
		Timeout:  30 * time.Second,
		Parallel: 4,
		Grace:    5 * time.Second,
	})
}

func TestStopForcesAfterGrace(t *testing.T) {
	d := fakeDriver(t, t.TempDir(), "BLIXARD_FAKE_QEMU_IGNORE_POWERDOWN=all")
	ctx := testCtx(t, 30*time.Second)
	spec := fakeSpec("stubborn")
	spec.Volumes = nil
	if err := d.Prepare(ctx, spec); err != nil {
		t.Fatal(err)
	}
	if _, err := d.Start(ctx, spec); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if err := d.Stop(ctx, spec.Name, 300*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	if el := time.Since(start); el < 300*time.Millisecond || el > 10*time.Second {
		t.Errorf("Stop took %s, want the 300ms grace then a kill", el)
	}
	e, err := d.Wait(ctx, spec.Name)
	if err != nil || !e.Clean || e.Signal != "SIGKILL" || !strings.Contains(e.Reason, "SIGKILL after 300ms grace") {
		t.Fatalf("exit = %+v, %v; want a clean, forced stop", e, err)
	}
}

// A press that arrives while the guest boots is lost; Stop presses again.
func TestStopRepeatsPowerdown(t *testing.T) {
	d := fakeDriver(t, t.TempDir(), "BLIXARD_FAKE_QEMU_IGNORE_POWERDOWN=1")
	ctx := testCtx(t, 30*time.Second)
	spec := fakeSpec("slowboot")
	spec.Volumes = nil
	if err := d.Prepare(ctx, spec); err != nil {
		t.Fatal(err)
	}
	if _, err := d.Start(ctx, spec); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if err := d.Stop(ctx, spec.Name, 20*time.Second); err != nil {
		t.Fatal(err)
	}
	if el := time.Since(start); el < powerdownRepeat || el > powerdownRepeat+5*time.Second {
		t.Errorf("Stop took %s, want one repeat interval (%s)", el, powerdownRepeat)
	}
	e, err := d.Wait(ctx, spec.Name)
	if err != nil || !e.Clean || e.Signal != "" || e.Reason != "stopped" {
		t.Fatalf("exit = %+v, %v; want a graceful stop", e, err)
	}
}

func TestExitClassification(t *testing.T) {
	d := fakeDriver(t, t.TempDir())
	ctx := testCtx(t, 30*time.Second)
	spec := fakeSpec("guest")
	spec.Volumes = nil
	if err := d.Prepare(ctx, spec); err != nil {
		t.Fatal(err)
	}
	run := func(act func(in microvm.Instance)) microvm.Exit {
		t.Helper()
		in, err := d.Start(ctx, spec)
		if err != nil {
			t.Fatal(err)
		}
		act(in)
		e, err := d.Wait(ctx, spec.Name)
		if err != nil {
			t.Fatal(err)
		}
		return e
	}
	// A powerdown from outside the driver (the guest powering off): clean.
	e := run(func(microvm.Instance) {
		q, err := DialQMP(ctx, filepath.Join(d.vms.StateDir(spec.Name), qmpFile))
		if err != nil {
			t.Fatal(err)
		}
		defer q.Close()
		if err := q.Powerdown(ctx); err != nil {
			t.Fatal(err)
		}
	})
	if !e.Clean || e.Reason != "guest powered off" {
		t.Errorf("guest poweroff: %+v, want clean", e)
	}
	// SIGTERM from someone else: qemu exits 0 but it was not the guest.
	e = run(func(in microvm.Instance) { syscall.Kill(in.PID, syscall.SIGTERM) })
	if e.Clean || !strings.Contains(e.Reason, "signal from outside") {
		t.Errorf("outside SIGTERM: %+v, want not clean", e)
	}
	// The last exit survives a driver restart.
	d2 := fakeDriver(t, d.opts.Dir)
	if e2, err := d2.Wait(ctx, spec.Name); err != nil || e2.Reason != e.Reason {
		t.Errorf("Wait on a new driver = %+v, %v; want the recorded %q", e2, err, e.Reason)
	}
}

func TestStartFailsFast(t *testing.T) {
	dir := t.TempDir()
	bin := fakeBinary(t, `echo "qemu-system-x86_64: -kernel /nope: No such file" >&2; exit 1`)
	d, err := New(Options{Dir: dir, Binary: bin, Accel: AccelTCG, NoNetwork: true})
	if err != nil {
		t.Fatal(err)
	}
	ctx := testCtx(t, 30*time.Second)
	spec := fakeSpec("broken")
	spec.Volumes = nil
	if err := d.Prepare(ctx, spec); err != nil {
		t.Fatal(err)
	}
	_, err = d.Start(ctx, spec)
	if err == nil || !strings.Contains(err.Error(), "No such file") {
		t.Fatalf("Start of a failing qemu: err = %v, want qemu's message", err)
	}
	if in, _ := d.Inspect(ctx, spec.Name); in.Running {
		t.Fatal("failed start left the VM running")
	}
}

func TestPrepareCreatesVolumes(t *testing.T) {
	if _, err := exec.LookPath("mkfs.ext4"); err != nil {
		t.Skip("mkfs.ext4 not installed (e2fsprogs; scripts/guest.sh installs it)")
	}
	d := fakeDriver(t, t.TempDir())
	ctx := testCtx(t, 30*time.Second)
	spec := fakeSpec("vols")
	ext := filepath.Join(t.TempDir(), "ext.img")
	spec.Volumes = []microvm.Volume{{Name: "data", SizeMB: 8}, {Name: "ext", Image: ext, SizeMB: 4}}
	if err := d.Prepare(ctx, spec); err != nil {
		t.Fatal(err)
	}
	for path, size := range map[string]int64{filepath.Join(d.vms.StateDir("vols"), "data.img"): 8 << 20, ext: 4 << 20} {
		st, err := os.Stat(path)
		if err != nil || st.Size() != size {
			t.Fatalf("volume %s: %v, %v; want %d bytes", path, st, err, size)
		}
		b := make([]byte, 2)
		f, _ := os.Open(path)
		f.ReadAt(b, 1024+56) // ext superblock magic
		f.Close()
		if !bytes.Equal(b, []byte{0x53, 0xef}) {
			t.Errorf("volume %s has no ext4 superblock", path)
		}
	}
	// An existing image is never reformatted.
	os.WriteFile(ext, []byte("keep"), 0o640)
	if err := d.Prepare(ctx, spec); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(ext); string(b) != "keep" {
		t.Errorf("Prepare rewrote an existing image")
	}
	spec.Volumes = []microvm.Volume{{Name: "gone", Image: filepath.Join(t.TempDir(), "none.img")}}
	if err := d.Prepare(ctx, spec); !errors.Is(err, microvm.ErrInvalidSpec) {
		t.Errorf("missing image without size: err = %v, want ErrInvalidSpec", err)
	}
}

func TestLogsFollow(t *testing.T) {
	d := fakeDriver(t, t.TempDir())
	ctx := testCtx(t, 30*time.Second)
	spec := fakeSpec("logs")
	spec.Volumes = nil
	if err := d.Prepare(ctx, spec); err != nil {
		t.Fatal(err)
	}
	if b, next, err := d.Logs(ctx, spec.Name, 0, 0); err != nil || len(b) != 0 || next != 0 {
		t.Fatalf("Logs before start = %q, %d, %v", b, next, err)
	}
	if _, err := d.Start(ctx, spec); err != nil {
		t.Fatal(err)
	}
	out := waitConsole(t, d, spec.Name, "BLIXARD-GUEST-READY", 10*time.Second)
	if !strings.HasPrefix(out, "fake qemu: booting\n") {
		t.Errorf("console = %q", out)
	}
	last, _, err := d.Logs(ctx, spec.Name, -1, 1)
	if err != nil || string(last) != "BLIXARD-GUEST-READY 0.01\n" {
		t.Errorf("last line = %q, %v", last, err)
	}
	if err := d.Stop(ctx, spec.Name, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	all, next, _ := d.Logs(ctx, spec.Name, 0, 0)
	rest, next2, _ := d.Logs(ctx, spec.Name, int64(len(out)), 0)
	if next != next2 || string(rest) != string(all[len(out):]) || !strings.Contains(string(rest), "reboot: Power down") {
		t.Errorf("follow from %d = %q (next %d), whole log next %d", len(out), rest, next2, next)
	}
}

func TestLogRotation(t *testing.T) {
	self, _ := os.Executable()
	dir := t.TempDir()
	d, err := New(Options{
		Dir: dir, Binary: self, Accel: AccelTCG, NoNetwork: true, MaxLogBytes: 10,
		Supervisor: &ExecSupervisor{Env: []string{"BLIXARD_FAKE_QEMU=1"}},
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx := testCtx(t, 30*time.Second)
	spec := fakeSpec("rot")
	spec.Volumes = nil
	if err := d.Prepare(ctx, spec); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 2; i++ {
		if _, err := d.Start(ctx, spec); err != nil {
			t.Fatal(err)
		}
		waitConsole(t, d, spec.Name, "READY", 10*time.Second)
		if err := d.Stop(ctx, spec.Name, 5*time.Second); err != nil {
			t.Fatal(err)
		}
	}
	old, err := os.ReadFile(filepath.Join(dir, "rot", "console.log.1"))
	if err != nil || !strings.Contains(string(old), "reboot: Power down") {
		t.Fatalf("rotated log = %q, %v; want the first run", old, err)
	}
	cur, next, _ := d.Logs(ctx, spec.Name, 0, 0)
	if strings.Count(string(cur), "fake qemu: booting") != 1 {
		t.Errorf("current log holds %d runs, want 1: %q", strings.Count(string(cur), "booting"), cur)
	}
	// A follower whose offset is past the rotated log's end restarts at 0.
	again, next2, _ := d.Logs(ctx, spec.Name, next+1000, 0)
	if string(again) != string(cur) || next2 != next {
		t.Errorf("follow past the end after rotation = %q (next %d), want the new log", again, next2)
	}
}

// waitConsole polls name's console log until it contains want and returns
// the log so far; it fails on the deadline or when the VM exits first.
func waitConsole(t *testing.T, d *Driver, name, want string, timeout time.Duration) string {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var log []byte
	var off int64
	for {
		b, next, err := d.Logs(context.Background(), name, off, 0)
		if err != nil {
			t.Fatalf("Logs: %v", err)
		}
		log, off = append(log, b...), next
		if bytes.Contains(log, []byte(want)) {
			return string(log)
		}
		if in, _ := d.Inspect(context.Background(), name); !in.Running {
			t.Fatalf("vm %s exited before %q; console:\n%s", name, want, lastLines(log, 30))
		}
		if time.Now().After(deadline) {
			t.Fatalf("no %q on the console of %s within %s; console:\n%s", want, name, timeout, lastLines(log, 30))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func lastLines(b []byte, n int) string { return string(vmproc.LastLines(b, n)) }

// After Close the exit watchers are gone; a forced Stop must still return
// once the process is dead instead of waiting for a watcher forever.
func TestStopAfterClose(t *testing.T) {
	d := fakeDriver(t, t.TempDir(), "BLIXARD_FAKE_QEMU_IGNORE_POWERDOWN=all")
	ctx := testCtx(t, 30*time.Second)
	spec := fakeSpec("closed")
	spec.Volumes = nil
	if err := d.Prepare(ctx, spec); err != nil {
		t.Fatal(err)
	}
	if _, err := d.Start(ctx, spec); err != nil {
		t.Fatal(err)
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	if err := d.Stop(ctx, spec.Name, 100*time.Millisecond); err != nil {
		t.Fatalf("Stop after Close: %v", err)
	}
}

// procExists reports whether pid is a process (a zombie included).
func procExists(pid int) bool {
	_, err := os.Stat("/proc/" + strconv.Itoa(pid) + "/stat")
	return err == nil
}
