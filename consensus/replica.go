package consensus

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/lni/dragonboat/v4"
	"github.com/lni/dragonboat/v4/client"
	dbconfig "github.com/lni/dragonboat/v4/config"
	sm "github.com/lni/dragonboat/v4/statemachine"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"github.com/blixard/blixard/proto/blixardpb"
)

// Defaults of ReplicaConfig.
//
// The Raft timings suit a LAN or loopback: a 10 ms logical tick,
// heartbeats every 20 ms and an election timeout drawn from
// [200 ms, 400 ms), so that a dead leader is replaced well within the 1 s
// failover budget while a briefly busy process (GC, -race) does not
// trigger elections.
//
// A snapshot every 10000 entries: a snapshot holds the whole state,
// including the request table of up to MaxRequests (10000) results, so it
// weighs a few MB once the cluster has seen some traffic. Taken every
// 1000 entries it cost more CPU than applying the commands (see
// BenchmarkRaftBlixard with BENCH_SNAPSHOT_ENTRIES=1000); every 10000 it
// costs about as many bytes as the entries it covers. Replaying up to
// 10000 entries at restart takes a fraction of a second.
const (
	DefaultShardID            = 1
	DefaultSnapshotEntries    = 10000
	DefaultCompactionOverhead = 500
	DefaultRTTMillisecond     = 10
	DefaultElectionRTT        = 20
	DefaultHeartbeatRTT       = 2

	// DefaultOpTimeout bounds a Propose, Read or membership change whose
	// context carries no deadline (dragonboat requires one).
	DefaultOpTimeout = 10 * time.Second
)

// ReplicaConfig configures the local replica of the cluster state.
// Zero values take the defaults above.
type ReplicaConfig struct {
	// ReplicaID is the Raft replica id; blixard uses the node id. Nonzero.
	ReplicaID uint64
	// ShardID is the Raft shard holding the cluster state (default 1).
	ShardID uint64
	// DataDir holds the Raft log, snapshots and NodeHost metadata. It is
	// created when missing; an existing one is recovered.
	DataDir string
	// RaftAddr is the host:port this replica listens on and that peers
	// dial. It may not change across restarts.
	RaftAddr string
	// InitialMembers maps replica id to Raft address for the members that
	// bootstrap the cluster; every initial member passes the same map.
	// Empty with Join unset bootstraps a single-node cluster of this
	// replica alone. It is ignored once the data dir has been bootstrapped.
	InitialMembers map[uint64]string
	// Join starts a replica that an existing cluster has added (AddVoter
	// or AddNonVoting on the leader) instead of bootstrapping one. It is
	// ignored once the data dir has been bootstrapped.
	Join bool
	// NonVoting starts a joining replica as non-voting: set it (with Join)
	// on the first start of a replica the leader added with AddNonVoting;
	// one added with AddVoter starts without it. The two must match, or
	// dragonboat panics when the replica applies its own addition. On
	// restarts the field is ignored: the replica records its role in the
	// data dir and keeps starting as non-voting until a local snapshot
	// covers its promotion (see replica_role.go).
	NonVoting bool
	// SnapshotEntries is how many applied entries trigger a snapshot
	// (default 10000); CompactionOverhead is how many entries before a
	// snapshot stay in the log for slow followers (default 500).
	SnapshotEntries    uint64
	CompactionOverhead uint64
	// RTTMillisecond is the Raft logical tick; ElectionRTT and
	// HeartbeatRTT are counted in ticks. ElectionRTT must exceed
	// 2×HeartbeatRTT.
	RTTMillisecond uint64
	ElectionRTT    uint64
	HeartbeatRTT   uint64
	// Logger receives the replica's own messages (default slog.Default()).
	// The Logger of the first replica started in the process also receives
	// dragonboat's messages (WARNING and above, routine ones demoted),
	// because dragonboat's logger is process-global.
	Logger *slog.Logger
	// OnEffects receives, in log order, the effects of each applied command
	// that concern this replica's node (Effect.Concerns(ReplicaID)). It is
	// called from dragonboat's apply goroutine while the state is
	// write-locked: it must not block and must not call back into the
	// Replica synchronously (hand the effects to a channel or actor).
	// It also sees the effects of entries replayed from the log at start.
	OnEffects func([]Effect)
	// OnRestore is called after the state was replaced by a snapshot (when
	// the replica restarts from a data dir holding one, or catches up from
	// a snapshot sent by the leader). Effects of the commands the snapshot
	// covers are never delivered, so agents must reconcile against the
	// state. Same rules as OnEffects: non-blocking, no synchronous calls
	// back into the Replica.
	OnRestore func()

	// OnProposed, optional, is called after each Propose or ProposeBatch
	// of this replica with the number of commands, the time from the call
	// to its decoded results (one Raft round and the apply) and the error.
	// It must not block (metrics).
	OnProposed func(commands int, elapsed time.Duration, err error)

	// TransportFactory, when set, replaces dragonboat's TCP transport
	// (the simulator passes an in-process one that injects faults);
	// RaftAddr is then whatever address that transport understands.
	// FS, when set, is the filesystem of the Raft log and snapshots
	// (dragonboat's Expert.FS, for example its in-memory test FS). Both
	// default to dragonboat's own. Dragonboat accepts only its own
	// filesystems and lni/vfs's error-injection wrapper (vfs.Wrap; the
	// simulator slows disk writes with it): any other type wrapping the OS
	// filesystem makes NewNodeHost panic.
	TransportFactory dbconfig.TransportFactory
	FS               dbconfig.IFS
}

