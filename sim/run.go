package sim

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/anishathalye/porcupine"
	"go.uber.org/goleak"

	"github.com/blixard/blixard/consensus"
	"github.com/blixard/blixard/consensus/simbug"
	"github.com/blixard/blixard/proto/blixardpb"
)

// Config configures one run.
type Config struct {
	Seed    uint64
	Nodes   int // 3–7
	Clients int
	// Ops is the number of operations over all clients.
	Ops    int
	Faults Fault
	// Duration is the length of the fault phase: faults are injected for
	// that long even when the clients are done earlier (VMs keep running,
	// so fencing and re-placement are exercised), and clients that are not
	// done stop then.
	Duration time.Duration
	// Converge bounds the liveness phase (default 30 s).
	Converge time.Duration
	// CheckTimeout bounds the linearizability check (default 30 s); a
	// check that times out is a failure.
	CheckTimeout time.Duration
	// Dir is where node data dirs go (a temporary dir when empty; it is
	// removed after a run that passed).
	Dir string
	// ReportDir receives, for a failing run, the report, the history and
	// porcupine's HTML visualisation (default: the run's dir).
	ReportDir string
	// Logger receives the nodes' logs (default: discarded).
	Logger *slog.Logger
	// Plant plants bugs (needs the simbugs build tag).
	Plant simbug.Bug
	// CheckLeaks compares goroutines before and after the run.
	CheckLeaks bool
	// NoMigrate leaves MigrateVm out of the workload (its share goes to
	// reads).
	NoMigrate bool
	// MinWindow and MaxWindow bound how long each fault window lasts
	// (default 300 ms and 3 s). Windows longer than failure detection plus
	// the down grace make the cluster re-place a cut-off node's VMs, which
	// is when self-fencing matters.
	MinWindow, MaxWindow time.Duration
}

// Check reports what is wrong with c (a value out of range, planting
// without the simbugs tag), as Run would.
func (c Config) Check() error { return c.defaults() }

