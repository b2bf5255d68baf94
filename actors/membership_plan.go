package actors

import (
	"fmt"
	"sort"
	"time"

	"github.com/blixard/blixard/consensus"
	"github.com/blixard/blixard/membership"
	"github.com/blixard/blixard/proto/blixardpb"
)

// Role names sent to a joining node (membership.JoinReply.Role) and kept
// in its data dir.
const (
	RoleVoter     = "voter"
	RoleNonVoting = "non-voting"
)

// membershipView is what the Raft leader knows when it turns the gossip
// view into cluster changes (planMembership).
type membershipView struct {
	Self uint64
	Now  time.Time
	// Since is when this node started watching as leader: a node record
	// with no gossip member at all counts as dead from then on.
	Since     time.Time
	DownGrace time.Duration
	// DeadVoterGrace is how long a voter must be down (its record down,
	// gone from gossip) before a caught-up non-voting member may replace it.
	DeadVoterGrace time.Duration
	MaxVoters      int
	Gossip         []membership.Member
	Raft           consensus.Membership
	Nodes          []*blixardpb.NodeRecord
	// SeenAlive is, by node id, the last applied index at which this
	// leader saw the member alive in gossip (or, for one it never saw
	// alive, the index when it first saw it gone). A down proposal
	// carries it, so that the state machine refuses it when the node
	// registered again since (it came back before the proposal landed).
	SeenAlive map[uint64]uint64
}

type membershipActionKind int

const (
	actUpsertNode membershipActionKind = iota + 1
	actAddVoter
	actAddNonVoting
	actSetStatus
	actReply
	// actRemoveNode removes a replaced voter's node record (RemoveNode)
	// and actRemoveReplica its Raft replica.
	actRemoveNode
	actRemoveReplica
)

// membershipAction is one change the leader makes; every action is
// idempotent, so a plan may be executed again after a partial failure.
type membershipAction struct {
	Kind   membershipActionKind
	NodeID uint64
	// Addr is the Raft address (add actions).
	Addr   string
	Record *blixardpb.NodeRecord
	Status blixardpb.NodeStatus
	// SeenAlive goes with a down status (membershipView.SeenAlive).
	SeenAlive uint64
	Reply     membership.JoinReply
	// Why is a short reason for the log.
	Why string
}

func (a membershipAction) String() string {
	switch a.Kind {
	case actUpsertNode:
		return fmt.Sprintf("upsert node %d", a.NodeID)
	case actAddVoter:
		return fmt.Sprintf("add voter %d at %s", a.NodeID, a.Addr)
	case actAddNonVoting:
		return fmt.Sprintf("add non-voting %d at %s", a.NodeID, a.Addr)
	case actSetStatus:
		return fmt.Sprintf("set node %d %s", a.NodeID, consensus.NodeStatusName(a.Status))
	case actRemoveNode:
		return fmt.Sprintf("remove node record %d", a.NodeID)
	case actRemoveReplica:
		return fmt.Sprintf("remove voter %d", a.NodeID)
	case actReply:
		if a.Reply.Error != "" {
			return fmt.Sprintf("refuse node %d: %s", a.NodeID, a.Reply.Error)
		}
		return fmt.Sprintf("tell node %d it is a %s", a.NodeID, a.Reply.Role)
	}
	return "unknown action"
}

// planMembership is the leader's decision, a pure function of the view:
//
//   - a gossip member that announces it is joining and is not a replica
//     is registered (UpsertNode) and added as non-voting; a joining
//     member that is already a replica is told its role (the join reply
//     is repeated until the member stops announcing Joining, which it
//     does once its replica has caught up and it registered itself);
//   - while the voters number fewer than MaxVoters, live non-voting
//     members that no longer announce Joining are promoted, lowest id
//     first. A member thus votes only once it has caught up: a joiner
//     that never comes up cannot cost the cluster its quorum (adding a
//     second voter to a single node would otherwise need both);
//   - a voter that has been down for DeadVoterGrace (its record down, the
//     member dead, left or never seen in gossip) is replaced when a live,
//     caught-up non-voting member can take its seat: its record and its
//     replica are removed first, then the member is promoted. Adding a
//     voter beside a dead one would raise the quorum without adding a
//     live vote (3 voters with one dead tolerate no further loss, nor do
//     4 with one dead); replacing it restores the tolerance. Without a
//     replacement a dead voter stays, since it may come back; once
//     removed its id can never rejoin (Raft never reuses ids), exactly as
//     after `cluster leave`. Consul's autopilot cleans up dead servers the
//     same way;
//   - a joining member whose id was removed from Raft is refused;
//   - a member dead or gone for DownGrace (with a node record but never
//     seen: for twice DownGrace after Since) is set down, which re-places
//     its VMs;
//   - a member alive in gossip whose record is down or suspect is set
//     alive again (and so is the leader itself).
//
// Members that are not replicas and do not announce Joining (a node
// bootstrapped as another cluster) are left alone.
func planMembership(v membershipView) []membershipAction {
	out, _, _ := plan(v)
	return out
}