func (c *ReplicaConfig) setDefaults() error {
	if c.ReplicaID == 0 {
		return errors.New("replica id must be nonzero")
	}
	if c.DataDir == "" {
		return errors.New("data dir is required")
	}
	if c.RaftAddr == "" {
		return errors.New("raft address is required")
	}
	if c.ShardID == 0 {
		c.ShardID = DefaultShardID
	}
	if c.SnapshotEntries == 0 {
		c.SnapshotEntries = DefaultSnapshotEntries
	}
	if c.CompactionOverhead == 0 {
		c.CompactionOverhead = DefaultCompactionOverhead
	}
	if c.RTTMillisecond == 0 {
		c.RTTMillisecond = DefaultRTTMillisecond
	}
	if c.ElectionRTT == 0 {
		c.ElectionRTT = DefaultElectionRTT
	}
	if c.HeartbeatRTT == 0 {
		c.HeartbeatRTT = DefaultHeartbeatRTT
	}
	if c.ElectionRTT <= 2*c.HeartbeatRTT {
		return fmt.Errorf("election rtt %d must exceed twice the heartbeat rtt %d", c.ElectionRTT, c.HeartbeatRTT)
	}
	if c.Join && len(c.InitialMembers) > 0 {
		return errors.New("a joining replica takes no initial members")
	}
	if len(c.InitialMembers) > 0 {
		if _, ok := c.InitialMembers[c.ReplicaID]; !ok {
			return fmt.Errorf("initial members do not include replica %d", c.ReplicaID)
		}
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return nil
}

// nodeHostConfig is the dragonboat NodeHost configuration for cfg.
func (c *ReplicaConfig) nodeHostConfig(events *raftEvents) dbconfig.NodeHostConfig {
	return dbconfig.NodeHostConfig{
		NodeHostDir:         filepath.Join(c.DataDir, "raft"),
		RTTMillisecond:      c.RTTMillisecond,
		RaftAddress:         c.RaftAddr,
		RaftEventListener:   events,
		SystemEventListener: events,
		Expert: dbconfig.ExpertConfig{
			LogDB:            raftLogDBConfig(),
			TransportFactory: c.TransportFactory,
			FS:               c.FS,
		},
	}
}

// shardConfig is the dragonboat configuration of the shard's replica.
// CheckQuorum makes a leader that lost its quorum step down (agents rely
// on that to fence themselves); PreVote keeps a replica returning from a
// partition from disrupting a healthy leader; OrderedConfigChange makes
// membership changes fail instead of acting on a stale membership.
func (c *ReplicaConfig) shardConfig() dbconfig.Config {
	return dbconfig.Config{
		ReplicaID:           c.ReplicaID,
		ShardID:             c.ShardID,
		CheckQuorum:         true,
		PreVote:             true,
		ElectionRTT:         c.ElectionRTT,
		HeartbeatRTT:        c.HeartbeatRTT,
		SnapshotEntries:     c.SnapshotEntries,
		CompactionOverhead:  c.CompactionOverhead,
		OrderedConfigChange: true,
		IsNonVoting:         c.NonVoting,
	}
}

// raftLogDBConfig keeps the Raft log store small: a single Pebble
// instance (blixard runs one shard per process) with 4 MiB memtables,
// about 16 MiB of write buffers in total instead of dragonboat's default
// 16 instances reserving up to 8 GiB. Three NodeHosts fit comfortably in
// one test process. The shard count is recorded in the data dir and must
// never change.
func raftLogDBConfig() dbconfig.LogDBConfig {
	c := dbconfig.GetTinyMemLogDBConfig()
	c.Shards = 1
	return c
}

// Replica is the local member of the Raft shard that replicates State:
// one dragonboat NodeHost per process holding one shard.
//
// All methods are safe for concurrent use. Propose, Read, WaitReady and
// the membership methods block until done, the context ends, or (when
// the context has no deadline) DefaultOpTimeout passes. LeaderID,
// AppliedIndex and ID never block. After Close every call fails with
// ErrUnavailable.
type Replica struct {
	cfg     ReplicaConfig
	log     *slog.Logger
	nh      *dragonboat.NodeHost
	sm      *raftSM
	events  *raftEvents
	session *client.Session

	// mu is held shared around every call into the NodeHost and
	// exclusively by Close: dragonboat's NodeHost.Close tears down parts
	// that a call racing with it would dereference. Waiting for a reply
	// happens outside mu; closing (cancelled first thing in Close) cuts
	// short the few calls that block inside dragonboat.
	mu          sync.RWMutex
	closed      atomic.Bool
	closeOnce   sync.Once
	closing     context.Context
	stopClosing context.CancelFunc
	bg          sync.WaitGroup // background goroutines, stopped by Close
}

// withNH runs f with the NodeHost unless the replica is closed.
func (r *Replica) withNH(f func(nh *dragonboat.NodeHost) error) error {
	r.mu.RLock()
	defer r.mu.RUnlock()
	if r.closed.Load() {
		return dragonboat.ErrClosed
	}
	return f(r.nh)
}

// StartReplica starts the NodeHost and the shard's replica and returns
// without waiting for a leader (see WaitReady). On a data dir that was
// bootstrapped before, it recovers: the latest snapshot is restored and
// the log replayed; InitialMembers and Join are then ignored.
func StartReplica(cfg ReplicaConfig) (*Replica, error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, fmt.Errorf("starting replica: %w", err)
	}
	installRaftLogger(cfg.Logger)
	log := cfg.Logger.With("replica", cfg.ReplicaID)
	if err := os.MkdirAll(cfg.DataDir, 0o750); err != nil {
		return nil, fmt.Errorf("starting replica: %w", err)
	}
	events := &raftEvents{log: log}
	nh, err := dragonboat.NewNodeHost(cfg.nodeHostConfig(events))
	if err != nil {
		return nil, fmt.Errorf("starting raft node host on %s: %w", cfg.RaftAddr, err)
	}
	if nh == nil {
		// NewNodeHost recovers some panics and then returns neither a
		// node host nor an error (seen with a custom FS wrapping the OS
		// filesystem).
		return nil, fmt.Errorf("starting raft node host on %s: dragonboat failed without an error (custom FS or transport?)", cfg.RaftAddr)
	}
	closing, stopClosing := context.WithCancel(context.Background())
	r := &Replica{
		cfg:         cfg,
		log:         log,
		nh:          nh,
		events:      events,
		session:     nh.GetNoOPSession(cfg.ShardID),
		closing:     closing,
		stopClosing: stopClosing,
		sm: &raftSM{
			replicaID: cfg.ReplicaID,
			state:     NewState(),
			onEffects: cfg.OnEffects,
			onRestore: cfg.OnRestore,
		},
	}

	bootstrapped := nh.HasNodeInfo(cfg.ShardID, cfg.ReplicaID)
	nonVoting, err := startNonVoting(cfg, bootstrapped)
	if err != nil {
		stopClosing()
		nh.Close()
		return nil, fmt.Errorf("starting raft replica %d: recording its role: %w", cfg.ReplicaID, err)
	}
	cfg.NonVoting = nonVoting
	r.cfg.NonVoting = nonVoting

	members := map[uint64]dragonboat.Target{}
	join := false
	mode := "restart"
	switch {
	case bootstrapped:
		// Already bootstrapped: dragonboat recovers from its own records
		// and rejects a member list that differs from the recorded one.
	case cfg.Join:
		join, mode = true, "join"
	case len(cfg.InitialMembers) == 0:
		members[cfg.ReplicaID] = cfg.RaftAddr
		mode = "bootstrap single node"
	default:
		for id, addr := range cfg.InitialMembers {
			members[id] = addr
		}
		mode = "bootstrap"
	}
	err = nh.StartReplica(members, join, func(uint64, uint64) sm.IStateMachine { return r.sm }, cfg.shardConfig())
	if err != nil {
		stopClosing()
		nh.Close()
		return nil, fmt.Errorf("starting raft replica %d (%s): %w", cfg.ReplicaID, mode, err)
	}
	log.Info("raft replica started", "mode", mode, "non_voting", nonVoting, "raft_addr", cfg.RaftAddr, "shard", cfg.ShardID)
	if nonVoting {
		r.bg.Add(1)
		go r.promotionWatcher()
	}
	return r, nil
}

