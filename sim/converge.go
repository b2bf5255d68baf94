package sim

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/blixard/blixard/consensus"
	"github.com/blixard/blixard/proto/blixardpb"
)

type convergence struct {
	ok      bool
	state   finalState
	verdict Verdict
}

// converge waits, after every fault was healed and every node restarted,
// until the cluster has converged or timeout passes:
//   - every node record is alive;
//   - every replica has applied the same index and its state snapshot
//     hashes the same (a different hash at the same index fails at once:
//     apply is not deterministic);
//   - no VM is in a transitional status (pending, starting, stopping);
//   - every VM desired running runs exactly once, on its node, and is
//     reported running; nothing else runs anywhere.
func (c *cluster) converge(ctx context.Context, timeout time.Duration) convergence {
	v := Verdict{Checker: "converged"}
	start := time.Now()
	deadline := start.Add(timeout)
	var last []string
	var state finalState
	for {
		problems, st, fatal := c.convergedOnce(ctx)
		if st != nil {
			state = st
		}
		if fatal != "" {
			v.Detail = fatal
			return convergence{state: state, verdict: v}
		}
		if len(problems) == 0 {
			v.OK = true
			v.Detail = fmt.Sprintf("in %.1fs: %d vms, replicas equal", time.Since(start).Seconds(), len(state))
			return convergence{ok: true, state: state, verdict: v}
		}
		last = problems
		if time.Now().After(deadline) || ctx.Err() != nil {
			if len(last) > 8 {
				last = append(last[:8], fmt.Sprintf("… %d more", len(problems)-8))
			}
			v.Detail = fmt.Sprintf("not converged after %s: %s%s", timeout, strings.Join(last, "; "), c.localViews(state))
			return convergence{state: state, verdict: v}
		}
		sleepUntil(ctx, time.Now().Add(100*time.Millisecond))
	}
}

