package consensus

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"slices"

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
	var scratch recordScratch
	for _, id := range ids {
		e.message(5, scratch.fill(s.vmByID[id]))
	}
	for _, r := range s.requests.entries() {
		e.message(6, &blixardpb.RequestEntry{RequestId: r.id, Index: r.index, Result: r.resultProto(&scratch)})
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
		snap.Requests = append(snap.Requests, &blixardpb.RequestEntry{RequestId: r.id, Index: r.index, Result: r.resultProto(nil)})
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

// recordScratch converts VMs to records for Save without allocating a
// fresh record, spec, label map and volume list per VM. The record it
// returns is valid until the next fill and shares the VM's kernel params
// (read-only).
type recordScratch struct {
	rec     blixardpb.VmRecord
	spec    blixardpb.VmSpec
	restart blixardpb.RestartPolicy
	vols    []*blixardpb.Volume
	labels  map[string]string
}

func (sc *recordScratch) fill(v *vm) *blixardpb.VmRecord {
	sp := &v.spec
	rp := &sc.restart
	rp.Mode, rp.MaxRestarts, rp.WindowSeconds = restartModes[sp.restartMode], sp.maxRestarts, sp.windowSeconds
	s := &sc.spec
	s.Name, s.Tenant, s.Hypervisor = v.name, v.tenant, hypervisors[sp.hypervisor]
	s.Vcpus, s.MemoryMb, s.NodeId = sp.vcpus, sp.memoryMB, sp.pin
	s.Kernel, s.Initrd, s.Flake = sp.kernel, sp.initrd, sp.flake
	s.KernelParams = sp.kernelParams
	s.Restart = rp
	s.Labels = nil
	if len(sp.labels) > 0 {
		if sc.labels == nil {
			sc.labels = make(map[string]string)
		}
		clear(sc.labels)
		for _, l := range sp.labels {
			sc.labels[l.key] = l.value
		}
		s.Labels = sc.labels
	}
	for len(sc.vols) < len(sp.volumes) {
		sc.vols = append(sc.vols, &blixardpb.Volume{})
	}
	for i, vol := range sp.volumes {
		pv := sc.vols[i]
		pv.Name, pv.Image, pv.SizeMb, pv.MountPoint, pv.ReadOnly = vol.name, vol.image, vol.sizeMB, vol.mountPoint, vol.readOnly
	}
	s.Volumes = nil
	if len(sp.volumes) > 0 {
		s.Volumes = sc.vols[:len(sp.volumes)]
	}
	r := &sc.rec
	r.Id, r.Spec, r.Desired, r.NodeId, r.Generation = v.id, s, v.desired, v.node, v.gen
	r.Status, r.Restarts, r.Message = v.status, v.restarts, v.message
	r.CreatedUnixMs, r.UpdatedUnixMs = v.createdMS, v.updatedMS
	r.Tap = tapName(v.id)
	r.Ip, r.Mac = "", ""
	if v.ip != 0 {
		r.Ip, r.Mac = ipString(v.ip), macFromIP(v.ip)
	}
	return r
}

// Restore replaces the state with a snapshot written by Save. On error the
// state is left unchanged.
func (s *State) Restore(r io.Reader) error {
	data, err := io.ReadAll(r)
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

func decodeSnapshot(data []byte) (*State, error) {
	if len(data) < 8 || !bytes.Equal(data[:4], []byte(snapshotMagic)) {
		return nil, errors.New("not a blixard snapshot (bad magic)")
	}
	if v := binary.BigEndian.Uint32(data[4:8]); v != SnapshotVersion {
		return nil, fmt.Errorf("snapshot format version %d is not supported (want %d)", v, SnapshotVersion)
	}
	b := data[8:]
	s := NewState()
	if n := countField(b, 5); n > 0 {
		s.vms = make(map[string]*vm, n)
		s.vmByID = make(map[uint64]*vm, n)
	}
	var (
		version uint64
		nodeRec blixardpb.NodeRecord
		vmRec   blixardpb.VmRecord
		vms     []*vm
	)
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
			if err := proto.Unmarshal(field, &vmRec); err != nil {
				return nil, fmt.Errorf("vm: %w", err)
			}
			v, err := restoreVM(&vmRec)
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