// ID returns the replica id (the node id).
func (r *Replica) ID() uint64 { return r.cfg.ReplicaID }

// Close stops the replica and its NodeHost. In-flight calls fail with
// ErrUnavailable. Close is idempotent and always returns nil.
func (r *Replica) Close() error {
	r.closeOnce.Do(func() {
		r.closed.Store(true)
		r.stopClosing()
		r.mu.Lock()
		r.nh.Close()
		r.mu.Unlock()
		r.bg.Wait()
		r.log.Info("raft replica stopped")
	})
	return nil
}

// Propose commits cmd through Raft and returns its Result once the entry
// is applied on this replica. A follower forwards the proposal to the
// leader. Time enters here: a zero time_unix_ms is set to the proposer's
// wall clock (cmd itself is not modified).
//
// A non-nil error wraps ErrUnavailable and means the outcome is unknown
// (no quorum, no leader, closing, context ended); retry with the same
// request id. The one exception is a command protobuf refuses to encode
// (a string field holding invalid UTF-8), which fails at once with an
// error of its own. Typed failures of the command come back in
// Result.Error.
//
// Proposals dropped before reaching the log (no leader known yet) are
// retried until the context ends. A command with a request id is also
// proposed again when a new leader is elected while it is in flight (it
// may have been forwarded to a leader that died) or after 3 s without an
// answer (a lost message): the state machine's request table makes the
// duplicate harmless. Without a request id Propose only waits, since a
// second copy could apply twice.
func (r *Replica) Propose(ctx context.Context, cmd *blixardpb.Command) (_ *blixardpb.Result, err error) {
	if r.cfg.OnProposed != nil {
		defer r.observe(1, time.Now(), &err)
	}
	data, err := proto.MarshalOptions{}.MarshalAppend(encodeEntry(r.cfg.ReplicaID), cmd)
	if err != nil {
		return nil, fmt.Errorf("marshalling command: %w", err)
	}
	if cmd.GetTimeUnixMs() == 0 {
		data = appendTime(data, time.Now().UnixMilli())
	}
	enc, err := r.propose(ctx, data, cmd.GetRequestId() != "")
	if err != nil {
		return nil, err
	}
	out, err := decodeResult(enc)
	if err != nil {
		return nil, fmt.Errorf("decoding result: %w", err)
	}
	return out, nil
}

