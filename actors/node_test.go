package actors_test

import (
	"context"
	"net"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/blixard/blixard/actors"
	"github.com/blixard/blixard/consensus"
	"github.com/blixard/blixard/microvm/fake"
	"github.com/blixard/blixard/proto/blixardpb"
)

func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// TestNodeLifecycle starts a single-node agent on a real replica and the
// fake driver, creates a VM through its api actor, closes the agent (the
// VM keeps running), and restarts it on the same data dir: it re-adopts
// the VM. It is the only test in this package that starts a protoactor
// remote (see the client package's tests for why that matters).
func TestNodeLifecycle(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a Raft replica")
	}
	dir := t.TempDir()
	apiAddr, raftAddr := freeAddr(t), freeAddr(t)
	driver, err := fake.New(dir + "/fake")
	if err != nil {
		t.Fatal(err)
	}
	start := func(drv actors.Driver) *actors.Node {
		t.Helper()
		n, err := actors.StartNode(actors.NodeConfig{
			NodeID: 1, APIAddr: apiAddr, RaftAddr: raftAddr, Vcpus: 4, MemoryMB: 4096, ClusterID: "test-cluster",
			Driver: drv, Logger: quietLogger(),
			StartReplica: func(onEffects func([]consensus.Effect), onRestore func()) (actors.NodeReplica, error) {
				return consensus.StartReplica(consensus.ReplicaConfig{
					ReplicaID: 1, DataDir: dir, RaftAddr: raftAddr, Logger: quietLogger(),
					OnEffects: onEffects, OnRestore: onRestore,
				})
			},
		})
		if err != nil {
			t.Fatal(err)
		}
		select {
		case <-n.Ready():
		case <-time.After(60 * time.Second):
			n.Close(context.Background())
			t.Fatal("node not ready within 60s")
		}
		return n
	}
	ask := func(n *actors.Node, req proto.Message) proto.Message {
		t.Helper()
		pid := n.System().NewLocalPID(actors.APIActorName)
		res, err := n.System().Root.RequestFuture(pid, req, 20*time.Second).Result()
		if err != nil {
			t.Fatalf("%T: %v", req, err)
		}
		return res.(proto.Message)
	}
	waitRunning := func(n *actors.Node) *blixardpb.VmRecord {
		t.Helper()
		deadline := time.Now().Add(30 * time.Second)
		for {
			r := ask(n, &blixardpb.GetVmRequest{Name: "web"}).(*blixardpb.VmResponse)
			if r.GetVm().GetStatus() == blixardpb.VmStatus_VM_STATUS_RUNNING {
				return r.GetVm()
			}
			if time.Now().After(deadline) {
				t.Fatalf("vm web not running: %v", r)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}

	n := start(driver)
	st := ask(n, &blixardpb.ClusterStatusRequest{}).(*blixardpb.ClusterStatusResponse)
	if st.GetClusterId() != "test-cluster" || st.GetLeaderId() != 1 || len(st.GetNodes()) != 1 {
		t.Fatalf("cluster status: %v", st)
	}
	if nd := st.GetNodes()[0]; nd.GetNode().GetApiAddr() != apiAddr || nd.GetNode().GetVcpus() != 4 || !nd.GetVoter() ||
		nd.GetNode().GetStatus() != blixardpb.NodeStatus_NODE_STATUS_ALIVE || !nd.GetNode().GetSchedulable() {
		t.Fatalf("node record: %v", nd)
	}
	if r := ask(n, &blixardpb.CreateVmRequest{RequestId: "c1", Spec: &blixardpb.VmSpec{Name: "web", Vcpus: 1, MemoryMb: 128}}).(*blixardpb.VmResponse); r.GetError().GetCode() != blixardpb.Code_OK {
		t.Fatalf("create: %v", r)
	}
	first := waitRunning(n)
	if err := n.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	if inst, err := driver.Inspect(context.Background(), "web"); err != nil || !inst.Running {
		t.Fatalf("after close the vm should still run: %v %v", inst, err)
	}

	// A new agent over the same data dir and driver state adopts it.
	driver2, err := fake.New(dir + "/fake")
	if err != nil {
		t.Fatal(err)
	}
	n = start(driver2)
	defer n.Close(context.Background())
	again := waitRunning(n)
	if again.GetRestarts() != first.GetRestarts() {
		t.Fatalf("vm was restarted instead of adopted: %v → %v", first, again)
	}
}
