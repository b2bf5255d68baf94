package actors

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/asynkron/protoactor-go/actor"
	"github.com/asynkron/protoactor-go/eventstream"
	"github.com/asynkron/protoactor-go/remote"

	"github.com/blixard/blixard/consensus"
	"github.com/blixard/blixard/proto/blixardpb"
)

// endpointQueueSize is the initial queue of each remote endpoint writer.
const endpointQueueSize = 1024

// NodeReplica is what the node root needs from its consensus replica;
// *consensus.Replica satisfies it.
type NodeReplica interface {
	Replica
	RaftInfo
	// WaitReady blocks until a leader is known and the replica has caught
	// up with what was committed when it was called.
	WaitReady(ctx context.Context) error
	// Close stops the replica; calls in flight fail.
	Close() error
}

// NodeConfig configures a node agent (StartNode).
type NodeConfig struct {
	// NodeID is this node's id, also its Raft replica id. Nonzero.
	NodeID uint64
	// APIAddr is the host:port the protoactor remote listens on; clients
	// and other nodes address the api actor there. AdvertiseAddr, when
	// set, is the address announced instead (in the node record and as the
	// remote's own address); it must reach the same listener.
	APIAddr       string
	AdvertiseAddr string
	// NoRemote runs the node without a protoactor remote: nothing
	// listens on APIAddr (it is only recorded) and the api actor is
	// reached through its local PID (Node.API) from the same actor
	// system or another one in the process. The simulator runs its nodes
	// this way; log requests for VMs on other nodes then fail.
	NoRemote bool
	// RaftAddr and GossipAddr are recorded in the node record.
	RaftAddr   string
	GossipAddr string
	// Vcpus and MemoryMB are the capacity this node offers to VMs.
	Vcpus    uint32
	MemoryMB uint64
	Labels   map[string]string
	Version  string
	// ClusterID is proposed (InitCluster) once the replica is ready, when
	// the cluster has none yet; empty means a random id. Initial members
	// should pass the same value, so that whichever proposes first wins
	// with the same answer.
	ClusterID string
	// Subnet is the VM subnet proposed with the cluster id (empty: the
	// state machine's default, 10.0.0.0/24).
	Subnet string

	// Driver runs this node's VMs. Required.
	Driver Driver
	// StartReplica starts the local replica with the node's hooks, which
	// must be passed on as consensus.ReplicaConfig.OnEffects and OnRestore.
	// Required.
	StartReplica func(onEffects func([]consensus.Effect), onRestore func()) (NodeReplica, error)

	// Logger defaults to slog.Default(); protoactor's own messages go to
	// it at Warn and above only.
	Logger *slog.Logger
	Clock  Clock
	Rand   Rand
	// VMs customises the vms supervisor; NodeID, Driver, Replica, Logger,
	// Clock and Rand are filled in from this config.
	VMs VMSupervisorConfig
	// API customises the api actor; NodeID, Replica, Raft, Logs and Logger
	// are filled in from this config.
	API APIConfig
	// StopVMsOnExit stops every VM the driver runs when the node closes.
	// By default VMs keep running for the next agent to recover.
	StopVMsOnExit bool
	// StopGrace is the graceful-stop time of StopVMsOnExit (default 10 s).
	StopGrace time.Duration

	// Gossip, when set, is the node's gossip membership: the node re-joins
	// members known from node records, and while it leads Raft it turns
	// the gossip view into Raft membership and node status changes
	// (actors/membership.go). GossipEvents, optional, signals view changes
	// so they are acted on before the next 200 ms tick.
	Gossip       Gossip
	GossipEvents <-chan struct{}
	// MaxVoters caps the voters: joiners enter Raft as non-voting and the
	// leader promotes them, once caught up, while there are fewer
	// (default 5).
	MaxVoters int
	// DownGrace is how long a member stays dead in gossip before the
	// leader sets it down and its VMs are re-placed (default 4 s).
	DownGrace time.Duration
	// DeadVoterGrace is how long a voter must be down before the leader
	// replaces it with a caught-up non-voting member (removing its record
	// and replica; its id can never rejoin). Zero means
	// DefaultDeadVoterGrace; negative never replaces.
	DeadVoterGrace time.Duration
	// FenceTimeout, when positive, enables self-fencing (actors/fence.go):
	// after that long without confirmed quorum contact the node stops its
	// VMs. It must be shorter than gossip detection plus DownGrace.
	// FenceStopGrace is the graceful part of those stops (default 500 ms).
	FenceTimeout   time.Duration
	FenceStopGrace time.Duration
}