// observe reports a proposal of n commands begun at start to OnProposed.
func (r *Replica) observe(n int, start time.Time, err *error) {
	r.cfg.OnProposed(n, time.Since(start), *err)
}

// MaxBatch is the most commands ProposeBatch takes in one entry.
const MaxBatch = 1024

// ProposeBatch commits cmds in one Raft entry (a group commit) and returns
// their results in order: the entry costs one proposal, one log write and
// one apply call where the commands one by one would cost len(cmds). Each
// command is applied exactly as Propose would apply it, and its time is set
// the same way. The error has Propose's meaning for every command at once;
// the entry is proposed again (see Propose) only when every command has a
// request id.
func (r *Replica) ProposeBatch(ctx context.Context, cmds []*blixardpb.Command) (_ []*blixardpb.Result, err error) {
	if r.cfg.OnProposed != nil {
		defer r.observe(len(cmds), time.Now(), &err)
	}
	switch {
	case len(cmds) == 0:
		return nil, nil
	case len(cmds) > MaxBatch:
		return nil, fmt.Errorf("a batch holds at most %d commands, not %d", MaxBatch, len(cmds))
	}
	// Command{batch: Batch{commands}} by hand, so that each command's time
	// is appended as Propose does it, without copying the commands.
	var batch []byte
	now := time.Now().UnixMilli()
	ids := true
	for _, c := range cmds {
		if _, nested := c.GetOp().(*blixardpb.Command_Batch); nested {
			return nil, errors.New("batches do not nest")
		}
		in, err := proto.MarshalOptions{}.Marshal(c)
		if err != nil {
			return nil, fmt.Errorf("marshalling command: %w", err)
		}
		if c.GetTimeUnixMs() == 0 {
			in = appendTime(in, now)
		}
		ids = ids && c.GetRequestId() != ""
		batch = protowire.AppendTag(batch, 1, protowire.BytesType)
		batch = protowire.AppendBytes(batch, in)
	}
	data := protowire.AppendTag(encodeEntry(r.cfg.ReplicaID), batchField, protowire.BytesType)
	data = protowire.AppendBytes(data, batch)
	res, err := r.propose(ctx, data, ids)
	if err != nil {
		return nil, err
	}
	out, err := decodeBatchResult(res)
	if err != nil {
		return nil, fmt.Errorf("decoding batch result: %w", err)
	}
	if len(out) != len(cmds) {
		return nil, fmt.Errorf("batch of %d commands returned %d results", len(cmds), len(out))
	}
	return out, nil
}

// batchField is the number of Command.batch.
const batchField = 22

// propose proposes an encoded entry and returns the encoded Result. With
// reissue set the entry carries request ids and may be proposed again.
func (r *Replica) propose(ctx context.Context, data []byte, reissue bool) ([]byte, error) {
	ctx, cancel := withDefaultTimeout(ctx)
	defer cancel()
	var every time.Duration // never: a second copy could apply twice
	if reissue {
		every = proposalReissue
	}
	rs, res, err := r.await(ctx, every, func(timeout time.Duration) (*dragonboat.RequestState, error) {
		var rs *dragonboat.RequestState
		err := r.withNH(func(nh *dragonboat.NodeHost) (err error) {
			rs, err = nh.Propose(r.session, data, timeout)
			return err
		})
		return rs, err
	})
	if err != nil {
		return nil, raftUnavailable("proposal", err)
	}
	rs.Release()
	return res.Data, nil
}

