package sim

import (
	"context"
	"os"
	"testing"
	"time"
)

func runOnce(t *testing.T, cfg Config) *Report {
	t.Helper()
	if cfg.ReportDir == "" {
		cfg.ReportDir = t.TempDir()
	}
	rep, err := Run(context.Background(), cfg)
	if err != nil {
		t.Fatalf("seed %d: %v", cfg.Seed, err)
	}
	rep.Print(testWriter{t})
	return rep
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(string(p))
	return len(p), nil
}

func TestRunWithoutFaults(t *testing.T) {
	rep := runOnce(t, Config{Seed: 1, Nodes: 3, Clients: 3, Ops: 60, Duration: 5 * time.Second})
	if !rep.OK() {
		t.Fatalf("a run without faults failed: %v", rep.Failed())
	}
	if rep.Acked == 0 {
		t.Fatal("no operation was answered")
	}
}

func TestMain(m *testing.M) { os.Exit(m.Run()) }

func TestRunWithAllFaults(t *testing.T) {
	rep := runOnce(t, Config{Seed: 2, Nodes: 5, Clients: 6, Ops: 300, Faults: AllFaults, Duration: 8 * time.Second, CheckLeaks: true})
	if !rep.OK() {
		t.Fatalf("seed 2 failed: %v (files %v)", rep.Failed(), rep.Files)
	}
}
