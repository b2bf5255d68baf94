package main

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/blixard/blixard/actors"
	"github.com/blixard/blixard/consensus"
	"github.com/blixard/blixard/membership"
)

// runFlags are the flags of `blixard run`.
type runFlags struct {
	nodeID         uint64
	dataDir        string
	apiAddr        string
	raftAddr       string
	gossipAddr     string
	initialCluster string
	join           string
	driver         string
	accel          string
	vcpus          uint32
	memoryMB       uint64
	dev            bool
	logFormat      string
	logLevel       string
	stopVMsOnExit  bool
	noNetwork      bool
	subnet         string
	metricsAddr    string
	gossip         gossipFlags
}

// gossipFlags are the membership and failover flags of `blixard run`.
type gossipFlags struct {
	keyFile        string
	maxVoters      int
	downGrace      time.Duration
	deadVoterGrace time.Duration
	fenceTimeout   time.Duration
	probeInterval  time.Duration
	probeTimeout   time.Duration
	suspicionMult  int
	gossipInterval time.Duration
	leaveOnExit    bool
	expect         int
}

// nodeDeadVoterGrace is --dead-voter-grace as NodeConfig takes it: there
// zero means the default and a negative value never.
func (g gossipFlags) nodeDeadVoterGrace() time.Duration {
	if g.deadVoterGrace == 0 {
		return -1
	}
	return g.deadVoterGrace
}

