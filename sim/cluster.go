package sim

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/blixard/blixard/actors"
	"github.com/blixard/blixard/consensus"
	"github.com/blixard/blixard/membership"
	"github.com/blixard/blixard/microvm/fake"
)

// Timings of simulated nodes: Raft's defaults, gossip and fencing
// compressed so that a failure is detected, fenced and repaired within a
// second or two. They keep the fence inequality of docs/failover.md:
// 1.42·F + S = 0.85 s + 0.1 s against D + G ≥ 0.35 s + 1.5 s.
const (
	simFenceTimeout   = 600 * time.Millisecond
	simFenceStopGrace = 100 * time.Millisecond
	simDownGrace      = 1500 * time.Millisecond
	simProbeInterval  = 100 * time.Millisecond
	simProbeTimeout   = 50 * time.Millisecond
	simGossipInterval = 50 * time.Millisecond
	simPushPull       = 2 * time.Second
	simProposeTimeout = 2 * time.Second
	// simSnapshotEntries is small so that snapshots, log compaction and
	// catching up from a snapshot all happen within a short run.
	simSnapshotEntries = 200
)

// cluster is the in-process cluster of one run.
type cluster struct {
	dir  string
	log  *slog.Logger
	net  *Network
	rnet *raftNet
	gnet *gossipNet
	runs *runLog

	raftAddrs   map[uint64]string
	gossipAddrs map[uint64]string
	nodes       []*simNode // index id-1
}

// simNode is one node: its data dir survives crashes.
type simNode struct {
	c   *cluster
	id  uint64
	dir string

	mu      sync.Mutex
	node    *actors.Node // nil while crashed
	gossip  *membership.Gossip
	driver  *fake.Driver
	events  chan struct{}
	crashes int
	// disk is the node's Raft storage; it survives crashes.
	disk *slowDisk
}

func newCluster(dir string, n int, seed uint64, log *slog.Logger) *cluster {
	c := &cluster{
		dir: dir, log: log, net: newNetwork(seed), runs: newRunLog(),
		raftAddrs: map[uint64]string{}, gossipAddrs: map[uint64]string{},
	}
	for i := 1; i <= n; i++ {
		id := uint64(i)
		c.raftAddrs[id] = fmt.Sprintf("127.0.1.%d:7002", i)
		c.gossipAddrs[id] = fmt.Sprintf("127.0.1.%d:7003", i)
	}
	c.rnet = newRaftNet(c.net, c.raftAddrs)
	c.gnet = newGossipNet(c.net, c.gossipAddrs)
	for i := 1; i <= n; i++ {
		c.nodes = append(c.nodes, &simNode{c: c, id: uint64(i), dir: filepath.Join(dir, fmt.Sprintf("node%d", i)), disk: newSlowDisk()})
	}
	return c
}

func (c *cluster) node(id uint64) *simNode { return c.nodes[id-1] }

// start starts every node.
func (c *cluster) start() error {
	for _, n := range c.nodes {
		if err := n.start(); err != nil {
			c.close()
			return err
		}
	}
	return nil
}

// waitReady waits until every running node is registered.
func (c *cluster) waitReady(ctx context.Context) error {
	for _, n := range c.nodes {
		nd := n.current()
		if nd == nil {
			continue
		}
		select {
		case <-nd.Ready():
		case <-ctx.Done():
			return fmt.Errorf("node %d not ready: %w", n.id, ctx.Err())
		}
	}
	return nil
}

// close stops every node and the network.
func (c *cluster) close() {
	var wg sync.WaitGroup
	for _, n := range c.nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			n.stop(false)
		}()
	}
	wg.Wait()
	c.net.Close()
}

func (n *simNode) current() *actors.Node {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.node
}

