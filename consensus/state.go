package consensus

import (
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"github.com/blixard/blixard/proto/blixardpb"
)

// MaxRequests bounds the idempotent request table. When it is full the
// oldest entry (in log order) is evicted, so every replica evicts the same
// one.
const MaxRequests = 10000

// Defaults applied by the state machine.
const (
	DefaultSubnet        = "10.0.0.0/24"
	DefaultPlacement     = "spread"
	DefaultTenant        = "default"
	DefaultHypervisor    = "qemu"
	DefaultRestartMode   = "always"
	DefaultMaxRestarts   = 5
	DefaultRestartWindow = 600 // seconds
)

// State is the cluster state machine: pure, deterministic, no I/O, no clock.
// It is not safe for concurrent use; the Replica serialises access.
//
// The in-memory model is made of the domain types below (node, vm); proto
// records are produced only at the edge, by the query methods, in results
// and effects, and in snapshots.
type State struct {
	applied uint64
	cfg     config

	nodes     map[uint64]*node
	nodeOrder []*node // sorted by id: placement scans it, ties go to the lowest id

	vms      map[string]*vm // by name
	vmByID   map[uint64]*vm
	nextVMID uint64
	// waiting holds VMs whose desired state is running but that are not
	// placed (node 0) and not lost: they are placed, lowest id first, as
	// soon as a node with room appears.
	waiting map[uint64]*vm
	// waitingOrder caches the waiting VMs sorted by id; nil when stale.
	waitingOrder []*vm

	ipam ipam

	requests requestTable
}

// config is the cluster configuration. initialised records whether an
// InitCluster command was applied; until then the defaults hold.
type config struct {
	initialised bool
	clusterID   string
	subnet      netip.Prefix
	placement   placementPolicy
}

type placementPolicy uint8

const (
	placeSpread placementPolicy = iota
	placeBinpack
)

func (p placementPolicy) String() string {
	if p == placeBinpack {
		return "binpack"
	}
	return "spread"
}

// node is a host that can run VMs.
type node struct {
	id          uint64
	apiAddr     string
	raftAddr    string
	gossipAddr  string
	version     string
	vcpus       uint32
	memoryMB    uint64
	labels      []label // sorted by key
	status      blixardpb.NodeStatus
	schedulable bool
	updatedMS   int64
	// registeredIdx is the applied index of the node's last UpsertNode:
	// a down proposal based on an older sighting is stale.
	registeredIdx uint64

	// Derived (rebuilt on restore): what the VMs placed here take.
	usedVcpus uint64 // VMs whose desired state is running
	usedMemMB uint64
	vms       map[uint64]*vm // every VM placed here, by id
}

// eligible reports whether new VMs may be placed on n.
func (n *node) eligible() bool {
	return n.status == blixardpb.NodeStatus_NODE_STATUS_ALIVE && n.schedulable
}

func (n *node) freeVcpus() uint64 {
	if uint64(n.vcpus) <= n.usedVcpus {
		return 0
	}
	return uint64(n.vcpus) - n.usedVcpus
}

func (n *node) freeMemMB() uint64 {
	if n.memoryMB <= n.usedMemMB {
		return 0
	}
	return n.memoryMB - n.usedMemMB
}

// take and release count v's vcpus and memory as used on n, or free.
func (n *node) take(v *vm) {
	n.usedVcpus += uint64(v.spec.vcpus)
	n.usedMemMB += v.spec.memoryMB
}

func (n *node) release(v *vm) {
	n.usedVcpus -= uint64(v.spec.vcpus)
	n.usedMemMB -= v.spec.memoryMB
}

func (n *node) fits(vcpus uint32, memMB uint64) bool {
	return n.freeVcpus() >= uint64(vcpus) && n.freeMemMB() >= memMB
}

type label struct{ key, value string }

// vm is one VM record. It is kept compact: enums are bytes, the MAC and the
// TAP name are derived from the address and the id, the address is a
// uint32.
type vm struct {
	id   uint64
	node uint64
	// moveTo is the node a migration hands v over to (0: none): v stays
	// on node until that node's agent reports it stopped.
	moveTo    uint64
	gen       uint64
	createdMS int64
	updatedMS int64
	name      string
	tenant    string
	message   string
	ip        uint32 // 0: none
	restarts  uint32
	desired   blixardpb.DesiredState
	status    blixardpb.VmStatus
	spec      vmSpec
}

// vmSpec is the validated, normalised spec (defaults filled in).
type vmSpec struct {
	vcpus         uint32
	maxRestarts   uint32
	windowSeconds uint32
	hypervisor    uint8 // index into hypervisors
	restartMode   uint8 // index into restartModes
	memoryMB      uint64
	pin           uint64
	kernel        string
	initrd        string
	flake         string
	kernelParams  []string
	volumes       []volume
	labels        []label // sorted by key
}