func (a *app) runCmd() *cobra.Command {
	var f runFlags
	cmd := &cobra.Command{
		Use:   "run",
		Short: "Run a node agent",
		Long: `Run a node agent: a Raft replica of the cluster state, the api actor that
serves the CLI and Go clients, and the supervisor of the VMs placed on this
host. It runs until SIGINT or SIGTERM, then shuts down cleanly; VMs keep
running (unless --stop-vms-on-exit) and are re-adopted on the next start.

Every initial member passes the same --initial-cluster (node id = Raft
address). A node started without --initial-cluster and --join bootstraps a
single-node cluster. --dev runs such a node on a temporary data dir with the
fake driver.`,
		Example: `  blixard run --dev
  blixard run --node-id 1 --data-dir /var/lib/blixard --driver qemu \
      --api-addr 10.0.0.1:7001 --raft-addr 10.0.0.1:7002 \
      --initial-cluster 1=10.0.0.1:7002,2=10.0.0.2:7002,3=10.0.0.3:7002`,
		Args: exactArgs(),
		RunE: func(cmd *cobra.Command, args []string) error {
			// Flag values are checked before a.ran: bad ones are usage errors.
			cfg, err := f.check(cmd)
			if err != nil {
				return err
			}
			a.ran = true
			return a.runNode(cmd.Context(), f, cfg)
		},
	}
	fl := cmd.Flags()
	fl.Uint64Var(&f.nodeID, "node-id", 0, "this node's id, a positive integer unique in the cluster (required unless --dev)")
	fl.StringVar(&f.dataDir, "data-dir", "/var/lib/blixard", "directory for the Raft log, snapshots and VM state")
	fl.StringVar(&f.apiAddr, "api-addr", "127.0.0.1:7001", "host:port of the api (clients and other nodes connect here)")
	fl.StringVar(&f.raftAddr, "raft-addr", "127.0.0.1:7002", "host:port of Raft traffic")
	fl.StringVar(&f.gossipAddr, "gossip-addr", "127.0.0.1:7003", "host:port of gossip membership (TCP and UDP)")
	fl.StringVar(&f.initialCluster, "initial-cluster", "", "initial members as id=raft-host:port,... (the same value on every initial member)")
	fl.StringVar(&f.join, "join", "", "gossip address(es) of existing members, host:port[,host:port]: a fresh node waits for the leader to add it to Raft; a node with a data dir restarts and re-joins gossip")
	fl.StringVar(&f.driver, "driver", "qemu", "VM driver: fake|qemu|nix")
	fl.StringVar(&f.accel, "accel", "auto", "qemu acceleration: auto|kvm|tcg")
	nixDriverFlags(cmd)
	supervisorFlag(cmd)
	fl.BoolVar(&f.noNetwork, "no-network", false, "qemu and nix drivers: boot VMs without a network device (the default gives each VM a TAP, host route and iptables rules, which needs root)")
	fl.Uint32Var(&f.vcpus, "vcpus", 0, "vCPUs this node offers to VMs (default: the host's CPUs)")
	fl.Uint64Var(&f.memoryMB, "memory-mb", 0, "memory in MiB this node offers to VMs (default: the host's memory)")
	fl.BoolVar(&f.dev, "dev", false, "development mode: single node 1, fake driver, and a temporary data dir removed on exit (its VMs stop with the node) unless --data-dir is given")
	fl.StringVar(&f.logFormat, "log-format", "auto", "log format: text|json|auto (text on a terminal, JSON otherwise)")
	fl.StringVar(&f.logLevel, "log-level", "info", "log level: debug|info|warn|error")
	fl.StringVar(&f.subnet, "subnet", "", "IPv4 CIDR for VM addresses, applied when this node initialises a new cluster (default 10.0.0.0/24)")
	fl.StringVar(&f.gossip.keyFile, "gossip-key-file", "", "file holding the shared gossip encryption key (16, 24 or 32 bytes; raw, base64 or hex); every member needs the same key")
	fl.IntVar(&f.gossip.maxVoters, "max-voters", actors.DefaultMaxVoters, "most Raft voters: joiners enter as non-voting and are promoted once caught up while voters are fewer")
	fl.DurationVar(&f.gossip.downGrace, "down-grace", actors.DefaultDownGrace, "how long a member stays dead in gossip before it is set down and its VMs re-placed (must exceed --fence-timeout)")
	fl.DurationVar(&f.gossip.deadVoterGrace, "dead-voter-grace", actors.DefaultDeadVoterGrace, "how long a Raft voter stays down before the leader replaces it with a caught-up non-voting member (its record and replica are removed; the id can never rejoin); 0 never replaces")
	fl.DurationVar(&f.gossip.fenceTimeout, "fence-timeout", actors.DefaultFenceTimeout, "stop this node's VMs after this long without contact with a Raft quorum (0 disables self-fencing)")
	fl.DurationVar(&f.gossip.probeInterval, "gossip-probe-interval", membership.DefaultProbeInterval, "gossip failure-detection probe interval")
	fl.DurationVar(&f.gossip.probeTimeout, "gossip-probe-timeout", membership.DefaultProbeTimeout, "gossip probe timeout (an RTT bound)")
	fl.IntVar(&f.gossip.suspicionMult, "gossip-suspicion-mult", membership.DefaultSuspicionMult, "a suspected member is declared dead after this many probe intervals (times log10 of the cluster size)")
	fl.DurationVar(&f.gossip.gossipInterval, "gossip-interval", membership.DefaultGossipInterval, "interval of gossip messages")
	fl.IntVar(&f.gossip.expect, "bootstrap-expect", 0, "form a new cluster once this many fresh nodes started with the same value see each other by gossip (with --join; the lowest node ids become the initial voters)")
	fl.BoolVar(&f.gossip.leaveOnExit, "leave-on-exit", false, "on SIGINT/SIGTERM leave the cluster for good: stop this node's VMs (the cluster re-places them), remove its node record and Raft replica; the node id can never rejoin")
	fl.StringVar(&f.metricsAddr, "metrics-addr", "", "host:port of an HTTP endpoint with Prometheus metrics (/metrics) and Go profiles (/debug/pprof/); empty: none")
	fl.BoolVar(&f.stopVMsOnExit, "stop-vms-on-exit", false, "stop this node's VMs when the agent exits (default: leave them running for the next start to adopt)")
	return cmd
}

// nodeSetup is what check derives from the flags.
type nodeSetup struct {
	members   map[uint64]string
	joinAddrs []string
	level     slog.Level
	clusterID string
}