func (n *simNode) start() error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.node != nil {
		return nil
	}
	c := n.c
	log := c.log.With("sim_node", n.id)
	if err := os.MkdirAll(n.dir, 0o750); err != nil {
		return err
	}
	drv, err := fake.New(filepath.Join(n.dir, "vms"), fake.WithNodeID(n.id), fake.WithRunObserver(c.runs.observer(n.id)))
	if err != nil {
		return err
	}
	gt, err := c.gnet.transport(n.id, c.gossipAddrs[n.id])
	if err != nil {
		return err
	}
	events := make(chan struct{}, 1)
	meta := membership.Meta{NodeID: n.id, APIAddr: fmt.Sprintf("127.0.1.%d:7001", n.id), RaftAddr: c.raftAddrs[n.id],
		GossipAddr: c.gossipAddrs[n.id], Vcpus: 64, MemoryMB: 64 << 10}
	g, err := membership.Start(membership.Config{
		Meta: meta, BindAddr: c.gossipAddrs[n.id], Transport: gt,
		ProbeInterval: simProbeInterval, ProbeTimeout: simProbeTimeout,
		GossipInterval: simGossipInterval, PushPull: simPushPull,
		OnChange: func() {
			select {
			case events <- struct{}{}:
			default:
			}
		},
		Logger: log,
	})
	if err != nil {
		drv.Close()
		gt.Shutdown()
		return fmt.Errorf("node %d gossip: %w", n.id, err)
	}
	var others []string
	for id, a := range c.gossipAddrs {
		if id != n.id {
			others = append(others, a)
		}
	}
	_, _ = g.Join(others) // those down are re-joined by the node later
	nd, err := actors.StartNode(actors.NodeConfig{
		NodeID: n.id, APIAddr: meta.APIAddr, NoRemote: true,
		RaftAddr: c.raftAddrs[n.id], GossipAddr: c.gossipAddrs[n.id],
		Vcpus: meta.Vcpus, MemoryMB: meta.MemoryMB, ClusterID: "sim",
		Driver: drv, Logger: log,
		StartReplica: func(onEffects func([]consensus.Effect), onRestore func()) (actors.NodeReplica, error) {
			return consensus.StartReplica(consensus.ReplicaConfig{
				ReplicaID: n.id, DataDir: filepath.Join(n.dir, "raft"), RaftAddr: c.raftAddrs[n.id],
				InitialMembers: c.raftAddrs, TransportFactory: c.rnet, FS: n.disk.fs,
				SnapshotEntries: simSnapshotEntries, CompactionOverhead: simSnapshotEntries / 4,
				Logger: log, OnEffects: onEffects, OnRestore: onRestore,
			})
		},
		VMs:            actors.VMSupervisorConfig{StopGrace: 200 * time.Millisecond, OpTimeout: 5 * time.Second, BackoffBase: 100 * time.Millisecond, BackoffMax: time.Second, ReportTimeout: 3 * time.Second},
		API:            actors.APIConfig{ProposeTimeout: simProposeTimeout},
		Gossip:         g,
		GossipEvents:   events,
		DownGrace:      simDownGrace,
		FenceTimeout:   simFenceTimeout,
		FenceStopGrace: simFenceStopGrace,
	})
	if err != nil {
		g.Shutdown()
		drv.Close()
		return fmt.Errorf("node %d: %w", n.id, err)
	}
	n.node, n.gossip, n.driver, n.events = nd, g, drv, events
	return nil
}

// stop closes the node (keeping its data dir). With crash, the host
// "loses power": the VMs it ran die with it (an agent that dies while
// its VMs run on is a documented limit of fencing, docs/failover.md, so
// the simulator does not inject it).
func (n *simNode) stop(crash bool) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.node == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	n.node.Close(ctx)
	n.gossip.Shutdown()
	if crash {
		n.crashes++
		for _, name := range n.driver.Running() {
			_ = n.driver.Crash(name, 137)
		}
	}
	n.driver.Close()
	n.node, n.gossip, n.driver = nil, nil, nil
}
