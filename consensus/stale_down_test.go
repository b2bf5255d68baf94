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
