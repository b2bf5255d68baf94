package consensus

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math"
	"net/netip"
	"slices"
	"strconv"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"github.com/blixard/blixard/proto/blixardpb"
)

// Snapshot format: an 8-byte header — the magic "BLXS" and the format
// version as a big-endian uint32 — followed by one blixardpb.Snapshot
// message. The message is written field by field (each record marshalled
// with Deterministic set, fields in field-number order), which yields the
// same bytes as marshalling the whole Snapshot deterministically without
// holding every record in memory at once: config (present only once
// InitCluster applied), nodes sorted by id, VMs sorted by id, the request
// table oldest first, the applied index.
const (
	snapshotMagic   = "BLXS"
	SnapshotVersion = 1
)

var marshalOpts = proto.MarshalOptions{Deterministic: true}

// Save writes a deterministic, versioned snapshot.
func (s *State) Save(w io.Writer) error {
	bw := bufio.NewWriterSize(w, 64<<10)
	var hdr [8]byte
	copy(hdr[:], snapshotMagic)
	binary.BigEndian.PutUint32(hdr[4:], SnapshotVersion)
	bw.Write(hdr[:])
	e := snapEncoder{w: bw}
	e.uint(1, SnapshotVersion)
	if s.cfg.initialised {
		e.message(2, s.cfg.record())
	}
	e.uint(3, s.nextVMID)
	for _, n := range s.nodeOrder {
		e.message(4, n.record())
	}
	ids := make([]uint64, 0, len(s.vmByID))
	for id := range s.vmByID {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	var en vmEncoder
	for _, id := range ids {
		e.bytes(5, en.record(s.vmByID[id]))
	}
	for _, r := range s.requests.entries() {
		if r.result != nil || r.vm == nil || r.node != nil {
			e.message(6, &blixardpb.RequestEntry{RequestId: r.id, Index: r.index, Result: r.resultProto()})
			continue
		}
		b := appendStringField(e.msg[:0], 1, r.id)
		b = appendVarintField(b, 2, r.index)
		b = protowire.AppendTag(b, 3, protowire.BytesType)
		res := en.record(r.vm)
		b = protowire.AppendVarint(b, uint64(2+1+protowire.SizeBytes(len(res))))
		b = appendBytesField(b, 1, nil) // error: OK, an empty message
		e.msg = appendBytesField(b, 2, res)
		e.bytes(6, e.msg)
	}
	e.uint(7, s.applied)
	if e.err != nil {
		return fmt.Errorf("saving snapshot: %w", e.err)
	}
	if err := bw.Flush(); err != nil {
		return fmt.Errorf("saving snapshot: %w", err)
	}
	return nil
}

// snapshotProto builds the whole Snapshot message; tests check that Save
// writes exactly its deterministic encoding.
func (s *State) snapshotProto() *blixardpb.Snapshot {
	snap := &blixardpb.Snapshot{Version: SnapshotVersion, NextVmId: s.nextVMID, AppliedIndex: s.applied}
	if s.cfg.initialised {
		snap.Config = s.cfg.record()
	}
	snap.Nodes = s.Nodes()
	for _, v := range s.VMs() {
		snap.Vms = append(snap.Vms, v)
	}
	slices.SortFunc(snap.Vms, func(a, b *blixardpb.VmRecord) int {
		switch {
		case a.Id < b.Id:
			return -1
		case a.Id > b.Id:
			return 1
		}
		return 0
	})
	for _, r := range s.requests.entries() {
		snap.Requests = append(snap.Requests, &blixardpb.RequestEntry{RequestId: r.id, Index: r.index, Result: r.resultProto()})
	}
	return snap
}

type snapEncoder struct {
	w   *bufio.Writer
	buf []byte // tag and length
	msg []byte // the marshalled message
	err error
}

// uint writes a varint field, skipped when zero as proto3 does.
func (e *snapEncoder) uint(num protowire.Number, v uint64) {
	if v == 0 || e.err != nil {
		return
	}
	e.buf = protowire.AppendTag(e.buf[:0], num, protowire.VarintType)
	e.buf = protowire.AppendVarint(e.buf, v)
	_, e.err = e.w.Write(e.buf)
}

// bytes writes a length-delimited field holding b.
func (e *snapEncoder) bytes(num protowire.Number, b []byte) {
	if e.err != nil {
		return
	}
	e.buf = protowire.AppendTag(e.buf[:0], num, protowire.BytesType)
	e.buf = protowire.AppendVarint(e.buf, uint64(len(b)))
	if _, e.err = e.w.Write(e.buf); e.err == nil {
		_, e.err = e.w.Write(b)
	}
}

func (e *snapEncoder) message(num protowire.Number, m proto.Message) {
	if e.err != nil {
		return
	}
	e.msg, e.err = marshalOpts.MarshalAppend(e.msg[:0], m)
	if e.err != nil {
		return
	}
	e.buf = protowire.AppendTag(e.buf[:0], num, protowire.BytesType)
	e.buf = protowire.AppendVarint(e.buf, uint64(len(e.msg)))
	if _, e.err = e.w.Write(e.buf); e.err == nil {
		_, e.err = e.w.Write(e.msg)
	}
}

// Restore replaces the state with a snapshot written by Save. On error the
// state is left unchanged.
func (s *State) Restore(r io.Reader) error {
	data, err := readAll(r)
	if err != nil {
		return fmt.Errorf("restoring snapshot: %w", err)
	}
	ns, err := decodeSnapshot(data)
	if err != nil {
		return fmt.Errorf("restoring snapshot: %w", err)
	}
	*s = *ns
	return nil
}

// readAll reads r to the end. A reader that knows how much is left (a
// bytes.Reader or bytes.Buffer, a file) is read into one buffer of that
// size instead of io.ReadAll's doubling copies.
func readAll(r io.Reader) ([]byte, error) {
	size := -1
	switch x := r.(type) {
	case interface{ Len() int }:
		size = x.Len()
	case interface{ Stat() (fs.FileInfo, error) }:
		if fi, err := x.Stat(); err == nil && fi.Mode().IsRegular() && fi.Size() < math.MaxInt32 {
			size = int(fi.Size())
		}
	}
	if size < 0 {
		return io.ReadAll(r)
	}
	// One byte more, so that a reader that grew meanwhile is noticed and
	// read to the end too.
	buf := make([]byte, size+1)
	n, err := io.ReadFull(r, buf)
	switch err {
	case io.ErrUnexpectedEOF, io.EOF:
		return buf[:n], nil
	case nil:
		rest, err := io.ReadAll(r)
		return append(buf, rest...), err
	}
	return nil, err
}

func decodeSnapshot(data []byte) (*State, error) {
	if len(data) < 8 || !bytes.Equal(data[:4], []byte(snapshotMagic)) {
		return nil, errors.New("not a blixard snapshot (bad magic)")
	}
	if v := binary.BigEndian.Uint32(data[4:8]); v != SnapshotVersion {
		return nil, fmt.Errorf("snapshot format version %d is not supported (want %d)", v, SnapshotVersion)
	}
	b := data[8:]
	s := NewState()
	var (
		version uint64
		nodeRec blixardpb.NodeRecord
		vmRec   blixardpb.VmRecord
		vmDec   = newVMRecordDecoder()
		vms     []*vm
	)
	if n := countField(b, 5); n > 0 {
		s.vms = make(map[string]*vm, n)
		s.vmByID = make(map[uint64]*vm, n)
		vms = make([]*vm, 0, n)
	}
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return nil, protowire.ParseError(n)
		}
		b = b[n:]
		var field []byte
		var val uint64
		switch typ {
		case protowire.VarintType:
			val, n = protowire.ConsumeVarint(b)
		case protowire.BytesType:
			field, n = protowire.ConsumeBytes(b)
		default:
			n = protowire.ConsumeFieldValue(num, typ, b)
		}
		if n < 0 {
			return nil, protowire.ParseError(n)
		}
		b = b[n:]
		switch {
		case num == 1 && typ == protowire.VarintType:
			version = val
		case num == 2 && typ == protowire.BytesType:
			var c blixardpb.ClusterConfig
			if err := proto.Unmarshal(field, &c); err != nil {
				return nil, fmt.Errorf("config: %w", err)
			}
			cfg, cerr := validateConfig(&c)
			if cerr != nil {
				return nil, fmt.Errorf("config: %s", cerr.msg)
			}
			s.cfg = cfg
			s.ipam.reset(cfg.subnet)
		case num == 3 && typ == protowire.VarintType:
			s.nextVMID = val
		case num == 4 && typ == protowire.BytesType:
			if err := proto.Unmarshal(field, &nodeRec); err != nil {
				return nil, fmt.Errorf("node: %w", err)
			}
			if err := s.restoreNode(&nodeRec); err != nil {
				return nil, err
			}
		case num == 5 && typ == protowire.BytesType:
			rec, ok := vmDec.decode(field)
			if !ok {
				vmRec.Reset()
				if err := proto.Unmarshal(field, &vmRec); err != nil {
					return nil, fmt.Errorf("vm: %w", err)
				}
				rec = &vmRec
			}
			v, err := restoreVM(rec)
			if err != nil {
				return nil, err
			}
			vms = append(vms, v)
		case num == 6 && typ == protowire.BytesType:
			e := &blixardpb.RequestEntry{}
			if err := proto.Unmarshal(field, e); err != nil {
				return nil, fmt.Errorf("request entry: %w", err)
			}
			if e.RequestId == "" {
				return nil, errors.New("request entry without an id")
			}
			if _, dup := s.requests.get(e.RequestId); dup {
				return nil, fmt.Errorf("request id %q appears twice", e.RequestId)
			}
			if e.Result == nil {
				e.Result = &blixardpb.Result{}
			}
			s.requests.add(&requestEntry{id: e.RequestId, index: e.Index, result: e.Result})
		case num == 7 && typ == protowire.VarintType:
			s.applied = val
		}
	}
	if version != SnapshotVersion {
		return nil, fmt.Errorf("snapshot message version %d, want %d", version, SnapshotVersion)
	}
	// VMs reference nodes and the subnet, which are complete only now.
	// Each node's VM index is made at its final size at once.
	perNode := make(map[uint64]int, len(s.nodes))
	for _, v := range vms {
		perNode[v.node]++
	}
	for id, k := range perNode {
		if n, ok := s.nodes[id]; ok && len(n.vms) == 0 {
			n.vms = make(map[uint64]*vm, k)
		}
	}
	for _, v := range vms {
		if v.id == 0 || v.id >= s.nextVMID {
			return nil, fmt.Errorf("vm %q has id %d, outside 1-%d", v.name, v.id, s.nextVMID-1)
		}
		if _, dup := s.vmByID[v.id]; dup {
			return nil, fmt.Errorf("vm id %d appears twice", v.id)
		}
		if _, dup := s.vms[v.name]; dup {
			return nil, fmt.Errorf("vm name %q appears twice", v.name)
		}
		if _, ok := s.nodes[v.node]; v.node != 0 && !ok {
			return nil, fmt.Errorf("vm %q is placed on unknown node %d", v.name, v.node)
		}
		if v.ip != 0 {
			if err := s.ipam.claim(v.ip); err != nil {
				return nil, fmt.Errorf("vm %q: %w", v.name, err)
			}
		}
		s.vms[v.name] = v
		s.vmByID[v.id] = v
		s.attach(v)
	}
	return s, nil
}

