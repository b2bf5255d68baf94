package main

import (
	"context"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/spf13/cobra"

	"github.com/blixard/blixard/client"
	"github.com/blixard/blixard/proto/blixardpb"
)

func (a *app) benchCmd() *cobra.Command {
	b := &cobra.Command{
		Use:   "bench",
		Short: "Load generators against a running cluster",
		RunE:  groupRunE,
	}
	var (
		conc     string
		duration time.Duration
		memory   uint64
		prefix   string
	)
	commit := &cobra.Command{
		Use:   "commit",
		Short: "Measure full-path commit throughput: concurrent clients create then delete VMs",
		Long: `Measure the full path (client → api actor → Raft → apply → reply): for each
concurrency level, that many workers each loop "create a VM, delete it" for
--duration against --addr, and the throughput (commits/s) and commit
latency percentiles are printed. Run it against nodes using --driver fake
with enough --memory-mb for the VMs in flight.`,
		Args: exactArgs(),
		RunE: a.runE(func(cmd *cobra.Command, args []string) error {
			var levels []int
			for _, s := range strings.Split(conc, ",") {
				n, err := strconv.Atoi(strings.TrimSpace(s))
				if err != nil || n <= 0 {
					return usagef("invalid --concurrency %q: want positive integers, comma-separated", conc)
				}
				levels = append(levels, n)
			}
			if duration <= 0 {
				return usagef("invalid --duration %s: must be positive", duration)
			}
			ctx := cmd.Context()
			c, err := a.dial(ctx)
			if err != nil {
				return err
			}
			defer c.Close()
			fmt.Fprintln(a.stdout, "CONCURRENCY\tCOMMITS\tOPS/S\tP50\tP99\tERRORS")
			for _, n := range levels {
				r := runCommitBench(ctx, c, n, duration, memory, prefix)
				fmt.Fprintf(a.stdout, "%d\t%d\t%.0f\t%s\t%s\t%d\n", n, r.ops, r.opsPerSec, r.p50.Round(10*time.Microsecond), r.p99.Round(10*time.Microsecond), r.errors)
				if r.firstErr != nil {
					fmt.Fprintf(a.stderr, "first error at concurrency %d: %v\n", n, r.firstErr)
				}
				if ctx.Err() != nil {
					return nil
				}
			}
			return nil
		}),
	}
	f := commit.Flags()
	f.StringVar(&conc, "concurrency", "1,64,256", "concurrency levels, comma-separated")
	f.DurationVar(&duration, "duration", 10*time.Second, "how long each level runs")
	f.Uint64Var(&memory, "memory", 64, "memory (MiB) of each benchmark VM")
	f.StringVar(&prefix, "prefix", "bench", "name prefix of the benchmark VMs")
	b.AddCommand(commit)
	return b
}

type benchResult struct {
	ops       int
	errors    int
	opsPerSec float64
	p50, p99  time.Duration
	firstErr  error
}

// runCommitBench runs n workers for d; every create and every delete is
// one commit.
func runCommitBench(ctx context.Context, c *client.Client, n int, d time.Duration, memory uint64, prefix string) benchResult {
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	var (
		mu       sync.Mutex
		lat      []time.Duration
		errs     int
		firstErr error
		wg       sync.WaitGroup
	)
	record := func(start time.Time, err error) {
		mu.Lock()
		defer mu.Unlock()
		if err != nil {
			errs++
			if firstErr == nil {
				firstErr = err
			}
			return
		}
		lat = append(lat, time.Since(start))
	}
	begin := time.Now()
	for w := 0; w < n; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for i := 0; ctx.Err() == nil; i++ {
				name := fmt.Sprintf("%s-%d-%d", prefix, w, i)
				start := time.Now()
				_, err := c.CreateVM(ctx, &blixardpb.VmSpec{Name: name, Vcpus: 1, MemoryMb: memory}, true)
				if ctx.Err() != nil {
					// Clean up a create whose outcome the deadline cut off.
					c.DeleteVM(context.Background(), name)
					return
				}
				record(start, err)
				start = time.Now()
				_, err = c.DeleteVM(context.Background(), name)
				record(start, err)
			}
		}(w)
	}
	wg.Wait()
	elapsed := time.Since(begin)
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	r := benchResult{ops: len(lat), errors: errs, firstErr: firstErr, opsPerSec: float64(len(lat)) / elapsed.Seconds()}
	if len(lat) > 0 {
		r.p50 = lat[len(lat)*50/100]
		r.p99 = lat[min(len(lat)-1, len(lat)*99/100)]
	}
	return r
}
