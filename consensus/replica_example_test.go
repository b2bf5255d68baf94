package consensus_test

import (
	"context"
	"fmt"
	"log"
	"net"
	"os"
	"time"

	"github.com/blixard/blixard/consensus"
	"github.com/blixard/blixard/proto/blixardpb"
)

// A single node bootstraps a cluster of its own, commits two commands
// and reads the result back linearizably.
func ExampleStartReplica() {
	dir, err := os.MkdirTemp("", "blixard-example")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	l, err := net.Listen("tcp", "127.0.0.1:0") // any free port
	if err != nil {
		log.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()

	r, err := consensus.StartReplica(consensus.ReplicaConfig{
		ReplicaID: 1,
		DataDir:   dir,
		RaftAddr:  addr,
		// Effects for VMs placed on this node; hand them to the agent
		// without blocking.
		OnEffects: func(effs []consensus.Effect) {},
	})
	if err != nil {
		log.Fatal(err)
	}
	defer r.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := r.WaitReady(ctx); err != nil {
		log.Fatal(err)
	}

	for _, cmd := range []*blixardpb.Command{
		{RequestId: "node-1", Op: &blixardpb.Command_UpsertNode{UpsertNode: &blixardpb.UpsertNode{
			Node: &blixardpb.NodeRecord{Id: 1, Vcpus: 8, MemoryMb: 16384,
				Status: blixardpb.NodeStatus_NODE_STATUS_ALIVE, Schedulable: true}}}},
		{RequestId: "create-web", Op: &blixardpb.Command_CreateVm{CreateVm: &blixardpb.CreateVm{
			Spec: &blixardpb.VmSpec{Name: "web", Vcpus: 2, MemoryMb: 1024}}}},
	} {
		res, err := r.Propose(ctx, cmd) // err wraps ErrUnavailable: retry with the same request id
		if err != nil {
			log.Fatal(err)
		}
		if res.GetError() != nil && res.GetError().GetCode() != blixardpb.Code_OK {
			log.Fatal(res.GetError())
		}
	}

	err = r.Read(ctx, false, func(s *consensus.State) {
		vm, _ := s.VM("web")
		fmt.Println(vm.GetSpec().GetName(), "on node", vm.GetNodeId(), "at", vm.GetIp())
	})
	if err != nil {
		log.Fatal(err)
	}
	// Output: web on node 1 at 10.0.0.2
}
