package benchsuite

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os/exec"
	"strconv"
	"strings"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/blixard/blixard/client"
	"github.com/blixard/blixard/proto/blixardpb"
)

// CommitLevels are the concurrency levels of the commit suite.
var CommitLevels = []int{1, 64, 256}

// BenchVMName is the name of worker w's i-th benchmark VM.
// It is built without fmt: the load generators call it for every
// operation, on the cores the systems under test share.
func BenchVMName(prefix string, w, i int) string {
	b := make([]byte, 0, len(prefix)+24)
	b = append(b, prefix...)
	b = append(b, '-')
	b = strconv.AppendInt(b, int64(w), 10)
	b = append(b, '-')
	b = strconv.AppendInt(b, int64(i), 10)
	return string(b)
}

// CommitOp is the load generator's operation against a blixard cluster:
// even i create VM i/2 of worker w, odd i delete it again, so every
// operation is one commit. The VMs use the fake driver's nothing-to-boot
// spec (1 vcpu, memory MiB). A create the deadline cut off is deleted.
func CommitOp(c *client.Client, prefix string, memory uint64) Op {
	return func(ctx context.Context, w, i int) error {
		name := BenchVMName(prefix, w, i/2)
		if i%2 == 1 {
			_, err := c.DeleteVM(ctx, name)
			if ctx.Err() != nil {
				c.DeleteVM(context.Background(), name)
			}
			return err
		}
		_, err := c.CreateVM(ctx, &blixardpb.VmSpec{Name: name, Vcpus: 1, MemoryMb: memory}, true)
		if ctx.Err() != nil {
			c.DeleteVM(context.Background(), name)
		}
		return err
	}
}

// commitPayload is what the baselines commit for worker w's i-th
// operation: the Raft command blixard's api actor proposes for the load
// generator's create (random-length request id, time, VM spec).
func commitPayload(w, i int) []byte {
	b, err := proto.Marshal(&blixardpb.Command{
		RequestId:  fmt.Sprintf("%032x", uint64(w)<<32|uint64(i)),
		TimeUnixMs: time.Now().UnixMilli(),
		Op: &blixardpb.Command_CreateVm{CreateVm: &blixardpb.CreateVm{NoStart: true, Spec: &blixardpb.VmSpec{
			Name: BenchVMName("bench", w, i), Vcpus: 1, MemoryMb: 64,
		}}},
	})
	if err != nil {
		panic(err) // a fixed, valid message
	}
	return b
}

func (e *env) commitDuration() time.Duration {
	if e.quick() {
		return time.Second
	}
	return 10 * time.Second
}

