// Package fake provides an in-memory microVM driver for unit tests, the
// simulator and `blixard run --driver fake`. It is a real driver, not a
// mock: it keeps track of VM "processes" (each run with its start and stop
// times, so a checker can verify that a VM never ran twice at once),
// writes a console log, and persists its state under a directory so that a
// new Driver over the same directory (a restarted agent) recovers the VMs
// that were running.
//
// Failures are configured, not scripted: SetFault for one VM name,
// SetDefaultFault for every VM (start failures, crashes after a duration
// measured on the injected Clock, slow or ignored graceful stops). Crash
// and PowerOff end a run on demand.
//
// Who may import it: tests, sim/ and cmd/. It imports microvm only. The
// driver satisfies actors.Driver; actors/drivertest checks the contract.
package fake

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"time"

	"github.com/blixard/blixard/microvm"
)

// Clock is the time source of the driver: run timestamps, crash timers
// and graceful-stop grace periods all use it. Its shape matches
// actors.Clock, so one manual clock can drive both in tests.
type Clock interface {
	Now() time.Time
	// AfterFunc calls f in its own goroutine (or synchronously, for a
	// manual clock) once d has passed; stop cancels it and reports whether
	// it did so before f ran.
	AfterFunc(d time.Duration, f func()) (stop func() bool)
}

type systemClock struct{}

func (systemClock) Now() time.Time { return time.Now() }
func (systemClock) AfterFunc(d time.Duration, f func()) func() bool {
	return time.AfterFunc(d, f).Stop
}

// Fault configures injected failures. The zero value injects nothing.
type Fault struct {
	// PrepareFailures fails the next N Prepare calls; negative fails all.
	PrepareFailures int
	// StartFailures fails the next N Start calls; negative fails all.
	StartFailures int
	// CrashAfter makes every run crash once it has run this long (on the
	// driver's clock), exiting with CrashCode (1 when zero).
	CrashAfter time.Duration
	CrashCode  int
	// StopDelay is how long a graceful stop takes (on the driver's clock);
	// a stop whose grace is shorter is forced (SIGKILL) at the grace.
	StopDelay time.Duration
	// IgnoreGraceful makes the guest ignore graceful stops: every Stop
	// ends with a forced kill after its grace.
	IgnoreGraceful bool
}

// ErrInjected is wrapped by every failure a Fault injects.
var ErrInjected = errors.New("fake: injected failure")

// Run is one "process" of a VM: from a successful Start (or, after a
// driver restart, from its original start) to its exit.
type Run struct {
	Name string
	ID   uint64
	// Seq numbers the runs of one name, from 1.
	Seq       int
	StartedAt time.Time
	// StoppedAt is zero while the run is running.
	StoppedAt time.Time
	Exit      *microvm.Exit `json:",omitempty"`
}

// Running reports whether the run has not exited.
func (r Run) Running() bool { return r.StoppedAt.IsZero() }

// Option configures a Driver.
type Option func(*Driver)

// WithClock sets the driver's clock (default: the system clock).
func WithClock(c Clock) Option { return func(d *Driver) { d.clock = c } }

// WithNodeID tags the driver's log lines with a node id (for the sim).
func WithNodeID(id uint64) Option { return func(d *Driver) { d.nodeID = id } }

// WithRunObserver calls f with a copy of a run each time one starts and
// each time one ends (StoppedAt set), destroyed VMs included; the
// simulator keeps the full history from it. f is called with the
// driver's lock held: it must return at once and not call the driver.
func WithRunObserver(f func(Run)) Option { return func(d *Driver) { d.observe = f } }

// maxRunsKept bounds the run history kept (and persisted) per VM.
const maxRunsKept = 64

// Driver is the fake microVM driver. It is safe for concurrent use.
type Driver struct {
	dir     string
	clock   Clock
	nodeID  uint64
	observe func(Run)

	mu           sync.Mutex
	vms          map[string]*vm
	faults       map[string]*Fault
	defaultFault Fault
	starts       map[string]int // successful starts per name, this driver's lifetime
}

type vm struct {
	spec     microvm.Spec
	prepared bool
	runs     []Run // oldest first; the last may be running
	log      bytes.Buffer
	logBase  int64 // offset of log.Bytes()[0] (older bytes were trimmed)

	// Transient: the current run's exit channel and timers.
	exited    chan struct{} // closed when the current run exits
	crashStop func() bool
}

