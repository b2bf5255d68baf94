package main

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/blixard/blixard/client"
	"github.com/blixard/blixard/cmd/blixard/internal/benchsuite"
)

func (a *app) benchCmd() *cobra.Command {
	var (
		quick    bool
		suites   string
		write    string
		guestDir string
		workDir  string
		keep     bool
	)
	b := &cobra.Command{
		Use:   "bench",
		Short: "Benchmark suites side by side with raw dragonboat, etcd and bare qemu; load generators",
		Long: `Run the benchmark suites (commit, boot, failover, scale) and print one
markdown table per suite, with the issue's targets marked met or missed.
Suites start what they need on loopback (blixard nodes, etcd members,
qemu) and stop it again; a suite whose tools are missing says so in its
table. --quick measures the same things with few samples (for CI); the
full mode also writes the tables into docs/benchmarks.md unless --write ""
is given.`,
		Args: exactArgs(),
		RunE: a.runE(func(cmd *cobra.Command, args []string) error {
			var names []string
			for _, s := range strings.Split(suites, ",") {
				if s = strings.TrimSpace(s); s != "" {
					names = append(names, s)
				}
			}
			if err := benchsuite.CheckSuites(names); err != nil {
				return &usageError{err: fmt.Errorf("invalid --suite: %w", err)}
			}
			if !cmd.Flags().Changed("write") && !quick {
				write = filepath.Join("docs", "benchmarks.md")
			}
			if write != "" {
				if _, err := os.Stat(filepath.Dir(write)); err != nil {
					return usagef("invalid --write %q: directory %s does not exist", write, filepath.Dir(write))
				}
			}
			bin, err := os.Executable()
			if err != nil {
				return fmt.Errorf("finding the blixard binary: %w", err)
			}
			started := time.Now()
			tables, runErr := benchsuite.Run(cmd.Context(), benchsuite.Config{
				Quick: quick, Suites: names, Bin: bin, GuestDir: guestDir,
				WorkDir: workDir, Keep: keep, Log: a.stderr,
			})
			report := benchsuite.Report(tables, quick, started, time.Since(started))
			fmt.Fprint(a.stdout, report)
			if write != "" && len(tables) > 0 {
				if err := benchsuite.WriteDoc(write, report); err != nil {
					return fmt.Errorf("writing %s: %w", write, err)
				}
				fmt.Fprintf(a.stderr, "bench: tables written to %s\n", write)
			}
			return runErr
		}),
	}
	bf := b.Flags()
	bf.BoolVar(&quick, "quick", false, "few samples per suite (seconds; for CI); does not write docs unless --write is given")
	bf.StringVar(&suites, "suite", "", "suites to run, comma-separated: "+strings.Join(benchsuite.Suites, ",")+" (default all)")
	bf.StringVar(&write, "write", "", "markdown file whose generated section receives the tables (default docs/benchmarks.md in full mode; \"\" writes nothing)")
	bf.StringVar(&guestDir, "guest-dir", filepath.Join("build", "guest"), "directory with the test guest's vmlinux and initrd.img (scripts/guest.sh)")
	bf.StringVar(&workDir, "work-dir", "", "scratch directory for data dirs and logs (default a temp dir)")
	bf.BoolVar(&keep, "keep", false, "keep the scratch directory (logs) afterwards")

	var (
		conc     string
		duration time.Duration
		memory   uint64
		prefix   string
		batches  int
	)
	commit := &cobra.Command{
		Use:   "commit",
		Short: "Measure full-path commit throughput: concurrent clients create then delete VMs",
		Long: `Measure the full path (client → api actor → Raft → apply → reply): for each
concurrency level, that many workers each loop "create a VM, delete it" for
--duration against --addr, and the throughput (commits/s) and commit
latency percentiles are printed (-o json: one JSON object per level). Run it
against nodes using --driver fake with enough --memory-mb for the VMs in
flight. The commit suite of "blixard bench" runs it as its load generator.`,
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
			if batches < 0 {
				return usagef("invalid --batches %d: must be 0 or more", batches)
			}
			ctx := cmd.Context()
			c, err := a.dial(ctx, client.WithWriteBatching(batches))
			if err != nil {
				return err
			}
			defer c.Close()
			if a.output == "table" {
				fmt.Fprintln(a.stdout, "CONCURRENCY\tCOMMITS\tOPS/S\tP50\tP99\tERRORS")
			}
			for _, n := range levels {
				r := benchsuite.RunLoad(ctx, n, duration, benchsuite.CommitOp(c, prefix, memory))
				if a.output == "json" {
					if err := json.NewEncoder(a.stdout).Encode(r); err != nil {
						return err
					}
				} else {
					fmt.Fprintf(a.stdout, "%d\t%d\t%.0f\t%.2fms\t%.2fms\t%d\n", n, r.Ops, r.OpsPerSec, r.P50Ms, r.P99Ms, r.Errors)
				}
				if r.FirstError != "" {
					fmt.Fprintf(a.stderr, "first error at concurrency %d: %s\n", n, r.FirstError)
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
	f.IntVar(&batches, "batches", client.DefaultBatchesInFlight, "write batches the client keeps in flight per node (0: every write sent alone)")
	b.AddCommand(commit)
	return b
}
