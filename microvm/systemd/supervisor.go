package systemd

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"time"

	sddbus "github.com/coreos/go-systemd/v22/dbus"

	"github.com/blixard/blixard/microvm/qemu"
	"github.com/blixard/blixard/microvm/vmproc"
)

// recordFile is the file in the VM state dir that identifies the unit's run.
const recordFile = "unit.json"

// ErrUnitRunning is returned by Start when the VM's unit already runs.
var ErrUnitRunning = errors.New("unit already running")

// Supervisor runs VM runners as transient systemd units. The zero value
// connects to systemd on first use; Close ends the connection and stops
// watching the units (they keep running).
type Supervisor struct {
	// Dial connects to systemd; nil means Connect.
	Dial func(ctx context.Context) (*sddbus.Conn, error)
	// Env is added to each unit's environment.
	Env []string
	// StopTimeout is the units' TimeoutStopUSec; 0 means DefaultStopTimeout.
	StopTimeout time.Duration
	// PollInterval is how often a unit's state is read; 0 means 100 ms.
	PollInterval time.Duration
	// Logger receives what the supervisor notices; nil discards it.
	Logger *slog.Logger

	mu     sync.Mutex
	conn   *sddbus.Conn
	life   context.Context
	cancel context.CancelFunc
}

var (
	_ qemu.Supervisor         = (*Supervisor)(nil)
	_ qemu.ResourceSupervisor = (*Supervisor)(nil)
)

// Connect connects to systemd over its private socket (root, no D-Bus
// daemon needed) and falls back to the system bus.
func Connect(ctx context.Context) (*sddbus.Conn, error) {
	c, err := sddbus.NewSystemdConnectionContext(ctx)
	if err == nil {
		return c, nil
	}
	c, err2 := sddbus.NewSystemConnectionContext(ctx)
	if err2 != nil {
		return nil, fmt.Errorf("connecting to systemd: %w (private socket: %v)", err2, err)
	}
	return c, nil
}

// connection returns the shared connection, dialling when there is none
// or the last one broke.
func (s *Supervisor) connection(ctx context.Context) (*sddbus.Conn, context.Context, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.life == nil {
		s.life, s.cancel = context.WithCancel(context.Background())
	}
	if s.conn != nil && s.conn.Connected() {
		return s.conn, s.life, nil
	}
	if s.conn != nil {
		s.conn.Close()
		s.conn = nil
	}
	dial := s.Dial
	if dial == nil {
		dial = Connect
	}
	c, err := dial(ctx)
	if err != nil {
		return nil, nil, err
	}
	s.conn = c
	return c, s.life, nil
}

// Close stops watching units and closes the connection. Units keep running.
func (s *Supervisor) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cancel != nil {
		s.cancel()
	}
	if s.conn != nil {
		s.conn.Close()
		s.conn = nil
	}
	return nil
}

func (s *Supervisor) log() *slog.Logger {
	if s.Logger == nil {
		return slog.New(slog.DiscardHandler)
	}
	return s.Logger
}

// Start implements qemu.Supervisor: the VM is named after dir and runs
// without resource limits. Drivers call StartVM instead.
func (s *Supervisor) Start(ctx context.Context, dir string, argv []string, logPath string) (qemu.Process, error) {
	return s.StartVM(ctx, dir, argv, logPath, qemu.Resources{})
}

