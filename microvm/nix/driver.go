package nix

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/blixard/blixard/microvm"
	"github.com/blixard/blixard/microvm/network"
	"github.com/blixard/blixard/microvm/qemu"
	"github.com/blixard/blixard/microvm/vmproc"
	nixfiles "github.com/blixard/blixard/nix"
)

// State dir entries.
const (
	flakeDir    = "flake"
	vmFileName  = "vm.json"
	currentLink = "current"
	builtFile   = "built.json"
	consoleFile = vmproc.ConsoleFile
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
	log  *slog.Logger
	// flake holds the embedded vm-flake files; flakeSum is their digest.
	flake    map[string][]byte
	flakeSum string
	vms      *vmproc.Table
}

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
	d := &Driver{opts: opts, log: opts.Logger, flake: map[string][]byte{}}
	if d.opts.Supervisor == nil {
		d.opts.Supervisor = &qemu.ExecSupervisor{}
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
	d.vms = vmproc.New(vmproc.Config{
		Dir: opts.Dir, Supervisor: d.opts.Supervisor, Logger: d.log,
		Prefix: "nix", Process: "runner", Handle: currentLink, ValidName: isLabel,
		MaxLogBytes: opts.MaxLogBytes,
	}, hooks{d})
	return d, nil
}

// Close releases the driver; running VMs keep running for a later driver
// to recover.
func (d *Driver) Close() error {
	d.vms.Close()
	return nil
}

// socketName is the hypervisor control socket microvm.nix's runner makes
// in its working directory (microvm.socket defaults to "<hostName>.sock").
func socketName(name string) string { return name + ".sock" }

// hooks is the driver's side of its vmproc.Table.
type hooks struct{ *Driver }

