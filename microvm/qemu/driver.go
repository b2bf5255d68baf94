package qemu

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"sync"
	"syscall"
	"time"

	"github.com/blixard/blixard/microvm"
	"github.com/blixard/blixard/microvm/network"
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
	sup  Supervisor
	log  *slog.Logger
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

	mu   sync.Mutex
	spec microvm.Spec
	// cur is the current or last run started (or adopted) by this driver.
	cur *run
	// recorded is the exit a previous driver recorded (exit.json), for
	// Wait before this driver runs the VM.
	recorded *microvm.Exit
}

// run is one qemu process of a VM.
type run struct {
	proc Process
	// logStart is the console log size when the process started: the
	// exit classification reads only this run's output.
	logStart int64
	// exited is closed once exit is set.
	exited chan struct{}
	exit   microvm.Exit
	// Guarded by vm.mu: done is set with exit; stopping explains a
	// requested stop ("stopped", "destroyed"), which makes the exit clean.
	done     bool
	stopping string
}

// running reports whether v's current run is alive. Called with v.mu held.
func (v *vm) running() bool { return v.cur != nil && !v.cur.done }

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
	d := &Driver{opts: opts, sup: opts.Supervisor, log: opts.Logger, vms: map[string]*vm{}}
	if d.sup == nil {
		d.sup = &ExecSupervisor{}
	}
	if d.log == nil {
		d.log = slog.Default()
	}
	if d.opts.Network == nil {
		d.opts.Network = &network.Host{Logger: d.log}
	}
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

// lookup returns the record of name, loading it from its state dir (and
// re-adopting a running process) when this driver has not seen it yet.
// It returns nil when name is unknown.
func (d *Driver) lookup(name string) (*vm, error) {
	if name == "" || name == "." || name == ".." || filepath.Base(name) != name {
		return nil, nil
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if v, ok := d.vms[name]; ok {
		return v, nil
	}
	dir := d.stateDir(name)
	var spec microvm.Spec
	if err := readJSON(filepath.Join(dir, specFile), &spec); err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, nil
		}
		return nil, fmt.Errorf("loading vm %s: %w", name, err)
	}
	v := &vm{name: name, dir: dir, spec: spec}
	var last microvm.Exit
	if err := readJSON(filepath.Join(dir, exitFile), &last); err == nil {
		v.recorded = &last
	}
	p, ok, err := d.sup.Adopt(d.life, dir)
	if err != nil {
		return nil, fmt.Errorf("re-adopting vm %s: %w", name, err)
	}
	if ok {
		d.log.Info("qemu: re-adopted running vm", "vm", name, "pid", p.PID())
		d.watch(v, p, fileSize(filepath.Join(dir, consoleFile)))
	}
	d.vms[name] = v
	return v, nil
}

// watch makes p v's current run and records its exit when it ends. The
// caller holds v.mu or owns v exclusively.
func (d *Driver) watch(v *vm, p Process, logStart int64) *run {
	r := &run{proc: p, logStart: logStart, exited: make(chan struct{})}
	v.cur = r
	go func() {
		select {
		case <-p.Done():
		case <-d.life.Done():
			return
		}
		v.mu.Lock()
		e := d.classify(v, r, p.Status())
		v.mu.Unlock()
		// Files first: once done is set a new Start may write its own.
		if err := writeJSON(filepath.Join(v.dir, exitFile), e); err != nil && !errors.Is(err, os.ErrNotExist) {
			d.log.Warn("qemu: recording exit", "vm", v.name, "err", err)
		}
		d.log.Info("qemu: vm exited", "vm", v.name, "reason", e.Reason, "clean", e.Clean)
		v.mu.Lock()
		r.exit = e
		r.done = true
		v.mu.Unlock()
		close(r.exited)
	}()
	return r
}