// StartVM implements qemu.ResourceSupervisor. The runner's stdout and
// stderr go to journald; when the unit fails its last journal lines are
// appended to logPath, so a driver reading logPath still sees why.
func (s *Supervisor) StartVM(ctx context.Context, dir string, argv []string, logPath string, res qemu.Resources) (qemu.Process, error) {
	if len(argv) == 0 {
		return nil, errors.New("systemd: empty argv")
	}
	name := res.Name
	if name == "" {
		name = filepath.Base(dir)
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, err
	}
	conn, life, err := s.connection(ctx)
	if err != nil {
		return nil, err
	}
	unit := UnitName(name)
	st, err := readState(ctx, conn, unit)
	if err != nil {
		return nil, fmt.Errorf("reading unit %s: %w", unit, err)
	}
	switch {
	case st.running():
		return nil, fmt.Errorf("starting unit %s: %w (pid %d)", unit, ErrUnitRunning, st.MainPID)
	case st.ActiveState == "failed":
		// A failed run we did not reap: clear it so the name is free.
		if err := conn.ResetFailedUnitContext(ctx, unit); err != nil {
			return nil, fmt.Errorf("resetting failed unit %s: %w", unit, err)
		}
	}
	spec := UnitSpec{Name: name, Argv: argv, Dir: abs, Vcpus: res.Vcpus, MemoryMB: res.MemoryMB,
		Env: s.Env, StopTimeout: s.StopTimeout}
	result := make(chan string, 1)
	if _, err := conn.StartTransientUnitContext(ctx, unit, "fail", Properties(spec), result); err != nil {
		return nil, fmt.Errorf("starting unit %s: %w", unit, err)
	}
	select {
	case r := <-result:
		if r != "done" {
			st, err := readState(ctx, conn, unit)
			if err == nil && st.ran() {
				// The runner started and has already exited: a Process
				// that is done, as the exec supervisor reports it.
				rec := record{Unit: unit, Name: name, InvocationID: st.InvocationID, MainPID: st.ExecMainPID, StartedAt: st.startedAt()}
				p := s.newProcess(rec, logPath)
				p.finish(conn, st)
				return p, nil
			}
			// systemd's own words about the unit (an executable that is
			// missing, a working directory that is not there).
			appendJournal(logPath, "-u", unit)
			conn.ResetFailedUnitContext(context.WithoutCancel(ctx), unit)
			return nil, fmt.Errorf("starting unit %s: job %s", unit, r)
		}
	case <-ctx.Done():
		// The job goes on; stop what it starts.
		conn.StopUnitContext(context.WithoutCancel(ctx), unit, "replace", nil)
		return nil, ctx.Err()
	}
	st, err = readState(ctx, conn, unit)
	if err != nil {
		return nil, fmt.Errorf("reading unit %s: %w", unit, err)
	}
	rec := record{Unit: unit, Name: name, InvocationID: st.InvocationID, MainPID: st.MainPID, StartedAt: st.startedAt()}
	if rec.MainPID == 0 {
		rec.MainPID = st.ExecMainPID
	}
	p := s.newProcess(rec, logPath)
	if st.InvocationID == "" || st.final() {
		// It exited already (and was collected when it exited cleanly).
		p.finish(conn, st)
		return p, nil
	}
	if err := vmproc.WriteJSON(filepath.Join(dir, recordFile), rec); err != nil {
		conn.KillUnitWithTarget(context.WithoutCancel(ctx), unit, sddbus.All, int32(syscall.SIGKILL))
		return nil, fmt.Errorf("writing %s: %w", recordFile, err)
	}
	go p.watch(life, conn, dir)
	return p, nil
}

// Adopt implements qemu.Supervisor: it re-attaches to the unit Start
// recorded in dir when that unit still runs the same invocation with the
// same main pid.
func (s *Supervisor) Adopt(life context.Context, dir string) (qemu.Process, bool, error) {
	var rec record
	if err := vmproc.ReadJSON(filepath.Join(dir, recordFile), &rec); err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, false, nil
		}
		return nil, false, fmt.Errorf("reading %s: %w", recordFile, err)
	}
	conn, _, err := s.connection(life)
	if err != nil {
		return nil, false, err
	}
	st, err := readState(life, conn, rec.Unit)
	if err != nil {
		return nil, false, fmt.Errorf("reading unit %s: %w", rec.Unit, err)
	}
	if !st.running() || st.InvocationID != rec.InvocationID || st.MainPID != rec.MainPID {
		if st.ActiveState == "failed" && st.InvocationID == rec.InvocationID {
			conn.ResetFailedUnitContext(life, rec.Unit)
		}
		removeRecord(dir, rec.InvocationID)
		return nil, false, nil
	}
	p := s.newProcess(rec, "")
	go p.watch(life, conn, dir)
	return p, true, nil
}

// record is unit.json: enough to recognise the exact run again.
type record struct {
	Unit         string    `json:"unit"`
	Name         string    `json:"name"`
	InvocationID string    `json:"invocation_id"`
	MainPID      int       `json:"main_pid"`
	StartedAt    time.Time `json:"started_at"`
}

// state is what the supervisor reads of a unit.
type state struct {
	LoadState    string
	ActiveState  string
	InvocationID string // hex; "" when the unit has not run
	MainPID      int    // 0 once the process has exited
	ExecMainPID  int    // the main process's pid, kept after it exited
	ExecMainCode int32  // CLD_EXITED 1, CLD_KILLED 2, CLD_DUMPED 3
	ExecMainStat int32
	StartedUSec  uint64
}

