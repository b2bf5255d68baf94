package consensus

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"time"

	"github.com/lni/dragonboat/v4"
)

// Dragonboat needs a replica to start in the role its log will replay:
// a replica that joined as non-voting must restart as non-voting for as
// long as its log replays its own addition (dragonboat panics when a
// voter applies it), and it turns into a voter when it replays its
// promotion. Once a local snapshot covers the promotion, the addition is
// never replayed again and the replica must start as the voter it is.
//
// The Replica keeps that bookkeeping itself: a marker file in the data dir
// says "start as non-voting". It is written before the first start of a
// replica joining as non-voting, and removed once a snapshot taken after
// the promotion exists (promotionWatcher asks for one). So callers set
// ReplicaConfig.NonVoting only for the first start.

const nonVotingMarker = "raft-nonvoting"

// startNonVoting decides the role to start in and writes the marker on a
// first non-voting start. It runs before the shard starts, so a crash in
// between never leaves a non-voting replica without its marker.
func startNonVoting(cfg ReplicaConfig, bootstrapped bool) (bool, error) {
	marker := filepath.Join(cfg.DataDir, nonVotingMarker)
	if bootstrapped {
		_, err := os.Stat(marker)
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			return false, err
		}
		return err == nil, nil
	}
	if !cfg.NonVoting {
		return false, nil
	}
	f, err := os.Create(marker)
	if err != nil {
		return false, err
	}
	if err := errors.Join(f.Sync(), f.Close()); err != nil {
		return false, err
	}
	return true, syncDir(cfg.DataDir)
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	return errors.Join(d.Sync(), d.Close())
}

// promotionCheckInterval is how often a non-voting replica looks for its
// promotion, besides every membership change it applies.
const promotionCheckInterval = 5 * time.Second

// promotionWatcher runs while the replica started as non-voting. When the
// membership lists it as a voter, it takes a snapshot (which then covers
// the promotion) and removes the marker, so the next start is as a voter.
// It stops then or when the replica closes.
func (r *Replica) promotionWatcher() {
	defer r.bg.Done()
	tick := time.NewTicker(promotionCheckInterval)
	defer tick.Stop()
	for {
		changed := r.events.nextMembershipChange()
		if r.promotedAndSnapshotted() {
			return
		}
		select {
		case <-r.closing.Done():
			return
		case <-changed:
		case <-tick.C:
		}
	}
}

// promotedAndSnapshotted reports whether the replica is a voter covered
// by a local snapshot, and its marker gone.
func (r *Replica) promotedAndSnapshotted() bool {
	ctx, cancel := r.attempt(context.Background(), 30*time.Second)
	defer cancel()
	m, err := r.membership(ctx)
	if err != nil {
		return false
	}
	if _, voter := m.Nodes[r.cfg.ReplicaID]; !voter {
		return false
	}
	// A snapshot covers the promotion once its index reaches the last
	// membership change (conservatively: later changes count too).
	if r.events.lastSnapshot.Load() < m.ConfigChangeID {
		var idx uint64
		err = r.withNH(func(nh *dragonboat.NodeHost) (err error) {
			idx, err = nh.SyncRequestSnapshot(ctx, r.cfg.ShardID, dragonboat.DefaultSnapshotOption)
			return err
		})
		if err != nil || idx < m.ConfigChangeID {
			r.log.Debug("no snapshot covers the promotion yet; will retry", "err", err, "index", idx)
			return false
		}
	}
	marker := filepath.Join(r.cfg.DataDir, nonVotingMarker)
	if err := os.Remove(marker); err != nil && !errors.Is(err, os.ErrNotExist) {
		r.log.Warn("removing the non-voting marker", "err", err)
		return false
	}
	if err := syncDir(r.cfg.DataDir); err != nil {
		r.log.Warn("syncing the data dir", "err", err)
		return false
	}
	r.log.Info("raft replica promoted to voter; restarts as a voter from now on")
	return true
}
