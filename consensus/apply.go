package consensus

import (
	"math"
	"slices"
	"strconv"
	"strings"
	"unicode/utf8"

	"google.golang.org/protobuf/proto"

	"github.com/blixard/blixard/consensus/simbug"
	"github.com/blixard/blixard/proto/blixardpb"
)

// Apply applies one committed command at log index idx and returns the
// typed result and the effects. It never panics on any input.
//
// A command with a request id seen before (and still in the bounded
// table) returns the stored result of its first application and changes
// nothing. A failed command changes nothing but the applied index.
func (s *State) Apply(idx uint64, cmd *blixardpb.Command) (*blixardpb.Result, []Effect) {
	out, effects := s.apply(idx, cmd, allEffects)
	return out.result(), effects
}

// ApplyBytes decodes a marshalled Command and applies it; undecodable bytes
// yield an INVALID_ARGUMENT result and change nothing but the applied index.
func (s *State) ApplyBytes(idx uint64, data []byte) (*blixardpb.Result, []Effect) {
	out, effects := s.applyBytes(idx, data, allEffects)
	return out.result(), effects
}

// effectFilter selects what apply builds besides the state change: the
// effects, and the results of a batch's commands. Neither is part of the
// state, so the filter changes nothing but what apply returns.
type effectFilter struct {
	none bool   // build no effects at all
	node uint64 // when non-zero: only the effects that concern this node
	// results asks for the Results of a batch's commands (the proposer
	// needs them); without it a batch's outcome carries none.
	results bool
	// enc, when set with results, encodes a batch's Results as its
	// commands are applied (outcome.encoded) instead of materialising
	// them: the proposer wants only the bytes.
	enc *vmEncoder
}

var allEffects = effectFilter{results: true}

// wants reports whether the effect of a VM now on node at, previously on
// prev (0: not moved), passes the filter; it mirrors Effect.Concerns.
func (f effectFilter) wants(at, prev uint64) bool {
	if f.none {
		return false
	}
	return f.node == 0 || at == f.node || (prev != 0 && prev == f.node)
}

// apply is Apply returning the compact outcome, building only the effects
// fx selects.
func (s *State) apply(idx uint64, cmd *blixardpb.Command, fx effectFilter) (outcome, []Effect) {
	s.applied = idx
	if cmd == nil {
		return outcome{err: invalid("empty command")}, nil
	}
	if b, ok := cmd.GetOp().(*blixardpb.Command_Batch); ok {
		return s.applyBatch(idx, cmd, b.Batch, fx)
	}
	rid := cmd.GetRequestId()
	if rid != "" {
		if err := checkText("request_id", rid, MaxRequestID); err != nil {
			return outcome{err: err}, nil
		}
		if e, ok := s.requests.get(rid); ok {
			return e.outcome(), nil
		}
	}
	a := applier{State: s, idx: idx, now: cmd.GetTimeUnixMs(), fx: fx}
	if simbug.On(simbug.ApplyWallClock) {
		a.now = simbug.WallClockMs() // planted bug: breaks determinism
	}
	out, err := a.dispatch(cmd)
	if err != nil {
		out = outcome{err: err}
	}
	if rid != "" {
		s.requests.add(newRequestEntry(rid, idx, out))
	}
	if err != nil {
		return out, nil
	}
	return out, a.effects
}

// applyBatch applies a batch's commands in order, each exactly as an entry
// of its own at idx would be. A command's Result is materialised before
// the next one applies (an outcome points into the state, which the next
// command may change), and only when fx asks for results.
func (s *State) applyBatch(idx uint64, cmd *blixardpb.Command, b *blixardpb.Batch, fx effectFilter) (outcome, []Effect) {
	if cmd.GetRequestId() != "" {
		return outcome{err: invalid("a batch carries no request id of its own (its commands do)")}, nil
	}
	var out outcome
	encode := fx.results && fx.enc != nil
	switch {
	case encode:
		// The encoding of result() for the batch: an OK error (an empty
		// message), then each command's Result as it is applied (a VM's
		// record is valid only until the next command changes it).
		out.encoded = appendBytesField(make([]byte, 0, 2+len(b.GetCommands())*160), 1, nil)
	case fx.results:
		out.batch = make([]*blixardpb.Result, 0, len(b.GetCommands()))
	}
	var effects []Effect
	for _, c := range b.GetCommands() {
		var o outcome
		var e []Effect
		if _, nested := c.GetOp().(*blixardpb.Command_Batch); nested {
			o = outcome{err: invalid("batches do not nest")}
		} else {
			o, e = s.apply(idx, c, fx)
		}
		effects = append(effects, e...)
		switch {
		case encode && out.encErr == nil:
			sub, err := o.marshal(fx.enc.sub[:0], fx.enc)
			fx.enc.sub = sub
			out.encErr = err
			out.encoded = appendBytesField(out.encoded, 4, sub)
		case fx.results && !encode:
			out.batch = append(out.batch, o.result())
		}
	}
	return out, effects
}

