package actors

import (
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/blixard/blixard/consensus"
	"github.com/blixard/blixard/membership"
	"github.com/blixard/blixard/proto/blixardpb"
)

func TestPlanMembership(t *testing.T) {
	t0 := time.Unix(1000, 0)
	member := func(id uint64, st membership.State, since time.Time, joining bool) membership.Member {
		return membership.Member{Meta: membership.Meta{NodeID: id, RaftAddr: "r" + u64s(id), APIAddr: "a" + u64s(id), Joining: joining},
			State: st, Since: since}
	}
	rec := func(id uint64, st blixardpb.NodeStatus) *blixardpb.NodeRecord {
		return &blixardpb.NodeRecord{Id: id, Status: st}
	}
	raft := func(voters []uint64, nonVoting []uint64, removed ...uint64) consensus.Membership {
		m := consensus.Membership{Voters: map[uint64]string{}, NonVoting: map[uint64]string{}, Removed: removed}
		for _, id := range voters {
			m.Voters[id] = "r" + u64s(id)
		}
		for _, id := range nonVoting {
			m.NonVoting[id] = "r" + u64s(id)
		}
		return m
	}
	alive, down := blixardpb.NodeStatus_NODE_STATUS_ALIVE, blixardpb.NodeStatus_NODE_STATUS_DOWN
	grace := 4 * time.Second
	cases := []struct {
		name string
		view membershipView
		want []string
	}{
		{
			name: "a joining member is added non-voting and told so, in id order",
			view: membershipView{Self: 1, Gossip: []membership.Member{
				member(3, membership.StateAlive, t0, true), member(2, membership.StateAlive, t0, true)},
				Raft: raft([]uint64{1}, nil), Nodes: []*blixardpb.NodeRecord{rec(1, alive)}},
			want: []string{"upsert node 2", "add non-voting 2 at r2", "tell node 2 it is a non-voting",
				"upsert node 3", "add non-voting 3 at r3", "tell node 3 it is a non-voting"},
		},
		{
			name: "a joined member that caught up is promoted",
			view: membershipView{Self: 1, Gossip: []membership.Member{member(2, membership.StateAlive, t0, false)},
				Raft: raft([]uint64{1}, []uint64{2}), Nodes: []*blixardpb.NodeRecord{rec(2, alive)}},
			want: []string{"add voter 2 at r2"},
		},
		{
			name: "a joining replica is told its role again, nothing else",
			view: membershipView{Self: 1, Gossip: []membership.Member{member(6, membership.StateAlive, t0, true)},
				Raft: raft([]uint64{1}, []uint64{6}), Nodes: []*blixardpb.NodeRecord{rec(6, alive)}},
			want: []string{"tell node 6 it is a non-voting"},
		},
		{
			name: "a member that is neither a replica nor joining is left alone",
			view: membershipView{Self: 1, Gossip: []membership.Member{member(9, membership.StateAlive, t0, false)}, Raft: raft([]uint64{1}, nil)},
			want: nil,
		},
		{
			name: "a removed id is refused",
			view: membershipView{Self: 1, Gossip: []membership.Member{member(2, membership.StateAlive, t0, true)}, Raft: raft([]uint64{1}, nil, 2)},
			want: []string{"refuse node 2: node id 2 was removed"},
		},
		{
			name: "dead within the grace: nothing",
			view: membershipView{Self: 1, Now: t0.Add(grace - time.Millisecond), DownGrace: grace,
				Gossip: []membership.Member{member(2, membership.StateDead, t0, false)},
				Raft:   raft([]uint64{1, 2}, nil), Nodes: []*blixardpb.NodeRecord{rec(1, alive), rec(2, alive)}},
			want: nil,
		},
		{
			name: "dead past the grace: down",
			view: membershipView{Self: 1, Now: t0.Add(grace), DownGrace: grace,
				Gossip: []membership.Member{member(2, membership.StateDead, t0, false)},
				Raft:   raft([]uint64{1, 2}, nil), Nodes: []*blixardpb.NodeRecord{rec(1, alive), rec(2, alive)}},
			want: []string{"set node 2 down"},
		},
		{
			name: "dead since before leading began: nothing within twice the grace of leading",
			view: membershipView{Self: 1, Since: t0, Now: t0.Add(2*grace - time.Millisecond), DownGrace: grace,
				Gossip: []membership.Member{member(2, membership.StateDead, t0.Add(-time.Hour), false)},
				Raft:   raft([]uint64{1, 2}, nil), Nodes: []*blixardpb.NodeRecord{rec(1, alive), rec(2, alive)}},
			want: nil,
		},
		{
			name: "dead since before leading began: down past twice the grace of leading",
			view: membershipView{Self: 1, Since: t0, Now: t0.Add(2 * grace), DownGrace: grace,
				Gossip: []membership.Member{member(2, membership.StateDead, t0.Add(-time.Hour), false)},
				Raft:   raft([]uint64{1, 2}, nil), Nodes: []*blixardpb.NodeRecord{rec(1, alive), rec(2, alive)}},
			want: []string{"set node 2 down"},
		},
		{
			name: "already down: nothing",
			view: membershipView{Self: 1, Now: t0.Add(time.Hour), DownGrace: grace,
				Gossip: []membership.Member{member(2, membership.StateDead, t0, false)},
				Raft:   raft([]uint64{1, 2}, nil), Nodes: []*blixardpb.NodeRecord{rec(2, down)}},
			want: nil,
		},
		{
			name: "never seen since leading began, within twice the grace: nothing",
			view: membershipView{Self: 1, Since: t0, Now: t0.Add(2*grace - time.Millisecond), DownGrace: grace,
				Raft: raft([]uint64{1, 3}, nil), Nodes: []*blixardpb.NodeRecord{rec(1, alive), rec(3, alive)}},
			want: nil,
		},
		{
			name: "never seen since leading began, past twice the grace: down",
			view: membershipView{Self: 1, Since: t0, Now: t0.Add(2 * grace), DownGrace: grace,
				Raft: raft([]uint64{1, 3}, nil), Nodes: []*blixardpb.NodeRecord{rec(1, alive), rec(3, alive)}},
			want: []string{"set node 3 down"},
		},
		{
			name: "suspect is not dead",
			view: membershipView{Self: 1, Now: t0.Add(time.Hour), DownGrace: grace,
				Gossip: []membership.Member{member(2, membership.StateSuspect, t0, false)},
				Raft:   raft([]uint64{1, 2}, nil), Nodes: []*blixardpb.NodeRecord{rec(2, alive)}},
			want: nil,
		},
		{
			name: "alive again: alive; the leader itself too",
			view: membershipView{Self: 1, Now: t0, DownGrace: grace,
				Gossip: []membership.Member{member(2, membership.StateAlive, t0, false)},
				Raft:   raft([]uint64{1, 2}, nil), Nodes: []*blixardpb.NodeRecord{rec(1, down), rec(2, down)}},
			want: []string{"set node 2 alive", "set node 1 alive"},
		},
		{
			name: "a voter short: the lowest live non-voting member is promoted",
			view: membershipView{Self: 1, MaxVoters: 3, Gossip: []membership.Member{
				member(5, membership.StateAlive, t0, false), member(4, membership.StateAlive, t0, false), member(6, membership.StateDead, t0, false)},
				Raft: raft([]uint64{1, 2}, []uint64{4, 5, 6}), Nodes: []*blixardpb.NodeRecord{rec(4, alive), rec(5, alive)}},
			want: []string{"add voter 4 at r4"},
		},
		{
			name: "voters at the maximum: no promotion",
			view: membershipView{Self: 1, MaxVoters: 2, Gossip: []membership.Member{member(4, membership.StateAlive, t0, false)},
				Raft: raft([]uint64{1, 2}, []uint64{4}), Nodes: []*blixardpb.NodeRecord{rec(4, alive)}},
			want: nil,
		},
		{
			name: "a voter down past the dead-voter grace is replaced by a caught-up non-voting member",
			view: membershipView{Self: 1, Since: t0, Now: t0.Add(time.Minute), DownGrace: grace, DeadVoterGrace: 30 * time.Second,
				Gossip: []membership.Member{member(2, membership.StateAlive, t0, false), member(3, membership.StateDead, t0, false), member(4, membership.StateAlive, t0, false)},
				Raft:   raft([]uint64{1, 2, 3}, []uint64{4}), Nodes: []*blixardpb.NodeRecord{rec(1, alive), rec(2, alive), rec(3, down), rec(4, alive)}},
			want: []string{"remove node record 3", "remove voter 3", "add voter 4 at r4"},
		},
		{
			name: "a voter down within the dead-voter grace: the non-voting member is added beside it (fewer than the maximum)",
			view: membershipView{Self: 1, Since: t0, Now: t0.Add(29 * time.Second), DownGrace: grace, DeadVoterGrace: 30 * time.Second,
				Gossip: []membership.Member{member(2, membership.StateAlive, t0, false), member(3, membership.StateDead, t0, false), member(4, membership.StateAlive, t0, false)},
				Raft:   raft([]uint64{1, 2, 3}, []uint64{4}), Nodes: []*blixardpb.NodeRecord{rec(1, alive), rec(2, alive), rec(3, down), rec(4, alive)}},
			want: []string{"add voter 4 at r4"},
		},
		{
			name: "a dead voter without a replacement stays",
			view: membershipView{Self: 1, Since: t0, Now: t0.Add(time.Hour), DownGrace: grace, DeadVoterGrace: 30 * time.Second,
				Gossip: []membership.Member{member(2, membership.StateAlive, t0, false), member(3, membership.StateDead, t0, false), member(4, membership.StateAlive, t0, true)},
				Raft:   raft([]uint64{1, 2, 3}, []uint64{4}), Nodes: []*blixardpb.NodeRecord{rec(1, alive), rec(2, alive), rec(3, down), rec(4, alive)}},
			want: []string{"tell node 4 it is a non-voting"},
		},
		{
			name: "a dead voter whose record is not yet down is not replaced; voters at the maximum: nothing",
			view: membershipView{Self: 1, Since: t0, Now: t0.Add(time.Minute), DownGrace: time.Hour, DeadVoterGrace: 30 * time.Second, MaxVoters: 3,
				Gossip: []membership.Member{member(3, membership.StateDead, t0, false), member(4, membership.StateAlive, t0, false)},
				Raft:   raft([]uint64{1, 2, 3}, []uint64{4}), Nodes: []*blixardpb.NodeRecord{rec(1, alive), rec(2, alive), rec(3, alive), rec(4, alive)}},
			want: nil,
		},
		{
			name: "two dead voters, never seen, one replacement: the lowest id is replaced",
			view: membershipView{Self: 1, Since: t0, Now: t0.Add(time.Hour), DownGrace: grace, DeadVoterGrace: 30 * time.Second, MaxVoters: 5,
				Gossip: []membership.Member{member(6, membership.StateAlive, t0, false)},
				Raft:   raft([]uint64{1, 2, 3, 4, 5}, []uint64{6}), Nodes: []*blixardpb.NodeRecord{rec(1, alive), rec(2, alive), rec(3, alive), rec(4, down), rec(5, down), rec(6, alive)}},
			want: []string{"remove node record 4", "remove voter 4", "add voter 6 at r6", "set node 2 down", "set node 3 down"},
		},
		{
			name: "left records are not set down",
			view: membershipView{Self: 1, Since: t0, Now: t0.Add(time.Hour), DownGrace: grace,
				Raft: raft([]uint64{1}, nil), Nodes: []*blixardpb.NodeRecord{rec(5, blixardpb.NodeStatus_NODE_STATUS_LEFT)}},
			want: nil,
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var got []string
			for _, a := range planMembership(tc.view) {
				got = append(got, a.String())
			}
			if len(got) != len(tc.want) {
				t.Fatalf("plan:\n  got  %q\n  want %q", got, tc.want)
			}
			for i := range got {
				if !strings.HasPrefix(got[i], tc.want[i]) {
					t.Fatalf("plan:\n  got  %q\n  want %q", got, tc.want)
				}
			}
		})
	}
}