// classify turns a process status into an Exit. A requested stop is clean.
// Otherwise the run's console output tells a guest poweroff (clean) from
// a guest reboot or kernel panic (which end qemu with code 0 too, because
// of -no-reboot and panic=-1). Called with v.mu held.
func (d *Driver) classify(v *vm, r *run, st ProcessStatus) microvm.Exit {
	e := microvm.Exit{Code: st.Code, Signal: st.Signal, At: time.Now()}
	if r.stopping != "" {
		e.Clean = true
		e.Reason = r.stopping
		return e
	}
	out := tail(filepath.Join(v.dir, consoleFile), r.logStart, 64<<10)
	guest := ""
	switch {
	case bytes.Contains(out, []byte("Kernel panic")):
		guest = "guest kernel panic"
	case bytes.Contains(out, []byte("reboot: Restarting system")):
		guest = "guest rebooted"
	case bytes.Contains(out, []byte("reboot: Power down")):
		guest = "guest powered off"
	case bytes.Contains(out, []byte("terminating on signal")):
		guest = "qemu terminated by a signal from outside blixard"
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
		e.Reason = fmt.Sprintf("qemu exited with code %d: %s", st.Code, lastLine(out))
	case guest == "":
		e.Reason = "qemu exited cleanly"
		e.Clean = true
	default:
		e.Reason = guest
		e.Clean = guest == "guest powered off"
	}
	return e
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
		StateDir:  d.stateDir(spec.Name),
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
	if spec.Name == "" || filepath.Base(spec.Name) != spec.Name || spec.Name == "." || spec.Name == ".." {
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
	if err := writeJSON(filepath.Join(m.StateDir, specFile), spec); err != nil {
		return fmt.Errorf("preparing vm %s: %w", spec.Name, err)
	}
	if d.managesNetwork(spec) {
		if err := d.opts.Network.Setup(ctx, netVM(spec)); err != nil {
			return fmt.Errorf("preparing vm %s: %w", spec.Name, err)
		}
	}
	v, err := d.lookup(spec.Name)
	if err != nil {
		return err
	}
	v.mu.Lock()
	v.spec = spec.Clone()
	v.mu.Unlock()
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
	v, err := d.lookup(spec.Name)
	if err != nil {
		return microvm.Instance{}, err
	}
	if v == nil {
		return microvm.Instance{}, fmt.Errorf("starting vm %s: %w", spec.Name, microvm.ErrNotPrepared)
	}
	v.mu.Lock()
	running := v.running()
	v.mu.Unlock()
	if running {
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
	os.Remove(m.QMPPath())
	if spec.MemoryMB == 2048 {
		d.log.Warn("qemu: the microvm machine is known to hang with exactly 2048 MiB of memory", "vm", spec.Name)
	}
	if d.opts.MaxLogBytes > 0 && fileSize(m.ConsolePath()) > d.opts.MaxLogBytes {
		if err := os.Rename(m.ConsolePath(), m.ConsolePath()+".1"); err != nil {
			d.log.Warn("qemu: rotating console log", "vm", spec.Name, "err", err)
		}
	}
	logStart := fileSize(m.ConsolePath())
	d.log.Info("qemu: starting vm", "vm", spec.Name, "accel", accel, "accel_reason", reason)
	var p Process
	if rs, ok := d.sup.(ResourceSupervisor); ok {
		p, err = rs.StartVM(ctx, m.StateDir, argv, m.ConsolePath(),
			Resources{Name: spec.Name, Vcpus: spec.Vcpus, MemoryMB: spec.MemoryMB})
	} else {
		p, err = d.sup.Start(ctx, m.StateDir, argv, m.ConsolePath())
	}
	if err != nil {
		return microvm.Instance{}, fmt.Errorf("starting vm %s: %w", spec.Name, err)
	}
	v.mu.Lock()
	r := d.watch(v, p, logStart)
	v.mu.Unlock()

	if err := d.awaitQMP(ctx, m.QMPPath(), r.exited); err != nil {
		v.mu.Lock()
		if !r.done {
			r.stopping = "start failed"
		}
		v.mu.Unlock()
		p.Signal(syscall.SIGKILL)
		<-r.exited
		return microvm.Instance{}, fmt.Errorf("starting vm %s: %w: %s", spec.Name, err,
			lastLine(tail(m.ConsolePath(), logStart, 4096)))
	}
	return d.instance(v), nil
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

// Stop implements the Driver contract: an ACPI powerdown through QMP, a
// SIGKILL once grace has passed.
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
	p, exited := r.proc, r.exited
	v.mu.Unlock()

	if grace > 0 {
		if d.powerdown(ctx, v, exited, grace) {
			return nil
		}
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("stopping vm %s: %w", name, err)
		}
		v.mu.Lock()
		r.stopping = fmt.Sprintf("%s: killed by SIGKILL after %s grace", why, grace)
		v.mu.Unlock()
	}
	if err := p.Signal(syscall.SIGKILL); err != nil {
		return fmt.Errorf("stopping vm %s: %w", name, err)
	}
	select {
	case <-exited:
		return nil
	case <-d.life.Done():
		// Closed: the watcher is gone and will never close exited, so
		// wait for the process itself.
		select {
		case <-p.Done():
			return nil
		case <-ctx.Done():
		}
	case <-ctx.Done():
	}
	return fmt.Errorf("stopping vm %s: %w", name, ctx.Err())
}

// powerdownRepeat is how often Stop presses the power button again: a
// press that arrives while the guest still boots (before its ACPI button
// driver or init's handler is there) is lost.
const powerdownRepeat = 2 * time.Second

// powerdown presses the VM's ACPI power button through QMP, repeatedly,
// until the process exits (true) or grace passes or ctx ends (false).
func (d *Driver) powerdown(ctx context.Context, v *vm, exited <-chan struct{}, grace time.Duration) bool {
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
			q, err = DialQMP(qctx, filepath.Join(v.dir, qmpFile))
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
				d.log.Warn("qemu: powerdown request failed", "vm", v.name, "err", err)
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
	v, err := d.lookup(name)
	if err != nil {
		return err
	}
	var spec microvm.Spec
	if v != nil {
		v.mu.Lock()
		spec = v.spec.Clone()
		v.mu.Unlock()
	}
	if err := d.stop(ctx, name, 0, "destroyed"); err != nil {
		return err
	}
	if v != nil && d.managesNetwork(spec) {
		// Before the state dir goes: a failed Destroy is retried with the
		// spec still on disk.
		if err := d.opts.Network.Teardown(ctx, netVM(spec)); err != nil {
			return fmt.Errorf("destroying vm %s: %w", name, err)
		}
	}
	d.mu.Lock()
	delete(d.vms, name)
	d.mu.Unlock()
	if name == "" || filepath.Base(name) != name || name == "." || name == ".." {
		return nil
	}
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
	in := microvm.Instance{Name: v.name, ID: v.spec.ID, Handle: filepath.Join(v.dir, qmpFile)}
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

// Logs implements the Driver contract over <state dir>/console.log, which
// holds the serial console and qemu's own messages of every run since the
// log was last rotated (at a start, past Options.MaxLogBytes).
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
	if offset >= 0 {
		if offset > size {
			// The log was rotated at a restart: the reader continues
			// with the new log from its start.
			offset = 0
		}
		data := make([]byte, size-offset)
		n, err := f.ReadAt(data, offset)
		if err != nil && !errors.Is(err, io.EOF) {
			return nil, 0, fmt.Errorf("logs of vm %s: %w", name, err)
		}
		return data[:n], offset + int64(n), nil
	}
	data := make([]byte, size)
	n, err := f.ReadAt(data, 0)
	if err != nil && !errors.Is(err, io.EOF) {
		return nil, 0, fmt.Errorf("logs of vm %s: %w", name, err)
	}
	data = data[:n]
	return lastNLines(data, lastLines), int64(n), nil
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

// tail returns up to max bytes of path from offset from on (the end part).
func tail(path string, from int64, limit int64) []byte {
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
	b := make([]byte, st.Size()-start)
	n, _ := f.ReadAt(b, start)
	return b[:n]
}

func fileSize(path string) int64 {
	st, err := os.Stat(path)
	if err != nil {
		return 0
	}
	return st.Size()
}

func firstNonEmpty(a, b string) string {
	if a != "" {
		return a
	}
	return b
}
