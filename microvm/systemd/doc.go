// Package systemd provides a qemu.Supervisor that runs each VM's runner as
// a transient systemd service, blixard-vm-<name>.service, started over
// D-Bus (systemd's private socket when it is reachable, else the system
// bus). It is the supervisor for hosts where systemd is PID 1; SupervisorFor
// picks it there and LimitedExec (qemu.ExecSupervisor with cgroup limits
// where the host lets us write them) elsewhere.
//
// The unit (see Properties for the exact list) runs the argv with the VM
// state dir as working directory, under resource limits taken from the VM:
//
//	MemoryMax          = memory + 2 % (rounded up to a MiB) + 64 MiB (qemu
//	                     heap, device emulation, page tables; see MemoryMax)
//	CPUQuotaPerSecUSec = vcpus × 1 s (vcpus × 100 %)
//	Restart            = no (the VM actor, not systemd, owns restarts)
//	KillMode           = mixed, TimeoutStopUSec = StopTimeout
//	StandardOutput/StandardError = journal, SyslogIdentifier = blixard-vm-<name>
//
// Logs: the VM console stays in the file the driver reads (qemu writes it
// itself through its -chardev file), so `blixard vm logs` is unchanged;
// what the runner prints on stdout and stderr (qemu's own diagnostics, the
// nix runner's messages) goes to journald under the SyslogIdentifier:
// `journalctl -t blixard-vm-<name>`. When a run fails (non-zero exit, a
// signal) or its unit cannot start, the supervisor appends the last 20
// journal lines of that run to the driver's log file, so the driver's
// "why did it fail" message still quotes qemu.
//
// Start records the unit name, its InvocationID and MainPID in unit.json
// in the state dir; Adopt re-attaches only when the unit still runs that
// exact invocation with that MainPID, so a restarted agent finds the same
// run and never a later one. Exits are observed by polling the unit's
// ActiveState and InvocationID (default every 100 ms, two small D-Bus
// reads); a unit that failed (killed, non-zero exit) keeps its
// ExecMainCode/ExecMainStatus until the supervisor has read them and reset
// it (a run that was adopted is left failed, visible in `systemctl
// --failed`, until the VM's next Start); a unit that exited cleanly may be
// garbage-collected by systemd before it is seen, and the Process then
// reports an unknown status.
//
// The units are not children of the agent's own unit: stopping or
// restarting blixard.service leaves the VMs running for Adopt.
//
// Stopping: the driver presses the ACPI power button through QMP and calls
// Process.Signal(SIGKILL) only after its grace; Signal sends the signal to
// every process of the unit through systemd (KillUnit, who=all).
//
// Only cmd/ wiring and the VM drivers' constructors import this package.
package systemd