// Read runs fn against the local state. Unless stale is set it first
// confirms with the leader (ReadIndex) and waits until this replica has
// applied everything committed before the call, so the read is
// linearizable; stale reads serve whatever is applied locally.
//
// fn runs under the state's read lock, possibly concurrently with other
// readers: it must only read, must not retain the *State or anything it
// returns by reference, and must not call back into the Replica.
func (r *Replica) Read(ctx context.Context, stale bool, fn func(*State)) error {
	if r.closed.Load() {
		return raftUnavailable("read", dragonboat.ErrClosed)
	}
	if stale {
		err := r.withNH(func(nh *dragonboat.NodeHost) error {
			_, err := nh.StaleRead(r.cfg.ShardID, stateQuery(fn))
			return err
		})
		if err != nil {
			return raftUnavailable("stale read", err)
		}
		return nil
	}
	ctx, cancel := withDefaultTimeout(ctx)
	defer cancel()
	rs, _, err := r.await(ctx, readReissue, func(timeout time.Duration) (*dragonboat.RequestState, error) {
		var rs *dragonboat.RequestState
		err := r.withNH(func(nh *dragonboat.NodeHost) (err error) {
			rs, err = nh.ReadIndex(r.cfg.ShardID, timeout)
			return err
		})
		return rs, err
	})
	if err != nil {
		return raftUnavailable("read", err)
	}
	err = r.withNH(func(nh *dragonboat.NodeHost) error {
		_, err := nh.ReadLocalNode(rs, stateQuery(fn))
		return err
	})
	rs.Release()
	if err != nil {
		return raftUnavailable("read", err)
	}
	return nil
}

// How long a pending request waits before it is started again, in case
// the message carrying it or its reply was lost (dragonboat does not
// resend them; a peer's transport drops messages while its circuit
// breaker is open after a failed connection). Reads are idempotent;
// proposals are only re-sent when they carry a request id, whose
// duplicate the state machine recognises.
const (
	readReissue     = time.Second
	proposalReissue = 3 * time.Second
)

// await starts a request with start and waits for its outcome. Requests
// dropped before entering the log (no leader, system busy) are started
// again after a short backoff. When reissue is nonzero, a request still
// pending after reissue, or when a new leader is elected, is started
// again (the old one may have been forwarded to a leader that died). The
// context ends the wait; dragonboat then expires the request on its own.
// The caller releases the returned RequestState once done with it.
func (r *Replica) await(ctx context.Context, reissue time.Duration,
	start func(time.Duration) (*dragonboat.RequestState, error)) (*dragonboat.RequestState, sm.Result, error) {
	backoff := 5 * time.Millisecond
	var again *time.Timer
	if reissue > 0 {
		again = time.NewTimer(reissue)
		defer again.Stop()
	}
	for {
		if r.closed.Load() {
			return nil, sm.Result{}, dragonboat.ErrClosed
		}
		deadline, _ := ctx.Deadline()
		timeout := time.Until(deadline)
		if timeout <= 0 {
			return nil, sm.Result{}, dragonboat.ErrTimeout
		}
		var newLeader <-chan struct{}
		var againC <-chan time.Time
		if again != nil {
			newLeader = r.events.nextLeader()
			again.Reset(reissue)
			againC = again.C
		}
		rs, err := start(timeout)
		if err == nil {
			var res dragonboat.RequestResult
			select {
			case res = <-rs.ResultC():
			case <-newLeader:
				r.log.Debug("raft leader changed while a request was pending: starting it again")
				continue
			case <-againC:
				r.log.Debug("raft request pending too long: starting it again", "after", reissue)
				continue
			case <-r.closing.Done():
				return nil, sm.Result{}, dragonboat.ErrClosed
			case <-ctx.Done():
				if errors.Is(ctx.Err(), context.Canceled) {
					return nil, sm.Result{}, dragonboat.ErrCanceled
				}
				return nil, sm.Result{}, dragonboat.ErrTimeout
			}
			switch {
			case res.Completed():
				return rs, res.GetResult(), nil
			case res.Dropped():
				err = dragonboat.ErrShardNotReady
			case res.Timeout():
				return nil, sm.Result{}, dragonboat.ErrTimeout
			case res.Terminated():
				return nil, sm.Result{}, dragonboat.ErrShardClosed
			case res.Rejected():
				return nil, sm.Result{}, dragonboat.ErrRejected
			case res.Aborted():
				return nil, sm.Result{}, dragonboat.ErrAborted
			default:
				return nil, sm.Result{}, fmt.Errorf("unexpected raft request outcome %v", res)
			}
		}
		if !errors.Is(err, dragonboat.ErrShardNotReady) && !errors.Is(err, dragonboat.ErrSystemBusy) &&
			!errors.Is(err, dragonboat.ErrShardNotInitialized) {
			return nil, sm.Result{}, err
		}
		if !sleepCtx(ctx, backoff) {
			return nil, sm.Result{}, err
		}
		backoff = min(2*backoff, 100*time.Millisecond)
	}
}