// nextDown is the earliest time after v.Now at which planMembership
// would set a member down (its grace ends), if gossip does not change
// before; ok is false when no member is on its way down. The membership
// loop runs a pass then, rather than up to a tick later.
func nextDown(v membershipView) (at time.Time, ok bool) {
	_, at, ok = plan(v)
	return at, ok
}

// plan is planMembership, also returning nextDown.
func plan(v membershipView) (out []membershipAction, nextDown time.Time, hasNext bool) {
	records := make(map[uint64]*blixardpb.NodeRecord, len(v.Nodes))
	for _, r := range v.Nodes {
		records[r.GetId()] = r
	}
	removed := make(map[uint64]bool, len(v.Raft.Removed))
	for _, id := range v.Raft.Removed {
		removed[id] = true
	}
	voters := len(v.Raft.Voters)
	maxVoters := v.MaxVoters
	if maxVoters <= 0 {
		maxVoters = 5
	}
	seen := make(map[uint64]membership.Member, len(v.Gossip))
	for _, m := range v.Gossip {
		seen[m.NodeID] = m
	}
	ids := make([]uint64, 0, len(seen))
	for id := range seen {
		ids = append(ids, id)
	}
	sort.Slice(ids, func(i, j int) bool { return ids[i] < ids[j] })
	dead := deadVoters(v, records, seen)

	for _, id := range ids {
		m := seen[id]
		if id == v.Self {
			continue
		}
		live := m.State == membership.StateAlive || m.State == membership.StateSuspect
		if !live {
			continue
		}
		_, isVoter := v.Raft.Voters[id]
		_, isNonVoting := v.Raft.NonVoting[id]
		switch {
		case removed[id]:
			if m.Joining {
				out = append(out, membershipAction{Kind: actReply, NodeID: id, Reply: membership.JoinReply{NodeID: id,
					Error: fmt.Sprintf("node id %d was removed from the cluster and Raft never reuses an id: start this node with a new --node-id and an empty data dir", id)}})
			}
			continue
		case !isVoter && !isNonVoting:
			if !m.Joining {
				continue
			}
			if m.RaftAddr == "" {
				continue
			}
			out = append(out, membershipAction{Kind: actUpsertNode, NodeID: id, Record: recordFromMeta(m.Meta), Why: "joined by gossip"},
				membershipAction{Kind: actAddNonVoting, NodeID: id, Addr: m.RaftAddr},
				membershipAction{Kind: actReply, NodeID: id, Reply: membership.JoinReply{NodeID: id, Role: RoleNonVoting}})
			continue
		case m.Joining:
			role := RoleVoter
			if isNonVoting {
				role = RoleNonVoting
			}
			out = append(out, membershipAction{Kind: actReply, NodeID: id, Reply: membership.JoinReply{NodeID: id, Role: role}})
		case isNonVoting && m.State == membership.StateAlive && !m.Leaving && m.RaftAddr != "" && len(dead) > 0:
			d := dead[0]
			dead = dead[1:]
			why := fmt.Sprintf("voter %d down for over %s; replaced by node %d", d, v.DeadVoterGrace, id)
			out = append(out, membershipAction{Kind: actRemoveNode, NodeID: d, Why: why},
				membershipAction{Kind: actRemoveReplica, NodeID: d, Why: why},
				membershipAction{Kind: actAddVoter, NodeID: id, Addr: v.Raft.NonVoting[id], Why: fmt.Sprintf("caught up; replaces dead voter %d", d)})
		case isNonVoting && voters < maxVoters && m.State == membership.StateAlive && !m.Leaving && m.RaftAddr != "":
			voters++
			out = append(out, membershipAction{Kind: actAddVoter, NodeID: id, Addr: v.Raft.NonVoting[id], Why: "caught up; fewer voters than the maximum"})
		}
		if r := records[id]; r != nil && m.State == membership.StateAlive && !m.Leaving {
			switch r.GetStatus() {
			case blixardpb.NodeStatus_NODE_STATUS_DOWN, blixardpb.NodeStatus_NODE_STATUS_SUSPECT:
				out = append(out, membershipAction{Kind: actSetStatus, NodeID: id, Status: blixardpb.NodeStatus_NODE_STATUS_ALIVE, Why: "alive in gossip"})
			}
		}
	}

	recIDs := make([]uint64, 0, len(records))
	for id := range records {
		recIDs = append(recIDs, id)
	}
	sort.Slice(recIDs, func(i, j int) bool { return recIDs[i] < recIDs[j] })
	for _, id := range recIDs {
		r := records[id]
		st := r.GetStatus()
		if id == v.Self {
			if st == blixardpb.NodeStatus_NODE_STATUS_DOWN || st == blixardpb.NodeStatus_NODE_STATUS_SUSPECT {
				out = append(out, membershipAction{Kind: actSetStatus, NodeID: id, Status: blixardpb.NodeStatus_NODE_STATUS_ALIVE, Why: "the leader itself"})
			}
			continue
		}
		switch st {
		case blixardpb.NodeStatus_NODE_STATUS_ALIVE, blixardpb.NodeStatus_NODE_STATUS_SUSPECT, blixardpb.NodeStatus_NODE_STATUS_DRAINING:
		default:
			continue
		}
		m, ok := seen[id]
		goneSince, gone := v.goneSince(m, ok)
		if !gone {
			continue
		}
		if gone := v.Now.Sub(goneSince); gone >= v.DownGrace {
			why := fmt.Sprintf("gossip: %s for %s", stateWord(m, ok), gone.Round(time.Millisecond))
			out = append(out, membershipAction{Kind: actSetStatus, NodeID: id, Status: blixardpb.NodeStatus_NODE_STATUS_DOWN, SeenAlive: v.SeenAlive[id], Why: why})
		} else if due := goneSince.Add(v.DownGrace); !hasNext || due.Before(nextDown) {
			nextDown, hasNext = due, true
		}
	}
	return out, nextDown, hasNext
}

