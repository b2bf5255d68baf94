package nix

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/blixard/blixard/microvm"
	"github.com/blixard/blixard/microvm/network"
	"github.com/blixard/blixard/microvm/qemu"
	nixfiles "github.com/blixard/blixard/nix"
)

// State dir entries.
const (
	flakeDir    = "flake"
	vmFileName  = "vm.json"
	currentLink = "current"
	builtFile   = "built.json"
	consoleFile = "console.log"
	exitFile    = "exit.json"
	runScript   = "bin/microvm-run"
	stopScript  = "bin/microvm-shutdown"
)

// Options configure a Driver. Only Dir is required.
type Options struct {
	// Dir holds one state dir per VM: <Dir>/<name>/ (the node's
	// <data-dir>/vms).
	Dir string
	// Nix is the nix binary; empty means "nix" on PATH.
	Nix string
	// OverrideInputs replaces flake inputs of the VM flake (nixpkgs,
	// microvm) with other flake references, as --override-input name ref.
	OverrideInputs map[string]string
	// ExtraArgs are added to every nix build, before the installable
	// (e.g. --option sandbox false, --option substituters '').
	ExtraArgs []string
	// NoNetwork builds VMs without a network interface even when their
	// spec names a TAP. No host networking is touched.
	NoNetwork bool
	// ExternalNetwork attaches VMs to TAPs that something else makes and
	// removes (the operator, microvm.nix's host module): the driver changes
	// no host networking.
	ExternalNetwork bool
	// Network makes the host side of each VM's network (TAP, route,
	// iptables chains); nil means microvm/network on this process's network
	// namespace, which needs root. Unused with NoNetwork or
	// ExternalNetwork.
	Network Network
	// Supervisor runs the runners; nil means a qemu.ExecSupervisor.
	Supervisor qemu.Supervisor
	// StartTimeout bounds how long Start waits for the hypervisor's
	// control socket; 0 means 60 s.
	StartTimeout time.Duration
	// MaxLogBytes rotates console.log to console.log.1 when a VM is built
	// or started and the log is larger; 0 means 16 MiB, negative never.
	MaxLogBytes int64
	Logger      *slog.Logger
}

// Network sets up and tears down the host side of VM networks;
// *network.Host implements it. Both methods are idempotent.
type Network interface {
	Setup(ctx context.Context, vm network.VM) error
	Teardown(ctx context.Context, vm network.VM) error
}

// Driver runs microVMs built by microvm.nix on this host. It satisfies the
// node agent's Driver contract (actors.Driver); its methods are safe for
// concurrent use.
type Driver struct {
	opts Options
	sup  qemu.Supervisor
	log  *slog.Logger
	// flake holds the embedded vm-flake files; flakeSum is their digest.
	flake    map[string][]byte
	flakeSum string
	// life ends with Close: it stops the watchers of adopted processes.
	life   context.Context
	cancel context.CancelFunc

	mu  sync.Mutex
	vms map[string]*vm
}

// vm is the driver's record of one VM.
type vm struct {
	name string
	dir  string

	// prep serialises Prepare (nix build) per VM without blocking the
	// other methods.
	prep sync.Mutex

	mu   sync.Mutex
	spec microvm.Spec
	cur  *run
	// recorded is the exit a previous driver recorded (exit.json).
	recorded *microvm.Exit
}

// run is one runner process of a VM.
type run struct {
	proc     qemu.Process
	logStart int64
	exited   chan struct{}
	exit     microvm.Exit
	// Guarded by vm.mu.
	done     bool
	stopping string
}

func (v *vm) running() bool { return v.cur != nil && !v.cur.done }