func (st state) running() bool {
	switch st.ActiveState {
	case "active", "activating", "reloading", "deactivating":
		return st.MainPID > 0
	}
	return false
}

// final reports whether the unit's run is over: inactive, failed or gone.
func (st state) final() bool {
	return st.LoadState == "not-found" || st.ActiveState == "inactive" || st.ActiveState == "failed"
}

// ran reports whether the unit's main process was executed and has
// exited; exit statuses 200–243 are systemd's own failures to set up or
// execute it (EXIT_CHDIR, EXIT_EXEC, …), so those did not run.
func (st state) ran() bool {
	switch st.ExecMainCode {
	case 1:
		return st.ExecMainStat < 200 || st.ExecMainStat > 243
	case 2, 3:
		return true
	}
	return false
}

func (st state) startedAt() time.Time {
	if st.StartedUSec == 0 {
		return time.Now()
	}
	return time.UnixMicro(int64(st.StartedUSec))
}

// status is how the unit's main process ended, as far as systemd knows.
func (st state) status() qemu.ProcessStatus {
	switch st.ExecMainCode {
	case 1:
		return qemu.ProcessStatus{Known: true, Code: int(st.ExecMainStat)}
	case 2, 3:
		return qemu.ProcessStatus{Known: true, Code: -1, Signal: signalName(syscall.Signal(st.ExecMainStat))}
	}
	return qemu.ProcessStatus{Code: -1}
}

func readState(ctx context.Context, conn *sddbus.Conn, unit string) (state, error) {
	u, err := conn.GetUnitPropertiesContext(ctx, unit)
	if err != nil {
		return state{}, err
	}
	var st state
	st.LoadState, _ = u["LoadState"].(string)
	st.ActiveState, _ = u["ActiveState"].(string)
	if id, ok := u["InvocationID"].([]byte); ok && len(id) > 0 {
		st.InvocationID = hex.EncodeToString(id)
	}
	if st.LoadState == "not-found" {
		return st, nil
	}
	svc, err := conn.GetUnitTypePropertiesContext(ctx, unit, "Service")
	if err != nil {
		return state{}, err
	}
	if pid, ok := svc["MainPID"].(uint32); ok {
		st.MainPID = int(pid)
	}
	if pid, ok := svc["ExecMainPID"].(uint32); ok {
		st.ExecMainPID = int(pid)
	}
	st.ExecMainCode, _ = svc["ExecMainCode"].(int32)
	st.ExecMainStat, _ = svc["ExecMainStatus"].(int32)
	st.StartedUSec, _ = svc["ExecMainStartTimestamp"].(uint64)
	return st, nil
}

// readBrief reads only a unit's ActiveState and InvocationID.
func readBrief(ctx context.Context, conn *sddbus.Conn, unit string) (state, error) {
	var st state
	a, err := conn.GetUnitPropertyContext(ctx, unit, "ActiveState")
	if err != nil {
		return state{}, err
	}
	st.ActiveState, _ = a.Value.Value().(string)
	id, err := conn.GetUnitPropertyContext(ctx, unit, "InvocationID")
	if err != nil {
		return state{}, err
	}
	if b, ok := id.Value.Value().([]byte); ok && len(b) > 0 {
		st.InvocationID = hex.EncodeToString(b)
	}
	return st, nil
}

// unitProcess is one run of a VM's unit.
type unitProcess struct {
	sup     *Supervisor
	rec     record
	logPath string // "" for an adopted run
	// reap: this supervisor started the run, so it resets the unit when it
	// failed. An adopted run leaves a failed unit to the next Start or
	// Adopt (two watchers of one run must not race to reset it).
	reap   bool
	done   chan struct{}
	once   sync.Once
	status qemu.ProcessStatus
}

func (s *Supervisor) newProcess(rec record, logPath string) *unitProcess {
	return &unitProcess{sup: s, rec: rec, logPath: logPath, reap: logPath != "", done: make(chan struct{})}
}

func (p *unitProcess) PID() int                   { return p.rec.MainPID }
func (p *unitProcess) StartedAt() time.Time       { return p.rec.StartedAt }
func (p *unitProcess) Done() <-chan struct{}      { return p.done }
func (p *unitProcess) Status() qemu.ProcessStatus { <-p.done; return p.status }

// Unit is the name of the process's systemd unit.
func (p *unitProcess) Unit() string { return p.rec.Unit }