// applyBytes is ApplyBytes returning the compact outcome.
func (s *State) applyBytes(idx uint64, data []byte, fx effectFilter) (outcome, []Effect) {
	cmd, err := decodeCommand(data)
	if err != nil {
		s.applied = idx
		return outcome{err: invalid("undecodable command (%d bytes): %v", len(data), err)}, nil
	}
	return s.apply(idx, cmd, fx)
}

// outcome is what applying one command yields before it becomes a proto
// Result: a failure, or success with the VM or node the command returns
// (or neither). vm and node point into the state (valid until the next
// apply: materialise the Result before that) or into a request-table
// entry's copy. res is a Result restored from a snapshot's request table.
// batch holds a batch's results, or encoded their encoding (with encErr,
// the failure to encode one), see applyBatch.
// Building the proto Result only where a caller needs it (the proposing
// replica) keeps record copies off the other replicas' apply path.
type outcome struct {
	err     *cmdErr
	vm      *vm
	node    *node
	res     *blixardpb.Result
	batch   []*blixardpb.Result
	encoded []byte
	encErr  error
}

func vmOutcome(v *vm) outcome     { return outcome{vm: v} }
func nodeOutcome(n *node) outcome { return outcome{node: n} }

// code is the result's error code.
func (o outcome) code() blixardpb.Code {
	switch {
	case o.err != nil:
		return o.err.code
	case o.res != nil:
		return o.res.GetError().GetCode()
	}
	return blixardpb.Code_OK
}

// result materialises the outcome as a fresh proto Result.
func (o outcome) result() *blixardpb.Result {
	switch {
	case o.err != nil:
		return errResult(o.err)
	case o.res != nil:
		return proto.Clone(o.res).(*blixardpb.Result)
	}
	blk := &struct {
		res blixardpb.Result
		err blixardpb.Error
	}{}
	r := &blk.res
	r.Error = &blk.err // code OK
	r.Batch = o.batch
	if o.vm != nil {
		r.Vm = o.vm.record()
	}
	if o.node != nil {
		r.Node = o.node.record()
	}
	return r
}

// marshal appends the outcome's Result encoding to b. A VM's record is
// encoded straight from the domain struct by en; the bytes are those of
// marshalling result() deterministically.
func (o outcome) marshal(b []byte, en *vmEncoder) ([]byte, error) {
	if o.encErr != nil {
		return nil, o.encErr
	}
	if o.encoded != nil {
		if b == nil {
			return o.encoded, nil
		}
		return append(b, o.encoded...), nil
	}
	if o.err != nil || o.res != nil || o.vm == nil || o.node != nil || o.batch != nil {
		return proto.MarshalOptions{}.MarshalAppend(b, o.result())
	}
	return en.appendResult(b, o.vm), nil
}

func errResult(e *cmdErr) *blixardpb.Result {
	return &blixardpb.Result{Error: &blixardpb.Error{Code: e.code, Message: e.msg}}
}

// applier carries what one command's application accumulates.
type applier struct {
	*State
	idx     uint64 // the log index being applied
	now     int64
	fx      effectFilter
	effects []Effect
}