func runCommit(ctx context.Context, e *env) ([]Table, error) {
	d := e.commitDuration()
	levels := CommitLevels
	bl, unbatched, blNote, err := commitBlixard(ctx, e, levels, d)
	if err != nil {
		return nil, fmt.Errorf("blixard: %w", err)
	}
	raw, err := commitRaw(ctx, e, levels, d)
	if err != nil {
		return nil, fmt.Errorf("raw dragonboat: %w", err)
	}
	et, etNote, err := commitEtcd(ctx, e, levels, d)
	if err != nil {
		return nil, fmt.Errorf("etcd: %w", err)
	}
	t := Table{Suite: "commit", Title: "commit — blixard vs raw dragonboat vs etcd",
		Header: []string{"concurrency", "blixard ops/s", "p50", "p99", "raw ops/s", "p50", "p99", "etcd ops/s", "p50", "p99", "blixard/raw", "blixard/etcd"}}
	byLevel := func(rs []LoadResult, n int) *LoadResult {
		for i := range rs {
			if rs[i].Concurrency == n {
				return &rs[i]
			}
		}
		return nil
	}
	cells := func(r *LoadResult) []string {
		if r == nil {
			return []string{"—", "—", "—"}
		}
		return []string{fmt.Sprintf("%.0f", r.OpsPerSec), fmtMs(r.P50Ms), fmtMs(r.P99Ms)}
	}
	ratio := func(a, b *LoadResult) (float64, string) {
		if a == nil || b == nil || b.OpsPerSec == 0 {
			return 0, "—"
		}
		x := a.OpsPerSec / b.OpsPerSec
		return x, fmt.Sprintf("%.2f", x)
	}
	var errNotes []string
	for _, n := range levels {
		b, r, x := byLevel(bl, n), byLevel(raw, n), byLevel(et, n)
		row := []string{fmt.Sprint(n)}
		row = append(row, cells(b)...)
		row = append(row, cells(r)...)
		row = append(row, cells(x)...)
		_, br := ratio(b, r)
		_, bx := ratio(b, x)
		row = append(row, br, bx)
		t.Rows = append(t.Rows, row)
		for sys, res := range map[string]*LoadResult{"blixard": b, "raw": r, "etcd": x} {
			if res != nil && res.Errors > 0 {
				errNotes = append(errNotes, fmt.Sprintf("%s at %d: %d errors, first: %s", sys, n, res.Errors, oneLine(res.FirstError)))
			}
		}
		if n == 64 || n == 256 {
			if v, s := ratio(b, x); s != "—" {
				t.Targets = append(t.Targets, Target{What: fmt.Sprintf("blixard ≥ 3× etcd ops/s at %d", n), Measured: s + "×", Met: v >= 3})
			}
			if v, s := ratio(b, r); s != "—" {
				t.Targets = append(t.Targets, Target{What: fmt.Sprintf("blixard ≥ 0.5× raw dragonboat at %d", n), Measured: s + "×", Met: v >= 0.5})
			}
		}
		if n == 64 && b != nil {
			t.Targets = append(t.Targets, Target{What: "blixard p99 at 64 ≤ 10 ms", Measured: fmtMs(b.P99Ms), Met: b.P99Ms <= 10})
		}
	}
	t.Notes = append(t.Notes, fmt.Sprintf(
		"Each level runs %s per system. blixard: 3 `blixard run --driver fake` processes on loopback, one load-generator "+
			"process (`blixard bench commit`, the Go client) addressing the leader's api; every VM create and every delete is "+
			"committed through Raft before it is acknowledged. The client sends the writes its callers make while one batch "+
			"is outstanding as one request, which the leader commits as one Raft entry (group commit; each write keeps its "+
			"own request id and result). raw: 3 dragonboat NodeHosts in the harness process with blixard's NodeHost and shard "+
			"settings, a counter state machine, SyncPropose on the leader of %d-byte payloads (the command blixard commits "+
			"for a create), one entry per operation. etcd: 3 members on loopback, puts of the same bytes through "+
			"go.etcd.io/etcd/client/v3 on the leader's endpoint. Latencies are per operation.", d, len(commitPayload(255, 99999))))
	t.Notes = append(t.Notes, "", "blixard with client batching off (`bench commit --batches 0`: every write its own request; the node's api "+
		"commits the writes that arrive while one is being proposed as one entry), same cluster, same run; and how many writes "+
		"each run committed per Raft entry:", "",
		"| concurrency | unbatched ops/s | p50 | p99 | unbatched/raw | unbatched/etcd | unbatched: writes per entry | batched: writes per entry |",
		"|---|---|---|---|---|---|---|---|")
	for _, n := range levels {
		u, b, r, x := byLevel(unbatched, n), byLevel(bl, n), byLevel(raw, n), byLevel(et, n)
		_, ur := ratio(u, r)
		_, ux := ratio(u, x)
		per := func(r *LoadResult) string {
			if r == nil || r.Entries == 0 {
				return "—"
			}
			return fmt.Sprintf("%.1f", float64(r.Ops)/float64(r.Entries))
		}
		row := append([]string{fmt.Sprint(n)}, cells(u)...)
		t.Notes = append(t.Notes, "| "+strings.Join(append(row, ur, ux, per(u), per(b)), " | ")+" |")
	}
	t.Notes = append(t.Notes, "", "CPU per commit (µs; the machine has 2 cores for everything):", "",
		"| concurrency | blixard nodes | blixard load generator | raw (cluster + proposers) | etcd members | etcd client |",
		"|---|---|---|---|---|---|")
	for _, n := range levels {
		b, r, x := byLevel(bl, n), byLevel(raw, n), byLevel(et, n)
		cpu := func(r *LoadResult, server bool) string {
			if r == nil || r.Ops == 0 {
				return "—"
			}
			if server {
				return fmt.Sprintf("%.0f", r.ServerCPUUs)
			}
			return fmt.Sprintf("%.0f", r.ClientCPUUs)
		}
		t.Notes = append(t.Notes, fmt.Sprintf("| %d | %s | %s | %s | %s | %s |", n, cpu(b, true), cpu(b, false), cpu(r, true), cpu(x, true), cpu(x, false)))
	}
	t.Notes = append(t.Notes, "")
	if blNote != "" {
		t.Notes = append(t.Notes, blNote)
	}
	if etNote != "" {
		t.Notes = append(t.Notes, etNote)
	}
	for _, n := range errNotes {
		t.Notes = append(t.Notes, "Errors: "+n)
	}
	return []Table{t}, nil
}

