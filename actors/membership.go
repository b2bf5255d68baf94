package actors

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/blixard/blixard/consensus"
	"github.com/blixard/blixard/membership"
	"github.com/blixard/blixard/proto/blixardpb"
)

// Gossip is the node's view of the gossip pool; *membership.Gossip
// satisfies it.
type Gossip interface {
	// Members returns every member seen, with its state, sorted by id.
	Members() []membership.Member
	// SendTo sends msg to a live member.
	SendTo(id uint64, msg []byte) error
	// Join contacts members at gossip addresses.
	Join(addrs []string) (int, error)
}

// raftMembershipChanger is the part of *consensus.Replica the leader uses
// to grow the Raft group.
type raftMembershipChanger interface {
	Membership(ctx context.Context) (consensus.Membership, error)
	AddVoter(ctx context.Context, id uint64, addr string) error
	AddNonVoting(ctx context.Context, id uint64, addr string) error
}

// Defaults of the membership controller (NodeConfig).
const (
	DefaultMaxVoters = 5
	DefaultDownGrace = 4 * time.Second
	// DefaultDeadVoterGrace is how long a voter stays down before a
	// caught-up non-voting member may take its place.
	DefaultDeadVoterGrace = 30 * time.Second
	membershipTick        = 200 * time.Millisecond
	gossipRejoinEvery     = 2 * time.Second
)

// runMembership is the node's membership loop. On every node it re-joins
// gossip members known from node records but missing from the gossip
// view (so nodes started with --initial-cluster find each other). On the
// Raft leader it executes planMembership: new members join Raft, dead
// ones are set down after the grace, returning ones alive.
func (n *Node) runMembership() {
	defer n.wg.Done()
	g := n.cfg.Gossip
	changer, _ := n.replica.(raftMembershipChanger)
	tick := time.NewTicker(membershipTick)
	defer tick.Stop()
	var lead leadership
	var lastRejoin time.Time
	rejoining := make(chan struct{}, 1)
	// due fires when a member's down grace ends, so that the down is
	// proposed then and not up to a tick later.
	due := time.NewTimer(time.Hour)
	due.Stop()
	defer due.Stop()
	for {
		select {
		case <-n.ctx.Done():
			return
		case <-tick.C:
		case <-due.C:
		case <-n.cfg.GossipEvents:
		}
		now := time.Now()
		if now.Sub(lastRejoin) >= gossipRejoinEvery {
			lastRejoin = now
			select {
			case rejoining <- struct{}{}:
				n.wg.Add(1)
				go func() {
					defer n.wg.Done()
					defer func() { <-rejoining }()
					n.rejoinGossip(g)
				}()
			default:
			}
		}
		leader, term, ok := n.replica.LeaderID()
		if !lead.observe(now, ok && leader == n.cfg.NodeID && changer != nil, term) {
			continue
		}
		// Where in the log each member was last seen alive. Read the
		// index before the gossip view: a registration applied after it
		// is newer than the sighting.
		idx := n.replica.AppliedIndex()
		for _, m := range g.Members() {
			if m.State == membership.StateAlive || m.State == membership.StateSuspect {
				lead.seenAlive[m.NodeID] = idx
			} else if _, ok := lead.seenAlive[m.NodeID]; !ok {
				lead.seenAlive[m.NodeID] = idx
			}
		}
		if lead.fresh {
			n.log.Info("leading membership: gossip events now drive raft membership and node status", "term", term)
		}
		if at, ok := n.leadMembership(g, changer, lead.since, lead.term, lead.seenAlive); ok {
			due.Reset(time.Until(at))
		}
	}
}

// leadership is what the membership loop knows of this node's current
// term as leader: since when it leads (the down clock of members it
// already saw dead starts one grace after that) and where in the log it
// saw each member alive. Both belong to one term: leading again in a
// later term starts over even when the loop never saw the node follow in
// between (the simulator found a leader that was cut off while a
// membership action blocked, lost and regained leadership meanwhile, and
// then set down, on the stale view from its isolation, nodes that had
// kept quorum contact: soak seed 8000117).
type leadership struct {
	since     time.Time
	term      uint64
	fresh     bool // since was set by the last observe
	seenAlive map[uint64]uint64
}