func (a *applier) dispatch(cmd *blixardpb.Command) (outcome, *cmdErr) {
	switch op := cmd.GetOp().(type) {
	case *blixardpb.Command_InitCluster:
		return a.initCluster(op.InitCluster)
	case *blixardpb.Command_UpsertNode:
		return a.upsertNode(op.UpsertNode)
	case *blixardpb.Command_SetNodeStatus:
		return a.setNodeStatus(op.SetNodeStatus)
	case *blixardpb.Command_SetNodeSchedulable:
		return a.setNodeSchedulable(op.SetNodeSchedulable)
	case *blixardpb.Command_RemoveNode:
		return a.removeNode(op.RemoveNode)
	case *blixardpb.Command_NodeHeartbeat:
		return a.nodeHeartbeat(op.NodeHeartbeat)
	case *blixardpb.Command_CreateVm:
		return a.createVM(op.CreateVm)
	case *blixardpb.Command_StartVm:
		return a.startVM(op.StartVm)
	case *blixardpb.Command_StopVm:
		return a.stopVM(op.StopVm)
	case *blixardpb.Command_DeleteVm:
		return a.deleteVM(op.DeleteVm)
	case *blixardpb.Command_MigrateVm:
		return a.migrateVM(op.MigrateVm)
	case *blixardpb.Command_ReportVmStatus:
		return a.reportVMStatus(op.ReportVmStatus)
	case nil:
		return outcome{}, invalid("command has no operation")
	default:
		return outcome{}, invalid("unknown command operation %T", op)
	}
}

// emit records an effect for v as it is now.
func (a *applier) emit(v *vm, prev uint64, deleted bool) {
	if prev == v.node {
		prev = 0
	}
	if !a.fx.wants(v.node, prev) {
		return
	}
	a.effects = append(a.effects, Effect{VM: v.record(), PrevNodeID: prev, Deleted: deleted})
}

// detach removes v from the derived indexes (node usage, node VM set,
// waiting set) before its placement or desired state changes; attach adds
// it back afterwards.
func (s *State) detach(v *vm) {
	if v.node != 0 {
		if n, ok := s.nodes[v.node]; ok {
			if v.holds() {
				n.release(v)
			}
			delete(n.vms, v.id)
		}
	}
	if n, ok := s.nodes[v.moveTo]; ok && v.reserves() {
		n.release(v)
	}
	if _, ok := s.waiting[v.id]; ok {
		delete(s.waiting, v.id)
		s.waitingOrder = nil
	}
}

func (s *State) attach(v *vm) {
	if v.node != 0 {
		if n, ok := s.nodes[v.node]; ok {
			if v.holds() {
				n.take(v)
			}
			n.vms[v.id] = v
		}
		if n, ok := s.nodes[v.moveTo]; ok && v.reserves() {
			n.take(v)
		}
	} else if v.desired == blixardpb.DesiredState_DESIRED_RUNNING && v.status != blixardpb.VmStatus_VM_STATUS_LOST {
		s.waiting[v.id] = v
		s.waitingOrder = nil
	}
}

// update applies fn to v (which may change its placement and desired
// state), keeps the indexes right, bumps the generation and emits the
// effect.
func (a *applier) update(v *vm, fn func()) {
	prev := v.node
	a.detach(v)
	fn()
	v.gen++
	v.updatedMS = a.now
	a.attach(v)
	a.emit(v, prev, false)
}

// move re-places v on node id (0: unplaced) with status st, ending any
// hand-over.
func (a *applier) move(v *vm, id uint64, st blixardpb.VmStatus, msg string) {
	a.update(v, func() { v.node, v.moveTo, v.status, v.message = id, 0, st, msg })
}

// finishMove completes v's hand-over: it moves to the node it was handed
// to, pending there when it should run.
func (a *applier) finishMove(v *vm) {
	st := blixardpb.VmStatus_VM_STATUS_STOPPED
	if v.desired == blixardpb.DesiredState_DESIRED_RUNNING {
		st = blixardpb.VmStatus_VM_STATUS_PENDING
	}
	a.move(v, v.moveTo, st, "")
}

// cancelMoves ends the hand-overs to node n, which can no longer take
// them: the VMs stay where they are, and their agents start them again
// if they had already stopped them (the new generation says so).
func (a *applier) cancelMoves(n *node) {
	var ids []uint64
	for _, v := range a.vms {
		if v.moveTo == n.id {
			ids = append(ids, v.id)
		}
	}
	slices.Sort(ids)
	why := "migration cancelled: node " + u64(n.id) + " is " + nodeStatusName(n.status)
	for _, id := range ids {
		v := a.vmByID[id]
		a.update(v, func() { v.moveTo, v.message = 0, why })
	}
}

