package benchsuite

import (
	"context"
	"slices"
	"sync"
	"time"
)

// LoadResult is what one load level measured.
type LoadResult struct {
	Concurrency int     `json:"concurrency"`
	Ops         int     `json:"ops"`
	Errors      int     `json:"errors"`
	OpsPerSec   float64 `json:"ops_per_sec"`
	P50Ms       float64 `json:"p50_ms"`
	P99Ms       float64 `json:"p99_ms"`
	FirstError  string  `json:"first_error,omitempty"`
	// CPU per operation (µs): of the servers (blixard nodes, etcd
	// members; for raw dragonboat the whole in-process cluster with its
	// proposers) and of the load generator. Filled by the commit suite.
	ServerCPUUs float64 `json:"-"`
	ClientCPUUs float64 `json:"-"`
	// Entries is how far the blixard cluster's applied index moved during
	// the level (Raft entries, the nodes' own few heartbeats included).
	Entries uint64 `json:"-"`
}

// setCPU records server and client CPU time per operation.
func (r *LoadResult) setCPU(server, client time.Duration) {
	if r.Ops == 0 {
		return
	}
	r.ServerCPUUs = float64(server.Microseconds()) / float64(r.Ops)
	r.ClientCPUUs = float64(client.Microseconds()) / float64(r.Ops)
}

// Op is one operation of worker w, its i-th. It returns an error when the
// operation failed. An operation the context cut off is not counted.
type Op func(ctx context.Context, w, i int) error

// RunLoad runs n workers, each calling op in a loop, for d, and returns
// throughput and latency percentiles of the operations that completed
// before the deadline. op gets a context that ends at the deadline.
func RunLoad(ctx context.Context, n int, d time.Duration, op Op) LoadResult {
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	var (
		mu       sync.Mutex
		lat      []time.Duration
		errs     int
		firstErr error
		wg       sync.WaitGroup
	)
	begin := time.Now()
	for w := 0; w < n; w++ {
		wg.Go(func() {
			var mine []time.Duration
			for i := 0; ctx.Err() == nil; i++ {
				t0 := time.Now()
				err := op(ctx, w, i)
				if ctx.Err() != nil {
					break
				}
				if err != nil {
					mu.Lock()
					errs++
					if firstErr == nil {
						firstErr = err
					}
					mu.Unlock()
					continue
				}
				mine = append(mine, time.Since(t0))
			}
			mu.Lock()
			lat = append(lat, mine...)
			mu.Unlock()
		})
	}
	wg.Wait()
	// Only operations that ended before the deadline count, so the
	// window is d (or less when the parent context ended first).
	elapsed := min(time.Since(begin), d)
	slices.Sort(lat)
	r := LoadResult{Concurrency: n, Ops: len(lat), Errors: errs, OpsPerSec: float64(len(lat)) / elapsed.Seconds()}
	if firstErr != nil {
		r.FirstError = firstErr.Error()
	}
	r.P50Ms = ms(Percentile(lat, 0.50))
	r.P99Ms = ms(Percentile(lat, 0.99))
	return r
}

// Percentile returns the q-quantile (0..1) of sorted, 0 when it is empty.
func Percentile(sorted []time.Duration, q float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	return sorted[min(len(sorted)-1, int(q*float64(len(sorted))))]
}

// Median of xs (0 when empty); xs is not modified.
func Median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	n := len(s)
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