func (v *vm) current() *Run {
	if len(v.runs) == 0 {
		return nil
	}
	r := &v.runs[len(v.runs)-1]
	if !r.Running() {
		return nil
	}
	return r
}

// New returns a driver that keeps its state under dir (created when
// missing) and recovers what an earlier driver over dir left there: VMs
// that were running are running again (their runs continue). An empty dir
// keeps everything in memory only.
func New(dir string, opts ...Option) (*Driver, error) {
	d := &Driver{
		dir:    dir,
		clock:  systemClock{},
		vms:    make(map[string]*vm),
		faults: make(map[string]*Fault),
		starts: make(map[string]int),
	}
	for _, o := range opts {
		o(d)
	}
	if dir == "" {
		return d, nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("fake driver: %w", err)
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("fake driver: %w", err)
	}
	for _, e := range entries {
		if !e.IsDir() {
			continue
		}
		v, err := d.load(e.Name())
		if err != nil {
			return nil, fmt.Errorf("fake driver: loading %s: %w", e.Name(), err)
		}
		if v != nil {
			d.vms[e.Name()] = v
		}
	}
	return d, nil
}

type persisted struct {
	Spec     microvm.Spec
	Prepared bool
	Runs     []Run
}

func (d *Driver) vmDir(name string) string { return filepath.Join(d.dir, name) }

func (d *Driver) load(name string) (*vm, error) {
	b, err := os.ReadFile(filepath.Join(d.vmDir(name), "state.json"))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var p persisted
	if err := json.Unmarshal(b, &p); err != nil {
		return nil, err
	}
	v := &vm{spec: p.Spec, prepared: p.Prepared, runs: p.Runs}
	if logb, err := os.ReadFile(filepath.Join(d.vmDir(name), "console.log")); err == nil {
		v.log.Write(logb)
	}
	if r := v.current(); r != nil {
		v.exited = make(chan struct{})
	}
	return v, nil
}

// save persists v; d.mu is held. Errors are returned to the caller of the
// driver method that changed the state.
func (d *Driver) save(name string, v *vm) error {
	if d.dir == "" {
		return nil
	}
	b, err := json.Marshal(persisted{Spec: v.spec, Prepared: v.prepared, Runs: v.runs})
	if err != nil {
		return err
	}
	p := filepath.Join(d.vmDir(name), "state.json")
	tmp := p + ".tmp"
	if err := os.WriteFile(tmp, b, 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, p)
}

// logf appends a console line; d.mu is held.
func (d *Driver) logf(name string, v *vm, format string, args ...any) {
	tag := "fake"
	if d.nodeID != 0 {
		tag = fmt.Sprintf("fake node %d", d.nodeID)
	}
	line := fmt.Sprintf("%s [%s] %s\n", d.clock.Now().UTC().Format(time.RFC3339Nano), tag, fmt.Sprintf(format, args...))
	v.log.WriteString(line)
	if d.dir == "" {
		// Bound memory: keep the last 64 KiB.
		const keep = 64 << 10
		if v.log.Len() > 2*keep {
			drop := v.log.Len() - keep
			v.logBase += int64(drop)
			v.log.Next(drop)
		}
		return
	}
	f, err := os.OpenFile(filepath.Join(d.vmDir(name), "console.log"), os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644)
	if err != nil {
		return
	}
	f.WriteString(line)
	f.Close()
}

// SetFault configures the failures injected for the VM name, replacing
// any earlier fault for it. A zero Fault clears it.
func (d *Driver) SetFault(name string, f Fault) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if f == (Fault{}) {
		delete(d.faults, name)
		return
	}
	fc := f
	d.faults[name] = &fc
}

// SetDefaultFault configures the failures injected for every VM without
// its own fault.
func (d *Driver) SetDefaultFault(f Fault) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.defaultFault = f
}

// fault returns the fault for name; d.mu is held.
func (d *Driver) fault(name string) *Fault {
	if f, ok := d.faults[name]; ok {
		return f
	}
	return &d.defaultFault
}

func checkCtx(ctx context.Context, op, name string) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("%s %s: %w", op, name, err)
	}
	return nil
}