// New returns a driver keeping its state under opts.Dir. VMs a previous
// driver left running are found again by List, Inspect and Recover.
func New(opts Options) (*Driver, error) {
	if opts.Dir == "" {
		return nil, errors.New("nix: Options.Dir is required")
	}
	dir, err := filepath.Abs(opts.Dir)
	if err != nil {
		return nil, fmt.Errorf("nix: %w", err)
	}
	// The flake is addressed as path:<dir>/<name>/flake: URL syntax.
	if strings.ContainsAny(dir, "#?%\x00") || strings.ContainsFunc(dir, func(r rune) bool { return r <= ' ' }) {
		return nil, fmt.Errorf("nix: state dir %q holds characters a flake reference cannot", dir)
	}
	opts.Dir = dir
	if opts.Nix == "" {
		opts.Nix = "nix"
	}
	if opts.StartTimeout == 0 {
		opts.StartTimeout = 60 * time.Second
	}
	if opts.MaxLogBytes == 0 {
		opts.MaxLogBytes = 16 << 20
	}
	if err := os.MkdirAll(opts.Dir, 0o750); err != nil {
		return nil, fmt.Errorf("nix: %w", err)
	}
	d := &Driver{opts: opts, sup: opts.Supervisor, log: opts.Logger, vms: map[string]*vm{}, flake: map[string][]byte{}}
	if d.sup == nil {
		d.sup = &qemu.ExecSupervisor{}
	}
	if d.opts.Network == nil {
		d.opts.Network = &network.Host{Logger: opts.Logger}
	}
	if d.log == nil {
		d.log = slog.Default()
	}
	sum := sha256.New()
	err = fs.WalkDir(nixfiles.VMFlake(), ".", func(p string, e fs.DirEntry, err error) error {
		if err != nil || e.IsDir() {
			return err
		}
		b, err := fs.ReadFile(nixfiles.VMFlake(), p)
		d.flake[p] = b
		fmt.Fprintf(sum, "%s %d\n", p, len(b))
		sum.Write(b)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("nix: reading the embedded vm flake: %w", err)
	}
	d.flakeSum = hex.EncodeToString(sum.Sum(nil))
	d.life, d.cancel = context.WithCancel(context.Background())
	return d, nil
}

// Close releases the driver; running VMs keep running for a later driver
// to recover.
func (d *Driver) Close() error {
	d.cancel()
	return nil
}

func (d *Driver) stateDir(name string) string { return filepath.Join(d.opts.Dir, name) }

// socketName is the hypervisor control socket microvm.nix's runner makes
// in its working directory (microvm.socket defaults to "<hostName>.sock").
func socketName(name string) string { return name + ".sock" }

// lookup returns the record of name, loading it from its state dir (and
// re-adopting a running runner) when this driver has not seen it yet. It
// returns nil when name is unknown.
func (d *Driver) lookup(name string) (*vm, error) {
	if !isLabel(name) {
		return nil, nil
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if v, ok := d.vms[name]; ok {
		return v, nil
	}
	dir := d.stateDir(name)
	var f vmFile
	if err := readJSON(filepath.Join(dir, flakeDir, vmFileName), &f); err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, nil
		}
		return nil, fmt.Errorf("loading vm %s: %w", name, err)
	}
	v := &vm{name: name, dir: dir, spec: f.Spec}
	var last microvm.Exit
	if err := readJSON(filepath.Join(dir, exitFile), &last); err == nil {
		v.recorded = &last
	}
	p, ok, err := d.sup.Adopt(d.life, dir)
	if err != nil {
		return nil, fmt.Errorf("re-adopting vm %s: %w", name, err)
	}
	if ok {
		d.log.Info("nix: re-adopted running vm", "vm", name, "pid", p.PID())
		d.watch(v, p, fileSize(filepath.Join(dir, consoleFile)))
	}
	d.vms[name] = v
	return v, nil
}

