package consensus

import (
	"log/slog"
	"sync"
	"sync/atomic"

	"github.com/lni/dragonboat/v4/raftio"
)

// raftEvents receives dragonboat's Raft and system events for one
// NodeHost. Dragonboat calls it from a single dedicated goroutine; every
// method only logs or bumps a counter, so it never delays that goroutine.
type raftEvents struct {
	log *slog.Logger

	mu           sync.Mutex
	leaderCh     chan struct{} // closed when the next leader is elected
	membershipCh chan struct{} // closed at the next membership change

	// lastSnapshot is the highest index of a snapshot this replica took
	// or received since it started.
	lastSnapshot atomic.Uint64

	snapshotsCreated  atomic.Uint64
	snapshotsReceived atomic.Uint64
	snapshotsSent     atomic.Uint64
}

var (
	_ raftio.IRaftEventListener   = (*raftEvents)(nil)
	_ raftio.ISystemEventListener = (*raftEvents)(nil)
)

func (e *raftEvents) LeaderUpdated(info raftio.LeaderInfo) {
	if info.LeaderID == raftio.NoLeader {
		e.log.Debug("raft leader unknown", "term", info.Term)
		return
	}
	e.log.Info("raft leader elected", "leader", info.LeaderID, "term", info.Term)
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.leaderCh != nil {
		close(e.leaderCh)
		e.leaderCh = nil
	}
}

// nextLeader returns a channel that is closed when a leader is next
// elected (or re-confirmed after a leader change).
func (e *raftEvents) nextLeader() <-chan struct{} {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.leaderCh == nil {
		e.leaderCh = make(chan struct{})
	}
	return e.leaderCh
}

func (e *raftEvents) NodeHostShuttingDown()                       {}
func (e *raftEvents) NodeUnloaded(raftio.NodeInfo)                {}
func (e *raftEvents) NodeDeleted(raftio.NodeInfo)                 {}
func (e *raftEvents) ConnectionEstablished(raftio.ConnectionInfo) {}
func (e *raftEvents) ConnectionFailed(raftio.ConnectionInfo)      {}
func (e *raftEvents) SnapshotRecovered(raftio.SnapshotInfo)       {}
func (e *raftEvents) SnapshotCompacted(raftio.SnapshotInfo)       {}
func (e *raftEvents) LogCompacted(raftio.EntryInfo)               {}
func (e *raftEvents) LogDBCompacted(raftio.EntryInfo)             {}
func (e *raftEvents) SendSnapshotStarted(raftio.SnapshotInfo)     {}

func (e *raftEvents) NodeReady(info raftio.NodeInfo) {
	e.log.Debug("raft replica ready", "shard", info.ShardID)
}

func (e *raftEvents) MembershipChanged(info raftio.NodeInfo) {
	e.log.Info("raft membership changed", "shard", info.ShardID)
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.membershipCh != nil {
		close(e.membershipCh)
		e.membershipCh = nil
	}
}

// nextMembershipChange returns a channel that is closed when the replica
// next applies a membership change.
func (e *raftEvents) nextMembershipChange() <-chan struct{} {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.membershipCh == nil {
		e.membershipCh = make(chan struct{})
	}
	return e.membershipCh
}

func (e *raftEvents) sawSnapshot(index uint64) {
	for {
		cur := e.lastSnapshot.Load()
		if index <= cur || e.lastSnapshot.CompareAndSwap(cur, index) {
			return
		}
	}
}

func (e *raftEvents) SendSnapshotCompleted(info raftio.SnapshotInfo) {
	e.snapshotsSent.Add(1)
	e.log.Info("raft snapshot sent", "to", info.ReplicaID, "index", info.Index)
}

func (e *raftEvents) SendSnapshotAborted(info raftio.SnapshotInfo) {
	e.log.Warn("raft snapshot send aborted", "to", info.ReplicaID, "index", info.Index)
}

func (e *raftEvents) SnapshotReceived(info raftio.SnapshotInfo) {
	e.snapshotsReceived.Add(1)
	e.sawSnapshot(info.Index)
	e.log.Info("raft snapshot received", "from", info.From, "index", info.Index)
}

func (e *raftEvents) SnapshotCreated(info raftio.SnapshotInfo) {
	e.snapshotsCreated.Add(1)
	e.sawSnapshot(info.Index)
	e.log.Debug("raft snapshot created", "index", info.Index)
}
