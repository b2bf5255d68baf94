package consensus

import (
	"bytes"
	"testing"

	"github.com/blixard/blixard/proto/blixardpb"
)

func cmdDownSeen(id, seenAlive uint64) *blixardpb.Command {
	return &blixardpb.Command{Op: &blixardpb.Command_SetNodeStatus{SetNodeStatus: &blixardpb.SetNodeStatus{
		NodeId: id, Status: blixardpb.NodeStatus_NODE_STATUS_DOWN, SeenAliveIndex: seenAlive}}}
}

// TestStaleDownAfterReturnIsRefused is the regression test of a bug the
// simulator found (soak seed 200047): a node cut off long enough to fence
// came back, unfenced and restarted its VMs, and then the leader — its
// gossip view still saying "dead for the down grace" — set it down, and
// the VMs were started a second time elsewhere. The returning node now
// registers again before restarting anything, and a down whose proposer
// last saw the node alive before that registration is refused.
func TestStaleDownAfterReturnIsRefused(t *testing.T) {
	h := newHarness(t)
	h.must(cmdNode(1, 8, 8192))
	h.must(cmdNode(2, 8, 8192))
	seen := h.s.AppliedIndex() // the leader last saw node 2 alive here
	h.must(cmdCreateVM("web", 1, 256))
	// Node 2 comes back and registers again.
	h.must(cmdNode(2, 8, 8192))
	res, _ := h.apply(cmdDownSeen(2, seen))
	if res.GetError().GetCode() != blixardpb.Code_FAILED_PRECONDITION {
		t.Fatalf("stale down: got %v, want FAILED_PRECONDITION", res.GetError())
	}
	if n, _ := h.s.Node(2); n.GetStatus() != blixardpb.NodeStatus_NODE_STATUS_ALIVE {
		t.Fatalf("node 2 is %s after a refused down", n.GetStatus())
	}
	// A down based on a sighting after the registration stands, and so
	// does one without a sighting (operators, older leaders).
	res, _ = h.apply(cmdDownSeen(2, h.s.AppliedIndex()))
	if e := res.GetError(); e.GetCode() != blixardpb.Code_OK {
		t.Fatalf("current down refused: %v", e)
	}
	h.must(cmdStatus(2, blixardpb.NodeStatus_NODE_STATUS_ALIVE))
	h.must(cmdNode(2, 8, 8192))
	if res, _ := h.apply(cmdDownSeen(2, 0)); res.GetError().GetCode() != blixardpb.Code_OK {
		t.Fatalf("down without a sighting refused: %v", res.GetError())
	}
	// The registration index survives a snapshot.
	r := NewState()
	if err := r.Restore(bytes.NewReader(saveBytes(t, h.s))); err != nil {
		t.Fatal(err)
	}
	if n, _ := r.Node(2); n.GetRegisteredIndex() == 0 {
		t.Fatal("registered index lost in the snapshot")
	}
}

// TestDownAfterHeartbeatIsRefused is the regression test of soak seed
// 14000063: in a bridge partition the leader's gossip held node 2 dead
// while node 2 reached the quorum through the bridge node and ran its VM;
// the leader set it down, the VM started elsewhere, and node 2 stopped its
// copy only when it applied the same entry, 16 ms later. Nodes now commit
// a heartbeat in every fence check, and a down whose proposer last saw the
// node alive before its latest heartbeat is refused.
func TestDownAfterHeartbeatIsRefused(t *testing.T) {
	h := newHarness(t)
	h.must(cmdNode(1, 8, 8192))
	h.must(cmdNode(2, 8, 8192))
	seen := h.s.AppliedIndex() // the leader's gossip last showed node 2 alive here
	h.must(cmdCreateVM("web", 1, 256))
	hb := &blixardpb.Command{Op: &blixardpb.Command_NodeHeartbeat{NodeHeartbeat: &blixardpb.NodeHeartbeat{NodeId: 2}}}
	_, eff := h.must(hb)
	if len(eff) != 0 {
		t.Fatalf("a heartbeat had effects: %v", eff)
	}
	if n, _ := h.s.Node(2); n.GetRegisteredIndex() != h.s.AppliedIndex() {
		t.Fatalf("heartbeat at %d, registered index %d", h.s.AppliedIndex(), n.GetRegisteredIndex())
	}
	res, _ := h.apply(cmdDownSeen(2, seen))
	if res.GetError().GetCode() != blixardpb.Code_FAILED_PRECONDITION {
		t.Fatalf("down of a node that sent a heartbeat since: got %v, want FAILED_PRECONDITION", res.GetError())
	}
	// Once the heartbeats stop, a down on a newer sighting stands.
	if res, _ := h.apply(cmdDownSeen(2, h.s.AppliedIndex())); res.GetError().GetCode() != blixardpb.Code_OK {
		t.Fatalf("down after the heartbeats stopped: %v", res.GetError())
	}
	// A heartbeat of an unknown node is refused and changes nothing.
	res, _ = h.apply(&blixardpb.Command{Op: &blixardpb.Command_NodeHeartbeat{NodeHeartbeat: &blixardpb.NodeHeartbeat{NodeId: 9}}})
	if res.GetError().GetCode() != blixardpb.Code_NOT_FOUND {
		t.Fatalf("heartbeat of node 9: %v", res.GetError())
	}
}

// TestFailedRequestIsNotAppliedLater is the regression test of a
// linearizability violation the simulator found (make sim, seed 1): a
// client's create failed (ALREADY_EXISTS) and it was told so; the VM was
// deleted; then a late copy of that same request (a re-issued proposal, or
// one a paused node held) was applied and created the VM. A request id's
// first result, failures included, is its only result.
func TestFailedRequestIsNotAppliedLater(t *testing.T) {
	h := newHarness(t)
	h.must(cmdNode(1, 8, 8192))
	h.must(cmdCreateVM("web", 1, 256))
	res, _ := h.apply(withRID(cmdCreateVM("web", 1, 256), "client-7"))
	if res.GetError().GetCode() != blixardpb.Code_ALREADY_EXISTS {
		t.Fatalf("create of an existing vm: %v", res.GetError())
	}
	h.must(cmdDelete("web"))
	res, eff := h.apply(withRID(cmdCreateVM("web", 1, 256), "client-7"))
	if res.GetError().GetCode() != blixardpb.Code_ALREADY_EXISTS || len(eff) != 0 {
		t.Fatalf("late copy of the failed create: %v, %d effects; want the first result and nothing done", res.GetError(), len(eff))
	}
	if _, ok := h.s.VM("web"); ok {
		t.Fatal("the late copy of a failed create created the vm")
	}
	// The remembered failure survives a snapshot.
	r := NewState()
	if err := r.Restore(bytes.NewReader(saveBytes(t, h.s))); err != nil {
		t.Fatal(err)
	}
	if res, _ := r.Apply(r.AppliedIndex()+1, withRID(cmdCreateVM("web", 1, 256), "client-7")); res.GetError().GetCode() != blixardpb.Code_ALREADY_EXISTS {
		t.Fatalf("after restore: %v", res.GetError())
	}
}