// Node is a running node agent: a protoactor system with its remote, the
// consensus replica, the vms supervisor and the api actor. Close stops it.
type Node struct {
	cfg     NodeConfig
	log     *slog.Logger
	system  *actor.ActorSystem
	remote  *remote.Remote
	replica NodeReplica
	vms     atomic.Pointer[actor.PID]
	api     *actor.PID
	// caughtUp is set once the replica has applied the committed log.
	// Effects of entries replayed before that (a restarting agent's log)
	// describe the past: routed, they would spawn VM actors on records
	// older than the state, whose restart count and failed status the
	// actors then overwrite. The reconcile after catch-up covers them.
	caughtUp atomic.Bool

	// peers are the addresses protoactor holds outbound connections to
	// (clients being answered, nodes logs are forwarded to).
	peers   *sync.Map
	peerSub *eventstream.Subscription

	// vmsCfg respawns the vms supervisor when a fence is lifted.
	vmsCfg VMSupervisorConfig
	fenced atomic.Bool

	ready chan struct{}
	// left is closed once the node has left the cluster on request.
	left      chan struct{}
	leftOnce  sync.Once
	ctx       context.Context
	cancel    context.CancelFunc
	wg        sync.WaitGroup
	closeOnce sync.Once
}

// StartNode starts a node agent: the actor system and its remote on
// APIAddr, the replica (StartReplica), the `vms` supervisor and the `api`
// actor. It returns once they run; in the background it then waits for the
// replica to be ready, proposes the cluster id when there is none, upserts
// this node's record (addresses, capacity, labels, status alive) and asks
// `vms` to reconcile. Effects of applied commands go to `vms` without
// blocking the apply loop; a snapshot restore triggers another reconcile.
func StartNode(cfg NodeConfig) (*Node, error) {
	if cfg.NodeID == 0 {
		return nil, errors.New("node id must be nonzero")
	}
	if cfg.Driver == nil || cfg.StartReplica == nil {
		return nil, errors.New("node needs a Driver and StartReplica")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.StopGrace <= 0 {
		cfg.StopGrace = 10 * time.Second
	}
	if cfg.MaxVoters <= 0 {
		cfg.MaxVoters = DefaultMaxVoters
	}
	if cfg.DownGrace <= 0 {
		cfg.DownGrace = DefaultDownGrace
	}
	if cfg.DeadVoterGrace == 0 {
		cfg.DeadVoterGrace = DefaultDeadVoterGrace
	}
	if cfg.FenceStopGrace <= 0 {
		cfg.FenceStopGrace = DefaultFenceStopGrace
	}
	advertise := cfg.AdvertiseAddr
	if advertise == "" {
		advertise = cfg.APIAddr
	}
	log := cfg.Logger.With("node", cfg.NodeID)
	paLog := slog.New(minLevelHandler{h: cfg.Logger.Handler(), min: slog.LevelWarn}).With("lib", "protoactor")
	system := actor.NewActorSystem(actor.WithLoggerFactory(func(*actor.ActorSystem) *slog.Logger { return paLog }))
	var r *remote.Remote
	peers := &sync.Map{}
	var peerSub *eventstream.Subscription
	if !cfg.NoRemote {
		host, portStr, err := net.SplitHostPort(cfg.APIAddr)
		if err != nil {
			return nil, fmt.Errorf("api address %q: %w", cfg.APIAddr, err)
		}
		port, err := strconv.Atoi(portStr)
		if err != nil {
			return nil, fmt.Errorf("api address %q: bad port", cfg.APIAddr)
		}
		// Each peer (every CLI invocation is one) gets an endpoint writer
		// whose queue starts at EndpointWriterQueueSize: protoactor's
		// default of a million preallocates 16 MiB per peer. The queue
		// grows as needed.
		rcfg := remote.Configure(host, port, remote.WithAdvertisedHost(advertise),
			remote.WithEndpointWriterQueueSize(endpointQueueSize))
		// Fail fast on a peer that is down instead of redialling it for 10 s.
		rcfg.MaxRetryCount = 2
		r = remote.NewRemote(system, rcfg)
		peerSub = system.EventStream.Subscribe(func(evt any) {
			switch e := evt.(type) {
			case *remote.EndpointConnectedEvent:
				peers.Store(e.Address, struct{}{})
			case *remote.EndpointTerminatedEvent:
				peers.Delete(e.Address)
			}
		})
		if err := nodeStartRemote(r); err != nil {
			system.Shutdown()
			return nil, fmt.Errorf("listening for api requests on %s: %w", cfg.APIAddr, err)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	n := &Node{
		cfg:    cfg,
		log:    log,
		system: system,
		remote: r,
		ready:  make(chan struct{}),
		left:   make(chan struct{}),
		ctx:    ctx,
		cancel: cancel,
	}
	n.peers, n.peerSub = peers, peerSub
	cfg.AdvertiseAddr = advertise
	n.cfg = cfg

	rep, err := cfg.StartReplica(n.onEffects, n.onRestore)
	if err != nil {
		cancel()
		n.closeRemote()
		return nil, err
	}
	n.replica = rep

	vcfg := cfg.VMs
	vcfg.NodeID, vcfg.Driver, vcfg.Replica, vcfg.Logger = cfg.NodeID, cfg.Driver, rep, log
	if cfg.Clock != nil {
		vcfg.Clock = cfg.Clock
	}
	if cfg.Rand != nil {
		vcfg.Rand = cfg.Rand
	}
	vms, err := system.Root.SpawnNamed(NewVMSupervisor(vcfg), "vms")
	if err != nil {
		n.abort()
		return nil, fmt.Errorf("spawning vms supervisor: %w", err)
	}
	n.vms.Store(vms)
	n.vmsCfg = vcfg

	acfg := cfg.API
	acfg.NodeID, acfg.Replica, acfg.Raft, acfg.Logs, acfg.Logger = cfg.NodeID, rep, rep, cfg.Driver, log
	if acfg.GossipStatus == nil && cfg.Gossip != nil {
		acfg.GossipStatus = n.GossipStatus
	}
	if acfg.Leave == nil && cfg.Gossip != nil {
		acfg.Leave = func(ctx context.Context) error {
			if err := n.Leave(ctx); err != nil {
				return err
			}
			n.leftOnce.Do(func() { close(n.left) })
			return nil
		}
	}
	api, err := system.Root.SpawnNamed(NewAPI(acfg), APIActorName)
	if err != nil {
		n.abort()
		return nil, fmt.Errorf("spawning api actor: %w", err)
	}
	n.api = api
	log.Info("node agent started", "api_addr", advertise, "raft_addr", cfg.RaftAddr)

	n.wg.Add(1)
	go n.join()
	if cfg.Gossip != nil {
		n.wg.Add(1)
		go n.runMembership()
	}
	if cfg.FenceTimeout > 0 {
		n.wg.Add(1)
		go n.runFence()
	}
	return n, nil
}

// nodeStartRemote converts protoactor's panic on a failed listen into an error.
func nodeStartRemote(r *remote.Remote) (err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("%v", p)
		}
	}()
	r.Start()
	return nil
}

func (n *Node) abort() {
	n.cancel()
	n.replica.Close()
	n.closeRemote()
}

// closeRemote stops the remote and the actor system without protoactor's
// graceful path, whose endpoint manager can panic (nil map) when a peer
// disconnects while it stops: the server is stopped first (inbound streams
// end), then the outbound endpoints are terminated through the
// still-running endpoint manager, which closes their connections.
func (n *Node) closeRemote() {
	if n.remote == nil {
		n.system.Shutdown()
		return
	}
	n.remote.Shutdown(false)
	n.peers.Range(func(k, _ any) bool {
		n.system.EventStream.Publish(&remote.EndpointTerminatedEvent{Address: k.(string)})
		return true
	})
	n.system.EventStream.Unsubscribe(n.peerSub)
	n.system.Shutdown()
}

// onEffects is the replica's apply hook: it hands the effects to `vms`
// through its mailbox, which never blocks. Effects applied before `vms`
// exists or before the replica caught up are dropped; the reconcile
// after catch-up covers them.
func (n *Node) onEffects(effects []consensus.Effect) {
	if pid := n.vms.Load(); pid != nil && len(effects) > 0 && n.caughtUp.Load() {
		n.system.Root.Send(pid, &ApplyEffects{Effects: effects})
	}
}

// onRestore is the replica's snapshot hook: effects were skipped, so
// `vms` reconciles.
func (n *Node) onRestore() {
	if pid := n.vms.Load(); pid != nil {
		n.system.Root.Send(pid, &Reconcile{})
	}
}

// join waits for the replica, registers the node and reconciles.
func (n *Node) join() {
	defer n.wg.Done()
	for {
		err := n.replica.WaitReady(n.ctx)
		if err == nil {
			break
		}
		if n.ctx.Err() != nil {
			return
		}
		n.log.Warn("replica not ready yet", "err", err)
	}
	n.caughtUp.Store(true)
	n.log.Info("replica ready; registering node")
	if !n.retry("initialising cluster", n.initCluster) {
		return
	}
	if !n.retry("registering node", n.upsertSelf) {
		return
	}
	if pid := n.vms.Load(); pid != nil {
		n.system.Root.Send(pid, &Reconcile{})
	}
	close(n.ready)
	n.log.Info("node registered and reconciling", "vcpus", n.cfg.Vcpus, "memory_mb", n.cfg.MemoryMB)
}

// retry runs op until it succeeds or the node closes, with backoff.
func (n *Node) retry(what string, op func(context.Context) error) bool {
	backoff := 100 * time.Millisecond
	for {
		ctx, cancel := context.WithTimeout(n.ctx, 10*time.Second)
		err := op(ctx)
		cancel()
		if err == nil {
			return true
		}
		if n.ctx.Err() != nil {
			return false
		}
		n.log.Warn(what+" failed; retrying", "err", err, "in", backoff)
		select {
		case <-n.ctx.Done():
			return false
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 5*time.Second)
	}
}

func (n *Node) initCluster(ctx context.Context) error {
	var id string
	if err := n.replica.Read(ctx, false, func(s *consensus.State) { id = s.Config().GetClusterId() }); err != nil {
		return err
	}
	if id != "" {
		return nil
	}
	cid := n.cfg.ClusterID
	if cid == "" {
		cid = nodeRandomHex(8)
	}
	res, err := n.replica.Propose(ctx, &blixardpb.Command{
		RequestId: "init-cluster-" + cid,
		Op:        &blixardpb.Command_InitCluster{InitCluster: &blixardpb.InitCluster{Config: &blixardpb.ClusterConfig{ClusterId: cid, Subnet: n.cfg.Subnet}}},
	})
	if err != nil {
		return err
	}
	switch res.GetError().GetCode() {
	case blixardpb.Code_OK:
		n.log.Info("cluster initialised", "cluster_id", cid)
	case blixardpb.Code_FAILED_PRECONDITION:
		// Another node initialised it first.
	default:
		return fmt.Errorf("initialising cluster: %s", res.GetError().GetMessage())
	}
	return nil
}

func (n *Node) upsertSelf(ctx context.Context) error {
	rec := &blixardpb.NodeRecord{
		Id:         n.cfg.NodeID,
		ApiAddr:    n.cfg.AdvertiseAddr,
		RaftAddr:   n.cfg.RaftAddr,
		GossipAddr: n.cfg.GossipAddr,
		Vcpus:      n.cfg.Vcpus,
		MemoryMb:   n.cfg.MemoryMB,
		Labels:     n.cfg.Labels,
		Status:     blixardpb.NodeStatus_NODE_STATUS_ALIVE,
		// Schedulable is kept by the state machine for known nodes and
		// true for new ones.
		Schedulable: true,
		Version:     n.cfg.Version,
	}
	res, err := n.replica.Propose(ctx, &blixardpb.Command{
		RequestId: fmt.Sprintf("upsert-node-%d-%s", n.cfg.NodeID, nodeRandomHex(8)),
		Op:        &blixardpb.Command_UpsertNode{UpsertNode: &blixardpb.UpsertNode{Node: rec}},
	})
	if err != nil {
		return err
	}
	if e := res.GetError(); e.GetCode() != blixardpb.Code_OK {
		return fmt.Errorf("registering node %d: %s", n.cfg.NodeID, e.GetMessage())
	}
	return nil
}

// Ready is closed once the node is registered in the cluster state and
// has asked `vms` to reconcile.
func (n *Node) Ready() <-chan struct{} { return n.ready }

// Left is closed once the node has left the cluster because a client asked
// it to (LeaveClusterRequest); its owner should then Close it and exit.
func (n *Node) Left() <-chan struct{} { return n.left }

// Addr is the api address the node advertises.
func (n *Node) Addr() string { return n.cfg.AdvertiseAddr }

// Replica is the node's consensus replica.
func (n *Node) Replica() NodeReplica { return n.replica }

// API is the local PID of the node's api actor (with NoRemote, the only
// way to reach it).
func (n *Node) API() *actor.PID { return n.api }

// LocalVMs is what the node's VM actors last observed (nil while the vms
// supervisor is stopped, as when the node is fenced).
func (n *Node) LocalVMs(timeout time.Duration) (*LocalVMs, error) {
	pid := n.vms.Load()
	if pid == nil {
		return nil, nil
	}
	res, err := n.system.Root.RequestFuture(pid, &LocalVMsRequest{}, timeout).Result()
	if err != nil {
		return nil, err
	}
	lv, ok := res.(*LocalVMs)
	if !ok {
		return nil, fmt.Errorf("vms supervisor answered %T", res)
	}
	return lv, nil
}

// System is the node's actor system (for tests and the simulator).
func (n *Node) System() *actor.ActorSystem { return n.system }

// Close stops the node: the api actor (requests in flight are answered
// UNAVAILABLE), the vms supervisor (VMs keep running unless
// StopVMsOnExit), the replica and the remote. It is idempotent.
func (n *Node) Close(ctx context.Context) error {
	n.closeOnce.Do(func() {
		n.log.Info("node agent stopping")
		n.cancel()
		n.wg.Wait()
		if err := n.system.Root.StopFuture(n.api).Wait(); err != nil {
			n.log.Warn("stopping api actor", "err", err)
		}
		if pid := n.vms.Swap(nil); pid != nil {
			if err := n.system.Root.StopFuture(pid).Wait(); err != nil {
				n.log.Warn("stopping vms supervisor", "err", err)
			}
		}
		if n.cfg.StopVMsOnExit {
			n.stopVMs(ctx)
		}
		n.replica.Close()
		if c, ok := n.cfg.Driver.(DriverCloser); ok {
			if err := c.Close(); err != nil {
				n.log.Warn("closing driver", "err", err)
			}
		}
		n.closeRemote()
		n.log.Info("node agent stopped")
	})
	return nil
}

// stopVMs stops every VM the driver runs (StopVMsOnExit).
func (n *Node) stopVMs(ctx context.Context) {
	insts, err := n.cfg.Driver.List(ctx)
	if err != nil {
		n.log.Warn("listing vms to stop on exit", "err", err)
		return
	}
	var wg sync.WaitGroup
	for _, in := range insts {
		if !in.Running {
			continue
		}
		wg.Add(1)
		go func(name string) {
			defer wg.Done()
			if err := n.cfg.Driver.Stop(ctx, name, n.cfg.StopGrace); err != nil {
				n.log.Warn("stopping vm on exit", "vm", name, "err", err)
			} else {
				n.log.Info("stopped vm on exit", "vm", name)
			}
		}(in.Name)
	}
	wg.Wait()
}

func nodeRandomHex(n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(fmt.Sprintf("crypto/rand: %v", err))
	}
	return hex.EncodeToString(b)
}