// countField counts the occurrences of field num in a message (0 when
// it does not parse; the decoder reports that).
func countField(b []byte, num protowire.Number) int {
	count := 0
	for len(b) > 0 {
		n, typ, k := protowire.ConsumeTag(b)
		if k < 0 {
			return 0
		}
		b = b[k:]
		k = protowire.ConsumeFieldValue(n, typ, b)
		if k < 0 {
			return 0
		}
		b = b[k:]
		if n == num {
			count++
		}
	}
	return count
}

func (s *State) restoreNode(r *blixardpb.NodeRecord) error {
	labels, err := validateNode(r)
	if err != nil {
		return fmt.Errorf("node %d: %s", r.GetId(), err.msg)
	}
	if err := checkNodeStatus(r.GetStatus()); err != nil {
		return fmt.Errorf("node %d: %s", r.GetId(), err.msg)
	}
	if k := len(s.nodeOrder); k > 0 && s.nodeOrder[k-1].id >= r.GetId() {
		return fmt.Errorf("node %d out of order", r.GetId())
	}
	n := &node{
		id:          r.GetId(),
		apiAddr:     r.GetApiAddr(),
		raftAddr:    r.GetRaftAddr(),
		gossipAddr:  r.GetGossipAddr(),
		version:     r.GetVersion(),
		vcpus:       r.GetVcpus(),
		memoryMB:    r.GetMemoryMb(),
		labels:      labels,
		status:      r.GetStatus(),
		schedulable: r.GetSchedulable(),
		updatedMS:   r.GetUpdatedUnixMs(),
		vms:         make(map[uint64]*vm),

		registeredIdx: r.GetRegisteredIndex(),
	}
	s.nodes[n.id] = n
	s.nodeOrder = append(s.nodeOrder, n)
	return nil
}

