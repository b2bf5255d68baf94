// Package drivertest provides the contract test for actors.Driver: every
// driver implementation (fake, qemu, nix) runs Run against itself, so the
// VM actors can rely on the documented contract whatever runs the VMs.
//
// Usage, in a driver package's test:
//
//	func TestContract(t *testing.T) {
//		drivertest.Run(t, drivertest.Harness{
//			New:  func(t *testing.T, dir string) actors.Driver { ... },
//			Spec: func(name string) microvm.Spec { ... },
//			Kill: func(t *testing.T, d actors.Driver, name string) { ... },
//		})
//	}
//
// Tests that need root, KVM or tools belong to the caller: skip before
// calling Run when the machine lacks them.
package drivertest

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/blixard/blixard/actors"
	"github.com/blixard/blixard/microvm"
)

// Harness adapts a driver implementation to the contract test.
type Harness struct {
	// New returns a driver keeping its state under dir. Calling New again
	// with the same dir models an agent restart: the new driver must
	// recover what the old one left running.
	New func(t *testing.T, dir string) actors.Driver
	// Spec returns a runnable spec for name (kernel, initrd... as the
	// driver needs). Required.
	Spec func(name string) microvm.Spec
	// Kill makes name's running instance exit uncleanly from outside the
	// driver (kill the process, crash the fake). Optional: the unclean
	// exit checks are skipped without it.
	Kill func(t *testing.T, d actors.Driver, name string)
	// Timeout bounds each driver call (default 30 s; real VMs boot slowly).
	Timeout time.Duration
	// Parallel is how many VMs the concurrency check runs at once
	// (default 8; 0 keeps the default, negative skips the check).
	Parallel int
	// Grace is the stop grace passed to Stop (default 5 s).
	Grace time.Duration
}

// Run runs the contract test as subtests of t.
func Run(t *testing.T, h Harness) {
	if h.New == nil || h.Spec == nil {
		t.Fatal("drivertest: Harness.New and Harness.Spec are required")
	}
	if h.Timeout == 0 {
		h.Timeout = 30 * time.Second
	}
	if h.Parallel == 0 {
		h.Parallel = 8
	}
	if h.Grace == 0 {
		h.Grace = 5 * time.Second
	}
	t.Run("Lifecycle", func(t *testing.T) { lifecycle(t, h) })
	t.Run("StartNeedsPrepare", func(t *testing.T) { startNeedsPrepare(t, h) })
	t.Run("UnknownVM", func(t *testing.T) { unknownVM(t, h) })
	t.Run("WaitHonoursContext", func(t *testing.T) { waitHonoursContext(t, h) })
	t.Run("RecoverAfterRestart", func(t *testing.T) { recoverAfterRestart(t, h) })
	t.Run("Logs", func(t *testing.T) { logs(t, h) })
	if h.Kill != nil {
		t.Run("UncleanExit", func(t *testing.T) { uncleanExit(t, h) })
	}
	if h.Parallel > 0 {
		t.Run("Concurrent", func(t *testing.T) { concurrent(t, h) })
	}
}

func (h Harness) ctx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), h.Timeout)
	t.Cleanup(cancel)
	return ctx
}

func must(t *testing.T, what string, err error) {
	t.Helper()
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
}

// open returns a new driver that is closed when the test ends, after the
// VMs the test made are destroyed.
func (h Harness) open(t *testing.T, dir string) actors.Driver {
	d := h.New(t, dir)
	t.Cleanup(func() { closeDriver(t, d) })
	return d
}

func closeDriver(t *testing.T, d actors.Driver) {
	if c, ok := d.(actors.DriverCloser); ok {
		if err := c.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	}
}

// cleanup destroys name when the test ends, whatever happened.
func cleanup(t *testing.T, d actors.Driver, name string, timeout time.Duration) {
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		defer cancel()
		if err := d.Destroy(ctx, name); err != nil {
			t.Errorf("cleanup: Destroy %s: %v", name, err)
		}
	})
}