func (c *cluster) convergedOnce(ctx context.Context) (problems []string, state finalState, fatal string) {
	hashes := map[uint64]stateHash{}
	for _, n := range c.nodes {
		nd := n.current()
		if nd == nil {
			problems = append(problems, fmt.Sprintf("node %d down", n.id))
			continue
		}
		rctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		var h stateHash
		var herr error
		var vms []*blixardpb.VmRecord
		var nodes []*blixardpb.NodeRecord
		err := nd.Replica().Read(rctx, false, func(s *consensus.State) {
			h, herr = hashState(s)
			vms, nodes = s.VMs(), s.Nodes()
		})
		cancel()
		if err == nil {
			err = herr
		}
		if err != nil {
			problems = append(problems, fmt.Sprintf("node %d: reading state: %v", n.id, err))
			continue
		}
		hashes[n.id] = h
		if state == nil {
			state = finalState{}
			for _, r := range vms {
				state[r.GetSpec().GetName()] = r
			}
			for _, r := range nodes {
				if r.GetStatus() != blixardpb.NodeStatus_NODE_STATUS_ALIVE {
					problems = append(problems, fmt.Sprintf("node %d is %s", r.GetId(), consensus.NodeStatusName(r.GetStatus())))
				}
			}
		}
	}
	if len(hashes) == len(c.nodes) {
		same := true
		var first stateHash
		for id, h := range hashes {
			if first == (stateHash{}) {
				first = h
			}
			if h.applied != first.applied {
				same = false
				problems = append(problems, fmt.Sprintf("replica %d at applied index %d, another at %d", id, h.applied, first.applied))
				break
			}
		}
		if same {
			for id, h := range hashes {
				if h.hash != first.hash {
					return problems, state, fmt.Sprintf("replica snapshots differ at applied index %d: %s", first.applied, describeHashes(hashes))
				}
				_ = id
			}
		}
	}
	if state == nil {
		return problems, nil, ""
	}
	running := c.runs.running()
	ids := map[uint64]bool{}
	names := make([]string, 0, len(state))
	for n := range state {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, name := range names {
		r := state[name]
		ids[r.GetId()] = true
		switch r.GetStatus() {
		case blixardpb.VmStatus_VM_STATUS_PENDING, blixardpb.VmStatus_VM_STATUS_STARTING, blixardpb.VmStatus_VM_STATUS_STOPPING:
			problems = append(problems, fmt.Sprintf("vm %s stuck %s", name, r.GetStatus()))
		}
		runs := running[r.GetId()]
		if r.GetDesired() == blixardpb.DesiredState_DESIRED_RUNNING {
			if r.GetStatus() != blixardpb.VmStatus_VM_STATUS_RUNNING {
				problems = append(problems, fmt.Sprintf("vm %s desired running but %s (%s)", name, r.GetStatus(), r.GetMessage()))
			}
			if len(runs) != 1 || runs[0].Node != r.GetNodeId() {
				problems = append(problems, fmt.Sprintf("vm %s desired running on node %d but runs %s", name, r.GetNodeId(), describeRuns(runs)))
			}
		} else if len(runs) > 0 {
			problems = append(problems, fmt.Sprintf("vm %s desired stopped but runs %s", name, describeRuns(runs)))
		}
	}
	for id, runs := range running {
		if !ids[id] {
			problems = append(problems, fmt.Sprintf("deleted vm %s (id %d) still runs %s", runs[0].Name, id, describeRuns(runs)))
		}
	}
	return problems, state, ""
}

// localViews describes, for the VMs of state that are not settled (a
// transitional status, or desired running but not reported running), what
// each node's VM actor last observed: where a report went missing.
func (c *cluster) localViews(state finalState) string {
	unsettled := map[string]bool{}
	for name, r := range state {
		st := r.GetStatus()
		if st == blixardpb.VmStatus_VM_STATUS_PENDING || st == blixardpb.VmStatus_VM_STATUS_STARTING || st == blixardpb.VmStatus_VM_STATUS_STOPPING ||
			(r.GetDesired() == blixardpb.DesiredState_DESIRED_RUNNING && st != blixardpb.VmStatus_VM_STATUS_RUNNING) {
			unsettled[name] = true
		}
	}
	if len(unsettled) == 0 {
		return ""
	}
	var parts []string
	for _, n := range c.nodes {
		nd := n.current()
		if nd == nil {
			continue
		}
		lv, err := nd.LocalVMs(2 * time.Second)
		switch {
		case err != nil:
			parts = append(parts, fmt.Sprintf("node %d: %v", n.id, err))
		case lv == nil:
			parts = append(parts, fmt.Sprintf("node %d: no vms supervisor (fenced?)", n.id))
		default:
			for _, v := range lv.VMs {
				if unsettled[v.Name] {
					parts = append(parts, fmt.Sprintf("node %d sees %s id %d gen %d %s%s", n.id, v.Name, v.ID, v.Generation, v.Status, map[bool]string{true: " (removing)"}[v.Removing]))
				}
			}
		}
	}
	for name := range unsettled {
		r := state[name]
		parts = append(parts, fmt.Sprintf("state: %s id %d gen %d node %d %s", name, r.GetId(), r.GetGeneration(), r.GetNodeId(), r.GetStatus()))
	}
	sort.Strings(parts)
	return "; local views: " + strings.Join(parts, "; ")
}

func describeRuns(runs []nodeRun) string {
	if len(runs) == 0 {
		return "nowhere"
	}
	var parts []string
	for _, r := range runs {
		parts = append(parts, fmt.Sprintf("on node %d (run %d)", r.Node, r.Seq))
	}
	return strings.Join(parts, ", ")
}

func describeHashes(h map[uint64]stateHash) string {
	ids := make([]uint64, 0, len(h))
	for id := range h {
		ids = append(ids, id)
	}
	sort.Slice(ids, func(i, j int) bool { return ids[i] < ids[j] })
	var parts []string
	for _, id := range ids {
		parts = append(parts, fmt.Sprintf("node %d %s", id, h[id].hash))
	}
	return strings.Join(parts, ", ")
}
