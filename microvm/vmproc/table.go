// Package vmproc keeps the per-VM process records of a microVM driver: one
// state dir per VM under a directory, the VM's current run under a
// Supervisor, its exit (recorded in exit.json and classified from the
// console log), and the Driver-contract methods that only need those
// records (Wait, Stop, Inspect, Recover, List, Logs). The qemu and nix
// drivers build on it; they add how a VM is prepared and started and how
// it is asked to power down. Only microvm drivers import it.
package vmproc

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/blixard/blixard/microvm"
)

// State dir entries the table reads and writes.
const (
	ConsoleFile = "console.log"
	ExitFile    = "exit.json"
)

// Driver is what a driver adds to the table.
type Driver interface {
	// LoadSpec reads the spec recorded in the state dir dir. An error
	// wrapping os.ErrNotExist means dir holds no VM.
	LoadSpec(dir string) (microvm.Spec, error)
	// Powerdown asks v (running as p) to shut down, again as needed,
	// until exited is closed (true) or grace passes or ctx ends (false).
	Powerdown(ctx context.Context, v *VM, p Process, exited <-chan struct{}, grace time.Duration) bool
}

// Sign is console output that tells how a guest ended.
type Sign struct {
	Text  string // looked for in the run's console output
	Guest string // what happened, e.g. "guest kernel panic"
}

// guestSigns are looked for first, in this order; Config.Signs follow.
var guestSigns = []Sign{
	{"Kernel panic", "guest kernel panic"},
	{"reboot: Restarting system", "guest rebooted"},
	{"reboot: Power down", "guest powered off"},
}

// Config configures a Table. Dir, Supervisor and Logger are required.
type Config struct {
	// Dir holds one state dir per VM: <Dir>/<name>/.
	Dir        string
	Supervisor Supervisor
	Logger     *slog.Logger
	// Prefix starts the table's log messages ("qemu").
	Prefix string
	// Process names the supervised process in exit reasons ("qemu",
	// "runner").
	Process string
	// Handle is the state dir entry an Instance's Handle names.
	Handle string
	// ValidName reports whether name may be a VM's state dir.
	ValidName func(name string) bool
	// Signs are more console signs of how a guest ended, after the
	// kernel panic, reboot and power down ones.
	Signs []Sign
	// MaxLogBytes rotates console.log to console.log.1 in Rotate when
	// the log is larger; 0 or negative never rotates.
	MaxLogBytes int64
}

// Table holds the records of a driver's VMs; its methods are safe for
// concurrent use.
type Table struct {
	cfg Config
	drv Driver
	// life ends with Close: it stops the watchers of adopted processes.
	life   context.Context
	cancel context.CancelFunc

	mu  sync.Mutex
	vms map[string]*VM
}

// VM is the record of one VM.
type VM struct {
	Name string
	Dir  string
	// Prep serialises a driver's Prepare per VM without blocking the
	// other methods.
	Prep sync.Mutex

	mu   sync.Mutex
	spec microvm.Spec
	// cur is the current or last run started (or adopted) by this table.
	cur *run
	// recorded is the exit a previous driver recorded (exit.json), for
	// Wait before this driver runs the VM.
	recorded *microvm.Exit
}

// run is one process of a VM.
type run struct {
	proc Process
	// logStart is the console log size when the process started: the
	// exit classification reads only this run's output.
	logStart int64
	// exited is closed once exit is set.
	exited chan struct{}
	exit   microvm.Exit
	// Guarded by VM.mu: done is set with exit; stopping explains a
	// requested stop ("stopped", "destroyed"), which makes the exit clean.
	done     bool
	stopping string
}

// running reports whether v's current run is alive. Called with v.mu held.
func (v *VM) running() bool { return v.cur != nil && !v.cur.done }

// Running reports whether v's current run is alive.
func (v *VM) Running() bool {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.running()
}

// Spec returns a copy of v's spec.
func (v *VM) Spec() microvm.Spec {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.spec.Clone()
}

// SetSpec records spec as v's.
func (v *VM) SetSpec(spec microvm.Spec) {
	v.mu.Lock()
	v.spec = spec.Clone()
	v.mu.Unlock()
}

// Console is the path of v's console log.
func (v *VM) Console() string { return filepath.Join(v.Dir, ConsoleFile) }

// New returns a table over cfg.Dir for drv.
func New(cfg Config, drv Driver) *Table {
	t := &Table{cfg: cfg, drv: drv, vms: map[string]*VM{}}
	t.life, t.cancel = context.WithCancel(context.Background())
	return t
}

// Close stops the watchers; running VMs keep running for a later table.
func (t *Table) Close() { t.cancel() }

// StateDir is the state dir of the VM name.
func (t *Table) StateDir(name string) string { return filepath.Join(t.cfg.Dir, name) }

