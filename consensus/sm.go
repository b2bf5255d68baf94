package consensus

import (
	"fmt"
	"io"
	"sync/atomic"
	"unicode/utf8"

	sm "github.com/lni/dragonboat/v4/statemachine"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"github.com/blixard/blixard/proto/blixardpb"
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
// on us; batching Update would not help either: the per-command work
// (decoding, apply, the effects of the local node, the result on the
// proposer only — about 3-4 µs per replica, see BenchmarkRaftSMUpdate)
// is what an entry costs, not dragonboat's per-entry overhead.
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
	wantResult := proposer == 0 || proposer == m.replicaID
	fx := effectFilter{none: m.onEffects == nil, node: m.replicaID, results: wantResult}
	if wantResult {
		fx.enc = &m.enc
	}
	out, effects := m.state.applyBytes(e.Index, cmd, fx)
	m.applied.Store(e.Index)
	var data []byte
	if wantResult {
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

// decodeResult decodes the Result that Update encoded for the proposer.
// The common case, a VM result, is decoded by hand: all its strings share
// one allocation and no reflection is involved. Anything else (a node
// result, an unexpected field) goes through proto.Unmarshal. Both give
// the same message; a test compares them on valid and mangled input.
func decodeResult(data []byte) (*blixardpb.Result, error) {
	if r, ok := decodeVMResult(data); ok {
		return r, nil
	}
	out := &blixardpb.Result{}
	if err := proto.Unmarshal(data, out); err != nil {
		return nil, err
	}
	return out, nil
}

// decodeBatchResult decodes the Result of a Batch entry into its
// commands' results, each through decodeResult's fast path. A batch the
// state machine refused whole (its error code set) is an error.
func decodeBatchResult(data []byte) ([]*blixardpb.Result, error) {
	slow := func() ([]*blixardpb.Result, error) {
		var res blixardpb.Result
		if err := proto.Unmarshal(data, &res); err != nil {
			return nil, err
		}
		if res.GetError().GetCode() != blixardpb.Code_OK {
			return nil, fmt.Errorf("batch refused: %s", res.GetError().GetMessage())
		}
		return res.GetBatch(), nil
	}
	var out []*blixardpb.Result
	for b := data; len(b) > 0; {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 || typ != protowire.BytesType || (num != 1 && num != 4) {
			return slow()
		}
		v, m := protowire.ConsumeBytes(b[n:])
		if m < 0 {
			return slow()
		}
		b = b[n+m:]
		if num == 1 {
			if len(v) != 0 { // an error code or message: the batch was refused
				return slow()
			}
			continue
		}
		r, err := decodeResult(v)
		if err != nil {
			return nil, err
		}
		out = append(out, r)
	}
	return out, nil
}

// wireReader reads protobuf fields; strings are substrings of str, a
// single copy of the whole input. ok turns false on anything the fast
// path does not handle, and stays false.
type wireReader struct {
	str string
	b   []byte
	off int // offset of b in str
	ok  bool
}

func (r *wireReader) more() bool { return r.ok && len(r.b) > 0 }

func (r *wireReader) tag() (protowire.Number, protowire.Type) {
	num, typ, n := protowire.ConsumeTag(r.b)
	if n < 0 {
		r.ok = false
		return 0, 0
	}
	r.skip(n)
	return num, typ
}

func (r *wireReader) skip(n int) { r.b, r.off = r.b[n:], r.off+n }

func (r *wireReader) varint(typ protowire.Type) uint64 {
	if typ != protowire.VarintType {
		r.ok = false
		return 0
	}
	v, n := protowire.ConsumeVarint(r.b)
	if n < 0 {
		r.ok = false
		return 0
	}
	r.skip(n)
	return v
}

// sub returns the next length-delimited value as a reader of its own.
func (r *wireReader) sub(typ protowire.Type) wireReader {
	if typ != protowire.BytesType {
		r.ok = false
		return wireReader{}
	}
	l, n := protowire.ConsumeVarint(r.b)
	if n < 0 || l > uint64(len(r.b)-n) {
		r.ok = false
		return wireReader{}
	}
	s := wireReader{str: r.str, b: r.b[n : n+int(l)], off: r.off + n, ok: true}
	r.skip(n + int(l))
	return s
}

func (r *wireReader) string(typ protowire.Type) string {
	s := r.sub(typ)
	if !r.ok {
		return ""
	}
	v := r.str[s.off : s.off+len(s.b)]
	if !utf8.ValidString(v) {
		r.ok = false
	}
	return v
}

func decodeVMResult(data []byte) (*blixardpb.Result, bool) {
	r := wireReader{str: string(data), b: data, ok: true}
	res := &blixardpb.Result{}
	for r.more() {
		switch num, typ := r.tag(); num {
		case 1:
			if res.Error != nil {
				return nil, false // proto would merge; leave that to it
			}
			e := r.sub(typ)
			res.Error = &blixardpb.Error{}
			for e.more() {
				switch num, typ := e.tag(); num {
				case 1:
					res.Error.Code = blixardpb.Code(int32(e.varint(typ)))
				case 2:
					res.Error.Message = e.string(typ)
				default:
					return nil, false
				}
			}
			r.ok = r.ok && e.ok
		case 2:
			if res.Vm != nil {
				return nil, false
			}
			v := r.sub(typ)
			res.Vm = decodeVMRecord(&v)
			r.ok = r.ok && v.ok
		default:
			return nil, false
		}
	}
	return res, r.ok
}

func decodeVMRecord(r *wireReader) *blixardpb.VmRecord {
	v := &blixardpb.VmRecord{}
	for r.more() {
		switch num, typ := r.tag(); num {
		case 1:
			v.Id = r.varint(typ)
		case 2:
			if v.Spec != nil {
				r.ok = false
				break
			}
			s := r.sub(typ)
			v.Spec = decodeVMSpec(&s)
			r.ok = r.ok && s.ok
		case 3:
			v.Desired = blixardpb.DesiredState(int32(r.varint(typ)))
		case 4:
			v.NodeId = r.varint(typ)
		case 5:
			v.Generation = r.varint(typ)
		case 6:
			v.Status = blixardpb.VmStatus(int32(r.varint(typ)))
		case 7:
			v.Restarts = uint32(r.varint(typ))
		case 8:
			v.Message = r.string(typ)
		case 9:
			v.Ip = r.string(typ)
		case 10:
			v.Mac = r.string(typ)
		case 11:
			v.Tap = r.string(typ)
		case 12:
			v.CreatedUnixMs = int64(r.varint(typ))
		case 13:
			v.UpdatedUnixMs = int64(r.varint(typ))
		case 14:
			v.MigrateTo = r.varint(typ)
		default:
			r.ok = false
		}
	}
	return v
}

func decodeVMSpec(r *wireReader) *blixardpb.VmSpec {
	s := &blixardpb.VmSpec{}
	for r.more() {
		switch num, typ := r.tag(); num {
		case 1:
			s.Name = r.string(typ)
		case 2:
			s.Tenant = r.string(typ)
		case 3:
			s.Hypervisor = r.string(typ)
		case 4:
			s.Vcpus = uint32(r.varint(typ))
		case 5:
			s.MemoryMb = r.varint(typ)
		case 6:
			s.Kernel = r.string(typ)
		case 7:
			s.Initrd = r.string(typ)
		case 8:
			s.Flake = r.string(typ)
		case 9:
			s.KernelParams = append(s.KernelParams, r.string(typ))
		case 10:
			sub := r.sub(typ)
			vol := &blixardpb.Volume{}
			for sub.more() {
				switch num, typ := sub.tag(); num {
				case 1:
					vol.Name = sub.string(typ)
				case 2:
					vol.Image = sub.string(typ)
				case 3:
					vol.SizeMb = sub.varint(typ)
				case 4:
					vol.MountPoint = sub.string(typ)
				case 5:
					vol.ReadOnly = sub.varint(typ) != 0
				default:
					sub.ok = false
				}
			}
			r.ok = r.ok && sub.ok
			s.Volumes = append(s.Volumes, vol)
		case 11:
			if s.Restart != nil {
				r.ok = false
				break
			}
			sub := r.sub(typ)
			rp := &blixardpb.RestartPolicy{}
			for sub.more() {
				switch num, typ := sub.tag(); num {
				case 1:
					rp.Mode = sub.string(typ)
				case 2:
					rp.MaxRestarts = uint32(sub.varint(typ))
				case 3:
					rp.WindowSeconds = uint32(sub.varint(typ))
				default:
					sub.ok = false
				}
			}
			r.ok = r.ok && sub.ok
			s.Restart = rp
		case 12:
			s.NodeId = r.varint(typ)
		case 13:
			sub := r.sub(typ)
			var k, v string
			for sub.more() {
				switch num, typ := sub.tag(); num {
				case 1:
					k = sub.string(typ)
				case 2:
					v = sub.string(typ)
				default:
					sub.ok = false
				}
			}
			r.ok = r.ok && sub.ok
			if s.Labels == nil {
				s.Labels = make(map[string]string, 4)
			}
			s.Labels[k] = v
		default:
			r.ok = false
		}
	}
	return s
}

// decodeCommand decodes a marshalled Command. The commands that carry the
// bulk of the traffic (CreateVm, StartVm, StopVm, DeleteVm) are decoded by
// hand, with all their strings in one allocation; anything else (another
// operation, an unknown or repeated field, a malformed input) goes
// through proto.Unmarshal. Both give the same message; a test and the
// fuzz target compare them on valid and mangled input. The strings a VM
// keeps from its CreateVm share that command's one copy (about the size
// of the separate strings they replace).
func decodeCommand(data []byte) (*blixardpb.Command, error) {
	if c, ok := decodeVMCommand(data); ok {
		return c, nil
	}
	c := &blixardpb.Command{}
	if err := proto.Unmarshal(data, c); err != nil {
		return nil, err
	}
	return c, nil
}

func decodeVMCommand(data []byte) (*blixardpb.Command, bool) {
	r := wireReader{str: string(data), b: data, ok: true}
	return decodeVMCommandFrom(&r)
}

// decodeVMCommandFrom decodes the fast path's commands, and a batch of
// them, from r.
func decodeVMCommandFrom(r *wireReader) (*blixardpb.Command, bool) {
	c := &blixardpb.Command{}
	name := func(typ protowire.Type) string {
		sub := r.sub(typ)
		var n string
		for sub.more() {
			switch num, typ := sub.tag(); num {
			case 1:
				n = sub.string(typ)
			default:
				sub.ok = false
			}
		}
		r.ok = r.ok && sub.ok
		return n
	}
	for r.more() {
		num, typ := r.tag()
		if num >= 10 && c.Op != nil {
			return nil, false // a second operation: proto's oneof rules apply
		}
		switch num {
		case 1:
			c.RequestId = r.string(typ)
		case 2:
			c.TimeUnixMs = int64(r.varint(typ))
		case 10:
			sub := r.sub(typ)
			op := &blixardpb.CreateVm{}
			for sub.more() {
				switch num, typ := sub.tag(); num {
				case 1:
					if op.Spec != nil {
						sub.ok = false
						break
					}
					s := sub.sub(typ)
					op.Spec = decodeVMSpec(&s)
					sub.ok = sub.ok && s.ok
				case 2:
					op.NoStart = sub.varint(typ) != 0
				default:
					sub.ok = false
				}
			}
			r.ok = r.ok && sub.ok
			c.Op = &blixardpb.Command_CreateVm{CreateVm: op}
		case 11:
			c.Op = &blixardpb.Command_StartVm{StartVm: &blixardpb.StartVm{Name: name(typ)}}
		case 12:
			c.Op = &blixardpb.Command_StopVm{StopVm: &blixardpb.StopVm{Name: name(typ)}}
		case 13:
			c.Op = &blixardpb.Command_DeleteVm{DeleteVm: &blixardpb.DeleteVm{Name: name(typ)}}
		case 22:
			sub := r.sub(typ)
			op := &blixardpb.Batch{}
			for sub.more() {
				num, typ := sub.tag()
				if num != 1 {
					return nil, false
				}
				in := sub.sub(typ)
				if !sub.ok {
					return nil, false
				}
				ic, ok := decodeVMCommandFrom(&in)
				if !ok {
					return nil, false
				}
				op.Commands = append(op.Commands, ic)
			}
			r.ok = r.ok && sub.ok
			c.Op = &blixardpb.Command_Batch{Batch: op}
		default:
			return nil, false
		}
	}
	return c, r.ok
}