// minLevelHandler drops records below min (protoactor logs every
// connection at Info) and demotes to Debug protoactor's errors about
// connections coming and going, which every CLI invocation causes when it
// exits.
type minLevelHandler struct {
	h   slog.Handler
	min slog.Level
}

var protoactorRoutine = map[string]bool{
	"EndpointWriter lost connection":                                  true,
	"EndpointWriter failed to connect":                                true,
	"EndpointWriter failed to create receive stream":                  true,
	"EndpointWriter error when closing the stream":                    true,
	"EndpointWriter error when closing the client conn":               true,
	"EndpointReader failed to send disconnection message":             true,
	"EndpointWatcher receive message for already terminated endpoint": true,
}

func (m minLevelHandler) Enabled(ctx context.Context, l slog.Level) bool {
	return l >= m.min && m.h.Enabled(ctx, l)
}

func (m minLevelHandler) Handle(ctx context.Context, r slog.Record) error {
	if protoactorRoutine[r.Message] {
		if !m.h.Enabled(ctx, slog.LevelDebug) {
			return nil
		}
		r.Level = slog.LevelDebug
	}
	return m.h.Handle(ctx, r)
}
func (m minLevelHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return minLevelHandler{h: m.h.WithAttrs(as), min: m.min}
}
func (m minLevelHandler) WithGroup(g string) slog.Handler {
	return minLevelHandler{h: m.h.WithGroup(g), min: m.min}
}