func u64s(x uint64) string { return strconv.FormatUint(x, 10) }

// TestNextDownIsWhenThePlanSetsItDown: nextDown names the instant at
// which planMembership starts to set a member down, for each way a member
// can be on its way down, and nothing when none is.
func TestNextDownIsWhenThePlanSetsItDown(t *testing.T) {
	t0 := time.Unix(1000, 0)
	grace := 4 * time.Second
	alive, down := blixardpb.NodeStatus_NODE_STATUS_ALIVE, blixardpb.NodeStatus_NODE_STATUS_DOWN
	member := func(id uint64, st membership.State, since time.Time) membership.Member {
		return membership.Member{Meta: membership.Meta{NodeID: id}, State: st, Since: since}
	}
	rec := func(id uint64, st blixardpb.NodeStatus) *blixardpb.NodeRecord {
		return &blixardpb.NodeRecord{Id: id, Status: st}
	}
	raft := consensus.Membership{Voters: map[uint64]string{1: "r1", 2: "r2", 3: "r3"}}
	downs := func(v membershipView) []string {
		var out []string
		for _, a := range planMembership(v) {
			if a.Kind == actSetStatus && a.Status == down {
				out = append(out, a.String())
			}
		}
		return out
	}
	for _, c := range []struct {
		name string
		view membershipView
		want time.Time // zero: no member on its way down
	}{
		{"dead since leading began", membershipView{Since: t0, Now: t0.Add(6 * time.Second),
			Gossip: []membership.Member{member(2, membership.StateDead, t0.Add(5*time.Second)), member(3, membership.StateAlive, t0)}}, t0.Add(9 * time.Second)},
		{"dead since before leading began", membershipView{Since: t0, Now: t0.Add(time.Second),
			Gossip: []membership.Member{member(2, membership.StateDead, t0.Add(-time.Minute)), member(3, membership.StateAlive, t0)}}, t0.Add(2 * grace)},
		// Node 3 has a record but no gossip member: never seen.
		{"never seen, the earlier of two", membershipView{Since: t0, Now: t0.Add(time.Second),
			Gossip: []membership.Member{member(2, membership.StateDead, t0.Add(5*time.Second))}}, t0.Add(2 * grace)},
		{"alive and suspect", membershipView{Since: t0, Now: t0.Add(time.Second),
			Gossip: []membership.Member{member(2, membership.StateAlive, t0), member(3, membership.StateSuspect, t0)}}, time.Time{}},
	} {
		t.Run(c.name, func(t *testing.T) {
			v := c.view
			v.Self, v.DownGrace, v.Raft = 1, grace, raft
			v.Gossip = append(v.Gossip, member(1, membership.StateAlive, t0))
			v.Nodes = []*blixardpb.NodeRecord{rec(1, alive), rec(2, alive), rec(3, alive)}
			at, ok := nextDown(v)
			if c.want.IsZero() {
				if ok {
					t.Fatalf("nextDown = %v, want none", at)
				}
				return
			}
			if !ok || !at.Equal(c.want) {
				t.Fatalf("nextDown = %v, %v; want %v", at, ok, c.want)
			}
			before, then := v, v
			before.Now, then.Now = at.Add(-time.Millisecond), at
			if d := downs(before); len(d) != 0 {
				t.Fatalf("set down before nextDown: %v", d)
			}
			if d := downs(then); len(d) == 0 {
				t.Fatal("nothing set down at nextDown")
			}
		})
	}
	// A member already down is not on its way down.
	v := membershipView{Self: 1, Since: t0, Now: t0, DownGrace: grace, Raft: raft,
		Gossip: []membership.Member{member(2, membership.StateDead, t0)}, Nodes: []*blixardpb.NodeRecord{rec(2, down)}}
	if at, ok := nextDown(v); ok {
		t.Fatalf("nextDown for a member already down = %v", at)
	}
}