func (f *runFlags) check(cmd *cobra.Command) (nodeSetup, error) {
	var s nodeSetup
	if f.dev {
		if f.nodeID == 0 {
			f.nodeID = 1
		}
		if !cmd.Flags().Changed("data-dir") {
			// A throw-away data dir: nothing can re-adopt the VMs after
			// exit, so they stop with the node.
			f.dataDir = ""
			f.stopVMsOnExit = true
		}
		if !cmd.Flags().Changed("driver") {
			f.driver = "fake"
		}
		if f.initialCluster != "" || f.join != "" {
			return s, usagef("--dev runs a single node: it takes no --initial-cluster or --join")
		}
	}
	if f.nodeID == 0 {
		return s, usagef("--node-id is required (a positive integer)")
	}
	for flag, v := range map[string]string{"api-addr": f.apiAddr, "raft-addr": f.raftAddr, "gossip-addr": f.gossipAddr, "metrics-addr": f.metricsAddr} {
		if flag == "metrics-addr" && v == "" {
			continue // optional
		}
		if _, _, err := net.SplitHostPort(v); err != nil {
			return s, usagef("invalid --%s %q: want host:port", flag, v)
		}
	}
	if err := oneOf("driver", f.driver, []string{"fake", "qemu", "nix"}); err != nil {
		return s, err
	}
	if err := oneOf("accel", f.accel, []string{"auto", "kvm", "tcg"}); err != nil {
		return s, err
	}
	if err := oneOf("supervisor", supervisorMode, []string{"auto", "systemd", "exec"}); err != nil {
		return s, err
	}
	if err := oneOf("log-format", f.logFormat, []string{"auto", "text", "json"}); err != nil {
		return s, err
	}
	if err := s.level.UnmarshalText([]byte(f.logLevel)); err != nil {
		return s, usagef("invalid --log-level %q: want debug|info|warn|error", f.logLevel)
	}
	if f.subnet != "" {
		if _, err := netip.ParsePrefix(f.subnet); err != nil {
			return s, usagef("invalid --subnet %q: want an IPv4 CIDR such as 10.0.0.0/16", f.subnet)
		}
	}
	if f.gossip.maxVoters < 1 {
		return s, usagef("invalid --max-voters %d: want at least 1", f.gossip.maxVoters)
	}
	if f.gossip.downGrace <= 0 || f.gossip.fenceTimeout < 0 || f.gossip.probeInterval <= 0 || f.gossip.probeTimeout <= 0 || f.gossip.gossipInterval <= 0 || f.gossip.suspicionMult < 1 {
		return s, usagef("gossip timings must be positive (--fence-timeout may be 0 to disable fencing)")
	}
	if f.gossip.deadVoterGrace < 0 {
		return s, usagef("invalid --dead-voter-grace %s: must be positive, or 0 to never replace dead voters", f.gossip.deadVoterGrace)
	}
	if f.gossip.fenceTimeout > 0 && f.gossip.fenceTimeout >= f.gossip.downGrace {
		return s, usagef("--fence-timeout %s must be shorter than --down-grace %s: a node must stop its VMs before the cluster re-places them", f.gossip.fenceTimeout, f.gossip.downGrace)
	}
	if f.gossip.expect < 0 || (f.gossip.expect > 0 && f.initialCluster != "") {
		return s, usagef("--bootstrap-expect takes a positive count and excludes --initial-cluster")
	}
	if f.gossip.expect > 1 && f.join == "" {
		return s, usagef("--bootstrap-expect %d needs --join with the gossip address of at least one other node", f.gossip.expect)
	}
	if f.initialCluster != "" && f.join != "" {
		return s, usagef("--initial-cluster and --join exclude each other")
	}
	if f.initialCluster != "" {
		m, err := parseInitialCluster(f.initialCluster)
		if err != nil {
			return s, err
		}
		if _, ok := m[f.nodeID]; !ok {
			return s, usagef("--initial-cluster does not list --node-id %d", f.nodeID)
		}
		if m[f.nodeID] != f.raftAddr && cmd.Flags().Changed("raft-addr") {
			return s, usagef("--initial-cluster gives node %d the raft address %s but --raft-addr is %s", f.nodeID, m[f.nodeID], f.raftAddr)
		}
		f.raftAddr = m[f.nodeID]
		s.members = m
		s.clusterID = clusterIDFor(m)
	}
	if f.join != "" {
		for _, p := range strings.Split(f.join, ",") {
			p = strings.TrimSpace(p)
			if _, _, err := net.SplitHostPort(p); err != nil {
				return s, usagef("invalid --join address %q: want host:port", p)
			}
			s.joinAddrs = append(s.joinAddrs, p)
		}
	}
	return s, nil
}