// record returns name's record, creating an empty one (Prepare's first
// call).
func (d *Driver) record(name string) (*vm, error) {
	v, err := d.lookup(name)
	if err != nil || v != nil {
		return v, err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if v, ok := d.vms[name]; ok {
		return v, nil
	}
	v = &vm{name: name, dir: d.stateDir(name)}
	d.vms[name] = v
	return v, nil
}

// watch makes p v's current run and records its exit when it ends. The
// caller holds v.mu or owns v exclusively.
func (d *Driver) watch(v *vm, p qemu.Process, logStart int64) *run {
	r := &run{proc: p, logStart: logStart, exited: make(chan struct{})}
	v.cur = r
	go func() {
		select {
		case <-p.Done():
		case <-d.life.Done():
			return
		}
		v.mu.Lock()
		e := classify(filepath.Join(v.dir, consoleFile), r, p.Status())
		v.mu.Unlock()
		if err := writeJSON(filepath.Join(v.dir, exitFile), e); err != nil && !errors.Is(err, os.ErrNotExist) {
			d.log.Warn("nix: recording exit", "vm", v.name, "err", err)
		}
		d.log.Info("nix: vm exited", "vm", v.name, "reason", e.Reason, "clean", e.Clean)
		v.mu.Lock()
		r.exit = e
		r.done = true
		v.mu.Unlock()
		close(r.exited)
	}()
	return r
}

// classify turns a runner's status into an Exit. A requested stop is
// clean. Otherwise the run's console tells a guest poweroff (clean) from a
// reboot or kernel panic, which end qemu with code 0 too (-no-reboot).
// Called with the vm's mu held.
func classify(console string, r *run, st qemu.ProcessStatus) microvm.Exit {
	e := microvm.Exit{Code: st.Code, Signal: st.Signal, At: time.Now()}
	if r.stopping != "" {
		e.Clean = true
		e.Reason = r.stopping
		return e
	}
	out := tail(console, r.logStart, 64<<10)
	guest := ""
	switch {
	case bytes.Contains(out, []byte("Kernel panic")):
		guest = "guest kernel panic"
	case bytes.Contains(out, []byte("reboot: Restarting system")):
		guest = "guest rebooted"
	case bytes.Contains(out, []byte("reboot: Power down")):
		guest = "guest powered off"
	}
	switch {
	case !st.Known:
		e.Code = -1
		if guest == "" {
			guest = "exited"
		}
		e.Reason = guest + " (re-adopted process: exit status unknown)"
		e.Clean = guest == "guest powered off"
	case st.Signal != "":
		e.Reason = "killed by " + st.Signal
	case st.Code != 0:
		e.Reason = fmt.Sprintf("runner exited with code %d: %s", st.Code, lastLine(out))
	case guest == "":
		e.Reason = "runner exited cleanly"
		e.Clean = true
	default:
		e.Reason = guest
		e.Clean = guest == "guest powered off"
	}
	return e
}

// Prepare implements the Driver contract: writes the VM flake and vm.json
// and builds the runner (nix build … -o current), streaming the build log
// into console.log. Preparing again with the same spec (and the same
// flake and build options) builds nothing. A running VM keeps running; it
// uses the new runner from its next start.
func (d *Driver) Prepare(ctx context.Context, spec microvm.Spec) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("preparing vm %s: %w", spec.Name, err)
	}
	if err := validate(spec); err != nil {
		return fmt.Errorf("preparing vm %q: %w", spec.Name, err)
	}
	v, err := d.record(spec.Name)
	if err != nil {
		return err
	}
	v.prep.Lock()
	defer v.prep.Unlock()

	// The record generation changes with every update of the VM record
	// (a desired-state change too); it must not cost a rebuild.
	recorded := spec.Clone()
	recorded.Generation = 0
	f := newVMFile(recorded, v.dir)
	if d.opts.NoNetwork {
		f.Network = nil
	}
	data, err := f.marshal()
	if err != nil {
		return fmt.Errorf("preparing vm %s: %w", spec.Name, err)
	}
	args := d.buildArgs(v, spec)
	want := built{Flake: d.flakeSum, VM: sha(data), Args: args}
	var have built
	_, linkErr := os.Stat(filepath.Join(v.dir, currentLink, runScript))
	if readJSON(filepath.Join(v.dir, builtFile), &have) == nil && linkErr == nil && have.equal(want) {
		v.mu.Lock()
		v.spec = spec.Clone()
		v.mu.Unlock()
		return d.setupNetwork(ctx, spec)
	}

	fdir := filepath.Join(v.dir, flakeDir)
	if err := os.MkdirAll(fdir, 0o750); err != nil {
		return fmt.Errorf("preparing vm %s: %w", spec.Name, err)
	}
	for name, b := range d.flake {
		if err := writeFile(filepath.Join(fdir, name), b); err != nil {
			return fmt.Errorf("preparing vm %s: %w", spec.Name, err)
		}
	}
	if err := writeFile(filepath.Join(fdir, vmFileName), data); err != nil {
		return fmt.Errorf("preparing vm %s: %w", spec.Name, err)
	}
	v.mu.Lock()
	v.spec = spec.Clone()
	v.mu.Unlock()
	// After vm.json: Destroy finds the network to remove in it.
	if err := d.setupNetwork(ctx, spec); err != nil {
		return err
	}
	if err := d.build(ctx, v, args); err != nil {
		os.Remove(filepath.Join(v.dir, builtFile))
		return fmt.Errorf("preparing vm %s: %w", spec.Name, err)
	}
	if err := writeJSON(filepath.Join(v.dir, builtFile), want); err != nil {
		return fmt.Errorf("preparing vm %s: %w", spec.Name, err)
	}
	return nil
}