// waitAsync runs Wait in a goroutine and returns a channel with its result.
func waitAsync(ctx context.Context, d actors.Driver, name string) <-chan waitResult {
	ch := make(chan waitResult, 1)
	go func() {
		e, err := d.Wait(ctx, name)
		ch <- waitResult{e, err}
	}()
	return ch
}

type waitResult struct {
	exit microvm.Exit
	err  error
}

func recv(t *testing.T, ch <-chan waitResult, timeout time.Duration, what string) waitResult {
	t.Helper()
	select {
	case r := <-ch:
		return r
	case <-time.After(timeout):
		t.Fatalf("%s: Wait did not return within %s", what, timeout)
		return waitResult{}
	}
}

func lifecycle(t *testing.T, h Harness) {
	d := h.open(t, t.TempDir())
	ctx := h.ctx(t)
	spec := h.Spec("life")
	cleanup(t, d, spec.Name, h.Timeout)

	must(t, "Prepare", d.Prepare(ctx, spec))
	must(t, "Prepare again (idempotent)", d.Prepare(ctx, spec))
	in, err := d.Inspect(ctx, spec.Name)
	must(t, "Inspect after Prepare", err)
	if in.Running {
		t.Fatalf("Inspect after Prepare: running, want not running")
	}

	in, err = d.Start(ctx, spec)
	must(t, "Start", err)
	if !in.Running || in.Name != spec.Name {
		t.Fatalf("Start returned %+v, want a running instance named %q", in, spec.Name)
	}
	if _, err := d.Start(ctx, spec); !errors.Is(err, microvm.ErrAlreadyRunning) {
		t.Fatalf("second Start: err = %v, want ErrAlreadyRunning", err)
	}
	must(t, "Prepare while running", d.Prepare(ctx, spec))
	in, err = d.Inspect(ctx, spec.Name)
	must(t, "Inspect", err)
	if !in.Running {
		t.Fatalf("Inspect after Start: not running")
	}
	list, err := d.List(ctx)
	must(t, "List", err)
	if !containsRunning(list, spec.Name, true) {
		t.Fatalf("List = %+v, want %s running", list, spec.Name)
	}

	waited := waitAsync(ctx, d, spec.Name)
	must(t, "Stop", d.Stop(ctx, spec.Name, h.Grace))
	r := recv(t, waited, h.Timeout, "after Stop")
	must(t, "Wait", r.err)
	if !r.exit.Clean {
		t.Errorf("exit after Stop = %+v, want Clean", r.exit)
	}
	// Wait after the exit returns the same exit at once.
	e, err := d.Wait(ctx, spec.Name)
	must(t, "Wait after exit", err)
	if !e.Clean {
		t.Errorf("Wait after exit = %+v, want Clean", e)
	}
	must(t, "Stop when stopped", d.Stop(ctx, spec.Name, h.Grace))
	in, err = d.Inspect(ctx, spec.Name)
	must(t, "Inspect after Stop", err)
	if in.Running {
		t.Fatalf("Inspect after Stop: still running")
	}

	// Restart after a stop.
	_, err = d.Start(ctx, spec)
	must(t, "Start after Stop", err)
	must(t, "Destroy", d.Destroy(ctx, spec.Name))
	if _, err := d.Inspect(ctx, spec.Name); !errors.Is(err, microvm.ErrNotFound) {
		t.Fatalf("Inspect after Destroy: err = %v, want ErrNotFound", err)
	}
	must(t, "Destroy again (idempotent)", d.Destroy(ctx, spec.Name))
	list, err = d.List(ctx)
	must(t, "List after Destroy", err)
	for _, in := range list {
		if in.Name == spec.Name {
			t.Fatalf("List after Destroy still has %s", spec.Name)
		}
	}
}

func containsRunning(list []microvm.Instance, name string, running bool) bool {
	for _, in := range list {
		if in.Name == name && in.Running == running {
			return true
		}
	}
	return false
}

