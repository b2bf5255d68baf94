package qemu

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"time"

	"github.com/blixard/blixard/microvm"
	"github.com/blixard/blixard/microvm/network"
	"github.com/blixard/blixard/microvm/vmproc"
)

// Options configure a Driver. Only Dir is required.
type Options struct {
	// Dir holds one state dir per VM: <Dir>/<name>/ with spec.json,
	// qemu.pid, console.log, qmp.sock, exit.json and default volume images.
	Dir string
	// Binary is the qemu binary; empty means qemu-system-x86_64.
	Binary string
	// Accel is auto (default), kvm or tcg. Auto is resolved at the first
	// Start with a probe boot of ProbeKernel (or that VM's kernel).
	Accel       Accel
	ProbeKernel string
	// TSCKHz is passed to TCG guests (see Machine.TSCKHz); 0 means
	// HostTSCKHz().
	TSCKHz uint64
	// NoNetwork starts VMs without a network device even when their spec
	// names a TAP. No host networking is touched.
	NoNetwork bool
	// ExternalNetwork attaches VMs to TAPs that something else makes and
	// removes (the operator, systemd-networkd, microvm.nix's host module):
	// the driver changes no host networking, so it needs no root for it.
	ExternalNetwork bool
	// Network makes the host side of each VM's network (TAP, address,
	// route, iptables chains) in Prepare and removes it in Destroy. nil
	// means microvm/network on this process's network namespace, which
	// needs root. Unused with NoNetwork or ExternalNetwork.
	Network Network
	// Supervisor runs the qemu processes; nil means an ExecSupervisor.
	Supervisor Supervisor
	// StartTimeout bounds how long Start waits for qemu to open its QMP
	// socket; 0 means 30 s.
	StartTimeout time.Duration
	// MaxLogBytes rotates console.log to console.log.1 when a VM starts
	// and the log is larger; 0 means 16 MiB, negative never rotates.
	MaxLogBytes int64
	Logger      *slog.Logger
}

// Network sets up and tears down the host side of VM networks;
// *network.Host implements it. Both methods are idempotent.
type Network interface {
	Setup(ctx context.Context, vm network.VM) error
	Teardown(ctx context.Context, vm network.VM) error
}

// Driver runs microVMs as qemu processes on this host. It satisfies the
// node agent's Driver contract (actors.Driver); its methods are safe for
// concurrent use.
type Driver struct {
	opts Options
	log  *slog.Logger
	vms  *vmproc.Table
}

