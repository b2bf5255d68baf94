package nix

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/blixard/blixard/actors"
	"github.com/blixard/blixard/actors/drivertest"
	"github.com/blixard/blixard/microvm"
	"github.com/blixard/blixard/microvm/qemu"
	"github.com/blixard/blixard/microvm/vmproc"
)

var _ actors.Driver = (*Driver)(nil)
var _ actors.DriverCloser = (*Driver)(nil)

var update = flag.Bool("update", false, "rewrite testdata/*.golden")

// The test binary doubles as a fake hypervisor: the stub runner execs
// $BLIXARD_STUB_QEMU with qemu's arguments, and with BLIXARD_FAKE_VM=1 this
// binary serves QMP on the -qmp socket, prints a boot to stdout and exits
// like qemu on an ACPI power-button press (system_powerdown) or SIGTERM.
func TestMain(m *testing.M) {
	if os.Getenv("BLIXARD_FAKE_VM") == "1" {
		os.Exit(fakeVM(os.Args[1:]))
	}
	os.Exit(m.Run())
}

func fakeVM(args []string) int {
	sock := ""
	for i := 0; i+1 < len(args); i++ {
		if args[i] == "-qmp" {
			sock, _, _ = strings.Cut(strings.TrimPrefix(args[i+1], "unix:"), ",")
		}
	}
	if sock == "" {
		fmt.Fprintln(os.Stderr, "fake vm: no -qmp socket")
		return 1
	}
	// Signals first: the driver may send SIGTERM as soon as the socket
	// exists.
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	ln, err := net.Listen("unix", sock)
	if err != nil {
		fmt.Fprintln(os.Stderr, "fake vm:", err)
		return 1
	}
	fmt.Println("fake vm: booting")
	fmt.Println("BLIXARD-GUEST-READY 0.01")
	exit := make(chan int, 1)
	go func() {
		s := <-sigs
		fmt.Printf("qemu-system-x86_64: terminating on signal %d\n", s.(syscall.Signal))
		exit <- 0
	}()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				fmt.Fprintln(c, `{"QMP": {"version": {}, "capabilities": []}}`)
				sc := bufio.NewScanner(c)
				for sc.Scan() {
					fmt.Fprintln(c, `{"return": {}}`)
					if strings.Contains(sc.Text(), "system_powerdown") {
						fmt.Println("reboot: Power down")
						exit <- 0
					}
				}
			}()
		}
	}()
	code := <-exit
	os.Remove(sock)
	return code
}

// repoDir is the repository root (tests run in microvm/nix).
func repoDir(t *testing.T) string {
	t.Helper()
	dir, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	return dir
}

// needNix skips the test when nix is missing (scripts/nix-deps.sh installs
// Debian's nix-bin).
func needNix(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath("nix")
	if err != nil {
		t.Skip("nix is not installed (run scripts/nix-deps.sh): the nix driver is untested here")
	}
	return p
}

// stubOptions builds VMs with the stub nixpkgs and microvm flakes, single
// user, without sandbox, build users or binary caches (this machine has
// neither nixpkgs nor network).
func stubOptions(t *testing.T, dir string) Options {
	repo := repoDir(t)
	return Options{
		Dir: dir,
		OverrideInputs: map[string]string{
			"nixpkgs": "path:" + filepath.Join(repo, "nix/testdata/stub-nixpkgs"),
			"microvm": "path:" + filepath.Join(repo, "nix/testdata/stub-microvm"),
		},
		ExtraArgs: []string{
			"--option", "build-users-group", "",
			"--option", "sandbox", "false",
			"--option", "substituters", "",
		},
	}
}

// fakeSupervisor runs runners whose "qemu" is this test binary.
func fakeSupervisor(t *testing.T) qemu.Supervisor {
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	return &qemu.ExecSupervisor{Env: []string{"BLIXARD_FAKE_VM=1", "BLIXARD_STUB_QEMU=" + self}, PollInterval: 20 * time.Millisecond}
}

func TestContract(t *testing.T) {
	needNix(t)
	sup := fakeSupervisor(t)
	drivertest.Run(t, drivertest.Harness{
		New: func(t *testing.T, dir string) actors.Driver {
			opts := stubOptions(t, dir)
			opts.Supervisor = sup
			d, err := New(opts)
			if err != nil {
				t.Fatal(err)
			}
			return d
		},
		Spec: func(name string) microvm.Spec {
			return microvm.Spec{Name: name, ID: 7, Vcpus: 1, MemoryMB: 64, Kernel: "/nonexistent/vmlinux",
				KernelParams: []string{`note="a'b ${x}"`}}
		},
		Kill: func(t *testing.T, d actors.Driver, name string) {
			in, err := d.Inspect(context.Background(), name)
			if err != nil || in.PID == 0 {
				t.Fatalf("Inspect %s: %+v, %v", name, in, err)
			}
			if err := syscall.Kill(in.PID, syscall.SIGKILL); err != nil {
				t.Fatal(err)
			}
		},
		Parallel: 4,
		Timeout:  60 * time.Second,
	})
}