// ---------------------------------------------------------------------------
// cluster and nodes

func (a *applier) initCluster(op *blixardpb.InitCluster) (outcome, *cmdErr) {
	c, err := validateConfig(op.GetConfig())
	if err != nil {
		return outcome{}, err
	}
	if a.cfg.initialised {
		if c == a.cfg {
			return outcome{}, nil
		}
		return outcome{}, errf(blixardpb.Code_FAILED_PRECONDITION,
			"cluster already initialised (cluster_id %q, subnet %s, placement %s): InitCluster is accepted once",
			a.cfg.clusterID, a.cfg.subnet, a.cfg.placement)
	}
	if c.subnet != a.cfg.subnet && len(a.vms) > 0 {
		return outcome{}, errf(blixardpb.Code_FAILED_PRECONDITION,
			"cannot change the subnet to %s: %d vms already hold addresses in %s", c.subnet, len(a.vms), a.cfg.subnet)
	}
	if c.subnet != a.cfg.subnet {
		a.ipam.reset(c.subnet)
	}
	a.cfg = c
	return outcome{}, nil
}

func (a *applier) upsertNode(op *blixardpb.UpsertNode) (outcome, *cmdErr) {
	rec := op.GetNode()
	labels, err := validateNode(rec)
	if err != nil {
		return outcome{}, err
	}
	n, ok := a.nodes[rec.GetId()]
	if !ok {
		n = &node{
			id:          rec.GetId(),
			status:      blixardpb.NodeStatus_NODE_STATUS_ALIVE,
			schedulable: true,
			vms:         make(map[uint64]*vm),
		}
		a.nodes[n.id] = n
		i, _ := slices.BinarySearchFunc(a.nodeOrder, n.id, func(x *node, id uint64) int { return cmpUint(x.id, id) })
		a.nodeOrder = slices.Insert(a.nodeOrder, i, n)
	}
	n.apiAddr = rec.GetApiAddr()
	n.raftAddr = rec.GetRaftAddr()
	n.gossipAddr = rec.GetGossipAddr()
	n.version = rec.GetVersion()
	n.vcpus = rec.GetVcpus()
	n.memoryMB = rec.GetMemoryMb()
	n.labels = labels
	n.updatedMS = a.now
	n.registeredIdx = a.idx
	if st := rec.GetStatus(); st != blixardpb.NodeStatus_NODE_STATUS_UNSPECIFIED {
		a.setStatus(n, st)
	}
	a.placeWaiting()
	return nodeOutcome(n), nil
}

func (a *applier) node(id uint64) (*node, *cmdErr) {
	n, ok := a.nodes[id]
	if !ok {
		return nil, errf(blixardpb.Code_NOT_FOUND, "node %d not found", id)
	}
	return n, nil
}

func (a *applier) setNodeStatus(op *blixardpb.SetNodeStatus) (outcome, *cmdErr) {
	if err := checkNodeStatus(op.GetStatus()); err != nil {
		return outcome{}, err
	}
	n, err := a.node(op.GetNodeId())
	if err != nil {
		return outcome{}, err
	}
	if seen := op.GetSeenAliveIndex(); seen != 0 && op.GetStatus() == blixardpb.NodeStatus_NODE_STATUS_DOWN && n.registeredIdx > seen {
		// The node came back (and may run its VMs again) after the
		// proposer last saw it alive: its view is stale.
		return outcome{}, errf(blixardpb.Code_FAILED_PRECONDITION, "stale: node %d registered or sent a heartbeat at index %d, after it was last seen alive at index %d", n.id, n.registeredIdx, seen)
	}
	if n.status != op.GetStatus() {
		n.updatedMS = a.now
		a.setStatus(n, op.GetStatus())
		a.placeWaiting()
	}
	return nodeOutcome(n), nil
}