// managesNetwork reports whether the driver makes spec's host network.
func (d *Driver) managesNetwork(spec microvm.Spec) bool {
	return !d.opts.NoNetwork && !d.opts.ExternalNetwork && spec.TAP != ""
}

// setupNetwork makes spec's host network when the driver manages it.
func (d *Driver) setupNetwork(ctx context.Context, spec microvm.Spec) error {
	if !d.managesNetwork(spec) {
		return nil
	}
	if err := d.opts.Network.Setup(ctx, netVM(spec)); err != nil {
		return fmt.Errorf("preparing vm %s: %w", spec.Name, err)
	}
	return nil
}

// netVM is the host network of spec: one TAP queue per vcpu (microvm.nix's
// qemu runner asks for a multi-queue TAP when vcpu > 1).
func netVM(spec microvm.Spec) network.VM {
	q := int(spec.Vcpus)
	if q < 1 {
		q = 1
	}
	return network.VM{
		Name: spec.Name, TAP: spec.TAP, IP: spec.IP, MAC: spec.MAC,
		Gateway: spec.Gateway, Tenant: spec.Tenant, Queues: q,
	}
}

// built records what the current runner was built from.
type built struct {
	Flake string   `json:"flake"`
	VM    string   `json:"vm"`
	Args  []string `json:"args"`
}

func (b built) equal(o built) bool {
	return b.Flake == o.Flake && b.VM == o.VM && strings.Join(b.Args, "\x00") == strings.Join(o.Args, "\x00")
}

// buildArgs is the nix command line (without the binary) that builds the
// runner of v with spec into <state dir>/current.
func (d *Driver) buildArgs(v *vm, spec microvm.Spec) []string {
	args := []string{"--extra-experimental-features", "nix-command flakes", "build", "--print-build-logs"}
	if spec.Flake != "" {
		// The VM flake reads the guest flake with builtins.getFlake,
		// which takes an unlocked reference only outside pure mode.
		args = append(args, "--impure")
	}
	names := make([]string, 0, len(d.opts.OverrideInputs))
	for n := range d.opts.OverrideInputs {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		args = append(args, "--override-input", n, d.opts.OverrideInputs[n])
	}
	args = append(args, d.opts.ExtraArgs...)
	return append(args,
		"--out-link", filepath.Join(v.dir, currentLink),
		"path:"+filepath.Join(v.dir, flakeDir)+"#nixosConfigurations."+v.name+".config.microvm.declaredRunner",
	)
}