// goneSince is when the down grace of a member with a node record
// started, given its gossip member m (ok: gossip knows it); gone is
// false for a member alive or suspect in gossip.
func (v membershipView) goneSince(m membership.Member, ok bool) (since time.Time, gone bool) {
	switch {
	case !ok:
		// Gossip may still be converging after a leader change: a
		// member never seen gets twice the grace.
		return v.Since.Add(v.DownGrace), true
	case m.State == membership.StateDead || m.State == membership.StateLeft:
		// A death this node saw before it led is old news: while it
		// followed, the member may have come back to the others (this
		// node's own view can be stale, say after it was cut off
		// itself). Count as for a member never seen: from one grace
		// after leading began (the simulator found a new leader setting
		// down, on its stale view, a node that was running its VMs with
		// quorum contact).
		since := m.Since
		if lead := v.Since.Add(v.DownGrace); lead.After(since) {
			since = lead
		}
		return since, true
	}
	return time.Time{}, false
}

// deadVoters are the voters, lowest id first, that may be replaced: not
// this node, their record down, gone from gossip (dead, left or never
// seen) for at least DeadVoterGrace. A zero DeadVoterGrace replaces none.
func deadVoters(v membershipView, records map[uint64]*blixardpb.NodeRecord, seen map[uint64]membership.Member) []uint64 {
	if v.DeadVoterGrace <= 0 {
		return nil
	}
	var out []uint64
	for id := range v.Raft.Voters {
		r := records[id]
		if id == v.Self || r == nil || r.GetStatus() != blixardpb.NodeStatus_NODE_STATUS_DOWN {
			continue
		}
		goneSince := v.Since.Add(v.DownGrace)
		if m, ok := seen[id]; ok {
			if m.State != membership.StateDead && m.State != membership.StateLeft {
				continue
			}
			goneSince = m.Since
		}
		if v.Now.Sub(goneSince) >= v.DeadVoterGrace {
			out = append(out, id)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i] < out[j] })
	return out
}

func stateWord(m membership.Member, ok bool) string {
	if !ok {
		return "never seen"
	}
	return m.State.String()
}

// recordFromMeta is the node record the leader registers for a joining
// member; the member upserts its own once its replica runs.
func recordFromMeta(m membership.Meta) *blixardpb.NodeRecord {
	return &blixardpb.NodeRecord{
		Id:          m.NodeID,
		ApiAddr:     m.APIAddr,
		RaftAddr:    m.RaftAddr,
		GossipAddr:  m.GossipAddr,
		Vcpus:       m.Vcpus,
		MemoryMb:    m.MemoryMB,
		Labels:      m.Labels,
		Status:      blixardpb.NodeStatus_NODE_STATUS_ALIVE,
		Schedulable: true,
		Version:     m.Version,
	}
}