// setStatus moves node n to status st:
//   - draining makes it unschedulable (its VMs stay until moved or the node
//     goes down or leaves); back to alive from draining makes it
//     schedulable again;
//   - down and left re-place its VMs whose desired state is running
//     (restart mode never: they become lost instead); left also unplaces its
//     stopped VMs, as the node is gone for good;
//   - suspect only stops new placements;
//   - down and left also cancel the migrations handing VMs over to n.
func (a *applier) setStatus(n *node, st blixardpb.NodeStatus) {
	old := n.status
	if old == st {
		return
	}
	n.status = st
	switch st {
	case blixardpb.NodeStatus_NODE_STATUS_DRAINING:
		n.schedulable = false
	case blixardpb.NodeStatus_NODE_STATUS_ALIVE:
		if old == blixardpb.NodeStatus_NODE_STATUS_DRAINING {
			n.schedulable = true
		}
	case blixardpb.NodeStatus_NODE_STATUS_DOWN:
		a.cancelMoves(n)
		a.evacuate(n, false)
	case blixardpb.NodeStatus_NODE_STATUS_LEFT:
		a.cancelMoves(n)
		a.evacuate(n, true)
	}
}

// evacuate re-places the VMs of n, which must no longer be eligible. With
// all set, stopped VMs lose their placement too.
func (a *applier) evacuate(n *node, all bool) {
	ids := make([]uint64, 0, len(n.vms))
	for id := range n.vms {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	gone := "node " + u64(n.id) + " is " + nodeStatusName(n.status)
	if n.status == blixardpb.NodeStatus_NODE_STATUS_LEFT {
		gone = "node " + u64(n.id) + " has left"
	}
	for _, id := range ids {
		v := n.vms[id]
		// A migration was handing v over: the node that ran it is gone
		// (what it ran is fenced), so the hand-over completes.
		t, ok := a.nodes[v.moveTo]
		handOver := ok && t.eligible()
		switch {
		case handOver && (v.desired != blixardpb.DesiredState_DESIRED_RUNNING || v.spec.restartMode != restartNever):
			a.finishMove(v)
		case v.desired != blixardpb.DesiredState_DESIRED_RUNNING:
			if all {
				// Nothing will run it there: it is stopped and unplaced.
				a.move(v, 0, blixardpb.VmStatus_VM_STATUS_STOPPED, "")
			}
		case v.spec.restartMode == restartNever:
			a.move(v, 0, blixardpb.VmStatus_VM_STATUS_LOST, "lost: "+gone+" and the restart mode is never")
		case v.spec.pin != 0:
			a.move(v, 0, blixardpb.VmStatus_VM_STATUS_PENDING, "pinned "+gone+": waiting for it to be alive and schedulable")
		default:
			to, err := a.choose(v, n.id)
			if err != nil {
				a.move(v, 0, blixardpb.VmStatus_VM_STATUS_PENDING, gone+" and "+err.msg+": waiting for room")
				continue
			}
			a.move(v, to.id, blixardpb.VmStatus_VM_STATUS_PENDING, "")
		}
	}
}

// placeWaiting places, lowest id first, the VMs that wait for room.
func (a *applier) placeWaiting() {
	if len(a.waiting) == 0 {
		return
	}
	if a.waitingOrder == nil {
		a.waitingOrder = make([]*vm, 0, len(a.waiting))
		for _, v := range a.waiting {
			a.waitingOrder = append(a.waitingOrder, v)
		}
		slices.SortFunc(a.waitingOrder, func(x, y *vm) int { return cmpUint(x.id, y.id) })
	}
	// Upper bounds of what any eligible node has free. Placing VMs only
	// lowers free capacity, so they stay valid bounds throughout, and a VM
	// above them is skipped without a scan: a long queue of waiting VMs
	// costs O(nodes + waiting) per command while nothing fits.
	var maxV, maxM uint64
	for _, n := range a.nodeOrder {
		if n.eligible() {
			maxV, maxM = max(maxV, n.freeVcpus()), max(maxM, n.freeMemMB())
		}
	}
	for _, v := range a.waitingOrder { // a placed VM resets waitingOrder, not this copy
		if uint64(v.spec.vcpus) > maxV || v.spec.memoryMB > maxM {
			continue
		}
		to, err := a.choose(v, 0)
		if err != nil {
			continue
		}
		a.move(v, to.id, blixardpb.VmStatus_VM_STATUS_PENDING, "")
	}
}

// nodeHeartbeat records that node op.NodeId had quorum contact at this
// entry (see SetNodeStatus.seen_alive_index). It changes nothing else: a
// node set down comes back through UpsertNode.
func (a *applier) nodeHeartbeat(op *blixardpb.NodeHeartbeat) (outcome, *cmdErr) {
	n, err := a.node(op.GetNodeId())
	if err != nil {
		return outcome{}, err
	}
	n.registeredIdx = a.idx
	return outcome{}, nil
}

func (a *applier) setNodeSchedulable(op *blixardpb.SetNodeSchedulable) (outcome, *cmdErr) {
	n, err := a.node(op.GetNodeId())
	if err != nil {
		return outcome{}, err
	}
	if op.GetSchedulable() && n.status == blixardpb.NodeStatus_NODE_STATUS_DRAINING {
		n.status = blixardpb.NodeStatus_NODE_STATUS_ALIVE
	}
	if n.schedulable != op.GetSchedulable() {
		n.schedulable = op.GetSchedulable()
		n.updatedMS = a.now
		a.placeWaiting()
	}
	return nodeOutcome(n), nil
}

func (a *applier) removeNode(op *blixardpb.RemoveNode) (outcome, *cmdErr) {
	n, err := a.node(op.GetNodeId())
	if err != nil {
		return outcome{}, err
	}
	if n.status != blixardpb.NodeStatus_NODE_STATUS_LEFT {
		n.status = blixardpb.NodeStatus_NODE_STATUS_LEFT
		a.cancelMoves(n)
		a.evacuate(n, true)
	} else if len(n.vms) > 0 {
		a.evacuate(n, true)
	}
	delete(a.nodes, n.id)
	a.nodeOrder = slices.DeleteFunc(a.nodeOrder, func(x *node) bool { return x == n })
	a.placeWaiting()
	return nodeOutcome(n), nil
}

// ---------------------------------------------------------------------------
// VMs

func (a *applier) vm(name string) (*vm, *cmdErr) {
	v, ok := a.vms[name]
	if !ok {
		return nil, errf(blixardpb.Code_NOT_FOUND, "vm %q not found", name)
	}
	return v, nil
}

func (a *applier) createVM(op *blixardpb.CreateVm) (outcome, *cmdErr) {
	name, tenant, sp, err := validateSpec(op.GetSpec())
	if err != nil {
		return outcome{}, err
	}
	if _, ok := a.vms[name]; ok {
		return outcome{}, errf(blixardpb.Code_ALREADY_EXISTS, "vm %q already exists", name)
	}
	if err := a.checkLargest(sp.vcpus, sp.memoryMB); err != nil {
		return outcome{}, err
	}
	v := &vm{
		name:      name,
		tenant:    tenant,
		spec:      sp,
		gen:       1,
		createdMS: a.now,
		updatedMS: a.now,
		desired:   blixardpb.DesiredState_DESIRED_STOPPED,
		status:    blixardpb.VmStatus_VM_STATUS_STOPPED,
	}
	if !op.GetNoStart() {
		n, err := a.choose(v, 0)
		if err != nil {
			return outcome{}, err
		}
		v.node = n.id
		v.desired = blixardpb.DesiredState_DESIRED_RUNNING
		v.status = blixardpb.VmStatus_VM_STATUS_PENDING
	} else if sp.pin != 0 {
		if _, err := a.node(sp.pin); err != nil {
			err.msg = "pinned " + err.msg
			return outcome{}, err
		}
	}
	if a.nextVMID == math.MaxUint64 {
		return outcome{}, errf(blixardpb.Code_RESOURCE_EXHAUSTED, "vm ids are exhausted")
	}
	ip, ok := a.ipam.alloc()
	if !ok {
		return outcome{}, errf(blixardpb.Code_RESOURCE_EXHAUSTED, "subnet %s is exhausted (%d addresses in use)", a.cfg.subnet, a.ipam.used)
	}
	v.ip = ip
	v.id = a.nextVMID
	a.nextVMID++
	a.vms[v.name] = v
	a.vmByID[v.id] = v
	a.attach(v)
	a.emit(v, 0, false)
	return vmOutcome(v), nil
}

func (a *applier) startVM(op *blixardpb.StartVm) (outcome, *cmdErr) {
	v, err := a.vm(op.GetName())
	if err != nil {
		return outcome{}, err
	}
	running := v.desired == blixardpb.DesiredState_DESIRED_RUNNING
	gaveUp := v.status == blixardpb.VmStatus_VM_STATUS_FAILED || v.status == blixardpb.VmStatus_VM_STATUS_LOST
	if running && v.node != 0 && !gaveUp {
		return vmOutcome(v), nil // already running: nothing to do
	}
	var to uint64
	switch {
	case running && v.node != 0:
		// Failed (or reported lost) where it is placed: it already holds
		// its room; try again there.
		to = v.node
	case v.node != 0 && a.canStay(v):
		to = v.node
	default:
		n, err := a.choose(v, 0)
		if err != nil {
			return outcome{}, err
		}
		to = n.id
		if to != v.node && a.mayRun(v) {
			// Stopped, but its node has not confirmed it yet (a guest
			// may take the whole stop grace): hand it over as a
			// migration does, so the new copy starts only once the old
			// one has stopped (soak seed 9000042).
			a.update(v, func() {
				v.desired = blixardpb.DesiredState_DESIRED_RUNNING
				v.moveTo, v.message, v.restarts = to, "starting on node "+u64(to)+" once node "+u64(v.node)+" has stopped it", 0
			})
			return vmOutcome(v), nil
		}
	}
	a.update(v, func() {
		v.desired = blixardpb.DesiredState_DESIRED_RUNNING
		v.node, v.moveTo, v.status, v.message, v.restarts = to, 0, blixardpb.VmStatus_VM_STATUS_PENDING, "", 0
	})
	return vmOutcome(v), nil
}

// mayRun reports whether v's node may still run it: v is placed on a node
// that is neither down nor gone (fencing covers those), and that node has
// not reported it stopped at the current generation. A VM that may run
// must not start anywhere else until its node reports it stopped.
func (a *applier) mayRun(v *vm) bool {
	if v.node == 0 || v.status == blixardpb.VmStatus_VM_STATUS_STOPPED {
		return false
	}
	n, ok := a.nodes[v.node]
	return ok && n.status != blixardpb.NodeStatus_NODE_STATUS_DOWN && n.status != blixardpb.NodeStatus_NODE_STATUS_LEFT
}

// canStay reports whether stopped VM v can start again on the node it
// keeps.
func (a *applier) canStay(v *vm) bool {
	n, ok := a.nodes[v.node]
	if !ok || !n.eligible() || !n.fits(v.spec.vcpus, v.spec.memoryMB) {
		return false
	}
	return v.spec.pin == 0 || v.spec.pin == v.node
}

func (a *applier) stopVM(op *blixardpb.StopVm) (outcome, *cmdErr) {
	v, err := a.vm(op.GetName())
	if err != nil {
		return outcome{}, err
	}
	if v.desired == blixardpb.DesiredState_DESIRED_STOPPED {
		return vmOutcome(v), nil
	}
	a.update(v, func() {
		v.desired = blixardpb.DesiredState_DESIRED_STOPPED
		if v.node == 0 {
			// Nothing runs it: it is stopped as of now.
			v.status, v.message = blixardpb.VmStatus_VM_STATUS_STOPPED, ""
		}
	})
	a.placeWaiting()
	return vmOutcome(v), nil
}

func (a *applier) deleteVM(op *blixardpb.DeleteVm) (outcome, *cmdErr) {
	v, err := a.vm(op.GetName())
	if err != nil {
		return outcome{}, err
	}
	a.detach(v)
	delete(a.vms, v.name)
	delete(a.vmByID, v.id)
	a.ipam.release(v.ip)
	v.gen++
	v.updatedMS = a.now
	a.emit(v, 0, true)
	a.placeWaiting()
	return vmOutcome(v), nil
}

func (a *applier) migrateVM(op *blixardpb.MigrateVm) (outcome, *cmdErr) {
	v, err := a.vm(op.GetName())
	if err != nil {
		return outcome{}, err
	}
	if v.moveTo != 0 {
		if t := op.GetTargetNodeId(); t == 0 || t == v.moveTo {
			return vmOutcome(v), nil // already moving there
		}
		return outcome{}, errf(blixardpb.Code_FAILED_PRECONDITION, "vm %q is already moving to node %d: migrate it again once it has arrived", v.name, v.moveTo)
	}
	var to *node
	if t := op.GetTargetNodeId(); t != 0 {
		if v.spec.pin != 0 && v.spec.pin != t {
			return outcome{}, errf(blixardpb.Code_FAILED_PRECONDITION, "vm %q is pinned to node %d: it cannot move to node %d", v.name, v.spec.pin, t)
		}
		if t == v.node {
			return outcome{}, errf(blixardpb.Code_FAILED_PRECONDITION, "vm %q is already on node %d", v.name, t)
		}
		if to, err = a.placeOn(t, v.spec.vcpus, v.spec.memoryMB, "target"); err != nil {
			return outcome{}, err
		}
	} else if to, err = a.choose(v, v.node); err != nil {
		return outcome{}, err
	}
	if a.mayRun(v) {
		// It may run where it is: hand it over. Its node's agent stops it
		// and reports it stopped, and only then does it move (see
		// reportVMStatus), so two copies never run at once.
		a.update(v, func() { v.moveTo, v.message = to.id, "migrating to node "+u64(to.id) })
		return vmOutcome(v), nil
	}
	st := v.status
	if v.desired == blixardpb.DesiredState_DESIRED_RUNNING {
		st = blixardpb.VmStatus_VM_STATUS_PENDING
	}
	a.move(v, to.id, st, "")
	a.placeWaiting()
	return vmOutcome(v), nil
}

func (a *applier) reportVMStatus(op *blixardpb.ReportVmStatus) (outcome, *cmdErr) {
	st := op.GetStatus()
	if st <= blixardpb.VmStatus_VM_STATUS_UNSPECIFIED || st > blixardpb.VmStatus_VM_STATUS_LOST {
		return outcome{}, invalid("invalid vm status %s: must be pending, starting, running, stopping, stopped, failed or lost", vmStatusName(st))
	}
	v, err := a.vm(op.GetName())
	if err != nil {
		return outcome{}, err
	}
	if id := op.GetVmId(); id != 0 && id != v.id {
		return outcome{}, errf(blixardpb.Code_FAILED_PRECONDITION, "stale report: vm %q has id %d, the report is for id %d", v.name, v.id, id)
	}
	if v.node == 0 || op.GetNodeId() != v.node {
		return outcome{}, errf(blixardpb.Code_FAILED_PRECONDITION, "stale report: vm %q is placed on node %d, the report comes from node %d", v.name, v.node, op.GetNodeId())
	}
	if op.GetGeneration() != v.gen {
		return outcome{}, errf(blixardpb.Code_FAILED_PRECONDITION, "stale report: vm %q is at generation %d, the report is for generation %d", v.name, v.gen, op.GetGeneration())
	}
	v.status = st
	v.restarts = op.GetRestarts()
	v.message = clipMessage(op.GetMessage())
	v.updatedMS = a.now
	if v.moveTo != 0 && st == blixardpb.VmStatus_VM_STATUS_STOPPED {
		// The node handing v over has stopped it: it moves now. (Not on
		// failed: an agent whose vm actor gave up cannot vouch that
		// nothing runs.)
		a.finishMove(v)
		a.placeWaiting()
	}
	return vmOutcome(v), nil
}

// clipMessage makes an agent's message valid UTF-8 and at most
// MaxMessageLen bytes, cutting at a rune boundary.
func clipMessage(m string) string {
	if !utf8.ValidString(m) {
		m = strings.ToValidUTF8(m, "\uFFFD")
	}
	if len(m) <= MaxMessageLen {
		return m
	}
	cut := MaxMessageLen
	for cut > 0 && !utf8.RuneStart(m[cut]) {
		cut--
	}
	return m[:cut]
}

func u64(x uint64) string { return strconv.FormatUint(x, 10) }

func cmpUint(a, b uint64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}