// Prepare records spec and creates the VM's state dir.
func (d *Driver) Prepare(ctx context.Context, spec microvm.Spec) error {
	if err := checkCtx(ctx, "preparing", spec.Name); err != nil {
		return err
	}
	if spec.Name == "" {
		return fmt.Errorf("preparing: empty name: %w", microvm.ErrInvalidSpec)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	f := d.fault(spec.Name)
	if f.PrepareFailures != 0 {
		if f.PrepareFailures > 0 {
			f.PrepareFailures--
		}
		return fmt.Errorf("preparing %s: %w", spec.Name, ErrInjected)
	}
	v, ok := d.vms[spec.Name]
	if !ok {
		v = &vm{}
		d.vms[spec.Name] = v
	}
	if d.dir != "" {
		if err := os.MkdirAll(d.vmDir(spec.Name), 0o755); err != nil {
			return fmt.Errorf("preparing %s: %w", spec.Name, err)
		}
	}
	if v.current() == nil || !v.prepared {
		v.spec = spec.Clone()
	}
	if !v.prepared {
		v.prepared = true
		d.logf(spec.Name, v, "prepared %s (id %d, %d vcpus, %d MiB)", spec.Name, spec.ID, spec.Vcpus, spec.MemoryMB)
	}
	if err := d.save(spec.Name, v); err != nil {
		return fmt.Errorf("preparing %s: %w", spec.Name, err)
	}
	return nil
}

// Start begins a new run of a prepared VM.
func (d *Driver) Start(ctx context.Context, spec microvm.Spec) (microvm.Instance, error) {
	if err := checkCtx(ctx, "starting", spec.Name); err != nil {
		return microvm.Instance{}, err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	v, ok := d.vms[spec.Name]
	if !ok || !v.prepared {
		return microvm.Instance{}, fmt.Errorf("starting %s: %w", spec.Name, microvm.ErrNotPrepared)
	}
	if v.current() != nil {
		return microvm.Instance{}, fmt.Errorf("starting %s: %w", spec.Name, microvm.ErrAlreadyRunning)
	}
	f := d.fault(spec.Name)
	if f.StartFailures != 0 {
		if f.StartFailures > 0 {
			f.StartFailures--
		}
		d.logf(spec.Name, v, "start failed (injected)")
		return microvm.Instance{}, fmt.Errorf("starting %s: %w", spec.Name, ErrInjected)
	}
	if spec.ID != 0 {
		v.spec = spec.Clone()
	}
	seq := 1
	if n := len(v.runs); n > 0 {
		seq = v.runs[n-1].Seq + 1
	}
	now := d.clock.Now()
	v.runs = append(v.runs, Run{Name: spec.Name, ID: v.spec.ID, Seq: seq, StartedAt: now})
	if len(v.runs) > maxRunsKept {
		v.runs = append(v.runs[:0:0], v.runs[len(v.runs)-maxRunsKept:]...)
	}
	v.exited = make(chan struct{})
	d.starts[spec.Name]++
	d.logf(spec.Name, v, "started %s (run %d)", spec.Name, seq)
	if d.observe != nil {
		d.observe(v.runs[len(v.runs)-1])
	}
	if f.CrashAfter > 0 {
		code := f.CrashCode
		if code == 0 {
			code = 1
		}
		name := spec.Name
		v.crashStop = d.clock.AfterFunc(f.CrashAfter, func() {
			d.mu.Lock()
			defer d.mu.Unlock()
			d.exitLocked(name, seq, microvm.Exit{Code: code, Reason: fmt.Sprintf("crashed with code %d", code)})
		})
	}
	if err := d.save(spec.Name, v); err != nil {
		return microvm.Instance{}, fmt.Errorf("starting %s: %w", spec.Name, err)
	}
	return d.instance(spec.Name, v), nil
}

// exitLocked ends run seq of name (if it still runs); d.mu is held.
func (d *Driver) exitLocked(name string, seq int, e microvm.Exit) bool {
	v, ok := d.vms[name]
	if !ok {
		return false
	}
	r := v.current()
	if r == nil || (seq != 0 && r.Seq != seq) {
		return false
	}
	e.At = d.clock.Now()
	r.StoppedAt = e.At
	ec := e
	r.Exit = &ec
	if d.observe != nil {
		d.observe(*r)
	}
	if v.crashStop != nil {
		v.crashStop()
		v.crashStop = nil
	}
	close(v.exited)
	d.logf(name, v, "run %d ended: %s", r.Seq, e.String())
	_ = d.save(name, v) // best effort: the exit is what happened either way
	return true
}

// Crash ends name's running instance with exit code code (an unclean
// exit). It returns microvm.ErrNotRunning when nothing runs.
func (d *Driver) Crash(name string, code int) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if !d.exitLocked(name, 0, microvm.Exit{Code: code, Reason: fmt.Sprintf("crashed with code %d", code)}) {
		return fmt.Errorf("crashing %s: %w", name, microvm.ErrNotRunning)
	}
	return nil
}

// PowerOff ends name's running instance as if the guest shut itself down
// (exit code 0, a clean exit).
func (d *Driver) PowerOff(name string) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if !d.exitLocked(name, 0, microvm.Exit{Code: 0, Reason: "guest powered off", Clean: true}) {
		return fmt.Errorf("powering off %s: %w", name, microvm.ErrNotRunning)
	}
	return nil
}

