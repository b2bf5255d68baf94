package fake_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/blixard/blixard/actors"
	"github.com/blixard/blixard/actors/drivertest"
	"github.com/blixard/blixard/microvm"
	"github.com/blixard/blixard/microvm/fake"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func spec(name string) microvm.Spec {
	return microvm.Spec{Name: name, ID: 7, Vcpus: 1, MemoryMB: 128, Hypervisor: "qemu"}
}

func TestContract(t *testing.T) {
	drivertest.Run(t, drivertest.Harness{
		New: func(t *testing.T, dir string) actors.Driver {
			d, err := fake.New(dir)
			if err != nil {
				t.Fatal(err)
			}
			return d
		},
		Spec: spec,
		Kill: func(t *testing.T, d actors.Driver, name string) {
			if err := d.(*fake.Driver).Crash(name, 137); err != nil {
				t.Fatal(err)
			}
		},
		Timeout: 5 * time.Second,
	})
}

func TestContractInMemory(t *testing.T) {
	// Without a state dir nothing survives a new Driver, so "restarting"
	// hands back the same in-memory driver.
	byDir := map[string]*fake.Driver{}
	drivertest.Run(t, drivertest.Harness{
		New: func(t *testing.T, dir string) actors.Driver {
			if d, ok := byDir[dir]; ok {
				return d
			}
			d, err := fake.New("")
			if err != nil {
				t.Fatal(err)
			}
			byDir[dir] = d
			return d
		},
		Spec:    spec,
		Timeout: 5 * time.Second,
	})
}

func newDriver(t *testing.T, clock fake.Clock) *fake.Driver {
	d, err := fake.New(t.TempDir(), fake.WithClock(clock))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	return d
}

func prepStart(t *testing.T, d *fake.Driver, name string) error {
	t.Helper()
	ctx := context.Background()
	if err := d.Prepare(ctx, spec(name)); err != nil {
		t.Fatal(err)
	}
	_, err := d.Start(ctx, spec(name))
	return err
}

func TestStartFailures(t *testing.T) {
	d := newDriver(t, actors.NewManualClock(time.Unix(0, 0)))
	d.SetFault("a", fake.Fault{StartFailures: 2})
	for i := 0; i < 2; i++ {
		if err := prepStart(t, d, "a"); !errors.Is(err, fake.ErrInjected) {
			t.Fatalf("start %d: err = %v, want ErrInjected", i, err)
		}
	}
	if err := prepStart(t, d, "a"); err != nil {
		t.Fatalf("third start: %v", err)
	}
	if err := prepStart(t, d, "b"); err != nil {
		t.Fatalf("other VM affected by a's fault: %v", err)
	}
	d.SetDefaultFault(fake.Fault{StartFailures: -1})
	for i := 0; i < 3; i++ {
		if err := prepStart(t, d, "c"); !errors.Is(err, fake.ErrInjected) {
			t.Fatalf("always-failing start %d: err = %v", i, err)
		}
	}
	if got := d.StartCount("a"); got != 1 {
		t.Errorf("StartCount(a) = %d, want 1", got)
	}
}

func TestCrashAfter(t *testing.T) {
	clock := actors.NewManualClock(time.Unix(100, 0))
	d := newDriver(t, clock)
	d.SetFault("a", fake.Fault{CrashAfter: 10 * time.Second, CrashCode: 3})
	if err := prepStart(t, d, "a"); err != nil {
		t.Fatal(err)
	}
	clock.Advance(9 * time.Second)
	if got := d.Running(); len(got) != 1 {
		t.Fatalf("Running after 9s = %v, want [a]", got)
	}
	clock.Advance(time.Second)
	e, err := d.Wait(context.Background(), "a")
	if err != nil {
		t.Fatal(err)
	}
	if e.Clean || e.Code != 3 {
		t.Errorf("exit = %+v, want unclean code 3", e)
	}
	runs := d.Runs("a")
	if len(runs) != 1 || runs[0].StoppedAt.Sub(runs[0].StartedAt) != 10*time.Second {
		t.Errorf("runs = %+v, want one run of 10s", runs)
	}
}

func TestSlowStopIsForcedAtGrace(t *testing.T) {
	clock := actors.NewManualClock(time.Unix(0, 0))
	d := newDriver(t, clock)
	d.SetFault("a", fake.Fault{StopDelay: time.Minute})
	if err := prepStart(t, d, "a"); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	changed := clock.Changed()
	go func() { done <- d.Stop(context.Background(), "a", 5*time.Second) }()
	// Wait for Stop to schedule its grace timer, then let the grace pass.
	deadline := time.After(5 * time.Second)
	for len(clock.Pending()) == 0 {
		select {
		case <-changed:
			changed = clock.Changed()
		case <-deadline:
			t.Fatal("Stop scheduled no timer")
		}
	}
	if p := clock.Pending(); p[0] != 5*time.Second {
		t.Fatalf("pending = %v, want the 5s grace", p)
	}
	clock.Advance(5 * time.Second)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	e, _ := d.Wait(context.Background(), "a")
	if e.Signal != "SIGKILL" || !e.Clean {
		t.Errorf("exit = %+v, want a clean SIGKILL after grace", e)
	}
}

func TestRestartedDriverRecoversRuns(t *testing.T) {
	dir := t.TempDir()
	clock := actors.NewManualClock(time.Unix(0, 0))
	d1, err := fake.New(dir, fake.WithClock(clock))
	if err != nil {
		t.Fatal(err)
	}
	if err := prepStart(t, d1, "a"); err != nil {
		t.Fatal(err)
	}
	d1.Close()
	d2, err := fake.New(dir, fake.WithClock(clock))
	if err != nil {
		t.Fatal(err)
	}
	if got := d2.Running(); len(got) != 1 || got[0] != "a" {
		t.Fatalf("Running after restart = %v, want [a]", got)
	}
	if err := d2.Crash("a", 1); err != nil {
		t.Fatal(err)
	}
	runs := d2.Runs("a")
	if len(runs) != 1 || runs[0].Running() {
		t.Fatalf("runs = %+v, want one finished run", runs)
	}
	logs, _, err := d2.Logs(context.Background(), "a", 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(logs) == 0 {
		t.Error("console log lost across restart")
	}
}

func TestLastLines(t *testing.T) {
	for _, tc := range []struct {
		in   string
		n    int
		want string
	}{
		{"a\nb\nc\n", 2, "b\nc\n"},
		{"a\nb\nc", 2, "b\nc"},
		{"a\nb\n", 5, "a\nb\n"},
		{"a\nb\n", 0, "a\nb\n"},
		{"", 3, ""},
	} {
		if got := string(fake.LastLines([]byte(tc.in), tc.n)); got != tc.want {
			t.Errorf("LastLines(%q, %d) = %q, want %q", tc.in, tc.n, got, tc.want)
		}
	}
}