// build runs nix build with its output appended to console.log.
func (d *Driver) build(ctx context.Context, v *vm, args []string) error {
	console := filepath.Join(v.dir, consoleFile)
	d.rotate(console)
	logf, err := os.OpenFile(console, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o640)
	if err != nil {
		return err
	}
	defer logf.Close()
	start := fileSize(console)
	fmt.Fprintf(logf, "blixard: building the runner: %s %s\n", d.opts.Nix, strings.Join(quoteAll(args), " "))
	cmd := exec.CommandContext(ctx, d.opts.Nix, args...)
	cmd.Dir = v.dir
	cmd.Stdout = logf
	cmd.Stderr = logf
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
	cmd.WaitDelay = 10 * time.Second
	t0 := time.Now()
	if err := cmd.Run(); err != nil {
		if ctx.Err() != nil {
			return fmt.Errorf("nix build: %w", ctx.Err())
		}
		return fmt.Errorf("nix build: %v: %s", err, lastLine(tail(console, start, 4096)))
	}
	fmt.Fprintf(logf, "blixard: runner built in %s\n", time.Since(t0).Round(time.Millisecond))
	d.log.Info("nix: built runner", "vm", v.name, "took", time.Since(t0))
	return nil
}

// rotate moves a console log past MaxLogBytes aside.
func (d *Driver) rotate(console string) {
	if d.opts.MaxLogBytes > 0 && fileSize(console) > d.opts.MaxLogBytes {
		if err := os.Rename(console, console+".1"); err != nil {
			d.log.Warn("nix: rotating console log", "path", console, "err", err)
		}
	}
}

// Start implements the Driver contract: runs current/bin/microvm-run in
// the state dir and returns once the hypervisor's control socket exists. A
// runner that exits before fails Start with the last line it printed.
func (d *Driver) Start(ctx context.Context, spec microvm.Spec) (microvm.Instance, error) {
	v, err := d.lookup(spec.Name)
	if err != nil {
		return microvm.Instance{}, err
	}
	runner := filepath.Join(d.stateDir(spec.Name), currentLink, runScript)
	if v == nil || fileSize(runner) == 0 {
		return microvm.Instance{}, fmt.Errorf("starting vm %s: %w", spec.Name, microvm.ErrNotPrepared)
	}
	v.mu.Lock()
	if v.running() {
		v.mu.Unlock()
		return microvm.Instance{}, fmt.Errorf("starting vm %s: %w", spec.Name, microvm.ErrAlreadyRunning)
	}
	sock := filepath.Join(v.dir, socketName(v.name))
	os.Remove(sock)
	console := filepath.Join(v.dir, consoleFile)
	d.rotate(console)
	logStart := fileSize(console)
	var p qemu.Process
	argv := runnerArgv(v.name, runner)
	if rs, ok := d.sup.(qemu.ResourceSupervisor); ok {
		p, err = rs.StartVM(ctx, v.dir, argv, console,
			qemu.Resources{Name: spec.Name, Vcpus: spec.Vcpus, MemoryMB: spec.MemoryMB})
	} else {
		p, err = d.sup.Start(ctx, v.dir, argv, console)
	}
	if err != nil {
		v.mu.Unlock()
		return microvm.Instance{}, fmt.Errorf("starting vm %s: %w", spec.Name, err)
	}
	r := d.watch(v, p, logStart)
	v.mu.Unlock()
	d.log.Info("nix: started vm", "vm", spec.Name, "pid", p.PID())

	if err := d.awaitSocket(ctx, sock, r.exited); err != nil {
		v.mu.Lock()
		if !r.done {
			r.stopping = "start failed"
		}
		v.mu.Unlock()
		p.Signal(syscall.SIGKILL)
		select {
		case <-r.exited:
		case <-d.life.Done():
		}
		return microvm.Instance{}, fmt.Errorf("starting vm %s: %w: %s", spec.Name, err,
			lastLine(tail(console, logStart, 4096)))
	}
	return d.instance(v), nil
}

