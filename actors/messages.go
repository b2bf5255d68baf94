package actors

import (
	"github.com/blixard/blixard/consensus"
	"github.com/blixard/blixard/proto/blixardpb"
)

// Messages accepted by the vms supervisor (NewVMSupervisor). Send them as
// pointers or values; both are accepted.

// ApplyEffects hands the supervisor the effects of applied commands that
// concern this node, in log order. The node root sends it from the
// consensus apply hook; sending never blocks. Effects whose VM generation
// is not newer than the one the supervisor already acts on are dropped.
type ApplyEffects struct {
	Effects []consensus.Effect
}

// Reconcile asks the supervisor to compare the desired state (a
// linearizable Replica.Read) with the driver's inventory (Driver.List):
// adopt what runs, start what is missing, stop and destroy what is not
// placed here. Requests that arrive while one runs are coalesced into one
// more pass. When sent with Request or RequestFuture, the supervisor
// replies with *ReconcileResult once the actors are told what to do.
type Reconcile struct{}

// ReconcileResult is the reply to Reconcile.
type ReconcileResult struct {
	// Adopted counts VMs placed here that the driver reports running.
	Adopted int
	// Started counts VMs placed here, desired running, that did not run.
	Started int
	// Removed counts VMs the driver holds (or actors run) that are no
	// longer placed here.
	Removed int
	// Err is set when the desired state or the inventory could not be
	// read; the supervisor retries on its own.
	Err error
}

// LocalVMsRequest asks the supervisor for its VM actors' view; it replies
// with *LocalVMs.
type LocalVMsRequest struct{}

// LocalVMs is the reply to LocalVMsRequest, sorted by name.
type LocalVMs struct {
	VMs []LocalVM
}

// LocalVM is what this node's VM actor last observed of one VM.
type LocalVM struct {
	Name       string
	ID         uint64
	Generation uint64
	Desired    blixardpb.DesiredState
	Status     blixardpb.VmStatus
	Restarts   uint32
	Message    string
	// Removing is set while the actor stops and destroys a VM that was
	// deleted or moved away.
	Removing bool
}

// Internal messages.

// vmUpdate tells a VM actor about a newer record (or that it must go).
type vmUpdate struct {
	rec    *blixardpb.VmRecord
	remove bool
}

// vmStatus is a VM actor's observation, sent to the supervisor, which
// keeps its local view and forwards it to the reporter.
type vmStatus struct {
	name       string
	id         uint64
	generation uint64
	desired    blixardpb.DesiredState
	status     blixardpb.VmStatus
	restarts   uint32
	message    string
	removing   bool
}

// vmPanic makes a VM actor panic (tests of supervision only).
type vmPanic struct{}