// Wait blocks until the latest run of name exits.
func (d *Driver) Wait(ctx context.Context, name string) (microvm.Exit, error) {
	d.mu.Lock()
	v, ok := d.vms[name]
	if !ok || len(v.runs) == 0 {
		d.mu.Unlock()
		return microvm.Exit{}, fmt.Errorf("waiting for %s: %w", name, microvm.ErrNotFound)
	}
	last := v.runs[len(v.runs)-1]
	if !last.Running() {
		d.mu.Unlock()
		return exitOf(last), nil
	}
	ch, seq := v.exited, last.Seq
	d.mu.Unlock()
	select {
	case <-ch:
	case <-ctx.Done():
		return microvm.Exit{}, fmt.Errorf("waiting for %s: %w", name, ctx.Err())
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, r := range v.runs {
		if r.Seq == seq {
			return exitOf(r), nil
		}
	}
	return microvm.Exit{Reason: "exited"}, nil
}

func exitOf(r Run) microvm.Exit {
	if r.Exit == nil {
		return microvm.Exit{Reason: "exited", At: r.StoppedAt}
	}
	return *r.Exit
}

// Stop requests a graceful shutdown and forces it after grace.
func (d *Driver) Stop(ctx context.Context, name string, grace time.Duration) error {
	d.mu.Lock()
	v, ok := d.vms[name]
	if !ok || v.current() == nil {
		d.mu.Unlock()
		return nil
	}
	seq := v.current().Seq
	f := *d.fault(name)
	ch := v.exited
	d.logf(name, v, "graceful shutdown requested (grace %s)", grace)
	forced := f.IgnoreGraceful || f.StopDelay > grace
	delay := f.StopDelay
	if forced {
		delay = grace
	}
	if delay <= 0 {
		d.stopNow(name, seq, forced, grace)
		d.mu.Unlock()
		return nil
	}
	d.mu.Unlock()

	fired := make(chan struct{})
	cancel := d.clock.AfterFunc(delay, func() { close(fired) })
	select {
	case <-fired:
	case <-ch: // exited on its own meanwhile
		cancel()
		return nil
	case <-ctx.Done():
		cancel()
		return fmt.Errorf("stopping %s: %w", name, ctx.Err())
	}
	d.mu.Lock()
	d.stopNow(name, seq, forced, grace)
	d.mu.Unlock()
	return nil
}

// stopNow ends run seq after a Stop; d.mu is held.
func (d *Driver) stopNow(name string, seq int, forced bool, grace time.Duration) {
	e := microvm.Exit{Code: 0, Reason: "stopped", Clean: true}
	if forced {
		e = microvm.Exit{Code: -1, Signal: "SIGKILL", Reason: fmt.Sprintf("killed by SIGKILL after %s grace", grace), Clean: true}
	}
	d.exitLocked(name, seq, e)
}

// Destroy kills a running instance and forgets name, removing its dir.
func (d *Driver) Destroy(ctx context.Context, name string) error {
	if err := checkCtx(ctx, "destroying", name); err != nil {
		return err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	v, ok := d.vms[name]
	if !ok {
		return nil
	}
	if r := v.current(); r != nil {
		d.exitLocked(name, r.Seq, microvm.Exit{Code: -1, Signal: "SIGKILL", Reason: "killed by destroy", Clean: true})
	}
	delete(d.vms, name)
	if d.dir != "" {
		if err := os.RemoveAll(d.vmDir(name)); err != nil {
			return fmt.Errorf("destroying %s: %w", name, err)
		}
	}
	return nil
}

// instance builds the Instance view; d.mu is held.
func (d *Driver) instance(name string, v *vm) microvm.Instance {
	in := microvm.Instance{Name: name, ID: v.spec.ID}
	if r := v.current(); r != nil {
		in.Running = true
		in.StartedAt = r.StartedAt
		in.Handle = fmt.Sprintf("fake:%s/%d", name, r.Seq)
	}
	return in
}

// Inspect returns the driver's view of name.
func (d *Driver) Inspect(ctx context.Context, name string) (microvm.Instance, error) {
	if err := checkCtx(ctx, "inspecting", name); err != nil {
		return microvm.Instance{}, err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	v, ok := d.vms[name]
	if !ok {
		return microvm.Instance{}, fmt.Errorf("inspecting %s: %w", name, microvm.ErrNotFound)
	}
	return d.instance(name, v), nil
}

// Recover reports whether spec.Name runs; it never starts anything.
func (d *Driver) Recover(ctx context.Context, spec microvm.Spec) (microvm.Instance, bool, error) {
	if err := checkCtx(ctx, "recovering", spec.Name); err != nil {
		return microvm.Instance{}, false, err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	v, ok := d.vms[spec.Name]
	if !ok {
		return microvm.Instance{Name: spec.Name}, false, nil
	}
	in := d.instance(spec.Name, v)
	if in.Running {
		d.logf(spec.Name, v, "re-adopted run %d", v.current().Seq)
	}
	return in, in.Running, nil
}

// List returns every known VM, sorted by name.
func (d *Driver) List(ctx context.Context) ([]microvm.Instance, error) {
	if err := checkCtx(ctx, "listing", "vms"); err != nil {
		return nil, err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	out := make([]microvm.Instance, 0, len(d.vms))
	for name, v := range d.vms {
		out = append(out, d.instance(name, v))
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// Logs reads the fake console log.
func (d *Driver) Logs(ctx context.Context, name string, offset int64, lastLines int) ([]byte, int64, error) {
	if err := checkCtx(ctx, "reading logs of", name); err != nil {
		return nil, 0, err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	v, ok := d.vms[name]
	if !ok {
		return nil, 0, fmt.Errorf("reading logs of %s: %w", name, microvm.ErrNotFound)
	}
	b := v.log.Bytes()
	end := v.logBase + int64(len(b))
	if offset >= 0 {
		if offset < v.logBase {
			offset = v.logBase
		}
		if offset > end {
			offset = end
		}
		return bytes.Clone(b[offset-v.logBase:]), end, nil
	}
	return bytes.Clone(LastLines(b, lastLines)), end, nil
}

// LastLines returns the suffix of b holding its last n lines (all of b
// when n <= 0). A final line without a newline counts as a line.
func LastLines(b []byte, n int) []byte {
	if n <= 0 {
		return b
	}
	i := len(b)
	if i > 0 && b[i-1] == '\n' {
		i--
	}
	for ; n > 0; n-- {
		j := bytes.LastIndexByte(b[:i], '\n')
		if j < 0 {
			return b
		}
		if n == 1 {
			return b[j+1:]
		}
		i = j
	}
	return b
}

// Runs returns the run history of name (oldest first, at most the last 64).
func (d *Driver) Runs(name string) []Run {
	d.mu.Lock()
	defer d.mu.Unlock()
	v, ok := d.vms[name]
	if !ok {
		return nil
	}
	return append([]Run(nil), v.runs...)
}

// StartCount returns how many times Start succeeded for name on this
// Driver (runs recovered from an earlier driver are not counted).
func (d *Driver) StartCount(name string) int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.starts[name]
}

// Running returns the names of the running VMs, sorted.
func (d *Driver) Running() []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	var out []string
	for name, v := range d.vms {
		if v.current() != nil {
			out = append(out, name)
		}
	}
	sort.Strings(out)
	return out
}

// Close stops the crash timers; running VMs stay running (in the state
// dir) so a new Driver over the same dir recovers them.
func (d *Driver) Close() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, v := range d.vms {
		if v.crashStop != nil {
			v.crashStop()
			v.crashStop = nil
		}
	}
	return nil
}
