package benchsuite

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os/exec"
	"strings"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/blixard/blixard/client"
	"github.com/blixard/blixard/proto/blixardpb"
)

// CommitLevels are the concurrency levels of the commit suite.
var CommitLevels = []int{1, 64, 256}

// BenchVMName is the name of worker w's i-th benchmark VM.
func BenchVMName(prefix string, w, i int) string { return fmt.Sprintf("%s-%d-%d", prefix, w, i) }

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
	bl, blNote, err := commitBlixard(ctx, e, levels, d)
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
			"one commit. raw: 3 dragonboat NodeHosts in the harness process with blixard's NodeHost and shard settings, a "+
			"counter state machine, SyncPropose on the leader of %d-byte payloads (the command blixard commits for a create). "+
			"etcd: 3 members on loopback, puts of the same bytes through go.etcd.io/etcd/client/v3 on the leader's endpoint. "+
			"Latencies are per commit.", d, len(commitPayload(255, 99999))))
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
// fresh 3-node cluster.
func commitBlixard(ctx context.Context, e *env, levels []int, d time.Duration) ([]LoadResult, string, error) {
	e.log("commit: starting 3 blixard nodes")
	c, err := startFakeCluster(ctx, e, "commit", 3)
	if err != nil {
		return nil, "", err
	}
	defer c.stop()
	ld, err := c.leader(ctx)
	if err != nil {
		return nil, "", err
	}
	addrs := append([]string{ld.api}, c.apis(ld)...)
	var lv []string
	for _, n := range levels {
		lv = append(lv, fmt.Sprint(n))
	}
	e.log("commit: load generator against leader node %d, levels %s, %s each", ld.id, strings.Join(lv, ","), d)
	cmd := exec.CommandContext(ctx, e.cfg.Bin, "--addr", strings.Join(addrs, ","), "-o", "json",
		"bench", "commit", "--concurrency", strings.Join(lv, ","), "--duration", d.String())
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, "", fmt.Errorf("load generator: %v: %s", err, oneLine(stderr.String()))
	}
	var rs []LoadResult
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		var r LoadResult
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			return nil, "", fmt.Errorf("load generator output %q: %w", sc.Text(), err)
		}
		rs = append(rs, r)
	}
	return rs, "", nil
}