// parseInitialCluster parses "1=host:port,2=host:port".
func parseInitialCluster(v string) (map[uint64]string, error) {
	m := make(map[uint64]string)
	seen := make(map[string]uint64)
	for _, part := range strings.Split(v, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		idStr, addr, ok := strings.Cut(part, "=")
		id, err := strconv.ParseUint(idStr, 10, 64)
		if !ok || err != nil || id == 0 {
			return nil, usagef("invalid --initial-cluster entry %q: want id=host:port with a positive id", part)
		}
		if _, _, err := net.SplitHostPort(addr); err != nil {
			return nil, usagef("invalid --initial-cluster entry %q: want id=host:port", part)
		}
		if _, dup := m[id]; dup {
			return nil, usagef("--initial-cluster lists node %d twice", id)
		}
		if other, dup := seen[addr]; dup {
			return nil, usagef("--initial-cluster gives nodes %d and %d the same address %s", other, id, addr)
		}
		m[id], seen[addr] = addr, id
	}
	if len(m) == 0 {
		return nil, usagef("--initial-cluster is empty")
	}
	return m, nil
}

// clusterIDFor derives the cluster id from the initial members, so that
// every initial member proposes the same one.
func clusterIDFor(m map[uint64]string) string {
	ids := make([]uint64, 0, len(m))
	for id := range m {
		ids = append(ids, id)
	}
	sort.Slice(ids, func(i, j int) bool { return ids[i] < ids[j] })
	h := sha256.New()
	for _, id := range ids {
		fmt.Fprintf(h, "%d=%s,", id, m[id])
	}
	return hex.EncodeToString(h.Sum(nil)[:8])
}

func (a *app) newLogger(f runFlags, level slog.Level) *slog.Logger {
	format := f.logFormat
	if format == "auto" {
		format = "json"
		if isTerminal(a.stderr) {
			format = "text"
		}
	}
	opts := &slog.HandlerOptions{Level: level}
	if format == "text" {
		return slog.New(slog.NewTextHandler(a.stderr, opts))
	}
	return slog.New(slog.NewJSONHandler(a.stderr, opts))
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}

func (a *app) runNode(ctx context.Context, f runFlags, s nodeSetup) error {
	log := a.newLogger(f, s.level)
	dataDir := f.dataDir
	if f.dev && dataDir == "" {
		d, err := os.MkdirTemp("", "blixard-dev-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(d)
		dataDir = d
	}
	if err := os.MkdirAll(dataDir, 0o750); err != nil {
		return fmt.Errorf("data dir: %w", err)
	}
	vcpus, mem := f.vcpus, f.memoryMB
	if vcpus == 0 {
		vcpus = uint32(runtime.NumCPU())
	}
	if mem == 0 {
		m, err := hostMemoryMB()
		if err != nil {
			return fmt.Errorf("detecting host memory (pass --memory-mb): %w", err)
		}
		mem = m
	}
	var metrics *metricsServer
	if f.metricsAddr != "" {
		m, err := listenMetrics(f.metricsAddr, log)
		if err != nil {
			return err
		}
		defer m.Close()
		metrics = m
	}

	driver, err := newDriver(f, dataDir, log)
	if err != nil {
		return err
	}

	gossip, role, err := startGossip(ctx, log, f, s, dataDir, vcpus, mem)
	if err != nil {
		if c, ok := driver.(actors.DriverCloser); ok {
			c.Close()
		}
		return err
	}
	defer gossip.Shutdown()
	if role.initial != nil {
		s.members, s.clusterID = role.initial, clusterIDFor(role.initial)
	}
	node, err := actors.StartNode(actors.NodeConfig{
		NodeID:     f.nodeID,
		APIAddr:    f.apiAddr,
		RaftAddr:   f.raftAddr,
		GossipAddr: f.gossipAddr,
		Vcpus:      vcpus,
		MemoryMB:   mem,
		Version:    Version,
		ClusterID:  s.clusterID,
		Subnet:     f.subnet,
		Driver:     driver,
		Logger:     log,
		StartReplica: func(onEffects func([]consensus.Effect), onRestore func()) (actors.NodeReplica, error) {
			var onProposed func(int, time.Duration, error)
			if metrics != nil {
				onProposed = metrics.onProposed
			}
			return consensus.StartReplica(consensus.ReplicaConfig{
				ReplicaID:      f.nodeID,
				DataDir:        dataDir,
				RaftAddr:       f.raftAddr,
				InitialMembers: s.members,
				Join:           role.join,
				NonVoting:      role.nonVoting,
				Logger:         log,
				OnEffects:      onEffects,
				OnRestore:      onRestore,
				OnProposed:     onProposed,
			})
		},
		StopVMsOnExit:  f.stopVMsOnExit,
		VMs:            actors.VMSupervisorConfig{Gateway: vmGateway(f.subnet)},
		Gossip:         gossip,
		GossipEvents:   gossip.events,
		MaxVoters:      f.gossip.maxVoters,
		DownGrace:      f.gossip.downGrace,
		DeadVoterGrace: f.gossip.nodeDeadVoterGrace(),
		FenceTimeout:   f.gossip.fenceTimeout,
	})
	if err != nil {
		if c, ok := driver.(actors.DriverCloser); ok {
			c.Close()
		}
		return err
	}
	if metrics != nil {
		metrics.watchNode(f.nodeID, node, driver)
	}
	left := false
	select {
	case <-node.Ready():
		log.Info("node ready", "api_addr", node.Addr())
		gossip.joined()
		if f.dev {
			fmt.Fprintf(a.stdout, "blixard dev node ready: api %s (try: blixard vm create web --wait)\n", node.Addr())
		}
		select {
		case <-ctx.Done():
		case <-node.Left():
			left = true
			log.Warn("left the cluster on request (blixard cluster leave); shutting down")
			// The reply to the leave request is on its way out through
			// the remote that Close stops: give it a moment.
			select {
			case <-time.After(time.Second):
			case <-ctx.Done():
			}
		}
	case <-ctx.Done():
	}
	log.Info("shutting down")
	closeCtx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if f.gossip.leaveOnExit && !left {
		if err := node.Leave(closeCtx); err != nil {
			log.Error("leaving the cluster failed; shutting down as a member", "err", err)
		}
	}
	return node.Close(closeCtx)
}

// hostMemoryMB reads MemTotal from /proc/meminfo.
func hostMemoryMB() (uint64, error) {
	f, err := os.Open("/proc/meminfo")
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) >= 2 && fields[0] == "MemTotal:" {
			kb, err := strconv.ParseUint(fields[1], 10, 64)
			if err != nil {
				return 0, err
			}
			return kb / 1024, nil
		}
	}
	return 0, fmt.Errorf("no MemTotal in /proc/meminfo")
}