// observe records whether this node leads at now in term, and reports
// whether it does.
func (l *leadership) observe(now time.Time, leading bool, term uint64) bool {
	l.fresh = false
	if !leading || term != l.term {
		l.since, l.term = time.Time{}, 0
		clear(l.seenAlive)
	}
	if !leading {
		return false
	}
	if l.since.IsZero() {
		l.since, l.term, l.fresh = now, term, true
		if l.seenAlive == nil {
			l.seenAlive = map[uint64]uint64{}
		}
	}
	return true
}

// rejoinGossip joins the gossip addresses of node records that the
// gossip view lacks or holds as dead.
func (n *Node) rejoinGossip(g Gossip) {
	known := map[uint64]bool{}
	for _, m := range g.Members() {
		if m.State == membership.StateAlive || m.State == membership.StateSuspect {
			known[m.NodeID] = true
		}
	}
	var addrs []string
	ctx, cancel := context.WithTimeout(n.ctx, 2*time.Second)
	defer cancel()
	_ = n.replica.Read(ctx, true, func(s *consensus.State) {
		for _, r := range s.Nodes() {
			if r.GetId() == n.cfg.NodeID || known[r.GetId()] || r.GetGossipAddr() == "" ||
				r.GetStatus() == blixardpb.NodeStatus_NODE_STATUS_LEFT {
				continue
			}
			addrs = append(addrs, r.GetGossipAddr())
		}
	})
	if len(addrs) == 0 {
		return
	}
	if _, err := g.Join(addrs); err != nil {
		n.log.Debug("re-joining gossip members from node records", "addrs", addrs, "err", err)
	}
}

// leadMembership runs one pass of planMembership's actions. It returns
// when the next member's down grace ends (nextDown), if any.
func (n *Node) leadMembership(g Gossip, changer raftMembershipChanger, since time.Time, term uint64, seenAlive map[uint64]uint64) (nextAt time.Time, next bool) {
	ctx, cancel := context.WithTimeout(n.ctx, 5*time.Second)
	defer cancel()
	rm, err := changer.Membership(ctx)
	if err != nil {
		n.log.Debug("membership: reading raft membership", "err", err)
		return
	}
	var nodes []*blixardpb.NodeRecord
	if err := n.replica.Read(ctx, true, func(s *consensus.State) { nodes = s.Nodes() }); err != nil {
		return
	}
	view := membershipView{
		Self: n.cfg.NodeID, Now: time.Now(), Since: since,
		DownGrace: n.cfg.DownGrace, DeadVoterGrace: n.cfg.DeadVoterGrace, MaxVoters: n.cfg.MaxVoters,
		Gossip: g.Members(), Raft: rm, Nodes: nodes, SeenAlive: seenAlive,
	}
	var actions []membershipAction
	actions, nextAt, next = plan(view)
	for _, a := range actions {
		if n.ctx.Err() != nil {
			return
		}
		if l, t, ok := n.replica.LeaderID(); !ok || l != n.cfg.NodeID || t != term {
			// The plan is of a term this node no longer leads (an earlier
			// action may have blocked across a leader change).
			return
		}
		if err := n.doMembershipAction(ctx, g, changer, a); err != nil {
			n.log.Warn("membership change failed; retrying on the next pass", "action", a.String(), "err", err)
			// Later actions of a join depend on earlier ones.
			return
		}
		if a.Kind != actReply {
			n.log.Info("membership change", "action", a.String(), "why", a.Why)
		}
	}
	return nextAt, next
}

