package qemu

import "github.com/blixard/blixard/microvm/vmproc"

// The process supervision the driver uses lives in microvm/vmproc; these
// names keep it reachable as qemu.Supervisor and so on.
type (
	Supervisor         = vmproc.Supervisor
	ResourceSupervisor = vmproc.ResourceSupervisor
	Resources          = vmproc.Resources
	Process            = vmproc.Process
	ProcessStatus      = vmproc.ProcessStatus
	ExecSupervisor     = vmproc.ExecSupervisor
)