// nodeGossip is the node's gossip member and the signal of its changes.
type nodeGossip struct {
	*membership.Gossip
	meta   membership.Meta
	events chan struct{}
	log    *slog.Logger
}

// joined stops announcing Joining once the node's replica is ready.
func (g *nodeGossip) joined() {
	if !g.meta.Joining && g.meta.Expect == 0 {
		return
	}
	g.meta.Joining, g.meta.Expect = false, 0
	if err := g.SetMeta(g.meta); err != nil {
		g.log.Warn("announcing join done", "err", err)
	}
}

// replicaRole is how the local replica starts.
type replicaRole struct {
	join, nonVoting bool
	// initial, when set, are the initial members --bootstrap-expect chose.
	initial map[uint64]string
}

// startGossip starts the gossip member and joins --join. A node whose
// data dir records no Raft role (see membership.WriteRole) and that was
// given --join is new: it announces Joining and waits until the Raft
// leader adds it and answers with its role (voter or non-voting), which
// is recorded before the replica starts in join mode. A node with a
// recorded role restarts its replica in that role.
func startGossip(ctx context.Context, log *slog.Logger, f runFlags, s nodeSetup, dataDir string, vcpus uint32, mem uint64) (*nodeGossip, replicaRole, error) {
	var rr replicaRole
	var key []byte
	if f.gossip.keyFile != "" {
		k, err := membership.LoadKey(f.gossip.keyFile)
		if err != nil {
			return nil, rr, err
		}
		key = k
	}
	role, haveRole, err := membership.ReadRole(dataDir)
	if err != nil {
		return nil, rr, err
	}
	// A recorded role means the leader added this node: start in join mode
	// (ignored once the replica has data, but a crash between recording
	// the role and the replica's first start must not bootstrap a new
	// cluster). Existing Raft data without a role is a restart too.
	if haveRole {
		rr.join, rr.nonVoting = true, role == actors.RoleNonVoting
	}
	haveRole = haveRole || consensus.HasData(dataDir)
	meta := membership.Meta{NodeID: f.nodeID, APIAddr: f.apiAddr, RaftAddr: f.raftAddr, GossipAddr: f.gossipAddr,
		Vcpus: vcpus, MemoryMB: mem, Version: Version, Joining: len(s.joinAddrs) > 0 && !haveRole && f.gossip.expect == 0}
	if !haveRole && f.gossip.expect > 1 {
		meta.Expect = f.gossip.expect
	}
	g := &nodeGossip{meta: meta, events: make(chan struct{}, 1), log: log}
	gm, err := membership.Start(membership.Config{
		Meta: meta, BindAddr: f.gossipAddr, Key: key,
		ProbeInterval: f.gossip.probeInterval, ProbeTimeout: f.gossip.probeTimeout,
		SuspicionMult: f.gossip.suspicionMult, GossipInterval: f.gossip.gossipInterval,
		OnChange: func() {
			select {
			case g.events <- struct{}{}:
			default:
			}
		},
		Logger: log,
	})
	if err != nil {
		return nil, rr, err
	}
	g.Gossip = gm
	if len(s.joinAddrs) == 0 {
		return g, rr, nil
	}
	// Join through any listed member, retrying while none answers.
	for attempt := 0; ; attempt++ {
		_, err := gm.Join(s.joinAddrs)
		if err == nil {
			break
		}
		if errors.Is(err, membership.ErrNodeIDInUse) {
			gm.Shutdown()
			return nil, rr, err
		}
		if attempt%10 == 0 {
			log.Warn("joining gossip failed; retrying", "join", s.joinAddrs, "err", err)
		}
		select {
		case <-ctx.Done():
			gm.Shutdown()
			return nil, rr, ctx.Err()
		case <-time.After(500 * time.Millisecond):
		}
	}
	log.Info("joined gossip", "through", s.joinAddrs, "members", len(gm.Members()))
	if haveRole {
		return g, rr, nil
	}
	if meta.Expect > 0 {
		initial, err := g.awaitBootstrap(ctx)
		if err != nil {
			gm.Shutdown()
			return nil, rr, err
		}
		if initial != nil {
			rr.initial = initial
			return g, rr, nil
		}
	}
	log.Info("waiting for the raft leader to add this node", "node", f.nodeID)
	for {
		wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		reply, err := gm.AwaitJoinReply(wctx)
		cancel()
		if err == nil {
			if reply.Role != actors.RoleVoter && reply.Role != actors.RoleNonVoting {
				gm.Shutdown()
				return nil, rr, fmt.Errorf("joining: the leader answered an unknown role %q", reply.Role)
			}
			if err := membership.WriteRole(dataDir, reply.Role); err != nil {
				gm.Shutdown()
				return nil, rr, err
			}
			log.Info("added to the cluster", "role", reply.Role)
			rr.join, rr.nonVoting = true, reply.Role == actors.RoleNonVoting
			return g, rr, nil
		}
		if ctx.Err() != nil {
			gm.Shutdown()
			return nil, rr, ctx.Err()
		}
		if cerr := gm.Conflict(); cerr != nil {
			gm.Shutdown()
			return nil, rr, cerr
		}
		if !errors.Is(err, context.DeadlineExceeded) {
			gm.Shutdown()
			return nil, rr, fmt.Errorf("joining the cluster refused: %w", err)
		}
		log.Warn("still waiting for the raft leader to add this node (is a leader running, and does it see this node by gossip?)")
	}
}

// awaitBootstrap waits until --bootstrap-expect nodes see each other and
// returns the initial members when this node is one of them. It returns
// nil, having switched this node to joining, when a cluster already runs
// or this node is not among the lowest ids.
func (g *nodeGossip) awaitBootstrap(ctx context.Context) (map[uint64]string, error) {
	n := g.meta.Expect
	g.log.Info("waiting for nodes to bootstrap a cluster with", "bootstrap_expect", n)
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		set, ok, exists := membership.BootstrapSet(g.meta, g.Members(), n)
		if ok || exists {
			in := false
			initial := map[uint64]string{}
			for _, m := range set {
				initial[m.NodeID] = m.RaftAddr
				in = in || m.NodeID == g.meta.NodeID
			}
			if in {
				g.log.Info("bootstrapping a new cluster", "initial_members", initial)
				return initial, nil
			}
			g.log.Info("a cluster exists or this node is beyond --bootstrap-expect: joining instead")
			g.meta.Expect, g.meta.Joining = 0, true
			if err := g.SetMeta(g.meta); err != nil {
				return nil, err
			}
			return nil, nil
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-tick.C:
		}
	}
}