// New returns a driver keeping its state under opts.Dir. VMs that a
// previous driver left running are found again by List, Inspect, Recover.
func New(opts Options) (*Driver, error) {
	if opts.Dir == "" {
		return nil, errors.New("qemu: Options.Dir is required")
	}
	if opts.Accel == "" {
		opts.Accel = AccelAuto
	}
	if _, err := ParseAccel(string(opts.Accel)); err != nil {
		return nil, fmt.Errorf("qemu: %w", err)
	}
	if opts.Binary == "" {
		opts.Binary = "qemu-system-x86_64"
	}
	if opts.StartTimeout == 0 {
		opts.StartTimeout = 30 * time.Second
	}
	if opts.MaxLogBytes == 0 {
		opts.MaxLogBytes = 16 << 20
	}
	if err := os.MkdirAll(opts.Dir, 0o750); err != nil {
		return nil, fmt.Errorf("qemu: %w", err)
	}
	d := &Driver{opts: opts, log: opts.Logger}
	if d.opts.Supervisor == nil {
		d.opts.Supervisor = &ExecSupervisor{}
	}
	if d.log == nil {
		d.log = slog.Default()
	}
	if d.opts.Network == nil {
		d.opts.Network = &network.Host{Logger: d.log}
	}
	d.vms = vmproc.New(vmproc.Config{
		Dir: opts.Dir, Supervisor: d.opts.Supervisor, Logger: d.log,
		Prefix: "qemu", Process: "qemu", Handle: qmpFile, ValidName: validName,
		Signs:       []vmproc.Sign{{Text: "terminating on signal", Guest: "qemu terminated by a signal from outside blixard"}},
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

func (d *Driver) stateDir(name string) string { return filepath.Join(d.opts.Dir, name) }

// validName reports whether name can be a state dir under Options.Dir.
func validName(name string) bool {
	return name != "" && name != "." && name != ".." && filepath.Base(name) == name
}

// hooks is the driver's side of its vmproc.Table.
type hooks struct{ *Driver }

// LoadSpec implements vmproc.Driver: the spec Prepare recorded.
func (hooks) LoadSpec(dir string) (microvm.Spec, error) {
	var spec microvm.Spec
	err := vmproc.ReadJSON(filepath.Join(dir, specFile), &spec)
	return spec, err
}

// machine is the command line model of spec on this driver.
func (d *Driver) machine(spec microvm.Spec, accel Accel) Machine {
	tsc := d.opts.TSCKHz
	if tsc == 0 && accel == AccelTCG {
		tsc = HostTSCKHz()
	}
	return Machine{
		Spec:      spec,
		Binary:    d.opts.Binary,
		StateDir:  d.vms.StateDir(spec.Name),
		Accel:     accel,
		TSCKHz:    tsc,
		NoNetwork: d.opts.NoNetwork,
	}
}

// managesNetwork reports whether the driver makes spec's host network.
func (d *Driver) managesNetwork(spec microvm.Spec) bool {
	return !d.opts.NoNetwork && !d.opts.ExternalNetwork && spec.TAP != ""
}

// netVM is the host network of spec: one TAP queue per vcpu, as the
// netdev on the command line asks for.
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

// Prepare implements the Driver contract: validates spec, creates the
// state dir and missing volume images (truncate + mkfs.ext4), makes the
// host network (unless NoNetwork or ExternalNetwork), and records the
// spec. A running instance is left alone.
func (d *Driver) Prepare(ctx context.Context, spec microvm.Spec) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("preparing vm %s: %w", spec.Name, err)
	}
	if !validName(spec.Name) {
		return fmt.Errorf("preparing vm %q: %w: bad name", spec.Name, microvm.ErrInvalidSpec)
	}
	m := d.machine(spec, AccelTCG)
	if _, err := m.Args(); err != nil {
		return fmt.Errorf("preparing vm %s: %w", spec.Name, err)
	}
	if err := os.MkdirAll(m.StateDir, 0o750); err != nil {
		return fmt.Errorf("preparing vm %s: %w", spec.Name, err)
	}
	for _, vol := range spec.Volumes {
		if err := createVolume(ctx, m.VolumePath(vol), vol.SizeMB); err != nil {
			return fmt.Errorf("preparing vm %s: volume %s: %w", spec.Name, vol.Name, err)
		}
	}
	// The spec is recorded first: Destroy finds the network to remove in it.
	if err := vmproc.WriteJSON(filepath.Join(m.StateDir, specFile), spec); err != nil {
		return fmt.Errorf("preparing vm %s: %w", spec.Name, err)
	}
	if d.managesNetwork(spec) {
		if err := d.opts.Network.Setup(ctx, netVM(spec)); err != nil {
			return fmt.Errorf("preparing vm %s: %w", spec.Name, err)
		}
	}
	v, err := d.vms.Lookup(spec.Name)
	if err != nil {
		return err
	}
	v.SetSpec(spec)
	return nil
}

// createVolume makes a sparse ext4 image of sizeMB at path unless a file
// is there already.
func createVolume(ctx context.Context, path string, sizeMB uint64) error {
	if _, err := os.Stat(path); err == nil {
		return nil
	} else if !errors.Is(err, os.ErrNotExist) {
		return err
	}
	if sizeMB == 0 {
		return fmt.Errorf("%w: image %s does not exist and has no size to create it", microvm.ErrInvalidSpec, path)
	}
	tmp := path + ".new"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o640)
	if err != nil {
		return err
	}
	err = f.Truncate(int64(sizeMB) << 20)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		var out []byte
		out, err = exec.CommandContext(ctx, "mkfs.ext4", "-q", "-F", tmp).CombinedOutput()
		if err != nil {
			err = fmt.Errorf("mkfs.ext4: %v: %s", err, bytes.TrimSpace(out))
		}
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
	}
	return err
}

// Start implements the Driver contract. It returns once qemu has opened
// its QMP socket; a qemu that exits before that fails Start with the last
// line it printed.
func (d *Driver) Start(ctx context.Context, spec microvm.Spec) (microvm.Instance, error) {
	v, err := d.vms.Lookup(spec.Name)
	if err != nil {
		return microvm.Instance{}, err
	}
	if v == nil {
		return microvm.Instance{}, fmt.Errorf("starting vm %s: %w", spec.Name, microvm.ErrNotPrepared)
	}
	if v.Running() {
		return microvm.Instance{}, fmt.Errorf("starting vm %s: %w", spec.Name, microvm.ErrAlreadyRunning)
	}
	accel, reason := ResolveAccel(ctx, d.opts.Accel, Probe{
		Binary: d.opts.Binary, Kernel: firstNonEmpty(d.opts.ProbeKernel, spec.Kernel), Logger: d.log,
	})
	m := d.machine(spec, accel)
	argv, err := m.Args()
	if err != nil {
		return microvm.Instance{}, fmt.Errorf("starting vm %s: %w", spec.Name, err)
	}
	if spec.MemoryMB == 2048 {
		d.log.Warn("qemu: the microvm machine is known to hang with exactly 2048 MiB of memory", "vm", spec.Name)
	}
	d.log.Info("qemu: starting vm", "vm", spec.Name, "accel", accel, "accel_reason", reason)
	return d.vms.Launch(ctx, v, spec, argv, m.QMPPath(), func(ctx context.Context, exited <-chan struct{}) error {
		return d.awaitQMP(ctx, m.QMPPath(), exited)
	})
}