func TestPrepareIsIdempotentAndRebuildsOnChange(t *testing.T) {
	needNix(t)
	ctx := context.Background()
	opts := stubOptions(t, t.TempDir())
	opts.Supervisor = fakeSupervisor(t)
	d, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	spec := microvm.Spec{Name: "idem", Kernel: "/k", MemoryMB: 64}
	if err := d.Prepare(ctx, spec); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(opts.Dir, "idem", currentLink)
	first, err := os.Readlink(link)
	if err != nil {
		t.Fatal(err)
	}
	logSize := vmproc.FileSize(filepath.Join(opts.Dir, "idem", consoleFile))
	if err := d.Prepare(ctx, spec); err != nil {
		t.Fatal(err)
	}
	spec.Generation++ // a new record generation alone builds nothing either
	if err := d.Prepare(ctx, spec); err != nil {
		t.Fatal(err)
	}
	if n := vmproc.FileSize(filepath.Join(opts.Dir, "idem", consoleFile)); n != logSize {
		t.Errorf("Prepare with the same spec ran a build (console log %d -> %d bytes)", logSize, n)
	}
	spec.MemoryMB = 128
	if err := d.Prepare(ctx, spec); err != nil {
		t.Fatal(err)
	}
	second, err := os.Readlink(link)
	if err != nil {
		t.Fatal(err)
	}
	if first == second {
		t.Errorf("Prepare with more memory kept the runner %s", first)
	}
	run, err := os.ReadFile(filepath.Join(link, runScript))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(run), "'-m' '128M'") {
		t.Errorf("rebuilt runner does not have 128M:\n%s", run)
	}
	log, _, err := d.Logs(ctx, "idem", 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(log), "blixard: building the runner: ") || !strings.Contains(string(log), "Updated input 'microvm'") {
		t.Errorf("console log lacks the build log:\n%s", log)
	}
}

func TestPrepareRejects(t *testing.T) {
	d, err := New(Options{Dir: t.TempDir(), Nix: "/nonexistent/nix"})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	for _, spec := range []microvm.Spec{
		{Name: `a"b${x}`},
		{Name: "../etc"},
		{Name: "web", Hypervisor: "vmware"},
		{Name: "web", TAP: "tap with space", MAC: "02:00:00:00:00:01"},
		{Name: "web", Volumes: []microvm.Volume{{Name: "data"}}},
	} {
		if err := d.Prepare(context.Background(), spec); !errors.Is(err, microvm.ErrInvalidSpec) {
			t.Errorf("Prepare(%+v) = %v, want ErrInvalidSpec", spec, err)
		}
	}
	if _, err := New(Options{Dir: t.TempDir() + "/a#b"}); err == nil {
		t.Errorf("New accepted a state dir with '#'")
	}
}

func TestBuildFailureReported(t *testing.T) {
	needNix(t)
	opts := stubOptions(t, t.TempDir())
	opts.OverrideInputs["microvm"] = "path:" + t.TempDir() // not a flake
	d, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	err = d.Prepare(context.Background(), microvm.Spec{Name: "broken", Kernel: "/k"})
	if err == nil || !strings.Contains(err.Error(), "nix build") {
		t.Fatalf("Prepare with a broken input = %v, want a nix build error", err)
	}
	if _, err := d.Start(context.Background(), microvm.Spec{Name: "broken"}); !errors.Is(err, microvm.ErrNotPrepared) {
		t.Fatalf("Start after a failed build = %v, want ErrNotPrepared", err)
	}
}

// TestStopWithoutShutdownScript: a runner without microvm-shutdown is
// stopped with SIGTERM, well within the grace period, and the exit is a
// clean stop.
func TestStopWithoutShutdownScript(t *testing.T) {
	needNix(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	opts := stubOptions(t, t.TempDir())
	opts.Supervisor = fakeSupervisor(t)
	d, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	spec := microvm.Spec{Name: "noshut", Kernel: "/k", Labels: map[string]string{"stub-no-shutdown": ""}}
	if err := d.Prepare(ctx, spec); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(opts.Dir, "noshut", currentLink, stopScript)); !os.IsNotExist(err) {
		t.Fatalf("the runner has microvm-shutdown (stat: %v); the stub should have left it out", err)
	}
	if _, err := d.Start(ctx, spec); err != nil {
		t.Fatal(err)
	}
	t0 := time.Now()
	if err := d.Stop(ctx, spec.Name, 30*time.Second); err != nil {
		t.Fatal(err)
	}
	if took := time.Since(t0); took > 10*time.Second {
		t.Errorf("Stop took %s: SIGTERM was not sent, the grace period ran out", took)
	}
	e, err := d.Wait(ctx, spec.Name)
	if err != nil {
		t.Fatal(err)
	}
	if !e.Clean || e.Reason != "stopped" {
		t.Errorf("exit = %+v, want a clean stop", e)
	}
	log, _, _ := d.Logs(ctx, spec.Name, 0, 0)
	if !strings.Contains(string(log), "terminating on signal 15") {
		t.Errorf("the fake hypervisor did not get SIGTERM; console:\n%s", log)
	}
}

// resourceSupervisor is an exec supervisor that records the resources it
// was given (the systemd supervisor enforces them).
type resourceSupervisor struct {
	qemu.Supervisor
	got chan qemu.Resources
}

func (s resourceSupervisor) StartVM(ctx context.Context, dir string, argv []string, logPath string, res qemu.Resources) (qemu.Process, error) {
	s.got <- res
	return s.Supervisor.Start(ctx, dir, argv, logPath)
}

func TestStartPassesResources(t *testing.T) {
	needNix(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	sup := resourceSupervisor{Supervisor: fakeSupervisor(t), got: make(chan qemu.Resources, 1)}
	opts := stubOptions(t, t.TempDir())
	opts.Supervisor = sup
	d, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	spec := microvm.Spec{Name: "res", Kernel: "/k", Vcpus: 3, MemoryMB: 320}
	t.Cleanup(func() { d.Destroy(context.Background(), spec.Name) })
	if err := d.Prepare(ctx, spec); err != nil {
		t.Fatal(err)
	}
	if _, err := d.Start(ctx, spec); err != nil {
		t.Fatal(err)
	}
	if got, want := <-sup.got, (qemu.Resources{Name: "res", Vcpus: 3, MemoryMB: 320}); got != want {
		t.Errorf("StartVM resources = %+v, want %+v", got, want)
	}
}