// WaitReady blocks until a leader is known and this replica has applied
// everything committed when it was called (a linearizable no-op read),
// retrying until ctx ends. Callers use it before reconciling local
// workloads against the state.
func (r *Replica) WaitReady(ctx context.Context) error {
	noop := func(*State) {}
	for {
		attempt, cancel := context.WithTimeout(ctx, time.Second)
		err := r.Read(attempt, false, noop)
		cancel()
		if err == nil {
			return nil
		}
		if r.closed.Load() {
			return err
		}
		if ctx.Err() != nil {
			return fmt.Errorf("waiting for raft replica %d to be ready: %w", r.cfg.ReplicaID, err)
		}
		if !sleepCtx(ctx, 10*time.Millisecond) {
			return fmt.Errorf("waiting for raft replica %d to be ready: %w", r.cfg.ReplicaID, err)
		}
	}
}

// LeaderID returns the leader and term as this replica knows them; ok is
// false when no leader is known or the replica is closed.
func (r *Replica) LeaderID() (leader, term uint64, ok bool) {
	if r.closed.Load() {
		return 0, 0, false
	}
	err := r.withNH(func(nh *dragonboat.NodeHost) (err error) {
		leader, term, ok, err = nh.GetLeaderID(r.cfg.ShardID)
		return err
	})
	if err != nil {
		return 0, 0, false
	}
	return leader, term, ok
}

// AppliedIndex is the log index of the last command applied to the local
// state (Raft membership changes and no-op entries do not count).
func (r *Replica) AppliedIndex() uint64 { return r.sm.applied.Load() }

// Membership is the Raft membership of the shard.
type Membership struct {
	// ConfigChangeID is the log index of the last applied membership change.
	ConfigChangeID uint64
	// Voters and NonVoting map replica id to Raft address.
	Voters    map[uint64]string
	NonVoting map[uint64]string
	// Removed lists, sorted, the ids that were removed; they can never
	// rejoin under the same id.
	Removed []uint64
}

// LocalVoters returns the voters (id → Raft address) as this replica
// last applied them, without a round trip to the leader; ok is false
// before the replica has applied its membership, and after Close. Stale
// status requests use it, because they must be answered while the
// cluster has no leader.
func (r *Replica) LocalVoters() (voters map[uint64]string, ok bool) {
	_ = r.withNH(func(nh *dragonboat.NodeHost) error {
		if info := nh.GetNodeHostInfo(dragonboat.NodeHostInfoOption{SkipLogInfo: true}); info != nil { // nil: closing
			for _, s := range info.ShardInfoList {
				if s.ShardID == r.cfg.ShardID && !s.Pending && s.Replicas != nil {
					voters = maps.Clone(s.Replicas)
				}
			}
		}
		return nil
	})
	return voters, voters != nil
}

// Membership returns the current membership through a linearizable read.
func (r *Replica) Membership(ctx context.Context) (Membership, error) {
	ctx, cancel := withDefaultTimeout(ctx)
	defer cancel()
	m, err := r.membership(ctx)
	if err != nil {
		return Membership{}, raftUnavailable("membership read", err)
	}
	out := Membership{
		ConfigChangeID: m.ConfigChangeID,
		Voters:         make(map[uint64]string, len(m.Nodes)),
		NonVoting:      make(map[uint64]string, len(m.NonVotings)),
	}
	for id, addr := range m.Nodes {
		out.Voters[id] = addr
	}
	for id, addr := range m.NonVotings {
		out.NonVoting[id] = addr
	}
	for id := range m.Removed {
		out.Removed = append(out.Removed, id)
	}
	sort.Slice(out.Removed, func(i, j int) bool { return out.Removed[i] < out.Removed[j] })
	return out, nil
}

// AddVoter adds replica id at addr as a voting member, or promotes a
// non-voting member at the same address. It is a no-op when id already
// votes at addr. The new replica then starts with ReplicaConfig.Join.
func (r *Replica) AddVoter(ctx context.Context, id uint64, addr string) error {
	return r.changeMembership(ctx, "adding voter", id, func(m *dragonboat.Membership) (bool, error) {
		if cur, ok := m.Nodes[id]; ok {
			if cur != addr {
				return false, fmt.Errorf("replica %d already votes at %s, not %s", id, cur, addr)
			}
			return true, nil
		}
		if cur, ok := m.NonVotings[id]; ok && cur != addr {
			return false, fmt.Errorf("replica %d is non-voting at %s, not %s", id, cur, addr)
		}
		return false, nil
	}, func(ctx context.Context, ccid uint64) error {
		return r.withNH(func(nh *dragonboat.NodeHost) error {
			return nh.SyncRequestAddReplica(ctx, r.cfg.ShardID, id, addr, ccid)
		})
	})
}