// runnerArgv is the argv the supervisor starts: the runner through
// /bin/sh's exec, so that the pid stays the hypervisor's. microvm-run
// execs the hypervisor, whose command line no longer holds the runner's
// path; the "-qmp <name>.sock" pair makes qemu.ExecSupervisor record the
// socket name (which the hypervisor's command line does hold) as the
// marker it checks when it re-adopts the process. The shell sees
// "-qmp" as $0 and the socket name as $1 and ignores both.
func runnerArgv(name, runner string) []string {
	return []string{"/bin/sh", "-c", `exec "$2"`, "-qmp", socketName(name), runner}
}

// awaitSocket waits until the hypervisor has created its control socket,
// the runner exits, or the start timeout passes.
func (d *Driver) awaitSocket(ctx context.Context, path string, exited <-chan struct{}) error {
	ctx, cancel := context.WithTimeout(ctx, d.opts.StartTimeout)
	defer cancel()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		if st, err := os.Stat(path); err == nil && st.Mode()&os.ModeSocket != 0 {
			return nil
		}
		select {
		case <-exited:
			return errors.New("runner exited during start")
		case <-ctx.Done():
			return fmt.Errorf("hypervisor did not create %s: %w", filepath.Base(path), ctx.Err())
		case <-tick.C:
		}
	}
}

// Wait implements the Driver contract.
func (d *Driver) Wait(ctx context.Context, name string) (microvm.Exit, error) {
	v, err := d.lookup(name)
	if err != nil {
		return microvm.Exit{}, err
	}
	if v == nil {
		return microvm.Exit{}, fmt.Errorf("waiting for vm %s: %w", name, microvm.ErrNotFound)
	}
	v.mu.Lock()
	r, last := v.cur, v.recorded
	v.mu.Unlock()
	if r == nil {
		if last != nil {
			return *last, nil
		}
		return microvm.Exit{}, fmt.Errorf("waiting for vm %s: %w (never started)", name, microvm.ErrNotFound)
	}
	select {
	case <-r.exited:
		return r.exit, nil
	case <-ctx.Done():
		return microvm.Exit{}, fmt.Errorf("waiting for vm %s: %w", name, ctx.Err())
	}
}

// Stop implements the Driver contract: microvm-shutdown (or SIGTERM when
// the runner has none), SIGKILL once grace has passed.
func (d *Driver) Stop(ctx context.Context, name string, grace time.Duration) error {
	return d.stop(ctx, name, grace, "stopped")
}

func (d *Driver) stop(ctx context.Context, name string, grace time.Duration, why string) error {
	v, err := d.lookup(name)
	if err != nil || v == nil {
		return err
	}
	v.mu.Lock()
	if !v.running() {
		v.mu.Unlock()
		return nil
	}
	r := v.cur
	r.stopping = why
	v.mu.Unlock()

	if grace > 0 {
		if d.shutdown(ctx, v, r, grace) {
			return nil
		}
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("stopping vm %s: %w", name, err)
		}
		v.mu.Lock()
		r.stopping = fmt.Sprintf("%s: killed by SIGKILL after %s grace", why, grace)
		v.mu.Unlock()
	}
	if err := r.proc.Signal(syscall.SIGKILL); err != nil {
		return fmt.Errorf("stopping vm %s: %w", name, err)
	}
	select {
	case <-r.exited:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("stopping vm %s: %w", name, ctx.Err())
	case <-d.life.Done():
		// Nobody watches the process any more.
		return fmt.Errorf("stopping vm %s: %w", name, errClosed)
	}
}

// errClosed: the driver was closed; it no longer sees VM exits.
var errClosed = errors.New("nix driver closed")

// shutdownRepeat is how often Stop runs microvm-shutdown again while the
// VM lives: a power-button press during boot is lost.
const shutdownRepeat = 2 * time.Second