// LoadSpec implements vmproc.Driver: the spec in the VM flake's vm.json.
func (hooks) LoadSpec(dir string) (microvm.Spec, error) {
	var f vmFile
	err := vmproc.ReadJSON(filepath.Join(dir, flakeDir, vmFileName), &f)
	return f.Spec, err
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
	v, err := d.vms.Record(spec.Name)
	if err != nil {
		return err
	}
	v.Prep.Lock()
	defer v.Prep.Unlock()

	// The record generation changes with every update of the VM record
	// (a desired-state change too); it must not cost a rebuild.
	recorded := spec.Clone()
	recorded.Generation = 0
	f := newVMFile(recorded, v.Dir)
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
	_, linkErr := os.Stat(filepath.Join(v.Dir, currentLink, runScript))
	if vmproc.ReadJSON(filepath.Join(v.Dir, builtFile), &have) == nil && linkErr == nil && have.equal(want) {
		v.SetSpec(spec)
		return d.setupNetwork(ctx, spec)
	}

	fdir := filepath.Join(v.Dir, flakeDir)
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
	v.SetSpec(spec)
	// After vm.json: Destroy finds the network to remove in it.
	if err := d.setupNetwork(ctx, spec); err != nil {
		return err
	}
	if err := d.build(ctx, v, args); err != nil {
		os.Remove(filepath.Join(v.Dir, builtFile))
		return fmt.Errorf("preparing vm %s: %w", spec.Name, err)
	}
	if err := vmproc.WriteJSON(filepath.Join(v.Dir, builtFile), want); err != nil {
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
func (d *Driver) buildArgs(v *vmproc.VM, spec microvm.Spec) []string {
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
		"--out-link", filepath.Join(v.Dir, currentLink),
		"path:"+filepath.Join(v.Dir, flakeDir)+"#nixosConfigurations."+v.Name+".config.microvm.declaredRunner",
	)
}

// build runs nix build with its output appended to console.log.
func (d *Driver) build(ctx context.Context, v *vmproc.VM, args []string) error {
	console := v.Console()
	d.vms.Rotate(v)
	logf, err := os.OpenFile(console, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o640)
	if err != nil {
		return err
	}
	defer logf.Close()
	start := vmproc.FileSize(console)
	fmt.Fprintf(logf, "blixard: building the runner: %s %s\n", d.opts.Nix, strings.Join(quoteAll(args), " "))
	cmd := exec.CommandContext(ctx, d.opts.Nix, args...)
	cmd.Dir = v.Dir
	cmd.Stdout = logf
	cmd.Stderr = logf
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
	cmd.WaitDelay = 10 * time.Second
	t0 := time.Now()
	if err := cmd.Run(); err != nil {
		if ctx.Err() != nil {
			return fmt.Errorf("nix build: %w", ctx.Err())
		}
		return fmt.Errorf("nix build: %v: %s", err, vmproc.LastLine(vmproc.Tail(console, start, 4096)))
	}
	fmt.Fprintf(logf, "blixard: runner built in %s\n", time.Since(t0).Round(time.Millisecond))
	d.log.Info("nix: built runner", "vm", v.Name, "took", time.Since(t0))
	return nil
}

// Start implements the Driver contract: runs current/bin/microvm-run in
// the state dir and returns once the hypervisor's control socket exists. A
// runner that exits before fails Start with the last line it printed.
func (d *Driver) Start(ctx context.Context, spec microvm.Spec) (microvm.Instance, error) {
	v, err := d.vms.Lookup(spec.Name)
	if err != nil {
		return microvm.Instance{}, err
	}
	runner := filepath.Join(d.vms.StateDir(spec.Name), currentLink, runScript)
	if v == nil || vmproc.FileSize(runner) == 0 {
		return microvm.Instance{}, fmt.Errorf("starting vm %s: %w", spec.Name, microvm.ErrNotPrepared)
	}
	sock := filepath.Join(v.Dir, socketName(v.Name))
	return d.vms.Launch(ctx, v, spec, runnerArgv(v.Name, runner), sock, func(ctx context.Context, exited <-chan struct{}) error {
		return d.awaitSocket(ctx, sock, exited)
	})
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
	return d.vms.Wait(ctx, name)
}

// Stop implements the Driver contract: microvm-shutdown (or SIGTERM when
// the runner has none), SIGKILL once grace has passed.
func (d *Driver) Stop(ctx context.Context, name string, grace time.Duration) error {
	return d.vms.Stop(ctx, name, grace, "stopped")
}

// shutdownRepeat is how often Stop runs microvm-shutdown again while the
// VM lives: a power-button press during boot is lost.
const shutdownRepeat = 2 * time.Second

// Powerdown implements vmproc.Driver: it asks v (running as p) to shut
// down until it exits (true) or grace passes or ctx ends (false).
func (d hooks) Powerdown(ctx context.Context, v *vmproc.VM, p vmproc.Process, exited <-chan struct{}, grace time.Duration) bool {
	gctx, cancel := context.WithTimeout(ctx, grace)
	defer cancel()
	script := filepath.Join(v.Dir, currentLink, stopScript)
	if _, err := os.Stat(script); err != nil {
		d.log.Info("nix: runner has no microvm-shutdown; sending SIGTERM", "vm", v.Name)
		if err := p.Signal(syscall.SIGTERM); err != nil {
			d.log.Warn("nix: SIGTERM", "vm", v.Name, "err", err)
		}
		select {
		case <-exited:
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
		case <-exited:
			return true
		case <-gctx.Done():
			return false
		case err := <-done:
			select {
			case <-exited:
				return true
			default:
			}
			if err != nil {
				d.log.Warn("nix: microvm-shutdown failed", "vm", v.Name, "err", err)
			}
		}
		select {
		case <-exited:
			return true
		case <-gctx.Done():
			return false
		case <-repeat.C:
		}
	}
}

// runShutdown runs microvm-shutdown in the state dir, its output going to
// console.log.
func (d *Driver) runShutdown(ctx context.Context, v *vmproc.VM, script string) error {
	logf, err := os.OpenFile(v.Console(), os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o640)
	if err != nil {
		return err
	}
	defer logf.Close()
	cmd := exec.CommandContext(ctx, script)
	cmd.Dir = v.Dir
	cmd.Stdout = logf
	cmd.Stderr = logf
	cmd.WaitDelay = time.Second
	return cmd.Run()
}

// Destroy implements the Driver contract: kill without grace, remove the
// state dir (volume images kept there included; images elsewhere stay).
// The runner in the store is garbage once its out-link is gone.
func (d *Driver) Destroy(ctx context.Context, name string) error {
	v, err := d.vms.Lookup(name)
	if err != nil {
		return err
	}
	if v == nil {
		return nil
	}
	if err := d.vms.Stop(ctx, name, 0, "destroyed"); err != nil {
		return err
	}
	spec := v.Spec()
	if d.managesNetwork(spec) {
		// Before the state dir goes: a failed Destroy is retried with the
		// spec still on disk.
		if err := d.opts.Network.Teardown(ctx, netVM(spec)); err != nil {
			return fmt.Errorf("destroying vm %s: %w", name, err)
		}
	}
	d.vms.Forget(name)
	// A Prepare still building must not recreate the dir behind us.
	v.Prep.Lock()
	defer v.Prep.Unlock()
	if err := os.RemoveAll(d.vms.StateDir(name)); err != nil {
		return fmt.Errorf("destroying vm %s: %w", name, err)
	}
	return nil
}

// Inspect implements the Driver contract.
func (d *Driver) Inspect(ctx context.Context, name string) (microvm.Instance, error) {
	return d.vms.Inspect(ctx, name)
}

// Recover implements the Driver contract. The re-adoption itself happens
// when the driver first looks at the VM's state dir.
func (d *Driver) Recover(ctx context.Context, spec microvm.Spec) (microvm.Instance, bool, error) {
	return d.vms.Recover(ctx, spec)
}

// List implements the Driver contract.
func (d *Driver) List(ctx context.Context) ([]microvm.Instance, error) {
	return d.vms.List(ctx)
}

// Logs implements the Driver contract over <state dir>/console.log: the
// nix build logs and the runner's output (the serial console) since the
// log was last rotated.
func (d *Driver) Logs(ctx context.Context, name string, offset int64, lastLines int) ([]byte, int64, error) {
	return d.vms.Logs(ctx, name, offset, lastLines)
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