type volume struct {
	name       string
	image      string
	mountPoint string
	sizeMB     uint64
	readOnly   bool
}

var (
	hypervisors  = []string{"qemu", "cloud-hypervisor", "firecracker"}
	restartModes = []string{"always", "on-failure", "never"}
)

const restartNever = 2 // index of "never" in restartModes

// holds reports whether v takes capacity on its node.
func (v *vm) holds() bool {
	return v.node != 0 && v.desired == blixardpb.DesiredState_DESIRED_RUNNING
}

// reserves reports whether v also takes capacity on the node a migration
// hands it over to, so that the node still has room when it arrives.
func (v *vm) reserves() bool {
	return v.moveTo != 0 && v.desired == blixardpb.DesiredState_DESIRED_RUNNING
}

// NewState returns an empty state (no nodes, no VMs, default config).
func NewState() *State {
	s := &State{}
	s.reset()
	return s
}

func (s *State) reset() {
	*s = State{
		cfg:      defaultConfig(),
		nodes:    make(map[uint64]*node),
		vms:      make(map[string]*vm),
		vmByID:   make(map[uint64]*vm),
		waiting:  make(map[uint64]*vm),
		nextVMID: 1,
		requests: newRequestTable(),
	}
	s.ipam.reset(s.cfg.subnet)
}

func defaultConfig() config {
	return config{subnet: netip.MustParsePrefix(DefaultSubnet), placement: placeSpread}
}

// AppliedIndex is the index of the last applied command.
func (s *State) AppliedIndex() uint64 { return s.applied }

// Config returns a copy of the cluster configuration (defaults filled in).
func (s *State) Config() *blixardpb.ClusterConfig {
	return s.cfg.record()
}

func (c config) record() *blixardpb.ClusterConfig {
	return &blixardpb.ClusterConfig{
		ClusterId: c.clusterID,
		Subnet:    c.subnet.String(),
		Placement: c.placement.String(),
	}
}

// VM returns a copy of the named VM's record.
func (s *State) VM(name string) (*blixardpb.VmRecord, bool) {
	v, ok := s.vms[name]
	if !ok {
		return nil, false
	}
	return v.record(), true
}

// VMByID returns a copy of the record of the VM with the given id.
func (s *State) VMByID(id uint64) (*blixardpb.VmRecord, bool) {
	v, ok := s.vmByID[id]
	if !ok {
		return nil, false
	}
	return v.record(), true
}

// VMs returns copies of all VM records, sorted by name.
func (s *State) VMs() []*blixardpb.VmRecord {
	list := make([]*vm, 0, len(s.vms))
	for _, v := range s.vms {
		list = append(list, v)
	}
	return recordsByName(list)
}

// NumVMs returns the number of VMs.
func (s *State) NumVMs() int { return len(s.vms) }

// VMsOnNode returns copies of the records of VMs placed on node id, sorted by name.
func (s *State) VMsOnNode(id uint64) []*blixardpb.VmRecord {
	n, ok := s.nodes[id]
	if !ok {
		return nil
	}
	list := make([]*vm, 0, len(n.vms))
	for _, v := range n.vms {
		list = append(list, v)
	}
	return recordsByName(list)
}

func recordsByName(list []*vm) []*blixardpb.VmRecord {
	slices.SortFunc(list, func(a, b *vm) int { return strings.Compare(a.name, b.name) })
	out := make([]*blixardpb.VmRecord, len(list))
	for i, v := range list {
		out[i] = v.record()
	}
	return out
}

// Node returns a copy of node id's record.
func (s *State) Node(id uint64) (*blixardpb.NodeRecord, bool) {
	n, ok := s.nodes[id]
	if !ok {
		return nil, false
	}
	return n.record(), true
}

// Nodes returns copies of all node records, sorted by id.
func (s *State) Nodes() []*blixardpb.NodeRecord {
	out := make([]*blixardpb.NodeRecord, len(s.nodeOrder))
	for i, n := range s.nodeOrder {
		out[i] = n.record()
	}
	return out
}

// Usage is what the VMs placed on a node take from it.
type Usage struct {
	// Vcpus and MemoryMB sum the VMs placed on the node whose desired
	// state is running (a stopped VM keeps its node but holds nothing).
	Vcpus    uint32
	MemoryMB uint64
	// VMs counts every VM placed on the node, running or stopped.
	VMs int
}

