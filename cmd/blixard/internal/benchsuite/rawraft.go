package benchsuite

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"time"

	"github.com/lni/dragonboat/v4"
	sm "github.com/lni/dragonboat/v4/statemachine"

	"github.com/blixard/blixard/consensus"
)

// counterSM is the raw baseline's trivial state machine: it counts
// applied entries.
type counterSM struct{ n uint64 }

func (s *counterSM) Update(sm.Entry) (sm.Result, error) {
	s.n++
	return sm.Result{Value: s.n}, nil
}
func (s *counterSM) Lookup(any) (any, error) { return s.n, nil }
func (s *counterSM) SaveSnapshot(w io.Writer, _ sm.ISnapshotFileCollection, _ <-chan struct{}) error {
	_, err := fmt.Fprintf(w, "%d", s.n)
	return err
}
func (s *counterSM) RecoverFromSnapshot(r io.Reader, _ []sm.SnapshotFile, _ <-chan struct{}) error {
	_, err := fmt.Fscanf(r, "%d", &s.n)
	return err
}
func (s *counterSM) Close() error { return nil }

// rawRaft is three dragonboat NodeHosts in this process running the
// counter state machine with the settings of a blixard Replica.
type rawRaft struct {
	hosts  map[uint64]*dragonboat.NodeHost
	shard  uint64
	leader uint64
}

func startRawRaft(ctx context.Context, dir string) (*rawRaft, error) {
	addrs, err := freeAddrs(3)
	if err != nil {
		return nil, err
	}
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	members := map[uint64]dragonboat.Target{}
	for i, a := range addrs {
		members[uint64(i+1)] = a
	}
	r := &rawRaft{hosts: map[uint64]*dragonboat.NodeHost{}}
	for id := uint64(1); id <= 3; id++ {
		cfg := consensus.ReplicaConfig{ReplicaID: id, DataDir: filepath.Join(dir, fmt.Sprint(id)), RaftAddr: members[id], Logger: quiet}
		nhc, sc, err := cfg.DragonboatConfig()
		if err != nil {
			r.close()
			return nil, err
		}
		r.shard = sc.ShardID
		nh, err := dragonboat.NewNodeHost(nhc)
		if err != nil {
			r.close()
			return nil, err
		}
		r.hosts[id] = nh
		if err := nh.StartReplica(members, false, func(uint64, uint64) sm.IStateMachine { return &counterSM{} }, sc); err != nil {
			r.close()
			return nil, err
		}
	}
	err = poll(ctx, 30*time.Second, "a raw dragonboat leader known to every host", func() (bool, error) {
		r.leader = 0
		for _, nh := range r.hosts {
			id, _, ok, err := nh.GetLeaderID(r.shard)
			if err != nil || !ok || (r.leader != 0 && id != r.leader) {
				return false, nil
			}
			r.leader = id
		}
		return true, nil
	})
	if err != nil {
		r.close()
		return nil, err
	}
	return r, nil
}

func (r *rawRaft) close() {
	for _, nh := range r.hosts {
		nh.Close()
	}
}

// op proposes worker w's i-th payload on the leader and waits until it
// is applied there.
func (r *rawRaft) op() Op {
	nh := r.hosts[r.leader]
	session := nh.GetNoOPSession(r.shard)
	return func(_ context.Context, w, i int) error {
		// Encoded per operation, as blixard encodes each command.
		data := commitPayload(w, i)
		// Not the load's context: dragonboat refuses a deadline shorter
		// than a few ticks, which the last operations before the load's
		// deadline would have. Operations ending late are not counted.
		pctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_, err := nh.SyncPropose(pctx, session, data)
		return err
	}
}

func commitRaw(ctx context.Context, e *env, levels []int, d time.Duration) ([]LoadResult, error) {
	e.log("commit: raw dragonboat, 3 NodeHosts in-process")
	r, err := startRawRaft(ctx, filepath.Join(e.work, "raw"))
	if err != nil {
		return nil, err
	}
	defer r.close()
	var out []LoadResult
	for _, n := range levels {
		c0 := selfCPU()
		res := RunLoad(ctx, n, d, r.op())
		res.setCPU(selfCPU()-c0, 0)
		e.log("commit: raw %d: %.0f ops/s p50 %s p99 %s errors %d", n, res.OpsPerSec, fmtMs(res.P50Ms), fmtMs(res.P99Ms), res.Errors)
		out = append(out, res)
	}
	return out, nil
}