// Lookup returns the record of name, loading it from its state dir (and
// re-adopting a running process) when this table has not seen it yet.
// It returns nil when name is unknown.
func (t *Table) Lookup(name string) (*VM, error) {
	if !t.cfg.ValidName(name) {
		return nil, nil
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if v, ok := t.vms[name]; ok {
		return v, nil
	}
	dir := t.StateDir(name)
	spec, err := t.drv.LoadSpec(dir)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, nil
		}
		return nil, fmt.Errorf("loading vm %s: %w", name, err)
	}
	v := &VM{Name: name, Dir: dir, spec: spec}
	var last microvm.Exit
	if err := ReadJSON(filepath.Join(dir, ExitFile), &last); err == nil {
		v.recorded = &last
	}
	p, ok, err := t.cfg.Supervisor.Adopt(t.life, dir)
	if err != nil {
		return nil, fmt.Errorf("re-adopting vm %s: %w", name, err)
	}
	if ok {
		t.cfg.Logger.Info(t.cfg.Prefix+": re-adopted running vm", "vm", name, "pid", p.PID())
		t.watch(v, p, FileSize(filepath.Join(dir, ConsoleFile)))
	}
	t.vms[name] = v
	return v, nil
}

// Record returns name's record, creating an empty one when its state dir
// holds no VM yet.
func (t *Table) Record(name string) (*VM, error) {
	v, err := t.Lookup(name)
	if err != nil || v != nil {
		return v, err
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if v, ok := t.vms[name]; ok {
		return v, nil
	}
	v = &VM{Name: name, Dir: t.StateDir(name)}
	t.vms[name] = v
	return v, nil
}

// Forget drops name's record (its state dir is the caller's to remove).
func (t *Table) Forget(name string) {
	t.mu.Lock()
	delete(t.vms, name)
	t.mu.Unlock()
}

// watch makes p v's current run and records its exit when it ends. The
// caller holds v.mu or owns v exclusively.
func (t *Table) watch(v *VM, p Process, logStart int64) *run {
	r := &run{proc: p, logStart: logStart, exited: make(chan struct{})}
	v.cur = r
	go func() {
		select {
		case <-p.Done():
		case <-t.life.Done():
			return
		}
		v.mu.Lock()
		e := t.classify(v, r, p.Status())
		v.mu.Unlock()
		// Files first: once done is set a new Start may write its own.
		if err := WriteJSON(filepath.Join(v.Dir, ExitFile), e); err != nil && !errors.Is(err, os.ErrNotExist) {
			t.cfg.Logger.Warn(t.cfg.Prefix+": recording exit", "vm", v.Name, "err", err)
		}
		t.cfg.Logger.Info(t.cfg.Prefix+": vm exited", "vm", v.Name, "reason", e.Reason, "clean", e.Clean)
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
func (t *Table) classify(v *VM, r *run, st ProcessStatus) microvm.Exit {
	e := microvm.Exit{Code: st.Code, Signal: st.Signal, At: time.Now()}
	if r.stopping != "" {
		e.Clean = true
		e.Reason = r.stopping
		return e
	}
	out := Tail(filepath.Join(v.Dir, ConsoleFile), r.logStart, 64<<10)
	guest := ""
	for _, s := range append(guestSigns[:len(guestSigns):len(guestSigns)], t.cfg.Signs...) {
		if bytes.Contains(out, []byte(s.Text)) {
			guest = s.Guest
			break
		}
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
		e.Reason = fmt.Sprintf("%s exited with code %d: %s", t.cfg.Process, st.Code, LastLine(out))
	case guest == "":
		e.Reason = t.cfg.Process + " exited cleanly"
		e.Clean = true
	default:
		e.Reason = guest
		e.Clean = guest == "guest powered off"
	}
	return e
}

// Rotate moves v's console log aside when it is past MaxLogBytes.
func (t *Table) Rotate(v *VM) {
	console := v.Console()
	if t.cfg.MaxLogBytes > 0 && FileSize(console) > t.cfg.MaxLogBytes {
		if err := os.Rename(console, console+".1"); err != nil {
			t.cfg.Logger.Warn(t.cfg.Prefix+": rotating console log", "vm", v.Name, "err", err)
		}
	}
}

// Launch starts argv (of spec) in v's state dir as v's current run, with its output
// appended to console.log (rotated first), and returns once ready does.
// sock, the control socket a previous run may have left, is removed
// first. When ready fails (it is given the channel closed at the run's
// exit) the process is killed and Launch fails with the last line it
// printed.
func (t *Table) Launch(ctx context.Context, v *VM, spec microvm.Spec, argv []string, sock string,
	ready func(ctx context.Context, exited <-chan struct{}) error) (microvm.Instance, error) {
	v.mu.Lock()
	if v.running() {
		v.mu.Unlock()
		return microvm.Instance{}, fmt.Errorf("starting vm %s: %w", v.Name, microvm.ErrAlreadyRunning)
	}
	os.Remove(sock)
	t.Rotate(v)
	console := v.Console()
	logStart := FileSize(console)
	var p Process
	var err error
	if rs, ok := t.cfg.Supervisor.(ResourceSupervisor); ok {
		p, err = rs.StartVM(ctx, v.Dir, argv, console,
			Resources{Name: v.Name, Vcpus: spec.Vcpus, MemoryMB: spec.MemoryMB})
	} else {
		p, err = t.cfg.Supervisor.Start(ctx, v.Dir, argv, console)
	}
	if err != nil {
		v.mu.Unlock()
		return microvm.Instance{}, fmt.Errorf("starting vm %s: %w", v.Name, err)
	}
	r := t.watch(v, p, logStart)
	v.mu.Unlock()
	t.cfg.Logger.Info(t.cfg.Prefix+": started vm", "vm", v.Name, "pid", p.PID())

	if err := ready(ctx, r.exited); err != nil {
		v.mu.Lock()
		if !r.done {
			r.stopping = "start failed"
		}
		v.mu.Unlock()
		p.Signal(syscall.SIGKILL)
		select {
		case <-r.exited:
		case <-t.life.Done():
		}
		return microvm.Instance{}, fmt.Errorf("starting vm %s: %w: %s", v.Name, err,
			LastLine(Tail(console, logStart, 4096)))
	}
	return t.Instance(v), nil
}

// Wait implements the Driver contract.
func (t *Table) Wait(ctx context.Context, name string) (microvm.Exit, error) {
	v, err := t.Lookup(name)
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

// Stop ends name's run: the driver's Powerdown, a SIGKILL once grace has
// passed (at once when grace is 0). why explains the exit ("stopped",
// "destroyed").
func (t *Table) Stop(ctx context.Context, name string, grace time.Duration, why string) error {
	v, err := t.Lookup(name)
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
		if t.drv.Powerdown(ctx, v, p, exited, grace) {
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
	case <-t.life.Done():
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

// Inspect implements the Driver contract.
func (t *Table) Inspect(ctx context.Context, name string) (microvm.Instance, error) {
	v, err := t.Lookup(name)
	if err != nil {
		return microvm.Instance{}, err
	}
	if v == nil {
		return microvm.Instance{}, fmt.Errorf("inspecting vm %s: %w", name, microvm.ErrNotFound)
	}
	return t.Instance(v), nil
}

// Instance is v as the Driver contract shows it.
func (t *Table) Instance(v *VM) microvm.Instance {
	v.mu.Lock()
	defer v.mu.Unlock()
	in := microvm.Instance{Name: v.Name, ID: v.spec.ID, Handle: filepath.Join(v.Dir, t.cfg.Handle)}
	if v.running() {
		in.Running = true
		in.PID = v.cur.proc.PID()
		in.StartedAt = v.cur.proc.StartedAt()
	}
	return in
}

// Recover implements the Driver contract. The re-adoption itself happens
// when the table first looks at the VM's state dir.
func (t *Table) Recover(ctx context.Context, spec microvm.Spec) (microvm.Instance, bool, error) {
	v, err := t.Lookup(spec.Name)
	if err != nil {
		return microvm.Instance{}, false, err
	}
	if v == nil {
		return microvm.Instance{Name: spec.Name}, false, nil
	}
	in := t.Instance(v)
	return in, in.Running, nil
}

// List implements the Driver contract.
func (t *Table) List(ctx context.Context) ([]microvm.Instance, error) {
	entries, err := os.ReadDir(t.cfg.Dir)
	if err != nil {
		return nil, fmt.Errorf("listing vms: %w", err)
	}
	var out []microvm.Instance
	for _, e := range entries {
		if !e.IsDir() {
			continue
		}
		v, err := t.Lookup(e.Name())
		if err != nil {
			return nil, err
		}
		if v != nil {
			out = append(out, t.Instance(v))
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// Logs implements the Driver contract over <state dir>/console.log.
func (t *Table) Logs(ctx context.Context, name string, offset int64, lastLines int) ([]byte, int64, error) {
	v, err := t.Lookup(name)
	if err != nil {
		return nil, 0, err
	}
	if v == nil {
		return nil, 0, fmt.Errorf("logs of vm %s: %w", name, microvm.ErrNotFound)
	}
	f, err := os.Open(v.Console())
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
	return LastLines(data, lastLines), int64(n), nil
}

// LastLines returns the last n lines of b (all of b when n <= 0).
func LastLines(b []byte, n int) []byte {
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

// LastLine returns the last line of b, trimmed.
func LastLine(b []byte) string {
	b = bytes.TrimRight(b, "\r\n")
	if i := bytes.LastIndexByte(b, '\n'); i >= 0 {
		b = b[i+1:]
	}
	return strings.TrimSpace(string(b))
}

// Tail returns up to limit bytes of path from offset from on (the end).
func Tail(path string, from, limit int64) []byte {
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

// FileSize is the size of path, 0 when it cannot be read.
func FileSize(path string) int64 {
	st, err := os.Stat(path)
	if err != nil {
		return 0
	}
	return st.Size()
}
