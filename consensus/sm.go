package consensus

import (
	"fmt"
	"io"
	"sync/atomic"

	sm "github.com/lni/dragonboat/v4/statemachine"
	"google.golang.org/protobuf/encoding/protowire"
)

// raftSM adapts State to dragonboat's regular in-memory state machine
// (statemachine.IStateMachine).
//
// Why the regular type: State lives in memory and a snapshot of it is a
// few MB at most, so the on-disk type (dragonboat skips log replay in
// exchange for the state machine persisting itself) buys nothing. The
// regular type gives the concurrency guarantee State needs: dragonboat
// guards it with a sync.RWMutex, Update and RecoverFromSnapshot run under
// the write lock, Lookup and SaveSnapshot under the read lock. So Update
// never races with Lookup, and concurrent Lookups only ever read (State's
// accessors do not mutate). The concurrent type would let Lookup and
// SaveSnapshot run during Update and force copy-on-write or a second lock
// on us; batching Update would not help either, since the profile of
// BenchmarkRaftBlixard is dominated by the per-command work inside
// State.Apply, not by dragonboat's per-entry overhead.
//
// Every method is called from dragonboat goroutines: Update and
// RecoverFromSnapshot from the shard's apply worker, Lookup from the
// goroutine calling SyncRead/StaleRead, SaveSnapshot from a snapshot worker.
type raftSM struct {
	replicaID uint64
	state     *State
	onEffects func([]Effect)
	onRestore func()
	// enc encodes the proposer's Result (Update runs under dragonboat's
	// write lock, one at a time).
	enc vmEncoder

	// applied mirrors state.AppliedIndex() for lock-free reads.
	applied atomic.Uint64
	// restores counts snapshot restores; restoredIndex is the applied index
	// of the state after the latest restore. Tests use them to prove that a
	// replica caught up from a snapshot.
	restores      atomic.Uint64
	restoredIndex atomic.Uint64
}

var _ sm.IStateMachine = (*raftSM)(nil)

// stateQuery is what Lookup accepts: a function run against the state under
// dragonboat's read lock.
type stateQuery func(*State)

// A Raft entry holds either a bare marshalled blixardpb.Command or an
// envelope: the byte 0x00, the proposing replica's id as a uvarint, then
// the marshalled Command. No protobuf message starts with a zero byte
// (field number 0 is invalid), so the two never mix up. The envelope lets
// only the proposing replica encode the Result its caller waits for; the
// others skip that work. Apply sees the same command bytes either way.
const entryEnvelope = 0x00

// encodeEntry starts an envelope entry for proposer; the caller appends
// the marshalled command.
func encodeEntry(proposer uint64) []byte {
	return protowire.AppendVarint([]byte{entryEnvelope}, proposer)
}

// decodeEntry splits an entry into its proposer (0 when unknown) and
// command bytes. A malformed envelope is handed to apply as it is, which
// rejects it as an undecodable command on every replica alike.
func decodeEntry(data []byte) (proposer uint64, cmd []byte) {
	if len(data) == 0 || data[0] != entryEnvelope {
		return 0, data
	}
	id, n := protowire.ConsumeVarint(data[1:])
	if n < 0 {
		return 0, data
	}
	return id, data[1+n:]
}

// Update applies one committed command. The returned Result.Value is the
// result's error code; Result.Data is the marshalled blixardpb.Result when
// this replica proposed the entry (or the proposer is unknown), and empty
// otherwise.
func (m *raftSM) Update(e sm.Entry) (sm.Result, error) {
	proposer, cmd := decodeEntry(e.Cmd)
	// Apply builds only the effects this replica forwards: those that
	// concern its node, and none without a hook.
	fx := effectFilter{none: m.onEffects == nil, node: m.replicaID}
	out, effects := m.state.applyBytes(e.Index, cmd, fx)
	m.applied.Store(e.Index)
	var data []byte
	if proposer == 0 || proposer == m.replicaID {
		var err error
		if data, err = out.marshal(nil, &m.enc); err != nil {
			// A Result that cannot be marshalled is a broken invariant
			// of State; dragonboat halts the replica on an Update error.
			return sm.Result{}, fmt.Errorf("marshalling result of entry %d: %w", e.Index, err)
		}
	}
	if len(effects) > 0 {
		m.onEffects(effects)
	}
	return sm.Result{Value: uint64(out.code()), Data: data}, nil
}

// Lookup runs a query (a func(*State)) against the state. It returns
// nothing: the query captures what it needs.
func (m *raftSM) Lookup(q any) (any, error) {
	f, ok := q.(stateQuery)
	if !ok {
		return nil, fmt.Errorf("consensus: unsupported lookup %T", q)
	}
	f(m.state)
	return nil, nil
}

// SaveSnapshot writes State's deterministic snapshot. It runs under the
// read lock, so the state cannot change underneath it.
func (m *raftSM) SaveSnapshot(w io.Writer, _ sm.ISnapshotFileCollection, _ <-chan struct{}) error {
	return m.state.Save(w)
}

// RecoverFromSnapshot replaces the state with the snapshot and then calls
// OnRestore. It restores into a fresh State so that a failed restore never
// leaves a half-replaced one behind (dragonboat halts on the error anyway).
func (m *raftSM) RecoverFromSnapshot(r io.Reader, _ []sm.SnapshotFile, _ <-chan struct{}) error {
	s := NewState()
	if err := s.Restore(r); err != nil {
		return fmt.Errorf("restoring snapshot: %w", err)
	}
	m.state = s
	idx := s.AppliedIndex()
	m.applied.Store(idx)
	m.restoredIndex.Store(idx)
	m.restores.Add(1)
	if m.onRestore != nil {
		m.onRestore()
	}
	return nil
}

// Close implements statemachine.IStateMachine; State holds no resources.
func (m *raftSM) Close() error { return nil }
