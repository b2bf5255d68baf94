package vmproc

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"
)

func TestParseStat(t *testing.T) {
	// The command name may hold spaces and parentheses.
	line := "4242 (qemu (x) y) S 1 4242 4242 0 -1 4194560 1 0 0 0 5 6 0 0 20 0 3 0 987654 1000 100 " +
		"18446744073709551615 1 1 0 0 0 0 0 4096 0 0 0 17 1 0 0 0 0 0\n"
	ticks, state, err := parseStat([]byte(line))
	if err != nil || ticks != "987654" || state != "S" {
		t.Fatalf("parseStat = %q, %q, %v; want 987654, S", ticks, state, err)
	}
	if _, _, err := parseStat([]byte("4242 (x) S 1")); err == nil {
		t.Fatal("short stat line parsed")
	}
}

func TestExecSupervisorExitStatus(t *testing.T) {
	dir := t.TempDir()
	s := &ExecSupervisor{}
	log := filepath.Join(dir, "out.log")
	p, err := s.Start(context.Background(), dir, []string{"/bin/sh", "-c", "echo hello; exit 3"}, log)
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-p.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("process did not exit")
	}
	if st := p.Status(); !st.Known || st.Code != 3 || st.Signal != "" {
		t.Errorf("Status = %+v, want known exit code 3", st)
	}
	if b, _ := os.ReadFile(log); string(b) != "hello\n" {
		t.Errorf("log = %q, want hello", b)
	}
}

func TestExecSupervisorAdopt(t *testing.T) {
	dir := t.TempDir()
	s := &ExecSupervisor{PollInterval: 20 * time.Millisecond}
	marker := "blixard-adopt-test-" + strconv.Itoa(os.Getpid())
	p, err := s.Start(context.Background(), dir, []string{"/bin/sh", "-c", "sleep 60", "-qmp", marker}, filepath.Join(dir, "log"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Signal(syscall.SIGKILL); <-p.Done() })
	if pgid, _ := syscall.Getpgid(p.PID()); pgid != p.PID() {
		t.Errorf("process group = %d, want its own (%d)", pgid, p.PID())
	}

	life, cancel := context.WithCancel(context.Background())
	defer cancel()
	a, ok, err := (&ExecSupervisor{PollInterval: 20 * time.Millisecond}).Adopt(life, dir)
	if err != nil || !ok {
		t.Fatalf("Adopt = %v, %v; want the running process", ok, err)
	}
	if a.PID() != p.PID() || !a.StartedAt().Equal(p.StartedAt()) {
		t.Errorf("adopted pid %d started %v, want %d started %v", a.PID(), a.StartedAt(), p.PID(), p.StartedAt())
	}

	// A pidfile whose start time does not match is a recycled pid: not adopted.
	var rec pidRecord
	if err := ReadJSON(filepath.Join(dir, pidFile), &rec); err != nil {
		t.Fatal(err)
	}
	other := t.TempDir()
	rec.StartTicks = "1"
	if err := WriteJSON(filepath.Join(other, pidFile), rec); err != nil {
		t.Fatal(err)
	}
	if _, ok, err := s.Adopt(life, other); ok || err != nil {
		t.Errorf("Adopt with a wrong start time = %v, %v; want not adopted", ok, err)
	}
	// Same pid and start time, another VM's marker: not adopted either.
	ReadJSON(filepath.Join(dir, pidFile), &rec)
	rec.Marker = "some-other-vm/qmp.sock"
	WriteJSON(filepath.Join(other, pidFile), rec)
	if _, ok, _ := s.Adopt(life, other); ok {
		t.Errorf("Adopt with another marker adopted pid %d", rec.PID)
	}
	if _, ok, err := s.Adopt(life, t.TempDir()); ok || err != nil {
		t.Errorf("Adopt without pidfile = %v, %v", ok, err)
	}

	// Killing through the adopted handle ends both views.
	if err := a.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	for _, pr := range []Process{p, a} {
		select {
		case <-pr.Done():
		case <-time.After(10 * time.Second):
			t.Fatal("killed process not seen as exited")
		}
	}
	if st := p.Status(); st.Signal != "SIGKILL" {
		t.Errorf("child status = %+v, want SIGKILL", st)
	}
	if st := a.Status(); st.Known {
		t.Errorf("adopted status = %+v, want unknown", st)
	}
	if _, err := os.Stat(filepath.Join(dir, pidFile)); !os.IsNotExist(err) {
		t.Errorf("pidfile of an exited process still there: %v", err)
	}
	// Signalling an exited adopted process is a no-op, never a stray kill.
	if err := a.Signal(syscall.SIGKILL); err != nil {
		t.Errorf("Signal after exit: %v", err)
	}
}

func TestLastNLines(t *testing.T) {
	b := []byte("one\ntwo\nthree\n")
	for n, want := range map[int]string{0: "one\ntwo\nthree\n", 1: "three\n", 2: "two\nthree\n", 5: "one\ntwo\nthree\n"} {
		if got := string(LastLines(b, n)); got != want {
			t.Errorf("LastLines(%d) = %q, want %q", n, got, want)
		}
	}
	if got := string(LastLines([]byte("a\nb"), 1)); got != "b" {
		t.Errorf("without trailing newline: %q", got)
	}
}
