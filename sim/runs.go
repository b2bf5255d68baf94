package sim

import (
	"fmt"
	"sort"
	"sync"
	"time"

	"github.com/blixard/blixard/microvm/fake"
)

// runLog is every VM "process" the fake drivers of a run started, on
// every node, with start and stop times (fake.WithRunObserver). Unlike
// the drivers' own records it survives deletes and node crashes.
type runLog struct {
	mu   sync.Mutex
	runs map[runKey]*nodeRun
}

type runKey struct {
	node uint64
	name string
	seq  int
	// start tells apart runs of a name recreated on the same node (seq
	// restarts at 1 after a destroy).
	start time.Time
}

type nodeRun struct {
	Node uint64
	fake.Run
}

func newRunLog() *runLog { return &runLog{runs: map[runKey]*nodeRun{}} }

func (l *runLog) observer(node uint64) func(fake.Run) {
	return func(r fake.Run) {
		l.mu.Lock()
		defer l.mu.Unlock()
		k := runKey{node: node, name: r.Name, seq: r.Seq, start: r.StartedAt}
		l.runs[k] = &nodeRun{Node: node, Run: r}
	}
}

// all returns the runs sorted by start time.
func (l *runLog) all() []nodeRun {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := make([]nodeRun, 0, len(l.runs))
	for _, r := range l.runs {
		out = append(out, *r)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].StartedAt.Before(out[j].StartedAt) })
	return out
}

// running returns the runs still running, by VM id.
func (l *runLog) running() map[uint64][]nodeRun {
	out := map[uint64][]nodeRun{}
	for _, r := range l.all() {
		if r.Running() {
			out[r.ID] = append(out[r.ID], r)
		}
	}
	return out
}

// checkSingleCopy is the "at most one running copy of a VM at any
// instant" checker: no two runs of one VM id may overlap in time. Runs
// still running count as running until end. Self-fencing and the down
// grace are meant to make any overlap impossible (docs/failover.md), so
// no overlap is tolerated; the simulator's timings keep that document's
// inequality with a wide margin.
func checkSingleCopy(runs []nodeRun, end time.Time) ([]string, time.Duration) {
	byID := map[uint64][]nodeRun{}
	for _, r := range runs {
		byID[r.ID] = append(byID[r.ID], r)
	}
	ids := make([]uint64, 0, len(byID))
	for id := range byID {
		ids = append(ids, id)
	}
	sort.Slice(ids, func(i, j int) bool { return ids[i] < ids[j] })
	stop := func(r nodeRun) time.Time {
		if r.Running() {
			return end
		}
		return r.StoppedAt
	}
	var out []string
	var longest time.Duration
	for _, id := range ids {
		rs := byID[id]
		for i := range rs {
			for j := i + 1; j < len(rs); j++ {
				a, b := rs[i], rs[j]
				if a.StartedAt.Before(stop(b)) && b.StartedAt.Before(stop(a)) {
					ov := earlier(stop(a), stop(b)).Sub(later(a.StartedAt, b.StartedAt))
					longest = max(longest, ov)
					out = append(out, fmt.Sprintf("vm %s (id %d) ran twice at once for %s: node %d run %d [%s, %s) and node %d run %d [%s, %s)",
						a.Name, id, ov.Round(time.Millisecond), a.Node, a.Seq, a.StartedAt.Format("15:04:05.000"), fmtStop(a),
						b.Node, b.Seq, b.StartedAt.Format("15:04:05.000"), fmtStop(b)))
				}
			}
		}
	}
	return out, longest
}

func fmtStop(r nodeRun) string {
	if r.Running() {
		return "still running"
	}
	return r.StoppedAt.Format("15:04:05.000")
}

func earlier(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}

func later(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}
