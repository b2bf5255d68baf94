package vmproc

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"time"
)

// Supervisor runs a VM's qemu process and finds it again after the agent
// restarts. The driver uses ExecSupervisor (a child in its own process
// group, a pidfile for re-adoption); a systemd supervisor can take its
// place without the driver changing.
type Supervisor interface {
	// Start runs argv in dir with stdout and stderr appended to logPath,
	// records in dir what identifies the process, and returns it running.
	// The process must outlive ctx and the agent.
	Start(ctx context.Context, dir string, argv []string, logPath string) (Process, error)
	// Adopt returns the process a Start recorded in dir when that exact
	// process still runs (a recycled pid is not it), and false otherwise.
	// The returned Process is watched until it exits or life is done.
	Adopt(life context.Context, dir string) (Process, bool, error)
}

// Resources are the limits of one VM that a supervisor may enforce.
type Resources struct {
	Name     string // the VM's name (a DNS label)
	Vcpus    uint32
	MemoryMB uint64
}

// ResourceSupervisor is an optional ability of a Supervisor: it enforces
// the VM's resources (the systemd supervisor sets MemoryMax and CPUQuota).
// The driver calls StartVM instead of Start when its Supervisor has it;
// StartVM otherwise keeps Start's contract.
type ResourceSupervisor interface {
	StartVM(ctx context.Context, dir string, argv []string, logPath string, res Resources) (Process, error)
}

// Process is one running (or finished) qemu process.
type Process interface {
	PID() int
	StartedAt() time.Time
	// Done is closed once the process has exited.
	Done() <-chan struct{}
	// Status is how the process ended; valid after Done.
	Status() ProcessStatus
	// Signal sends sig to the process, unless it has exited.
	Signal(sig syscall.Signal) error
}

// ProcessStatus is how a process ended.
type ProcessStatus struct {
	// Known is false when the supervisor could not see the exit status
	// (a re-adopted process is not our child).
	Known  bool
	Code   int    // exit code, -1 when killed by a signal or unknown
	Signal string // "SIGKILL" when killed by a signal
}

// pidFile is the pidfile ExecSupervisor keeps in a VM's state dir.
const pidFile = "qemu.pid"

// pidRecord is the pidfile: enough to recognise the exact process again.
type pidRecord struct {
	PID int `json:"pid"`
	// StartTicks is field 22 of /proc/<pid>/stat: the process start time
	// in clock ticks since boot. A recycled pid has another.
	StartTicks string    `json:"start_ticks"`
	StartedAt  time.Time `json:"started_at"`
	// Marker is an argument the process was started with (its QMP
	// socket); /proc/<pid>/cmdline must still contain it.
	Marker string `json:"marker"`
}

// ExecSupervisor runs qemu as a child process in its own process group.
// It needs no daemon; the pidfile (qemu.pid in the state dir) records pid
// and start time so that Adopt recognises the exact process later.
type ExecSupervisor struct {
	// Env is added to the agent's environment for the process.
	Env []string
	// PollInterval is how often an adopted process is checked; 0 means 100 ms.
	PollInterval time.Duration
}

// Start implements Supervisor.
func (s *ExecSupervisor) Start(ctx context.Context, dir string, argv []string, logPath string) (Process, error) {
	if len(argv) == 0 {
		return nil, errors.New("exec: empty argv")
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	logf, err := os.OpenFile(logPath, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o640)
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	// Not CommandContext: the VM outlives the request that started it.
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Dir = dir
	cmd.Stdout = logf
	cmd.Stderr = logf
	if len(s.Env) > 0 {
		cmd.Env = append(os.Environ(), s.Env...)
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	p := &childProcess{cmd: cmd, started: time.Now(), done: make(chan struct{})}
	go func() {
		err := cmd.Wait()
		p.status = statusOf(cmd.ProcessState, err)
		removePidfile(dir, cmd.Process.Pid)
		close(p.done)
	}()
	ticks, _, err := procStat(cmd.Process.Pid)
	if err != nil {
		// The process exited at once; the caller sees it through Done.
		return p, nil
	}
	rec := pidRecord{PID: cmd.Process.Pid, StartTicks: ticks, StartedAt: p.started, Marker: marker(argv)}
	if err := WriteJSON(filepath.Join(dir, pidFile), rec); err != nil {
		p.Signal(syscall.SIGKILL)
		<-p.done
		return nil, fmt.Errorf("writing pidfile: %w", err)
	}
	return p, nil
}

// marker picks the argument that identifies the VM's process: the value
// after -qmp (its socket is in the state dir), else the last argument.
func marker(argv []string) string {
	for i, a := range argv[:len(argv)-1] {
		if a == "-qmp" {
			return argv[i+1]
		}
	}
	return argv[len(argv)-1]
}

// Adopt implements Supervisor.
func (s *ExecSupervisor) Adopt(life context.Context, dir string) (Process, bool, error) {
	var rec pidRecord
	if err := ReadJSON(filepath.Join(dir, pidFile), &rec); err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, false, nil
		}
		return nil, false, fmt.Errorf("reading pidfile: %w", err)
	}
	if !sameProcess(rec) {
		return nil, false, nil
	}
	interval := s.PollInterval
	if interval == 0 {
		interval = 100 * time.Millisecond
	}
	p := &adoptedProcess{rec: rec, dir: dir, done: make(chan struct{})}
	go p.poll(life, interval)
	return p, true, nil
}