// Signal sends sig to every process of the unit, unless the run is over
// or the unit now runs another invocation.
func (p *unitProcess) Signal(sig syscall.Signal) error {
	select {
	case <-p.done:
		return nil
	default:
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, _, err := p.sup.connection(ctx)
	if err != nil {
		return err
	}
	st, err := readState(ctx, conn, p.rec.Unit)
	if err != nil {
		return fmt.Errorf("reading unit %s: %w", p.rec.Unit, err)
	}
	if !st.running() || st.InvocationID != p.rec.InvocationID {
		return nil
	}
	if err := conn.KillUnitWithTarget(ctx, p.rec.Unit, sddbus.All, int32(sig)); err != nil {
		return fmt.Errorf("signalling unit %s: %w", p.rec.Unit, err)
	}
	return nil
}

// watch polls the unit until this run ends or life does.
func (p *unitProcess) watch(life context.Context, conn *sddbus.Conn, dir string) {
	interval := p.sup.PollInterval
	if interval <= 0 {
		interval = 100 * time.Millisecond
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-life.Done():
			return
		case <-t.C:
		}
		c, _, err := p.sup.connection(life)
		if err != nil {
			p.sup.log().Warn("systemd: watching unit", "unit", p.rec.Unit, "err", err)
			continue
		}
		conn = c
		ctx, cancel := context.WithTimeout(life, 10*time.Second)
		// Two small reads while the run goes on; all of the unit's
		// properties only once it is over.
		st, err := readBrief(ctx, conn, p.rec.Unit)
		if err == nil && (st.InvocationID != p.rec.InvocationID || st.final()) {
			st, err = readState(ctx, conn, p.rec.Unit)
		}
		cancel()
		if err != nil {
			if life.Err() == nil {
				p.sup.log().Warn("systemd: watching unit", "unit", p.rec.Unit, "err", err)
			}
			continue
		}
		if st.InvocationID == p.rec.InvocationID && !st.final() {
			continue // running, or on its way to inactive/failed
		}
		if st.InvocationID != p.rec.InvocationID {
			// Collected (clean exit) or replaced by another run: the
			// exit status of ours is gone.
			st = state{}
		}
		removeRecord(dir, p.rec.InvocationID)
		p.finish(conn, st)
		return
	}
}

// finish records how the run ended, reaps a failed unit and closes done.
func (p *unitProcess) finish(conn *sddbus.Conn, st state) {
	p.once.Do(func() {
		p.status = st.status()
		if p.reap && p.status.Known && (p.status.Code != 0 || p.status.Signal != "") {
			// By pid, not invocation id: journald cannot attribute the
			// lines of a process that exited at once to its unit.
			appendJournal(p.logPath, "-t", Identifier(p.rec.Name), "_PID="+strconv.Itoa(p.rec.MainPID))
		}
		if p.reap && st.ActiveState == "failed" {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			conn.ResetFailedUnitContext(ctx, p.rec.Unit)
			cancel()
		}
		close(p.done)
	})
}

// appendJournal appends the last lines journalctl prints for match (a
// -t or -u option and field matches) to logPath. Best effort: journalctl
// may be absent.
func appendJournal(logPath string, match ...string) {
	if logPath == "" {
		return
	}
	args := append([]string{"--no-pager", "-q", "-o", "cat", "-n", "20"}, match...)
	// journald reads the unit's output stream on its own time: give the
	// last lines a moment to arrive.
	var out []byte
	deadline := time.Now().Add(time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		b, err := exec.CommandContext(ctx, "journalctl", args...).Output()
		cancel()
		if err != nil {
			return
		}
		if out = b; len(out) > 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if len(out) == 0 {
		return
	}
	f, err := os.OpenFile(logPath, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o640)
	if err != nil {
		return
	}
	defer f.Close()
	f.Write(out)
}

// removeRecord removes dir's unit.json when it still names invocation (a
// later run of the VM may have replaced it).
func removeRecord(dir, invocation string) {
	var rec record
	if vmproc.ReadJSON(filepath.Join(dir, recordFile), &rec) == nil && rec.InvocationID == invocation {
		os.Remove(filepath.Join(dir, recordFile))
	}
}

func signalName(s syscall.Signal) string {
	switch s {
	case syscall.SIGKILL:
		return "SIGKILL"
	case syscall.SIGTERM:
		return "SIGTERM"
	case syscall.SIGINT:
		return "SIGINT"
	case syscall.SIGABRT:
		return "SIGABRT"
	case syscall.SIGSEGV:
		return "SIGSEGV"
	case syscall.SIGHUP:
		return "SIGHUP"
	}
	return fmt.Sprintf("signal %d", int(s))
}