func (c *Config) defaults() error {
	if c.Nodes == 0 {
		c.Nodes = 3
	}
	if c.Nodes < 3 || c.Nodes > 7 {
		return fmt.Errorf("nodes %d out of range: must be 3-7", c.Nodes)
	}
	if c.Clients == 0 {
		c.Clients = 4
	}
	if c.Clients < 1 || c.Clients > 64 {
		return fmt.Errorf("clients %d out of range: must be 1-64", c.Clients)
	}
	if c.Ops == 0 {
		c.Ops = 200
	}
	if c.Ops < 1 {
		return fmt.Errorf("ops %d must be positive", c.Ops)
	}
	if c.Duration == 0 {
		c.Duration = 8 * time.Second
	}
	if c.Duration < time.Second {
		return fmt.Errorf("duration %s too short: at least 1s", c.Duration)
	}
	if c.Converge == 0 {
		c.Converge = 30 * time.Second
	}
	if c.MinWindow == 0 {
		c.MinWindow = 300 * time.Millisecond
	}
	if c.MaxWindow == 0 {
		c.MaxWindow = 3 * time.Second
	}
	if c.MinWindow < 100*time.Millisecond || c.MaxWindow < c.MinWindow {
		return fmt.Errorf("fault windows %s-%s: need 100ms <= min <= max", c.MinWindow, c.MaxWindow)
	}
	if c.CheckTimeout == 0 {
		c.CheckTimeout = 30 * time.Second
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if c.Plant != 0 && !simbug.Available {
		return errors.New("planting bugs needs a binary built with -tags simbugs")
	}
	return nil
}

// Verdict is one checker's result.
type Verdict struct {
	Checker string
	OK      bool
	Detail  string // why it failed, or a summary
}

// Report is the outcome of one run.
type Report struct {
	Seed     uint64
	Config   Config
	Schedule []faultEvent
	Injected int // fault windows that began
	// Op counts by kind and outcome.
	Ops      map[string]int
	Acked    int
	Unknown  int
	Verdicts []Verdict
	Elapsed  time.Duration
	Workload time.Duration // the fault phase
	Messages struct{ Sent, Dropped, Delayed, Held int64 }
	Crashes  int
	// SlowWrites counts the Raft storage writes a slow disk delayed.
	SlowWrites int64
	// MaxOverlap is the longest time two copies of one VM ran at once.
	MaxOverlap time.Duration
	// Files written for a failing run.
	Files []string
}

// OK reports whether every checker held.
func (r *Report) OK() bool {
	for _, v := range r.Verdicts {
		if !v.OK {
			return false
		}
	}
	return len(r.Verdicts) > 0
}

// Failed lists the failed checkers.
func (r *Report) Failed() []string {
	var out []string
	for _, v := range r.Verdicts {
		if !v.OK {
			out = append(out, v.Checker)
		}
	}
	return out
}

// Print writes the human report.
func (r *Report) Print(w io.Writer) {
	mig := ""
	if r.Config.NoMigrate {
		mig = ", no migrate"
	}
	fmt.Fprintf(w, "seed %d: %d nodes, %d clients, %d ops%s, faults %s, plant %s\n", r.Seed, r.Config.Nodes, r.Config.Clients, r.Config.Ops, mig, r.Config.Faults, plantName(r.Config.Plant))
	fmt.Fprintf(w, "  fault schedule: %d windows drawn, %d injected (crashes %d, slowed disk writes %d); messages sent %d, dropped %d, delayed %d, held %d\n",
		len(r.Schedule), r.Injected, r.Crashes, r.SlowWrites, r.Messages.Sent, r.Messages.Dropped, r.Messages.Delayed, r.Messages.Held)
	for i, e := range r.Schedule {
		if i >= r.Injected {
			break
		}
		fmt.Fprintf(w, "    %s\n", e)
	}
	keys := make([]string, 0, len(r.Ops))
	for k := range r.Ops {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var parts []string
	for _, k := range keys {
		parts = append(parts, fmt.Sprintf("%s=%d", k, r.Ops[k]))
	}
	fmt.Fprintf(w, "  operations: %d answered, %d unknown (workload %.1fs, run %.1fs): %s\n", r.Acked, r.Unknown, r.Workload.Seconds(), r.Elapsed.Seconds(), strings.Join(parts, " "))
	for _, v := range r.Verdicts {
		st := "ok  "
		if !v.OK {
			st = "FAIL"
		}
		fmt.Fprintf(w, "  %s %-18s %s\n", st, v.Checker, v.Detail)
	}
	for _, f := range r.Files {
		fmt.Fprintf(w, "  wrote %s\n", f)
	}
}

func plantName(b simbug.Bug) string {
	if b == 0 {
		return "none"
	}
	var out []string
	for n, x := range simbug.Names {
		if b&x != 0 {
			out = append(out, n)
		}
	}
	sort.Strings(out)
	return strings.Join(out, ",")
}

// Run runs one seeded simulation: start the cluster, run the workload
// while injecting the fault schedule, heal everything and wait for
// convergence, then check the history and the VM runs. The error is for
// the harness itself failing (a node that cannot start); violations are
// in the report.
func Run(ctx context.Context, cfg Config) (*Report, error) {
	if err := cfg.defaults(); err != nil {
		return nil, err
	}
	var leakOpt goleak.Option
	if cfg.CheckLeaks {
		leakOpt = goleak.IgnoreCurrent()
	}
	simbug.Plant(cfg.Plant)
	defer simbug.Plant(0)
	began := time.Now()
	dir := cfg.Dir
	tmp := dir == ""
	if tmp {
		d, err := os.MkdirTemp("", fmt.Sprintf("blixard-sim-%d-", cfg.Seed))
		if err != nil {
			return nil, err
		}
		dir = d
	} else {
		dir = filepath.Join(dir, fmt.Sprintf("seed-%d", cfg.Seed))
		if err := os.RemoveAll(dir); err != nil {
			return nil, err
		}
	}
	rep := &Report{Seed: cfg.Seed, Config: cfg, Ops: map[string]int{}}
	rep.Schedule = schedule(cfg.Seed, cfg.Nodes, cfg.Faults, cfg.Duration, cfg.MinWindow, cfg.MaxWindow)

	c := newCluster(dir, cfg.Nodes, cfg.Seed, cfg.Logger)
	if err := c.start(); err != nil {
		return nil, fmt.Errorf("starting cluster: %w", err)
	}
	closed := false
	closeCluster := func() {
		if !closed {
			closed = true
			c.close()
		}
	}
	defer closeCluster()
	readyCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
	err := c.waitReady(readyCtx)
	cancel()
	if err != nil {
		return nil, fmt.Errorf("cluster did not come up: %w", err)
	}

	// Fault phase: workload and schedule together.
	h := &history{start: time.Now()}
	phase, stopPhase := context.WithTimeout(ctx, cfg.Duration)
	if cfg.Faults&FaultLoss != 0 || cfg.Faults&FaultDelay != 0 {
		loss, delay := 0.0, time.Duration(0)
		if cfg.Faults&FaultLoss != 0 {
			loss = LossRate
		}
		if cfg.Faults&FaultDelay != 0 {
			delay = MaxDelay
		}
		c.net.SetLinks(loss, delay)
	}
	var wg sync.WaitGroup
	injected := make(chan int, 1)
	go func() { injected <- c.inject(phase, rep.Schedule) }()
	per := (cfg.Ops + cfg.Clients - 1) / cfg.Clients
	for i := 0; i < cfg.Clients; i++ {
		ops := min(per, cfg.Ops-i*per)
		if ops <= 0 {
			break
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			(&client{id: i, seed: cfg.Seed, c: c, h: h, noMigrate: cfg.NoMigrate}).run(phase, ops)
		}()
	}
	wg.Wait()
	rep.Workload = time.Since(h.start)
	rep.Injected = <-injected // the schedule runs to the end of the phase
	stopPhase()

	// Liveness phase: heal everything, restart what is down, converge.
	c.net.SetLinks(0, 0)
	c.net.HealAll()
	for _, n := range c.nodes {
		if err := n.start(); err != nil {
			return nil, fmt.Errorf("restarting node %d for the liveness phase: %w", n.id, err)
		}
	}
	conv := c.converge(ctx, cfg.Converge)
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("run interrupted: %w", err)
	}

	ops := h.all()
	for _, o := range ops {
		k := o.In.Kind.String()
		if o.Out.Unknown {
			rep.Unknown++
			rep.Ops[k+":unknown"]++
		} else {
			rep.Acked++
			rep.Ops[k+":"+strings.ToLower(o.Out.Code.String())]++
		}
	}
	final := conv.state

	lin, info := checkLinearizable(ops, cfg.CheckTimeout)
	rep.Verdicts = append(rep.Verdicts, lin)
	rep.Verdicts = append(rep.Verdicts, Verdict{Checker: "single-copy", OK: true, Detail: ""})
	rep.Verdicts = append(rep.Verdicts, checkDurable(ops, final, conv.ok || final != nil))
	rep.Verdicts = append(rep.Verdicts, conv.verdict)

	// Stop the cluster before judging runs, so "still running" ends now.
	end := time.Now()
	closeCluster()
	single, overlap := checkSingleCopy(c.runs.all(), end)
	rep.MaxOverlap = overlap
	sc := &rep.Verdicts[1]
	if len(single) > 0 {
		sc.OK, sc.Detail = false, strings.Join(single, "; ")
	} else {
		sc.Detail = fmt.Sprintf("%d runs, no overlap", len(c.runs.all()))
	}
	rep.Messages.Sent, rep.Messages.Dropped = c.net.Sent.Load(), c.net.Dropped.Load()
	rep.Messages.Delayed, rep.Messages.Held = c.net.Delayed.Load(), c.net.Held.Load()
	for _, n := range c.nodes {
		rep.Crashes += n.crashes
		rep.SlowWrites += n.disk.slowed.Load()
	}
	if cfg.CheckLeaks {
		rep.Verdicts = append(rep.Verdicts, checkLeaks(leakOpt))
	}
	rep.Elapsed = time.Since(began)

	if !rep.OK() {
		rdir := cfg.ReportDir
		if rdir == "" {
			rdir = dir
		}
		rep.Files = writeFailure(rdir, rep, ops, info, lin.OK)
	} else if tmp {
		os.RemoveAll(dir)
	}
	return rep, nil
}

// checkLinearizable runs porcupine over the history.
func checkLinearizable(ops []Op, timeout time.Duration) (Verdict, porcupine.LinearizationInfo) {
	v := Verdict{Checker: "linearizable"}
	res, info := porcupine.CheckOperationsVerbose(registryModel, porcupineOps(ops), timeout)
	switch res {
	case porcupine.Ok:
		v.OK, v.Detail = true, fmt.Sprintf("%d operations", len(ops))
	case porcupine.Illegal:
		v.Detail = "history is not linearizable (see the visualisation)"
	default:
		v.Detail = fmt.Sprintf("check timed out after %s (counts as a failure)", timeout)
	}
	return v, info
}

// finalState is the VM registry after convergence.
type finalState map[string]*blixardpb.VmRecord

// checkDurable checks that every acknowledged write survives: for each
// name, the last acknowledged create/start/stop/delete (by return time)
// decides the final state when no other write that may have taken effect
// (acknowledged, or unknown) overlaps or follows it.
func checkDurable(ops []Op, final finalState, have bool) Verdict {
	v := Verdict{Checker: "durable"}
	if !have {
		v.Detail = "no final state could be read"
		return v
	}
	byName := map[string][]Op{}
	for _, o := range ops {
		switch o.In.Kind {
		case OpCreate, OpStart, OpStop, OpDelete:
			if o.Out.Unknown || o.Out.Code == blixardpb.Code_OK {
				byName[o.In.Name] = append(byName[o.In.Name], o)
			}
		}
	}
	var bad []string
	decided := 0
	for name, list := range byName {
		var last *Op
		for i := range list {
			o := &list[i]
			if !o.Out.Unknown && (last == nil || o.Return > last.Return) {
				last = o
			}
		}
		if last == nil {
			continue
		}
		decisive := true
		for i := range list {
			o := &list[i]
			if o != last && (o.Out.Unknown || o.Return >= last.Call) {
				decisive = false
				break
			}
		}
		if !decisive {
			continue
		}
		decided++
		rec, exists := final[name]
		switch last.In.Kind {
		case OpDelete:
			if exists {
				bad = append(bad, fmt.Sprintf("%s: deleted (acknowledged) but exists", name))
			}
		default:
			running := last.In.Kind == OpStart || (last.In.Kind == OpCreate && !last.In.NoStart)
			if !exists {
				bad = append(bad, fmt.Sprintf("%s: acknowledged %s lost: the vm does not exist", name, last.In.Kind))
			} else if (rec.GetDesired() == blixardpb.DesiredState_DESIRED_RUNNING) != running {
				bad = append(bad, fmt.Sprintf("%s: acknowledged %s lost: desired %s", name, last.In.Kind, rec.GetDesired()))
			}
		}
	}
	sort.Strings(bad)
	if len(bad) > 0 {
		v.Detail = strings.Join(bad, "; ")
		return v
	}
	v.OK, v.Detail = true, fmt.Sprintf("%d names decided by their last acknowledged write", decided)
	return v
}

// leakWindDown is how long checkLeaks lets goroutines wind down after a
// run. goleak's own retries last about 0.4 s, but libraries end some
// goroutines on timers: protoactor's dead-letter throttle lives for its
// DeadLetterThrottleInterval (1 s) after the last dead letter (a CI run
// reported it as a leak).
const leakWindDown = 3 * time.Second

// checkLeaks reports goroutines started during the run that are still
// alive leakWindDown after it.
func checkLeaks(opt goleak.Option) Verdict {
	v := Verdict{Checker: "goroutine-leak"}
	opts := append([]goleak.Option{opt}, leakIgnores()...)
	err := goleak.Find(opts...)
	for end := time.Now().Add(leakWindDown); err != nil && time.Now().Before(end); {
		err = goleak.Find(opts...)
	}
	if err != nil {
		msg := err.Error()
		if len(msg) > 2000 {
			msg = msg[:2000] + "…"
		}
		v.Detail = msg
		return v
	}
	v.OK, v.Detail = true, "none"
	return v
}

// leakIgnores are process-wide goroutines that libraries start once and
// keep (not per run).
func leakIgnores() []goleak.Option {
	return []goleak.Option{
		goleak.IgnoreAnyFunction("github.com/lni/goutils/syncutil.(*Stopper).RunWorker.func1"),
		goleak.IgnoreTopFunction("github.com/golang/glog.(*fileSink).flushDaemon"),
		goleak.IgnoreTopFunction("github.com/golang/glog.(*loggingT).flushDaemon"),
		goleak.IgnoreAnyFunction("github.com/cockroachdb/pebble.(*tableCacheShard).releaseLoop"),
	}
}

// stateHash is a replica's applied index and snapshot hash.
type stateHash struct {
	applied uint64
	hash    string
}

func hashState(s *consensus.State) (stateHash, error) {
	h := sha256.New()
	if err := s.Save(h); err != nil {
		return stateHash{}, err
	}
	return stateHash{applied: s.AppliedIndex(), hash: hex.EncodeToString(h.Sum(nil))[:16]}, nil
}

// writeFailure writes the report, the history and (for a failed
// linearizability check) porcupine's visualisation.
func writeFailure(dir string, rep *Report, ops []Op, info porcupine.LinearizationInfo, linOK bool) []string {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil
	}
	var files []string
	base := filepath.Join(dir, fmt.Sprintf("sim-seed-%d", rep.Seed))
	var sb strings.Builder
	rep.Print(&sb)
	sb.WriteString("\nhistory (call_ms return_ms client node attempts op):\n")
	sort.Slice(ops, func(i, j int) bool { return ops[i].Call < ops[j].Call })
	for _, o := range ops {
		ret := "unknown"
		if !o.Out.Unknown {
			ret = fmt.Sprintf("%.1f", float64(o.Return)/1e6)
		}
		fmt.Fprintf(&sb, "%.1f %s c%d n%d a%d %s\n", float64(o.Call)/1e6, ret, o.Client, o.Node, o.Attempts,
			registryModel.DescribeOperation(o.In, o.Out))
	}
	if err := os.WriteFile(base+".txt", []byte(sb.String()), 0o644); err == nil {
		files = append(files, base+".txt")
	}
	if !linOK {
		if err := porcupine.VisualizePath(registryModel, info, base+".html"); err == nil {
			files = append(files, base+".html")
		}
	}
	return files
}
