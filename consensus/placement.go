package consensus

import (
	"fmt"

	"github.com/blixard/blixard/proto/blixardpb"
)

// Placement runs inside apply, so every replica computes the same answer:
//
//  1. filter: nodes that are alive and schedulable and have the VM's vcpus
//     and memory free (capacity minus what the VMs whose desired state is
//     running take);
//  2. score: spread (default) prefers the most free memory, binpack the
//     least free memory that still fits;
//  3. tie-break: the lowest node id (nodeOrder is sorted by id and only a
//     strictly better score replaces the current best).
//
// A VM pinned to a node (spec.node_id) can only go there.

// pick returns the best eligible node for a VM of the given size, skipping
// node exclude (0: none). It returns nil when no node fits.
func (s *State) pick(vcpus uint32, memMB uint64, exclude uint64) *node {
	var best *node
	var bestFree uint64
	binpack := s.cfg.placement == placeBinpack
	for _, n := range s.nodeOrder {
		if n.id == exclude || !n.eligible() || !n.fits(vcpus, memMB) {
			continue
		}
		free := n.freeMemMB()
		if best == nil || (binpack && free < bestFree) || (!binpack && free > bestFree) {
			best, bestFree = n, free
		}
	}
	return best
}

// noRoom explains why pick found nothing.
func (s *State) noRoom(vcpus uint32, memMB uint64, exclude uint64) *cmdErr {
	var largest *node
	for _, n := range s.nodeOrder {
		if n.id == exclude || !n.eligible() {
			continue
		}
		if largest == nil || n.freeMemMB() > largest.freeMemMB() ||
			(n.freeMemMB() == largest.freeMemMB() && n.freeVcpus() > largest.freeVcpus()) {
			largest = n
		}
	}
	what := fmt.Sprintf("%d vcpus / %d MiB", vcpus, memMB)
	if largest == nil {
		other := ""
		if exclude != 0 {
			other = " other"
		}
		return errf(blixardpb.Code_RESOURCE_EXHAUSTED, "no node has room for %s (no%s node is alive and schedulable)", what, other)
	}
	return errf(blixardpb.Code_RESOURCE_EXHAUSTED, "no node has room for %s (largest free: node %d with %d vcpus / %d MiB)",
		what, largest.id, largest.freeVcpus(), largest.freeMemMB())
}

// checkLargest enforces "never more than the largest node offers": a VM
// that no node could hold even when empty is invalid, not merely waiting.
// With no nodes at all there is nothing to compare against.
func (s *State) checkLargest(vcpus uint32, memMB uint64) *cmdErr {
	var mostCPU, mostMem *node
	for _, n := range s.nodeOrder {
		if n.status == blixardpb.NodeStatus_NODE_STATUS_LEFT {
			continue
		}
		if uint64(n.vcpus) >= uint64(vcpus) && n.memoryMB >= memMB {
			return nil
		}
		if mostCPU == nil || n.vcpus > mostCPU.vcpus || (n.vcpus == mostCPU.vcpus && n.memoryMB > mostCPU.memoryMB) {
			mostCPU = n
		}
		if mostMem == nil || n.memoryMB > mostMem.memoryMB || (n.memoryMB == mostMem.memoryMB && n.vcpus > mostMem.vcpus) {
			mostMem = n
		}
	}
	switch {
	case mostCPU == nil:
		return nil
	case mostCPU == mostMem:
		return invalid("vm needs %d vcpus / %d MiB but the largest node offers %d vcpus / %d MiB (node %d)",
			vcpus, memMB, mostCPU.vcpus, mostCPU.memoryMB, mostCPU.id)
	}
	return invalid("vm needs %d vcpus / %d MiB but no node is that large (most vcpus: %d on node %d; most memory: %d MiB on node %d)",
		vcpus, memMB, mostCPU.vcpus, mostCPU.id, mostMem.memoryMB, mostMem.id)
}

// placeOn checks that pinned or target node id can take the VM now.
func (s *State) placeOn(id uint64, vcpus uint32, memMB uint64, why string) (*node, *cmdErr) {
	n, ok := s.nodes[id]
	if !ok {
		return nil, errf(blixardpb.Code_NOT_FOUND, "%s node %d not found", why, id)
	}
	if n.status != blixardpb.NodeStatus_NODE_STATUS_ALIVE {
		return nil, errf(blixardpb.Code_FAILED_PRECONDITION, "%s node %d is %s: it must be alive", why, id, nodeStatusName(n.status))
	}
	if !n.schedulable {
		return nil, errf(blixardpb.Code_FAILED_PRECONDITION, "%s node %d is not schedulable", why, id)
	}
	if !n.fits(vcpus, memMB) {
		return nil, errf(blixardpb.Code_RESOURCE_EXHAUSTED, "%s node %d has no room for %d vcpus / %d MiB (free: %d vcpus / %d MiB)",
			why, id, vcpus, memMB, n.freeVcpus(), n.freeMemMB())
	}
	return n, nil
}

// choose finds a node for v: its pinned node, or the scheduler's pick
// (never node exclude).
func (s *State) choose(v *vm, exclude uint64) (*node, *cmdErr) {
	if v.spec.pin != 0 {
		if v.spec.pin == exclude {
			return nil, errf(blixardpb.Code_FAILED_PRECONDITION, "vm %q is pinned to node %d", v.name, v.spec.pin)
		}
		return s.placeOn(v.spec.pin, v.spec.vcpus, v.spec.memoryMB, "pinned")
	}
	if n := s.pick(v.spec.vcpus, v.spec.memoryMB, exclude); n != nil {
		return n, nil
	}
	return nil, s.noRoom(v.spec.vcpus, v.spec.memoryMB, exclude)
}