// AddNonVoting adds replica id at addr as a non-voting member (it receives
// the log but does not count towards quorum). It is a no-op when id is
// already a non-voting member at addr; a voter cannot be demoted.
func (r *Replica) AddNonVoting(ctx context.Context, id uint64, addr string) error {
	return r.changeMembership(ctx, "adding non-voting replica", id, func(m *dragonboat.Membership) (bool, error) {
		if _, ok := m.Nodes[id]; ok {
			return false, fmt.Errorf("replica %d is a voter: it cannot become non-voting", id)
		}
		if cur, ok := m.NonVotings[id]; ok {
			if cur != addr {
				return false, fmt.Errorf("replica %d is non-voting at %s, not %s", id, cur, addr)
			}
			return true, nil
		}
		return false, nil
	}, func(ctx context.Context, ccid uint64) error {
		return r.withNH(func(nh *dragonboat.NodeHost) error {
			return nh.SyncRequestAddNonVoting(ctx, r.cfg.ShardID, id, addr, ccid)
		})
	})
}

// RemoveReplica removes replica id from the shard. It is a no-op when id
// is not a member. The id can never be added back.
func (r *Replica) RemoveReplica(ctx context.Context, id uint64) error {
	return r.changeMembership(ctx, "removing replica", id, func(m *dragonboat.Membership) (bool, error) {
		_, voter := m.Nodes[id]
		_, nonVoting := m.NonVotings[id]
		_, witness := m.Witnesses[id]
		return !voter && !nonVoting && !witness, nil
	}, func(ctx context.Context, ccid uint64) error {
		return r.withNH(func(nh *dragonboat.NodeHost) error {
			err := nh.SyncRequestDeleteReplica(ctx, r.cfg.ShardID, id, ccid)
			if id == r.cfg.ReplicaID && errors.Is(err, dragonboat.ErrShardClosed) {
				// Applying our own removal closes our shard before the
				// request can be answered: that closure is the success.
				return nil
			}
			return err
		})
	})
}

// changeMembership reads the membership; check says whether the change is
// already in place or impossible. Otherwise it requests the change with
// the config change id just read. Dragonboat rejects a request whose id
// is stale (another change won the race); a request can also go
// unanswered when its message is lost. Both are retried with a fresh
// read, which also notices a change that was applied after all.
func (r *Replica) changeMembership(ctx context.Context, what string, id uint64,
	check func(*dragonboat.Membership) (bool, error), change func(context.Context, uint64) error) error {
	ctx, cancel := withDefaultTimeout(ctx)
	defer cancel()
	for {
		m, err := r.membership(ctx)
		if err != nil {
			return raftUnavailable(what, err)
		}
		done, err := check(m)
		if err != nil {
			return fmt.Errorf("%s %d: %w", what, id, err)
		}
		if done {
			return nil
		}
		if _, removed := m.Removed[id]; removed {
			return fmt.Errorf("%s %d: %w", what, id, ErrReplicaRemoved)
		}
		attempt, cancelAttempt := r.attempt(ctx, proposalReissue)
		err = r.retryDropped(attempt, func(ctx context.Context) error {
			return change(ctx, m.ConfigChangeID)
		})
		cancelAttempt()
		if err == nil {
			r.log.Info("raft membership changed", "change", what, "id", id)
			return nil
		}
		retry := errors.Is(err, dragonboat.ErrRejected) || errors.Is(err, dragonboat.ErrTimeout) ||
			errors.Is(err, dragonboat.ErrInvalidDeadline)
		if !retry || ctx.Err() != nil || !sleepCtx(ctx, 10*time.Millisecond) {
			return raftUnavailable(what, err)
		}
	}
}

// attempt derives the context of one try of a blocking dragonboat call:
// it ends after d, with ctx, or when Close starts.
func (r *Replica) attempt(ctx context.Context, d time.Duration) (context.Context, context.CancelFunc) {
	attempt, cancel := context.WithTimeout(ctx, d)
	stop := context.AfterFunc(r.closing, cancel)
	return attempt, func() {
		stop()
		cancel()
	}
}

