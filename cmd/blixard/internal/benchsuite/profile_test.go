package benchsuite

import (
	"os"
	"path/filepath"
	"runtime/pprof"
	"strings"
	"testing"
	"time"
)

//go:noinline
func burnCPU(until time.Time) (x uint64) {
	for time.Now().Before(until) {
		for i := 0; i < 100000; i++ {
			x = x*6364136223846793005 + 1442695040888963407
		}
	}
	return x
}

func TestTopFunctionsNamesTheHotFunction(t *testing.T) {
	path := filepath.Join(t.TempDir(), "cpu.pprof")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		t.Skipf("cannot profile here: %v", err)
	}
	burnCPU(time.Now().Add(300 * time.Millisecond))
	pprof.StopCPUProfile()
	f.Close()
	flat, cum, err := topFunctions(path, 5)
	if err != nil {
		t.Fatal(err)
	}
	if len(flat) == 0 || !strings.Contains(strings.Join(flat, "\n"), "burnCPU") {
		t.Fatalf("flat top has no burnCPU:\n%s", strings.Join(flat, "\n"))
	}
	if !strings.Contains(strings.Join(cum, "\n"), "TestTopFunctionsNamesTheHotFunction") {
		t.Fatalf("cumulative top has no test function:\n%s", strings.Join(cum, "\n"))
	}
}