func startNeedsPrepare(t *testing.T, h Harness) {
	d := h.open(t, t.TempDir())
	ctx := h.ctx(t)
	spec := h.Spec("unprepared")
	cleanup(t, d, spec.Name, h.Timeout)
	if _, err := d.Start(ctx, spec); !errors.Is(err, microvm.ErrNotPrepared) {
		t.Fatalf("Start before Prepare: err = %v, want ErrNotPrepared", err)
	}
}

func unknownVM(t *testing.T, h Harness) {
	d := h.open(t, t.TempDir())
	ctx := h.ctx(t)
	if _, err := d.Inspect(ctx, "nosuchvm"); !errors.Is(err, microvm.ErrNotFound) {
		t.Errorf("Inspect unknown: err = %v, want ErrNotFound", err)
	}
	if _, err := d.Wait(ctx, "nosuchvm"); !errors.Is(err, microvm.ErrNotFound) {
		t.Errorf("Wait unknown: err = %v, want ErrNotFound", err)
	}
	if _, _, err := d.Logs(ctx, "nosuchvm", -1, 10); !errors.Is(err, microvm.ErrNotFound) {
		t.Errorf("Logs unknown: err = %v, want ErrNotFound", err)
	}
	must(t, "Stop unknown", d.Stop(ctx, "nosuchvm", h.Grace))
	must(t, "Destroy unknown", d.Destroy(ctx, "nosuchvm"))
	in, ok, err := d.Recover(ctx, h.Spec("nosuchvm"))
	must(t, "Recover unknown", err)
	if ok || in.Running {
		t.Errorf("Recover unknown = %+v, %v; want not running", in, ok)
	}
	list, err := d.List(ctx)
	must(t, "List", err)
	if len(list) != 0 {
		t.Errorf("List of a new driver = %+v, want empty", list)
	}
}

func waitHonoursContext(t *testing.T, h Harness) {
	d := h.open(t, t.TempDir())
	ctx := h.ctx(t)
	spec := h.Spec("waitctx")
	cleanup(t, d, spec.Name, h.Timeout)
	must(t, "Prepare", d.Prepare(ctx, spec))
	_, err := d.Start(ctx, spec)
	must(t, "Start", err)

	wctx, cancel := context.WithCancel(ctx)
	waited := waitAsync(wctx, d, spec.Name)
	cancel()
	r := recv(t, waited, 5*time.Second, "after cancel")
	if !errors.Is(r.err, context.Canceled) {
		t.Fatalf("Wait after cancel: err = %v, want context.Canceled", r.err)
	}
	in, err := d.Inspect(ctx, spec.Name)
	must(t, "Inspect", err)
	if !in.Running {
		t.Fatalf("cancelling Wait stopped the VM")
	}
}

func recoverAfterRestart(t *testing.T, h Harness) {
	dir := t.TempDir()
	ctx := h.ctx(t)
	spec := h.Spec("recover")
	idle := h.Spec("idle")

	d1 := h.New(t, dir)
	must(t, "Prepare", d1.Prepare(ctx, spec))
	_, err := d1.Start(ctx, spec)
	must(t, "Start", err)
	must(t, "Prepare idle", d1.Prepare(ctx, idle))
	closeDriver(t, d1)

	d2 := h.open(t, dir)
	cleanup(t, d2, spec.Name, h.Timeout)
	cleanup(t, d2, idle.Name, h.Timeout)

	list, err := d2.List(ctx)
	must(t, "List after restart", err)
	if !containsRunning(list, spec.Name, true) || !containsRunning(list, idle.Name, false) {
		t.Fatalf("List after restart = %+v, want %s running and %s prepared", list, spec.Name, idle.Name)
	}
	in, ok, err := d2.Recover(ctx, spec)
	must(t, "Recover", err)
	if !ok || !in.Running {
		t.Fatalf("Recover = %+v, %v; want the running instance", in, ok)
	}
	in, ok, err = d2.Recover(ctx, spec)
	must(t, "Recover again", err)
	if !ok || !in.Running {
		t.Fatalf("second Recover = %+v, %v; want the running instance", in, ok)
	}
	if _, err := d2.Start(ctx, spec); !errors.Is(err, microvm.ErrAlreadyRunning) {
		t.Fatalf("Start after Recover: err = %v, want ErrAlreadyRunning", err)
	}
	_, ok, err = d2.Recover(ctx, idle)
	must(t, "Recover idle", err)
	if ok {
		t.Fatalf("Recover of a prepared, stopped VM reported it running")
	}
	in, err = d2.Inspect(ctx, idle.Name)
	must(t, "Inspect idle after Recover", err)
	if in.Running {
		t.Fatalf("Recover started %s", idle.Name)
	}

	waited := waitAsync(ctx, d2, spec.Name)
	must(t, "Stop recovered", d2.Stop(ctx, spec.Name, h.Grace))
	r := recv(t, waited, h.Timeout, "after Stop of a recovered VM")
	must(t, "Wait on recovered", r.err)
}