func (n *Node) doMembershipAction(ctx context.Context, g Gossip, changer raftMembershipChanger, a membershipAction) error {
	switch a.Kind {
	case actUpsertNode:
		return n.proposeNode(ctx, &blixardpb.Command{
			RequestId: fmt.Sprintf("gossip-upsert-%d-%s", a.NodeID, nodeRandomHex(6)),
			Op:        &blixardpb.Command_UpsertNode{UpsertNode: &blixardpb.UpsertNode{Node: a.Record}},
		})
	case actAddVoter:
		return changer.AddVoter(ctx, a.NodeID, a.Addr)
	case actAddNonVoting:
		return changer.AddNonVoting(ctx, a.NodeID, a.Addr)
	case actSetStatus:
		return n.proposeNode(ctx, &blixardpb.Command{
			RequestId: fmt.Sprintf("gossip-status-%d-%d-%s", a.NodeID, a.Status, nodeRandomHex(6)),
			Op:        &blixardpb.Command_SetNodeStatus{SetNodeStatus: &blixardpb.SetNodeStatus{NodeId: a.NodeID, Status: a.Status, SeenAliveIndex: a.SeenAlive}},
		})
	case actRemoveNode:
		return n.proposeNode(ctx, &blixardpb.Command{
			RequestId: fmt.Sprintf("replace-voter-%d-%s", a.NodeID, nodeRandomHex(6)),
			Op:        &blixardpb.Command_RemoveNode{RemoveNode: &blixardpb.RemoveNode{NodeId: a.NodeID}},
		})
	case actRemoveReplica:
		remover, ok := n.replica.(raftRemover)
		if !ok {
			return errors.New("the replica cannot remove members")
		}
		return remover.RemoveReplica(ctx, a.NodeID)
	case actReply:
		return g.SendTo(a.NodeID, a.Reply.Encode())
	}
	return errors.New("unknown membership action")
}

func (n *Node) proposeNode(ctx context.Context, cmd *blixardpb.Command) error {
	res, err := n.replica.Propose(ctx, cmd)
	if err != nil {
		return err
	}
	if e := res.GetError(); e.GetCode() != blixardpb.Code_OK {
		return errors.New(e.GetMessage())
	}
	return nil
}

// raftRemover is the part of *consensus.Replica a leaving node uses.
type raftRemover interface {
	RemoveReplica(ctx context.Context, id uint64) error
}

// gossipLeaver is the optional part of Gossip a leaving node uses.
type gossipLeaver interface {
	Leave(timeout time.Duration) error
}

// Leave removes this node from the cluster for good: it stops its VMs
// (the vms supervisor first, so nothing restarts them), proposes
// RemoveNode (the state machine re-places the VMs elsewhere, which is
// safe because they no longer run here), removes its Raft replica, and
// announces the leave by gossip. The node id can never rejoin; Close must
// follow. It fails, changing nothing, when this node is the only
// member or the cluster has no quorum.
func (n *Node) Leave(ctx context.Context) error {
	remover, ok := n.replica.(raftRemover)
	changer, ok2 := n.replica.(raftMembershipChanger)
	if !ok || !ok2 {
		return errors.New("leaving: the replica cannot change raft membership")
	}
	m, err := changer.Membership(ctx)
	if err != nil {
		return fmt.Errorf("leaving: %w", err)
	}
	_, voter := m.Voters[n.cfg.NodeID]
	if voter && len(m.Voters) == 1 {
		return fmt.Errorf("leaving: node %d is the only voter; a cluster cannot leave itself", n.cfg.NodeID)
	}
	n.log.Warn("leaving the cluster: stopping this node's VMs")
	n.fence()
	if err := n.proposeNode(ctx, &blixardpb.Command{
		RequestId: fmt.Sprintf("leave-%d-%s", n.cfg.NodeID, nodeRandomHex(6)),
		Op:        &blixardpb.Command_RemoveNode{RemoveNode: &blixardpb.RemoveNode{NodeId: n.cfg.NodeID}},
	}); err != nil {
		return fmt.Errorf("leaving: removing node record: %w", err)
	}
	if err := remover.RemoveReplica(ctx, n.cfg.NodeID); err != nil {
		return fmt.Errorf("leaving: removing raft replica: %w", err)
	}
	if gl, ok := n.cfg.Gossip.(gossipLeaver); ok {
		if err := gl.Leave(2 * time.Second); err != nil {
			n.log.Warn("leaving: gossip leave", "err", err)
		}
	}
	n.log.Warn("left the cluster", "node", n.cfg.NodeID)
	return nil
}

// GossipStatus is the gossip view by node id ("alive", "suspect", "dead",
// "left"; this node is "alive"), for NodeInfo.gossip_status. It is nil
// when the node runs without gossip.
func (n *Node) GossipStatus() map[uint64]string {
	if n.cfg.Gossip == nil {
		return nil
	}
	out := map[uint64]string{n.cfg.NodeID: membership.StateAlive.String()}
	for _, m := range n.cfg.Gossip.Members() {
		out[m.NodeID] = m.State.String()
	}
	return out
}