// NodeUsage returns the resources reserved on node id.
func (s *State) NodeUsage(id uint64) Usage {
	n, ok := s.nodes[id]
	if !ok {
		return Usage{}
	}
	v := n.usedVcpus
	if v > 1<<32-1 {
		v = 1<<32 - 1
	}
	return Usage{Vcpus: uint32(v), MemoryMB: n.usedMemMB, VMs: len(n.vms)}
}

// record converts n to its proto form (a fresh copy).
func (n *node) record() *blixardpb.NodeRecord {
	return &blixardpb.NodeRecord{
		Id:            n.id,
		ApiAddr:       n.apiAddr,
		RaftAddr:      n.raftAddr,
		GossipAddr:    n.gossipAddr,
		Vcpus:         n.vcpus,
		MemoryMb:      n.memoryMB,
		Labels:        labelMap(n.labels),
		Status:        n.status,
		Schedulable:   n.schedulable,
		Version:       n.version,
		UpdatedUnixMs: n.updatedMS,
		// The index the node last registered at.
		RegisteredIndex: n.registeredIdx,
	}
}

// record converts v to its proto form (a fresh copy). The record, its
// spec and restart policy share one allocation, and so do the derived
// strings (TAP name, address, MAC): records are built for every effect
// and result.
func (v *vm) record() *blixardpb.VmRecord {
	blk := &recordBlock{}
	r, sp := &blk.rec, &blk.spec
	*r = blixardpb.VmRecord{
		Id:            v.id,
		Spec:          sp,
		Desired:       v.desired,
		NodeId:        v.node,
		MigrateTo:     v.moveTo,
		Generation:    v.gen,
		Status:        v.status,
		Restarts:      v.restarts,
		Message:       v.message,
		CreatedUnixMs: v.createdMS,
		UpdatedUnixMs: v.updatedMS,
	}
	v.fillSpec(sp, &blk.restart)
	var buf [64]byte
	b := strconv.AppendUint(append(buf[:0], "vm-"...), v.id, 36)
	tap := len(b)
	if v.ip != 0 {
		b = netip.AddrFrom4([4]byte{byte(v.ip >> 24), byte(v.ip >> 16), byte(v.ip >> 8), byte(v.ip)}).AppendTo(b)
	}
	ip := len(b)
	if v.ip != 0 {
		b = appendMAC(b, v.ip)
	}
	str := string(b)
	r.Tap, r.Ip, r.Mac = str[:tap], str[tap:ip], str[ip:]
	return r
}

// recordBlock allocates a VM record with its spec and restart policy.
type recordBlock struct {
	rec     blixardpb.VmRecord
	spec    blixardpb.VmSpec
	restart blixardpb.RestartPolicy
}

// fillSpec fills r (a zero VmSpec) and rp with v's spec.
func (v *vm) fillSpec(r *blixardpb.VmSpec, rp *blixardpb.RestartPolicy) {
	sp := &v.spec
	rp.Mode, rp.MaxRestarts, rp.WindowSeconds = restartModes[sp.restartMode], sp.maxRestarts, sp.windowSeconds
	r.Name = v.name
	r.Tenant = v.tenant
	r.Hypervisor = hypervisors[sp.hypervisor]
	r.Vcpus = sp.vcpus
	r.MemoryMb = sp.memoryMB
	r.Kernel = sp.kernel
	r.Initrd = sp.initrd
	r.Flake = sp.flake
	r.Restart = rp
	r.NodeId = sp.pin
	r.Labels = labelMap(sp.labels)
	if len(sp.kernelParams) > 0 {
		r.KernelParams = slices.Clone(sp.kernelParams)
	}
	if n := len(sp.volumes); n > 0 {
		vols := make([]blixardpb.Volume, n)
		r.Volumes = make([]*blixardpb.Volume, n)
		for i, vol := range sp.volumes {
			pv := &vols[i]
			pv.Name, pv.Image, pv.SizeMb, pv.MountPoint, pv.ReadOnly = vol.name, vol.image, vol.sizeMB, vol.mountPoint, vol.readOnly
			r.Volumes[i] = pv
		}
	}
}

func labelMap(ls []label) map[string]string {
	if len(ls) == 0 {
		return nil
	}
	m := make(map[string]string, len(ls))
	for _, l := range ls {
		m[l.key] = l.value
	}
	return m
}

// tapName is the host TAP device of VM id: "vm-" + base36(id), at most
// 3+13 = 16 bytes for the largest uint64, and at most 15 (IFNAMSIZ-1) for
// every id below 36^12 — far beyond any cluster.
func tapName(id uint64) string {
	return "vm-" + strconv.FormatUint(id, 36)
}