func logs(t *testing.T, h Harness) {
	d := h.open(t, t.TempDir())
	ctx := h.ctx(t)
	spec := h.Spec("logs")
	cleanup(t, d, spec.Name, h.Timeout)
	must(t, "Prepare", d.Prepare(ctx, spec))
	_, err := d.Start(ctx, spec)
	must(t, "Start", err)

	all, next, err := d.Logs(ctx, spec.Name, 0, 0)
	must(t, "Logs from 0", err)
	if next != int64(len(all)) {
		t.Errorf("Logs from 0: next = %d, want len(data) = %d", next, len(all))
	}
	rest, next2, err := d.Logs(ctx, spec.Name, next, 0)
	must(t, "Logs from next", err)
	if next2 < next || next2 != next+int64(len(rest)) {
		t.Errorf("Logs from %d: %d bytes, next %d; offsets inconsistent", next, len(rest), next2)
	}
	tail, _, err := d.Logs(ctx, spec.Name, -1, 1)
	must(t, "Logs last line", err)
	if n := countLines(tail); n > 1 {
		t.Errorf("Logs last 1 line returned %d lines: %q", n, tail)
	}
}

func countLines(b []byte) int {
	n := 0
	for i, c := range b {
		if c == '\n' || (i == len(b)-1) {
			n++
		}
	}
	return n
}

func uncleanExit(t *testing.T, h Harness) {
	d := h.open(t, t.TempDir())
	ctx := h.ctx(t)
	spec := h.Spec("killed")
	cleanup(t, d, spec.Name, h.Timeout)
	must(t, "Prepare", d.Prepare(ctx, spec))
	_, err := d.Start(ctx, spec)
	must(t, "Start", err)
	waited := waitAsync(ctx, d, spec.Name)
	h.Kill(t, d, spec.Name)
	r := recv(t, waited, h.Timeout, "after Kill")
	must(t, "Wait", r.err)
	if r.exit.Clean {
		t.Errorf("exit after Kill = %+v, want not Clean", r.exit)
	}
	in, err := d.Inspect(ctx, spec.Name)
	must(t, "Inspect", err)
	if in.Running {
		t.Errorf("Inspect after Kill: still running")
	}
	// A killed VM can be started again.
	_, err = d.Start(ctx, spec)
	must(t, "Start after Kill", err)
}

func concurrent(t *testing.T, h Harness) {
	d := h.open(t, t.TempDir())
	ctx := h.ctx(t)
	var wg sync.WaitGroup
	errs := make(chan error, h.Parallel)
	for i := 0; i < h.Parallel; i++ {
		spec := h.Spec(fmt.Sprintf("par%d", i))
		cleanup(t, d, spec.Name, h.Timeout)
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- func() error {
				if err := d.Prepare(ctx, spec); err != nil {
					return err
				}
				if _, err := d.Start(ctx, spec); err != nil {
					return err
				}
				waited := waitAsync(ctx, d, spec.Name)
				if err := d.Stop(ctx, spec.Name, h.Grace); err != nil {
					return err
				}
				if r := <-waited; r.err != nil {
					return r.err
				}
				return d.Destroy(ctx, spec.Name)
			}()
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
	list, err := d.List(ctx)
	must(t, "List", err)
	if len(list) != 0 {
		t.Errorf("List after destroying all = %+v, want empty", list)
	}
}