// sameProcess reports whether rec's process still runs (not a zombie, same
// start time, same marker argument).
func sameProcess(rec pidRecord) bool {
	if rec.PID <= 0 {
		return false
	}
	ticks, state, err := procStat(rec.PID)
	if err != nil || ticks != rec.StartTicks || state == "Z" || state == "X" {
		return false
	}
	cmdline, err := os.ReadFile("/proc/" + strconv.Itoa(rec.PID) + "/cmdline")
	if err != nil {
		return false
	}
	return rec.Marker == "" || bytes.Contains(cmdline, []byte(rec.Marker))
}

// procStat returns the start time (field 22) and state (field 3) of pid.
func procStat(pid int) (startTicks, state string, err error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return "", "", err
	}
	return parseStat(b)
}

// parseStat parses /proc/<pid>/stat. The command name (field 2) is in
// parentheses and may hold spaces and parentheses itself, so fields are
// counted from the last ')'.
func parseStat(b []byte) (startTicks, state string, err error) {
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return "", "", errors.New("malformed /proc stat")
	}
	f := bytes.Fields(b[i+1:])
	// f[0] is field 3 (state); field 22 (starttime) is f[19].
	if len(f) < 20 {
		return "", "", errors.New("short /proc stat")
	}
	return string(f[19]), string(f[0]), nil
}

type childProcess struct {
	cmd     *exec.Cmd
	started time.Time
	done    chan struct{}
	status  ProcessStatus
}

func (p *childProcess) PID() int              { return p.cmd.Process.Pid }
func (p *childProcess) StartedAt() time.Time  { return p.started }
func (p *childProcess) Done() <-chan struct{} { return p.done }
func (p *childProcess) Status() ProcessStatus { <-p.done; return p.status }
func (p *childProcess) Signal(sig syscall.Signal) error {
	select {
	case <-p.done:
		return nil
	default:
	}
	err := p.cmd.Process.Signal(sig)
	if errors.Is(err, os.ErrProcessDone) {
		return nil
	}
	return err
}

func statusOf(ps *os.ProcessState, err error) ProcessStatus {
	if ps == nil {
		return ProcessStatus{Known: false, Code: -1}
	}
	if ws, ok := ps.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		return ProcessStatus{Known: true, Code: -1, Signal: signalName(ws.Signal())}
	}
	return ProcessStatus{Known: true, Code: ps.ExitCode()}
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
	return "signal " + strconv.Itoa(int(s))
}

type adoptedProcess struct {
	rec  pidRecord
	dir  string
	done chan struct{}
	mu   sync.Mutex
	gone bool
}

func (p *adoptedProcess) PID() int              { return p.rec.PID }
func (p *adoptedProcess) StartedAt() time.Time  { return p.rec.StartedAt }
func (p *adoptedProcess) Done() <-chan struct{} { return p.done }
func (p *adoptedProcess) Status() ProcessStatus {
	<-p.done
	return ProcessStatus{Known: false, Code: -1}
}

// Signal checks that the pid still is the adopted process before sending,
// so a recycled pid is never signalled.
func (p *adoptedProcess) Signal(sig syscall.Signal) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.gone || !sameProcess(p.rec) {
		return nil
	}
	err := syscall.Kill(p.rec.PID, sig)
	if errors.Is(err, syscall.ESRCH) {
		return nil
	}
	return err
}

func (p *adoptedProcess) poll(life context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-life.Done():
			return
		case <-t.C:
		}
		p.mu.Lock()
		if !sameProcess(p.rec) {
			p.gone = true
			p.mu.Unlock()
			removePidfile(p.dir, p.rec.PID)
			close(p.done)
			return
		}
		p.mu.Unlock()
	}
}

// removePidfile removes dir's pidfile when it still names pid (a newer
// process of the VM may have replaced it).
func removePidfile(dir string, pid int) {
	var rec pidRecord
	if ReadJSON(filepath.Join(dir, pidFile), &rec) == nil && rec.PID == pid {
		os.Remove(filepath.Join(dir, pidFile))
	}
}

// WriteJSON writes v to path as indented JSON, atomically (temp file,
// then rename).
func WriteJSON(path string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, append(b, '\n'), 0o640); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// ReadJSON reads the JSON file at path into v.
func ReadJSON(path string, v any) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	return json.Unmarshal(b, v)
}