func fmtMs(v float64) string {
	switch {
	case v == 0:
		return "—"
	case v < 10:
		return fmt.Sprintf("%.2f ms", v)
	default:
		return fmt.Sprintf("%.1f ms", v)
	}
}

// commitBlixard runs the load generator as a child process against a
// fresh 3-node cluster, batched (the client's default) and unbatched.
func commitBlixard(ctx context.Context, e *env, levels []int, d time.Duration) (batched, unbatched []LoadResult, _ string, _ error) {
	e.log("commit: starting 3 blixard nodes")
	c, err := startFakeCluster(ctx, e, "commit", 3)
	if err != nil {
		return nil, nil, "", err
	}
	defer c.stop()
	ld, err := c.leader(ctx)
	if err != nil {
		return nil, nil, "", err
	}
	addrs := append([]string{ld.api}, c.apis(ld)...)
	e.log("commit: load generator against leader node %d, %s per level", ld.id, d)
	var pids []int
	for _, nd := range c.nodes {
		pids = append(pids, nd.p.cmd.Process.Pid)
	}
	applied := func() uint64 {
		st, err := c.status(ctx, ld.api)
		if err != nil {
			return 0
		}
		return st.GetAppliedIndex()
	}
	run := func(n, batches int) (LoadResult, error) {
		m := startCPU(pids...)
		child0 := childrenCPU()
		a0 := applied()
		r, err := loadgen(ctx, e, addrs, n, d, batches)
		if err != nil {
			return r, err
		}
		if a1 := applied(); a0 > 0 && a1 > a0 {
			r.Entries = a1 - a0
		}
		r.setCPU(m.used(), childrenCPU()-child0)
		e.log("commit: blixard %d (batches %d): %.0f ops/s p50 %s p99 %s errors %d, %d entries", n, batches, r.OpsPerSec, fmtMs(r.P50Ms), fmtMs(r.P99Ms), r.Errors, r.Entries)
		return r, nil
	}
	for _, n := range levels {
		r, err := run(n, client.DefaultBatchesInFlight)
		if err != nil {
			return nil, nil, "", err
		}
		batched = append(batched, r)
		if r, err = run(n, 0); err != nil {
			return nil, nil, "", err
		}
		unbatched = append(unbatched, r)
	}
	note := ""
	if !e.quick() {
		// A CPU profile of the leader under load, taken in a run of its
		// own so that profiling does not disturb the numbers above.
		e.log("commit: profiling the leader at 64 concurrent for %ds", ProfileSeconds)
		type res struct {
			path string
			err  error
		}
		ch := make(chan res, 1)
		go func() {
			p, err := profileProcess(ctx, ld.p.cmd.Process.Pid, c.dir)
			ch <- res{p, err}
		}()
		_, lerr := loadgen(ctx, e, addrs, 64, ProfileSeconds*time.Second+time.Second, client.DefaultBatchesInFlight)
		pr := <-ch
		if lerr == nil {
			lerr = pr.err
		}
		var flat, cum []string
		if lerr == nil {
			flat, cum, lerr = topFunctions(pr.path, 12)
		}
		if lerr != nil {
			note = "Leader profile: not taken (" + oneLine(lerr.Error()) + ")."
		} else {
			note = fmt.Sprintf("Leader CPU profile (pprof, %d s at 64 concurrent), top functions by self time and by cumulative time:\n\n```\n%s\n\n%s\n```",
				ProfileSeconds, strings.Join(flat, "\n"), strings.Join(cum, "\n"))
		}
	}
	return batched, unbatched, note, nil
}

// loadgen runs `blixard bench commit` at concurrency n for d against
// addrs (in order), with the client keeping batches write batches in
// flight (0: none), and returns its result.
func loadgen(ctx context.Context, e *env, addrs []string, n int, d time.Duration, batches int) (LoadResult, error) {
	cmd := exec.CommandContext(ctx, e.cfg.Bin, "--addr", strings.Join(addrs, ","), "-o", "json",
		"bench", "commit", "--concurrency", fmt.Sprint(n), "--duration", d.String(), "--batches", fmt.Sprint(batches))
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return LoadResult{}, fmt.Errorf("load generator: %v: %s", err, oneLine(stderr.String()))
	}
	var r LoadResult
	sc := bufio.NewScanner(bytes.NewReader(out))
	if !sc.Scan() {
		return r, fmt.Errorf("load generator printed nothing")
	}
	if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
		return r, fmt.Errorf("load generator output %q: %w", sc.Text(), err)
	}
	return r, nil
}
