package main

import (
	"fmt"
	"log/slog"
	"os"
	"sort"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/blixard/blixard/consensus/simbug"
	"github.com/blixard/blixard/sim"
)

// simCmd is `blixard sim`: a thin wrapper over sim.Run.
func (a *app) simCmd() *cobra.Command {
	var (
		seed                         int64
		nodes, clients, ops, runs    int
		faults, reportDir, logFile   string
		logLevel                     string
		plant                        string
		duration, converge, chkLimit time.Duration
		leaks, verbose, noMigrate    bool
	)
	cmd := &cobra.Command{
		Use:   "sim",
		Short: "Run the simulation harness: seeded faults, a workload and safety checkers",
		Long: `Run N blixard nodes in this process (real Raft, gossip and actors, the fake
driver) over a simulated network, drive a workload of concurrent clients while
a seeded schedule injects faults, heal everything, and check the history and
the VM runs: linearizability (porcupine), at most one running copy of a VM,
durability of acknowledged writes, convergence (equal replica snapshots, every
VM where it should be) and, with --check-leaks, goroutine leaks.

The seed fixes the fault schedule and each client's operations; goroutine
scheduling does not replay, so replaying a failing seed (same flags) usually,
not always, fails again: use --runs at that seed to retry it. With --runs K
the seeds S, S+1, ... S+K-1 run one after the other. Exit 0 only when every
checker held in every run.`,
		Args: exactArgs(),
		RunE: a.runE(func(cmd *cobra.Command, args []string) error {
			fs, err := sim.ParseFaults(faults)
			if err != nil {
				return usagef("invalid --faults: %v", err)
			}
			if runs < 1 {
				return usagef("invalid --runs %d: must be at least 1", runs)
			}
			var bugs simbug.Bug
			for _, p := range strings.Split(plant, ",") {
				if p = strings.TrimSpace(p); p == "" || p == "none" {
					continue
				}
				b, ok := simbug.Names[p]
				if !ok {
					return usagef("unknown --plant %q: allowed are %s", p, bugNames())
				}
				bugs |= b
			}
			if bugs != 0 && !simbug.Available {
				return usagef("--plant needs a blixard built with -tags simbugs")
			}
			if !cmd.Flags().Changed("seed") {
				seed = time.Now().UnixNano() % 1_000_000
			}
			if seed < 0 {
				return usagef("invalid --seed %d: must not be negative", seed)
			}
			var lvl slog.Level
			if err := lvl.UnmarshalText([]byte(logLevel)); err != nil {
				return usagef("invalid --log-level %q: want debug, info, warn or error", logLevel)
			}
			logger := slog.New(slog.NewTextHandler(discard{}, nil))
			if logFile != "" {
				f, err := os.OpenFile(logFile, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
				if err != nil {
					return fmt.Errorf("opening --log: %w", err)
				}
				defer f.Close()
				logger = slog.New(slog.NewTextHandler(f, &slog.HandlerOptions{Level: lvl}))
			}
			base := sim.Config{
				Nodes: nodes, Clients: clients, Ops: ops, Faults: fs, Duration: duration,
				Converge: converge, CheckTimeout: chkLimit, Dir: "", ReportDir: reportDir,
				Logger: logger, Plant: bugs, CheckLeaks: leaks, NoMigrate: noMigrate,
			}
			if err := base.Check(); err != nil {
				return usagef("%v", err)
			}
			ctx := cmd.Context()
			start := time.Now()
			var failed []string
			var totalOps, windows int
			var workload time.Duration
			done := 0
			for i := 0; i < runs && ctx.Err() == nil; i++ {
				cfg := base
				cfg.Seed = uint64(seed) + uint64(i)
				rep, err := sim.Run(ctx, cfg)
				if err != nil {
					if ctx.Err() != nil {
						break
					}
					return fmt.Errorf("seed %d: %w", cfg.Seed, err)
				}
				done++
				totalOps += rep.Acked + rep.Unknown
				windows += rep.Injected
				workload += rep.Workload
				if runs == 1 || verbose || !rep.OK() {
					rep.Print(a.stdout)
				} else {
					fmt.Fprintf(a.stdout, "seed %d: ok (%d ops, %d faults, %.1fs)\n", cfg.Seed, rep.Acked+rep.Unknown, rep.Injected, rep.Elapsed.Seconds())
				}
				if !rep.OK() {
					failed = append(failed, fmt.Sprintf("%d(%s)", cfg.Seed, strings.Join(rep.Failed(), ",")))
				}
			}
			el := time.Since(start)
			if runs > 1 {
				fmt.Fprintf(a.stdout, "runs %d, failed %d, fault windows %d, ops %d; %.1f runs/min, %.0f simulated ops/s during fault phases\n",
					done, len(failed), windows, totalOps, float64(done)/el.Minutes(), float64(totalOps)/max(workload.Seconds(), 1e-9))
			}
			if len(failed) > 0 {
				return fmt.Errorf("%d of %d runs violated a checker: seeds %s", len(failed), done, strings.Join(failed, " "))
			}
			if ctx.Err() != nil {
				return fmt.Errorf("interrupted after %d runs", done)
			}
			return nil
		}),
	}
	f := cmd.Flags()
	f.Int64Var(&seed, "seed", 0, "seed of the (first) run (default: random, printed)")
	f.IntVar(&nodes, "nodes", 3, "nodes in the cluster (3-7)")
	f.IntVar(&clients, "clients", 4, "concurrent workload clients")
	f.IntVar(&ops, "ops", 200, "operations per run, over all clients")
	f.StringVar(&faults, "faults", "all", "fault kinds: crash,partition,loss,delay,pause (or all, none)")
	f.DurationVar(&duration, "duration", 8*time.Second, "upper bound of a run's fault phase (the workload stops then)")
	f.DurationVar(&converge, "converge", 30*time.Second, "how long the liveness phase may take to converge")
	f.DurationVar(&chkLimit, "check-timeout", 30*time.Second, "limit of the linearizability check (a timeout is a failure)")
	f.IntVar(&runs, "runs", 1, "number of runs (seeds S, S+1, ...)")
	f.StringVar(&reportDir, "report-dir", "sim-reports", "where failing runs write their report, history and HTML visualisation")
	f.StringVar(&logFile, "log", "", "append the nodes' logs to this file (see --log-level)")
	f.StringVar(&logLevel, "log-level", "warn", "level of --log: debug, info, warn or error")
	f.StringVar(&plant, "plant", "", "plant known bugs (needs -tags simbugs): "+bugNames())
	f.BoolVar(&leaks, "check-leaks", false, "fail a run that leaves goroutines behind")
	f.BoolVar(&noMigrate, "no-migrate", false, "leave migrations out of the workload")
	f.BoolVarP(&verbose, "verbose", "v", false, "print the full report of every run")
	return cmd
}

func bugNames() string {
	var out []string
	for n := range simbug.Names {
		out = append(out, n)
	}
	sort.Strings(out)
	return strings.Join(out, ", ")
}

type discard struct{}

func (discard) Write(p []byte) (int, error) { return len(p), nil }