// membership reads the membership linearizably, asking again when a
// read goes unanswered for readReissue.
func (r *Replica) membership(ctx context.Context) (*dragonboat.Membership, error) {
	for {
		if r.closed.Load() {
			return nil, dragonboat.ErrClosed
		}
		attempt, cancel := r.attempt(ctx, readReissue)
		var m *dragonboat.Membership
		err := r.retryDropped(attempt, func(ctx context.Context) error {
			return r.withNH(func(nh *dragonboat.NodeHost) (err error) {
				m, err = nh.SyncGetShardMembership(ctx, r.cfg.ShardID)
				return err
			})
		})
		cancel()
		if err == nil {
			return m, nil
		}
		if ctx.Err() != nil || (!errors.Is(err, dragonboat.ErrTimeout) && !errors.Is(err, dragonboat.ErrInvalidDeadline)) {
			return nil, err
		}
	}
}

// retryDropped runs op until it succeeds, fails with an error other than
// one meaning the request never entered the log, or ctx ends. Dropped
// requests (no leader known, leader transfer, system busy) are safe to
// retry because nothing was proposed.
func (r *Replica) retryDropped(ctx context.Context, op func(context.Context) error) error {
	backoff := 5 * time.Millisecond
	for {
		if r.closed.Load() {
			return dragonboat.ErrClosed
		}
		err := op(ctx)
		if err == nil {
			return nil
		}
		if !errors.Is(err, dragonboat.ErrShardNotReady) && !errors.Is(err, dragonboat.ErrSystemBusy) &&
			!errors.Is(err, dragonboat.ErrShardNotInitialized) {
			return err
		}
		if !sleepCtx(ctx, backoff) {
			return err
		}
		backoff = min(2*backoff, 100*time.Millisecond)
	}
}

// timeField is Command.time_unix_ms.
var timeField = (&blixardpb.Command{}).ProtoReflect().Descriptor().Fields().ByName("time_unix_ms").Number()

// appendTime sets time_unix_ms on an encoded Command without decoding or
// copying it: when a scalar field occurs twice, the last one wins.
func appendTime(data []byte, unixMs int64) []byte {
	data = protowire.AppendTag(data, timeField, protowire.VarintType)
	return protowire.AppendVarint(data, uint64(unixMs))
}

// raftUnavailable wraps a dragonboat or context error as ErrUnavailable with
// a message that says what happened. The original error stays reachable
// through errors.Is.
func raftUnavailable(op string, err error) error {
	var why string
	switch {
	case errors.Is(err, dragonboat.ErrTimeout), errors.Is(err, context.DeadlineExceeded),
		errors.Is(err, dragonboat.ErrInvalidDeadline), errors.Is(err, dragonboat.ErrTimeoutTooSmall):
		why = "no quorum: " + op + " timed out"
		if op == "proposal" {
			// Like etcd's "request timed out": the entry may sit in the
			// leader's log and commit once a quorum is back.
			why += " (outcome unknown: it may still apply once a quorum is back)"
		}
	case errors.Is(err, dragonboat.ErrCanceled), errors.Is(err, context.Canceled):
		why = op + " canceled, outcome unknown"
	case errors.Is(err, dragonboat.ErrShardNotReady):
		why = "no leader: " + op + " dropped"
	case errors.Is(err, dragonboat.ErrShardNotInitialized):
		why = "replica still recovering: " + op + " not served"
	case errors.Is(err, dragonboat.ErrSystemBusy):
		why = "raft overloaded: " + op + " refused"
	case errors.Is(err, dragonboat.ErrClosed), errors.Is(err, dragonboat.ErrShardClosed),
		errors.Is(err, dragonboat.ErrShardNotFound):
		why = "replica closed: " + op + " not served"
	case errors.Is(err, dragonboat.ErrAborted):
		why = op + " aborted by raft"
	case errors.Is(err, dragonboat.ErrRejected):
		why = op + " rejected by raft"
	default:
		why = op + " failed"
	}
	return fmt.Errorf("%w: %s: %w", ErrUnavailable, why, err)
}

// withDefaultTimeout gives ctx a DefaultOpTimeout deadline when it has
// none: dragonboat refuses requests without one.
func withDefaultTimeout(ctx context.Context) (context.Context, context.CancelFunc) {
	if _, ok := ctx.Deadline(); ok {
		return ctx, func() {}
	}
	return context.WithTimeout(ctx, DefaultOpTimeout)
}

// sleepCtx waits for d or until ctx ends; it reports whether d passed.
func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// DragonboatConfig returns the NodeHost and shard configuration a Replica
// started with cfg uses (defaults applied, no event listeners), so that a
// benchmark can run raw dragonboat under exactly the same settings. Like
// StartReplica, it routes dragonboat's process-global logging to
// c.Logger if no replica did so before.
func (c ReplicaConfig) DragonboatConfig() (dbconfig.NodeHostConfig, dbconfig.Config, error) {
	if err := c.setDefaults(); err != nil {
		return dbconfig.NodeHostConfig{}, dbconfig.Config{}, err
	}
	installRaftLogger(c.Logger)
	nh := c.nodeHostConfig(nil)
	nh.RaftEventListener, nh.SystemEventListener = nil, nil
	return nh, c.shardConfig(), nil
}