// shutdown asks r's VM to shut down until it exits (true) or grace passes
// or ctx ends (false).
func (d *Driver) shutdown(ctx context.Context, v *vm, r *run, grace time.Duration) bool {
	gctx, cancel := context.WithTimeout(ctx, grace)
	defer cancel()
	script := filepath.Join(v.dir, currentLink, stopScript)
	if _, err := os.Stat(script); err != nil {
		d.log.Info("nix: runner has no microvm-shutdown; sending SIGTERM", "vm", v.name)
		if err := r.proc.Signal(syscall.SIGTERM); err != nil {
			d.log.Warn("nix: SIGTERM", "vm", v.name, "err", err)
		}
		select {
		case <-r.exited:
			return true
		case <-gctx.Done():
			return false
		}
	}
	repeat := time.NewTicker(shutdownRepeat)
	defer repeat.Stop()
	for {
		done := make(chan error, 1)
		go func() { done <- d.runShutdown(gctx, v, script) }()
		select {
		case <-r.exited:
			return true
		case <-gctx.Done():
			return false
		case err := <-done:
			select {
			case <-r.exited:
				return true
			default:
			}
			if err != nil {
				d.log.Warn("nix: microvm-shutdown failed", "vm", v.name, "err", err)
			}
		}
		select {
		case <-r.exited:
			return true
		case <-gctx.Done():
			return false
		case <-repeat.C:
		}
	}
}

// runShutdown runs microvm-shutdown in the state dir, its output going to
// console.log.
func (d *Driver) runShutdown(ctx context.Context, v *vm, script string) error {
	logf, err := os.OpenFile(filepath.Join(v.dir, consoleFile), os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o640)
	if err != nil {
		return err
	}
	defer logf.Close()
	cmd := exec.CommandContext(ctx, script)
	cmd.Dir = v.dir
	cmd.Stdout = logf
	cmd.Stderr = logf
	cmd.WaitDelay = time.Second
	return cmd.Run()
}

// Destroy implements the Driver contract: kill without grace, remove the
// state dir (volume images kept there included; images elsewhere stay).
// The runner in the store is garbage once its out-link is gone.
func (d *Driver) Destroy(ctx context.Context, name string) error {
	v, err := d.lookup(name)
	if err != nil {
		return err
	}
	if v == nil {
		return nil
	}
	if err := d.stop(ctx, name, 0, "destroyed"); err != nil {
		return err
	}
	v.mu.Lock()
	spec := v.spec.Clone()
	v.mu.Unlock()
	if d.managesNetwork(spec) {
		// Before the state dir goes: a failed Destroy is retried with the
		// spec still on disk.
		if err := d.opts.Network.Teardown(ctx, netVM(spec)); err != nil {
			return fmt.Errorf("destroying vm %s: %w", name, err)
		}
	}
	d.mu.Lock()
	delete(d.vms, name)
	d.mu.Unlock()
	// A Prepare still building must not recreate the dir behind us.
	v.prep.Lock()
	defer v.prep.Unlock()
	if err := os.RemoveAll(d.stateDir(name)); err != nil {
		return fmt.Errorf("destroying vm %s: %w", name, err)
	}
	return nil
}

// Inspect implements the Driver contract.
func (d *Driver) Inspect(ctx context.Context, name string) (microvm.Instance, error) {
	v, err := d.lookup(name)
	if err != nil {
		return microvm.Instance{}, err
	}
	if v == nil {
		return microvm.Instance{}, fmt.Errorf("inspecting vm %s: %w", name, microvm.ErrNotFound)
	}
	return d.instance(v), nil
}

func (d *Driver) instance(v *vm) microvm.Instance {
	v.mu.Lock()
	defer v.mu.Unlock()
	in := microvm.Instance{Name: v.name, ID: v.spec.ID, Handle: filepath.Join(v.dir, currentLink)}
	if v.running() {
		in.Running = true
		in.PID = v.cur.proc.PID()
		in.StartedAt = v.cur.proc.StartedAt()
	}
	return in
}

// Recover implements the Driver contract. The re-adoption itself happens
// when the driver first looks at the VM's state dir.
func (d *Driver) Recover(ctx context.Context, spec microvm.Spec) (microvm.Instance, bool, error) {
	v, err := d.lookup(spec.Name)
	if err != nil {
		return microvm.Instance{}, false, err
	}
	if v == nil {
		return microvm.Instance{Name: spec.Name}, false, nil
	}
	in := d.instance(v)
	return in, in.Running, nil
}