func restoreVM(r *blixardpb.VmRecord) (*vm, error) {
	name, tenant, sp, err := validateSpec(r.GetSpec())
	if err != nil {
		return nil, fmt.Errorf("vm %d: %s", r.GetId(), err.msg)
	}
	v := &vm{
		id:        r.GetId(),
		node:      r.GetNodeId(),
		moveTo:    r.GetMigrateTo(),
		gen:       r.GetGeneration(),
		createdMS: r.GetCreatedUnixMs(),
		updatedMS: r.GetUpdatedUnixMs(),
		name:      name,
		tenant:    tenant,
		message:   r.GetMessage(),
		restarts:  r.GetRestarts(),
		desired:   r.GetDesired(),
		status:    r.GetStatus(),
		spec:      sp,
	}
	if v.desired != blixardpb.DesiredState_DESIRED_RUNNING && v.desired != blixardpb.DesiredState_DESIRED_STOPPED {
		return nil, fmt.Errorf("vm %q has invalid desired state %d", name, int32(v.desired))
	}
	if v.status <= blixardpb.VmStatus_VM_STATUS_UNSPECIFIED || v.status > blixardpb.VmStatus_VM_STATUS_LOST {
		return nil, fmt.Errorf("vm %q has invalid status %d", name, int32(v.status))
	}
	if ip := r.GetIp(); ip != "" {
		a, ok := parseIPv4(ip)
		if !ok || a == 0 {
			return nil, fmt.Errorf("vm %q has invalid address %q", name, ip)
		}
		v.ip = a
	}
	return v, nil
}