var dialer net.Dialer

// awaitQMP waits until the QMP socket accepts connections, the process
// exits, or the start timeout passes.
func (d *Driver) awaitQMP(ctx context.Context, path string, exited <-chan struct{}) error {
	ctx, cancel := context.WithTimeout(ctx, d.opts.StartTimeout)
	defer cancel()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		if c, err := dialer.DialContext(ctx, "unix", path); err == nil {
			// qemu serves one QMP client at a time; hand the slot back.
			c.Close()
			return nil
		}
		select {
		case <-exited:
			return errors.New("qemu exited during start")
		case <-ctx.Done():
			return fmt.Errorf("qemu did not open its QMP socket: %w", ctx.Err())
		case <-tick.C:
		}
	}
}

// Wait implements the Driver contract.
func (d *Driver) Wait(ctx context.Context, name string) (microvm.Exit, error) {
	return d.vms.Wait(ctx, name)
}

// Stop implements the Driver contract: an ACPI powerdown through QMP, a
// SIGKILL once grace has passed.
func (d *Driver) Stop(ctx context.Context, name string, grace time.Duration) error {
	return d.vms.Stop(ctx, name, grace, "stopped")
}

// powerdownRepeat is how often Stop presses the power button again: a
// press that arrives while the guest still boots (before its ACPI button
// driver or init's handler is there) is lost.
const powerdownRepeat = 2 * time.Second

// Powerdown implements vmproc.Driver: it presses the VM's ACPI power
// button through QMP, repeatedly, until the process exits (true) or grace
// passes or ctx ends (false).
func (d hooks) Powerdown(ctx context.Context, v *vmproc.VM, _ vmproc.Process, exited <-chan struct{}, grace time.Duration) bool {
	deadline := time.NewTimer(grace)
	defer deadline.Stop()
	repeat := time.NewTicker(powerdownRepeat)
	defer repeat.Stop()
	var q *QMP
	defer func() {
		if q != nil {
			q.Close()
		}
	}()
	press := func() {
		qctx, cancel := context.WithTimeout(ctx, powerdownRepeat)
		defer cancel()
		var err error
		if q == nil {
			q, err = DialQMP(qctx, filepath.Join(v.Dir, qmpFile))
		}
		if err == nil {
			err = q.Powerdown(qctx)
		}
		if err != nil {
			if q != nil {
				q.Close()
				q = nil
			}
			select {
			case <-exited: // qemu went away while we asked: no failure
			default:
				d.log.Warn("qemu: powerdown request failed", "vm", v.Name, "err", err)
			}
		}
	}
	press()
	for {
		select {
		case <-exited:
			return true
		case <-ctx.Done():
			return false
		case <-deadline.C:
			return false
		case <-repeat.C:
			press()
		}
	}
}

// Destroy implements the Driver contract: kill without grace, remove the
// host network the driver made, then the state dir (with the volume images
// kept there; images elsewhere stay).
func (d *Driver) Destroy(ctx context.Context, name string) error {
	v, err := d.vms.Lookup(name)
	if err != nil {
		return err
	}
	var spec microvm.Spec
	if v != nil {
		spec = v.Spec()
	}
	if err := d.vms.Stop(ctx, name, 0, "destroyed"); err != nil {
		return err
	}
	if v != nil && d.managesNetwork(spec) {
		// Before the state dir goes: a failed Destroy is retried with the
		// spec still on disk.
		if err := d.opts.Network.Teardown(ctx, netVM(spec)); err != nil {
			return fmt.Errorf("destroying vm %s: %w", name, err)
		}
	}
	d.vms.Forget(name)
	if !validName(name) {
		return nil
	}
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

// Logs implements the Driver contract over <state dir>/console.log, which
// holds the serial console and qemu's own messages of every run since the
// log was last rotated (at a start, past Options.MaxLogBytes).
func (d *Driver) Logs(ctx context.Context, name string, offset int64, lastLines int) ([]byte, int64, error) {
	return d.vms.Logs(ctx, name, offset, lastLines)
}

func firstNonEmpty(a, b string) string {
	if a != "" {
		return a
	}
	return b
}