// List implements the Driver contract.
func (d *Driver) List(ctx context.Context) ([]microvm.Instance, error) {
	entries, err := os.ReadDir(d.opts.Dir)
	if err != nil {
		return nil, fmt.Errorf("listing vms: %w", err)
	}
	var out []microvm.Instance
	for _, e := range entries {
		if !e.IsDir() {
			continue
		}
		v, err := d.lookup(e.Name())
		if err != nil {
			return nil, err
		}
		if v != nil {
			out = append(out, d.instance(v))
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// Logs implements the Driver contract over <state dir>/console.log: the
// nix build logs and the runner's output (the serial console) since the
// log was last rotated.
func (d *Driver) Logs(ctx context.Context, name string, offset int64, lastLines int) ([]byte, int64, error) {
	v, err := d.lookup(name)
	if err != nil {
		return nil, 0, err
	}
	if v == nil {
		return nil, 0, fmt.Errorf("logs of vm %s: %w", name, microvm.ErrNotFound)
	}
	f, err := os.Open(filepath.Join(v.dir, consoleFile))
	if errors.Is(err, os.ErrNotExist) {
		return nil, 0, nil
	}
	if err != nil {
		return nil, 0, fmt.Errorf("logs of vm %s: %w", name, err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, 0, fmt.Errorf("logs of vm %s: %w", name, err)
	}
	size := st.Size()
	if offset > size {
		offset = 0 // rotated: continue with the new log
	}
	from := offset
	if offset < 0 {
		from = 0
	}
	data := make([]byte, size-from)
	n, err := f.ReadAt(data, from)
	if err != nil && !errors.Is(err, io.EOF) {
		return nil, 0, fmt.Errorf("logs of vm %s: %w", name, err)
	}
	data = data[:n]
	if offset < 0 {
		return lastNLines(data, lastLines), from + int64(n), nil
	}
	return data, from + int64(n), nil
}

// lastNLines returns the last n lines of b (all of b when n <= 0).
func lastNLines(b []byte, n int) []byte {
	if n <= 0 {
		return b
	}
	i := len(b)
	if i > 0 && b[i-1] == '\n' {
		i--
	}
	for k := 0; k < n; k++ {
		j := bytes.LastIndexByte(b[:i], '\n')
		if j < 0 {
			return b
		}
		i = j
	}
	return b[i+1:]
}

// tail returns up to limit bytes of path from offset from on (the end).
func tail(path string, from, limit int64) []byte {
	f, err := os.Open(path)
	if err != nil {
		return nil
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil
	}
	start := max(from, st.Size()-limit, 0)
	if start > st.Size() {
		return nil
	}
	b := make([]byte, st.Size()-start)
	n, _ := f.ReadAt(b, start)
	return b[:n]
}

// lastLine returns the last non-empty line of b.
func lastLine(b []byte) string {
	lines := bytes.Split(bytes.TrimRight(b, "\n"), []byte("\n"))
	return strings.TrimSpace(string(lines[len(lines)-1]))
}

func fileSize(path string) int64 {
	st, err := os.Stat(path)
	if err != nil {
		return 0
	}
	return st.Size()
}

func sha(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// quoteAll quotes the arguments that need it, for the log line only.
func quoteAll(args []string) []string {
	out := make([]string, len(args))
	for i, a := range args {
		if a == "" || strings.ContainsAny(a, " \t\n'\"\\$") {
			a = "'" + strings.ReplaceAll(a, "'", `'\''`) + "'"
		}
		out[i] = a
	}
	return out
}

// writeFile writes b to path atomically (temp file, then rename).
func writeFile(path string, b []byte) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o640); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

func writeJSON(path string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	return writeFile(path, append(b, '\n'))
}

func readJSON(path string, v any) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	return json.Unmarshal(b, v)
}