// vmEncoder writes a VM's record in the protobuf wire format directly from
// the domain struct: the same bytes as marshalling record() with
// Deterministic set (fields in field-number order, zero scalars skipped,
// label map entries sorted by key with key and value always written), but
// without building the record, its spec, label map and volume list, and
// without reflection. Snapshots write every VM and every remembered
// request through it; a test compares it with proto.Marshal. The buffers
// are reused across calls.
type vmEncoder struct {
	spec []byte
	rec  []byte
	sub  []byte // one batch command's Result (applyBatch)
}

// appendResult appends the encoding of Result{Error: {OK}, Vm: v.record()}.
func (en *vmEncoder) appendResult(b []byte, v *vm) []byte {
	rec := en.record(v)
	b = slices.Grow(b, 2+1+protowire.SizeBytes(len(rec)))
	b = protowire.AppendTag(b, 1, protowire.BytesType) // error: OK, an empty message
	b = protowire.AppendVarint(b, 0)
	return appendBytesField(b, 2, rec)
}

// record returns the encoding of v.record(), valid until the next call.
func (en *vmEncoder) record(v *vm) []byte {
	sp := &v.spec
	s := en.spec[:0]
	s = appendStringField(s, 1, v.name)
	s = appendStringField(s, 2, v.tenant)
	s = appendStringField(s, 3, hypervisors[sp.hypervisor])
	s = appendVarintField(s, 4, uint64(sp.vcpus))
	s = appendVarintField(s, 5, sp.memoryMB)
	s = appendStringField(s, 6, sp.kernel)
	s = appendStringField(s, 7, sp.initrd)
	s = appendStringField(s, 8, sp.flake)
	for _, p := range sp.kernelParams {
		s = protowire.AppendTag(s, 9, protowire.BytesType)
		s = protowire.AppendString(s, p)
	}
	for _, vol := range sp.volumes {
		n := stringFieldSize(vol.name) + stringFieldSize(vol.image) + varintFieldSize(vol.sizeMB) + stringFieldSize(vol.mountPoint)
		if vol.readOnly {
			n += 2
		}
		s = protowire.AppendTag(s, 10, protowire.BytesType)
		s = protowire.AppendVarint(s, uint64(n))
		s = appendStringField(s, 1, vol.name)
		s = appendStringField(s, 2, vol.image)
		s = appendVarintField(s, 3, vol.sizeMB)
		s = appendStringField(s, 4, vol.mountPoint)
		if vol.readOnly {
			s = appendVarintField(s, 5, 1)
		}
	}
	mode := restartModes[sp.restartMode]
	s = protowire.AppendTag(s, 11, protowire.BytesType)
	s = protowire.AppendVarint(s, uint64(stringFieldSize(mode)+varintFieldSize(uint64(sp.maxRestarts))+varintFieldSize(uint64(sp.windowSeconds))))
	s = appendStringField(s, 1, mode)
	s = appendVarintField(s, 2, uint64(sp.maxRestarts))
	s = appendVarintField(s, 3, uint64(sp.windowSeconds))
	s = appendVarintField(s, 12, sp.pin)
	for _, l := range sp.labels { // sorted by key, as deterministic marshalling sorts map keys
		n := 1 + protowire.SizeBytes(len(l.key)) + 1 + protowire.SizeBytes(len(l.value))
		s = protowire.AppendTag(s, 13, protowire.BytesType)
		s = protowire.AppendVarint(s, uint64(n))
		s = protowire.AppendTag(s, 1, protowire.BytesType)
		s = protowire.AppendString(s, l.key)
		s = protowire.AppendTag(s, 2, protowire.BytesType)
		s = protowire.AppendString(s, l.value)
	}
	en.spec = s

	r := en.rec[:0]
	r = appendVarintField(r, 1, v.id)
	r = appendBytesField(r, 2, s)
	r = appendVarintField(r, 3, uint64(v.desired))
	r = appendVarintField(r, 4, v.node)
	r = appendVarintField(r, 5, v.gen)
	r = appendVarintField(r, 6, uint64(v.status))
	r = appendVarintField(r, 7, uint64(v.restarts))
	r = appendStringField(r, 8, v.message)
	if v.ip != 0 {
		var tmp [24]byte
		ip := netip.AddrFrom4([4]byte{byte(v.ip >> 24), byte(v.ip >> 16), byte(v.ip >> 8), byte(v.ip)}).AppendTo(tmp[:0])
		r = appendBytesField(r, 9, ip)
		r = appendBytesField(r, 10, appendMAC(tmp[:0], v.ip))
	}
	var tap [16]byte
	r = appendBytesField(r, 11, strconv.AppendUint(append(tap[:0], "vm-"...), v.id, 36))
	r = appendVarintField(r, 12, uint64(v.createdMS))
	r = appendVarintField(r, 13, uint64(v.updatedMS))
	r = appendVarintField(r, 14, v.moveTo)
	en.rec = r
	return r
}

func appendVarintField(b []byte, num protowire.Number, x uint64) []byte {
	if x == 0 {
		return b
	}
	b = protowire.AppendTag(b, num, protowire.VarintType)
	return protowire.AppendVarint(b, x)
}

func appendStringField(b []byte, num protowire.Number, s string) []byte {
	if s == "" {
		return b
	}
	b = protowire.AppendTag(b, num, protowire.BytesType)
	return protowire.AppendString(b, s)
}

// appendBytesField appends a length-delimited field even when empty (a
// set message field is written whatever its size).
func appendBytesField(b []byte, num protowire.Number, v []byte) []byte {
	b = protowire.AppendTag(b, num, protowire.BytesType)
	return protowire.AppendBytes(b, v)
}

// stringFieldSize and varintFieldSize are the encoded sizes of fields 1-15
// (one-byte tags) as appendStringField and appendVarintField write them.
func stringFieldSize(s string) int {
	if s == "" {
		return 0
	}
	return 1 + protowire.SizeBytes(len(s))
}

func varintFieldSize(x uint64) int {
	if x == 0 {
		return 0
	}
	return 1 + protowire.SizeVarint(x)
}
