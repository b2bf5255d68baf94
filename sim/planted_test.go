//go:build simbugs

package sim

import (
	"slices"
	"testing"
	"time"

	"github.com/blixard/blixard/consensus/simbug"
)

// maxSeedsPerBug bounds how many seeds the harness may need to report a
// planted bug.
const maxSeedsPerBug = 6

// minFenceOverlap is how long two copies must overlap for the skip-fence
// case to count as caught.
const minFenceOverlap = 200 * time.Millisecond

// TestPlantedBugsAreCaught plants each known bug and requires the
// harness to report it, through the checker that guards against it,
// within maxSeedsPerBug seeds. A harness that never fails is worth
// nothing.
func TestPlantedBugsAreCaught(t *testing.T) {
	cases := []struct {
		bug     simbug.Bug
		checker string
		cfg     Config
	}{
		// Apply reading the wall clock makes replicas diverge.
		{simbug.ApplyWallClock, "converged", Config{Nodes: 3, Clients: 3, Ops: 60, Duration: 3 * time.Second, Converge: 10 * time.Second}},
		// Answering before the commit loses or reorders writes.
		{simbug.AckBeforeCommit, "linearizable", Config{Nodes: 3, Clients: 4, Ops: 150, Faults: FaultPartition | FaultCrash | FaultDelay, Duration: 6 * time.Second, Converge: 10 * time.Second}},
		// Without self-fencing a cut-off node keeps its VMs while the
		// others re-place them, for the rest of the partition: an
		// overlap of at least minFenceOverlap (the bugs found so far
		// overlap for milliseconds; see sim/doc.go). Migrations are left
		// out, as when the case was tuned: this case is about fencing.
		// Partitions of 4-6 s: well past failure detection plus the
		// down grace, so the majority re-places the cut-off node's VMs
		// while they still run there.
		{simbug.SkipFence, "single-copy", Config{Nodes: 3, Clients: 3, Ops: 120, Faults: FaultPartition, Duration: 12 * time.Second, Converge: 15 * time.Second, NoMigrate: true,
			MinWindow: 4 * time.Second, MaxWindow: 6 * time.Second}},
	}
	for _, tc := range cases {
		t.Run(tc.bug.String(), func(t *testing.T) {
			for seed := uint64(1); seed <= maxSeedsPerBug; seed++ {
				cfg := tc.cfg
				cfg.Seed, cfg.Plant = seed, tc.bug
				rep := runOnce(t, cfg)
				if slices.Contains(rep.Failed(), tc.checker) && (tc.bug != simbug.SkipFence || rep.MaxOverlap >= minFenceOverlap) {
					t.Logf("planted %s caught by %s at seed %d (of at most %d)", tc.bug, tc.checker, seed, maxSeedsPerBug)
					return
				}
			}
			t.Fatalf("planted %s not reported by %s within %d seeds", tc.bug, tc.checker, maxSeedsPerBug)
		})
	}
}
