package benchsuite

import (
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/blixard/blixard/proto/blixardpb"
)

// leaderKillGap SIGKILLs the leader and returns the time until a write
// through the survivors succeeds; then it restarts the killed node and
// waits for the cluster to be healthy again.
func leaderKillGap(ctx context.Context, e *env, c *fakeCluster, trial int) (time.Duration, error) {
	ld, err := c.leader(ctx)
	if err != nil {
		return 0, err
	}
	cl, err := dial(ctx, c.apis(ld))
	if err != nil {
		return 0, err
	}
	defer cl.Close()
	t0 := time.Now()
	ld.p.kill()
	var gap time.Duration
	for i := 0; ; i++ {
		if time.Since(t0) > time.Minute {
			return 0, fmt.Errorf("no write succeeded within a minute of killing leader %d", ld.id)
		}
		wctx, cancel := context.WithTimeout(ctx, time.Second)
		_, err := cl.CreateVM(wctx, &blixardpb.VmSpec{Name: fmt.Sprintf("fo-%d-%d", trial, i), Vcpus: 1, MemoryMb: 64}, true)
		cancel()
		if err == nil {
			gap = time.Since(t0)
			break
		}
		if ctx.Err() != nil {
			return 0, ctx.Err()
		}
	}
	e.log("failover: leader %d killed, first write after %s", ld.id, gap.Round(time.Millisecond))
	if err := c.start(ld); err != nil {
		return 0, err
	}
	return gap, c.waitHealthy(ctx, 2*time.Minute)
}

// nodeLossTime starts a fresh cluster, creates 3×vms VMs (spread
// placement puts about vms on each node), SIGKILLs a follower and
// returns the time until every VM runs on a survivor, and how many VMs
// the follower had. (A VM created with --node is pinned there and would
// not move.)
func nodeLossTime(ctx context.Context, e *env, vms int) (time.Duration, int, error) {
	c, err := startFakeCluster(ctx, e, "nodeloss", 3)
	if err != nil {
		return 0, 0, err
	}
	defer c.stop()
	ld, err := c.leader(ctx)
	if err != nil {
		return 0, 0, err
	}
	var victim *node
	for _, nd := range c.nodes {
		if nd != ld {
			victim = nd
			break
		}
	}
	cl, err := dial(ctx, c.apis(victim))
	if err != nil {
		return 0, 0, err
	}
	defer cl.Close()
	total := 3 * vms
	for i := 0; i < total; i++ {
		if _, err := cl.CreateVM(ctx, &blixardpb.VmSpec{Name: fmt.Sprintf("nl-%d", i), Vcpus: 1, MemoryMb: 64}, false); err != nil {
			return 0, 0, err
		}
	}
	onVictim := 0
	allRunning := func(notOn uint64) (bool, error) {
		lctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		defer cancel()
		recs, err := cl.ListVMs(lctx)
		if err != nil {
			return false, nil
		}
		n := 0
		onVictim = 0
		for _, r := range recs {
			if r.GetStatus() == blixardpb.VmStatus_VM_STATUS_RUNNING && r.GetNodeId() != notOn {
				n++
			}
			if r.GetNodeId() == victim.id {
				onVictim++
			}
		}
		return n == total, nil
	}
	if err := poll(ctx, time.Minute, "the VMs running", func() (bool, error) { return allRunning(0) }); err != nil {
		return 0, 0, err
	}
	had := onVictim
	if had == 0 {
		return 0, 0, fmt.Errorf("no VM was placed on node %d", victim.id)
	}
	// The VMs' start may have raced gossip's convergence on a fresh cluster.
	if err := c.waitHealthy(ctx, time.Minute); err != nil {
		return 0, 0, err
	}
	t0 := time.Now()
	victim.p.kill()
	if err := poll(ctx, 2*time.Minute, "the VMs running elsewhere", func() (bool, error) { return allRunning(victim.id) }); err != nil {
		return 0, 0, err
	}
	d := time.Since(t0)
	e.log("failover: node %d killed, its %d VMs running elsewhere after %s", victim.id, had, d.Round(time.Millisecond))
	return d, had, nil
}

func runFailover(ctx context.Context, e *env) ([]Table, error) {
	kills, losses, vms := 5, 3, 10
	if e.quick() {
		kills, losses, vms = 1, 1, 3
	}
	e.log("failover: starting 3 blixard nodes")
	c, err := startFakeCluster(ctx, e, "failover", 3)
	if err != nil {
		return nil, err
	}
	var gaps []float64
	for k := 0; k < kills; k++ {
		g, err := leaderKillGap(ctx, e, c, k)
		if err != nil {
			c.stop()
			return nil, fmt.Errorf("leader kill %d: %w", k+1, err)
		}
		gaps = append(gaps, g.Seconds())
	}
	c.stop()
	var loss []float64
	moved := 0
	for k := 0; k < losses; k++ {
		d, had, err := nodeLossTime(ctx, e, vms)
		if err != nil {
			return nil, fmt.Errorf("node loss %d: %w", k+1, err)
		}
		loss = append(loss, d.Seconds())
		moved = max(moved, had)
	}
	row := func(what string, xs []float64) []string {
		return []string{what, fmt.Sprint(len(xs)), fmt.Sprintf("%.2f s", Median(xs)), fmt.Sprintf("%.2f s", slices.Min(xs)), fmt.Sprintf("%.2f s", slices.Max(xs))}
	}
	t := Table{Suite: "failover", Title: "failover — 3 processes, loopback, fake driver, default timings",
		Header: []string{"what", "samples", "p50", "min", "max"},
		Rows: [][]string{
			row("leader SIGKILL → first successful write", gaps),
			row(fmt.Sprintf("follower SIGKILL → its VMs (up to %d) running elsewhere", moved), loss),
		},
		Targets: []Target{
			{What: "write gap p50 ≤ 1 s", Measured: fmt.Sprintf("%.2f s", Median(gaps)), Met: Median(gaps) <= 1},
			{What: "node loss → VMs running elsewhere ≤ 8 s (every sample)", Measured: fmt.Sprintf("max %.2f s", slices.Max(loss)), Met: slices.Max(loss) <= 8},
		},
		Notes: []string{"Writes are VM creates through a client of the surviving nodes, each attempt bounded by 1 s, retried at once; " +
			"the killed leader is restarted on its data dir and the cluster is healthy again before the next kill. Node loss " +
			"uses a fresh cluster per sample and kills a follower; it includes gossip detection, the 4 s --down-grace and the restart " +
			"(see docs/failover.md)."},
	}
	return []Table{t}, nil
}
