package benchsuite

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

func TestWriteDocReplacesOnlyTheGeneratedPart(t *testing.T) {
	path := filepath.Join(t.TempDir(), "benchmarks.md")
	hand := "# Benchmarks\n\nintro\n\n" + DocBegin + "\nold tables\n" + DocEnd + "\n\n## Notes\n\nkept\n"
	if err := os.WriteFile(path, []byte(hand), 0o644); err != nil {
		t.Fatal(err)
	}
	for i, report := range []string{"run one\n", "run two\n", "run two\n"} {
		if err := WriteDoc(path, report); err != nil {
			t.Fatal(err)
		}
		b, _ := os.ReadFile(path)
		want := "# Benchmarks\n\nintro\n\n" + DocBegin + "\n\n" + report + DocEnd + "\n\n## Notes\n\nkept\n"
		if string(b) != want {
			t.Fatalf("write %d:\n%s\nwant:\n%s", i, b, want)
		}
	}
}

func TestWriteDocWithoutMarkersKeepsTheText(t *testing.T) {
	path := filepath.Join(t.TempDir(), "benchmarks.md")
	os.WriteFile(path, []byte("# Title\n\nhand-written\n"), 0o644)
	if err := WriteDoc(path, "tables\n"); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(path)
	s := string(b)
	if !strings.HasPrefix(s, "# Title\n\n"+DocBegin) || !strings.Contains(s, "tables\n"+DocEnd) || !strings.HasSuffix(s, "hand-written\n") {
		t.Fatalf("got:\n%s", s)
	}
}

func TestCheckSuites(t *testing.T) {
	if err := CheckSuites([]string{"commit", "scale"}); err != nil {
		t.Fatal(err)
	}
	err := CheckSuites([]string{"commit", "bogus"})
	if err == nil || !strings.Contains(err.Error(), `"bogus"`) || !strings.Contains(err.Error(), "commit,boot,failover,scale") {
		t.Fatalf("got %v", err)
	}
}

func TestRunLoadCountsOpsAndErrors(t *testing.T) {
	var calls atomic.Int64
	boom := errors.New("boom")
	r := RunLoad(context.Background(), 4, 200*time.Millisecond, func(ctx context.Context, w, i int) error {
		calls.Add(1)
		if i%2 == 1 {
			return boom
		}
		<-time.After(time.Millisecond) // an operation that takes time
		return nil
	})
	if r.Concurrency != 4 || r.Ops == 0 || r.Errors == 0 || r.FirstError != "boom" {
		t.Fatalf("%+v", r)
	}
	if got := int64(r.Ops + r.Errors); got > calls.Load() {
		t.Fatalf("%d ops+errors from %d calls", got, calls.Load())
	}
	if r.P50Ms <= 0 || r.P99Ms < r.P50Ms || r.OpsPerSec <= 0 {
		t.Fatalf("implausible percentiles %+v", r)
	}
}

func TestMedianAndPercentile(t *testing.T) {
	if m := Median([]float64{3, 1, 2}); m != 2 {
		t.Fatal(m)
	}
	if m := Median([]float64{4, 1, 2, 3}); m != 2.5 {
		t.Fatal(m)
	}
	ds := []time.Duration{1, 2, 3, 4, 5, 6, 7, 8, 9, 10}
	if p := Percentile(ds, 0.5); p != 6 {
		t.Fatal(p)
	}
	if p := Percentile(ds, 0.99); p != 10 {
		t.Fatal(p)
	}
}

// The marker may arrive split across two reads of the console file.
func TestWaitForMarkerAcrossReads(t *testing.T) {
	path := filepath.Join(t.TempDir(), "console.log")
	os.WriteFile(path, []byte("booting...\nBLIXARD-GU"), 0o644)
	polls := 0
	_, err := waitForMarker(context.Background(), path, GuestReady, time.Minute, func() error {
		polls++
		if polls == 1 {
			f, _ := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
			f.WriteString("EST-READY 1.23\n")
			f.Close()
		}
		if polls > 2 {
			return errors.New("marker not seen after it was written")
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if polls != 1 {
		t.Fatalf("saw the marker after %d polls, want 1", polls)
	}
}

func TestWaitForMarkerAbort(t *testing.T) {
	path := filepath.Join(t.TempDir(), "console.log")
	stop := errors.New("qemu exited")
	_, err := waitForMarker(context.Background(), path, GuestReady, time.Minute, func() error { return stop })
	if !errors.Is(err, stop) {
		t.Fatalf("got %v", err)
	}
}

func TestMarkdownMarksTargets(t *testing.T) {
	md := Table{Title: "x", Header: []string{"a", "b"}, Rows: [][]string{{"1", "2"}},
		Targets: []Target{{What: "fast", Measured: "1 s", Met: true}, {What: "small", Measured: "3 KiB"}}}.Markdown()
	for _, want := range []string{"### x\n", "| a | b |\n|---|---|\n| 1 | 2 |\n", "- target fast: met (1 s)", "- target small: **missed** (3 KiB)"} {
		if !strings.Contains(md, want) {
			t.Fatalf("missing %q in:\n%s", want, md)
		}
	}
	if s := (Table{Title: "boot", Skipped: "no qemu"}).Markdown(); !strings.Contains(s, "Skipped: no qemu") {
		t.Fatal(s)
	}
}

func TestMeasureStateSmall(t *testing.T) {
	r, err := MeasureState(10, 500, 50)
	if err != nil {
		t.Fatal(err)
	}
	if r.SnapshotBytes < 500*50 || r.PlacementPerVM <= 0 || r.SnapshotRestore <= 0 {
		t.Fatalf("implausible %+v", r)
	}
}

func TestBenchVMName(t *testing.T) {
	for _, c := range []struct {
		prefix string
		w, i   int
		want   string
	}{{"bench", 0, 0, "bench-0-0"}, {"bench", 255, 123456, "bench-255-123456"}, {"nl", 3, 42, "nl-3-42"}} {
		if got := BenchVMName(c.prefix, c.w, c.i); got != c.want {
			t.Errorf("BenchVMName(%q, %d, %d) = %q, want %q", c.prefix, c.w, c.i, got, c.want)
		}
	}
}
