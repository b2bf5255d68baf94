package consensus

import "github.com/blixard/blixard/proto/blixardpb"

// Effect tells node agents that a VM's desired state, placement or spec
// changed in a way they must act on. Apply emits effects in log order; the
// Replica forwards to its OnEffects hook only those that concern the local
// node (VM.NodeId or PrevNodeID equals the local node id).
//
// Effects are hints that make agents react quickly; they are not the source
// of truth. An agent that misses one (for instance after a snapshot restore)
// converges by reconciling against the state.
type Effect struct {
	// VM is a copy of the record after the command was applied. After a
	// delete it is the last record, with Deleted set.
	VM *blixardpb.VmRecord
	// PrevNodeID is the node the VM was placed on before this command when
	// the command moved it; zero otherwise.
	PrevNodeID uint64
	// Deleted is set when the command removed the VM.
	Deleted bool
}

// Concerns reports whether node id must act on this effect.
func (e Effect) Concerns(id uint64) bool {
	return e.VM.GetNodeId() == id || (e.PrevNodeID != 0 && e.PrevNodeID == id)
}
