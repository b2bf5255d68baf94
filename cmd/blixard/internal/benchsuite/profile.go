package benchsuite

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"syscall"
	"time"

	"github.com/google/pprof/profile"
)

// ProfileDirEnv names the directory a blixard process writes a CPU
// profile to on SIGUSR1 (see cmd/blixard/bench_profile.go); ProfileSeconds
// is how long that profile runs.
const (
	ProfileDirEnv  = "BLIXARD_PROFILE_DIR"
	ProfileSeconds = 5
)

// profileProcess signals pid to profile itself and waits for the file.
func profileProcess(ctx context.Context, pid int, dir string) (string, error) {
	path := filepath.Join(dir, fmt.Sprintf("cpu-%d.pprof", pid))
	os.Remove(path)
	if err := syscall.Kill(pid, syscall.SIGUSR1); err != nil {
		return "", err
	}
	err := poll(ctx, ProfileSeconds*time.Second+30*time.Second, "the CPU profile", func() (bool, error) {
		_, err := os.Stat(path)
		return err == nil, nil
	})
	return path, err
}

// topFunctions summarises a CPU profile: the n functions with the most
// flat (self) time and the n with the most cumulative time, as lines
// "12.3% flat  runtime.mallocgc".
func topFunctions(path string, n int) (flat, cum []string, err error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, nil, err
	}
	defer f.Close()
	p, err := profile.Parse(f)
	if err != nil {
		return nil, nil, err
	}
	vi := len(p.SampleType) - 1 // cpu nanoseconds
	flatBy, cumBy := map[string]int64{}, map[string]int64{}
	var total int64
	for _, s := range p.Sample {
		v := s.Value[vi]
		total += v
		seen := map[string]bool{}
		for li, loc := range s.Location {
			for i := len(loc.Line) - 1; i >= 0; i-- { // inlined frames last-first
				fn := loc.Line[i].Function
				if fn == nil {
					continue
				}
				if li == 0 && i == 0 {
					flatBy[fn.Name] += v
				}
				if !seen[fn.Name] {
					seen[fn.Name] = true
					cumBy[fn.Name] += v
				}
			}
		}
	}
	if total == 0 {
		return nil, nil, fmt.Errorf("empty profile")
	}
	render := func(m map[string]int64) []string {
		type kv struct {
			k string
			v int64
		}
		var xs []kv
		for k, v := range m {
			xs = append(xs, kv{k, v})
		}
		sort.Slice(xs, func(i, j int) bool { return xs[i].v > xs[j].v || xs[i].v == xs[j].v && xs[i].k < xs[j].k })
		var out []string
		for i := 0; i < len(xs) && i < n; i++ {
			out = append(out, fmt.Sprintf("%5.1f%%  %s", 100*float64(xs[i].v)/float64(total), xs[i].k))
		}
		return out
	}
	return render(flatBy), render(cumBy), nil
}
