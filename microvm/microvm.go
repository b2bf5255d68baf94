package microvm

import (
	"errors"
	"strconv"
	"time"
)

// Sentinel errors drivers return (wrapped with context); callers test them
// with errors.Is.
var (
	// ErrNotFound: the driver knows no instance (prepared or running) of
	// that name.
	ErrNotFound = errors.New("microvm not found")
	// ErrNotRunning: the operation needs a running instance and there is none.
	ErrNotRunning = errors.New("microvm not running")
	// ErrAlreadyRunning: Start was called while an instance of that name
	// runs. Drivers never start a second copy.
	ErrAlreadyRunning = errors.New("microvm already running")
	// ErrNotPrepared: Start was called before Prepare.
	ErrNotPrepared = errors.New("microvm not prepared")
	// ErrInvalidSpec: the spec cannot be run by this driver (missing
	// kernel, unknown hypervisor...). Retrying does not help.
	ErrInvalidSpec = errors.New("invalid microvm spec")
)

// Volume is a block device attached to the VM.
type Volume struct {
	Name string
	// Image is a host path; empty means <state dir>/<Name>.img, created
	// with SizeMB when missing.
	Image      string
	SizeMB     uint64
	MountPoint string
	ReadOnly   bool
}

// Spec is everything a driver needs to prepare and run one microVM. It is
// derived from the cluster's VM record (spec plus the addresses IPAM
// assigned).
type Spec struct {
	// Name is the VM's cluster-wide unique name (a DNS label); drivers key
	// their state by it.
	Name string
	// ID is the VM's cluster-wide numeric id.
	ID uint64
	// Generation is the record generation this spec was derived from.
	// Drivers may record it; they must not interpret it.
	Generation   uint64
	Tenant       string
	Hypervisor   string // "qemu", "cloud-hypervisor" or "firecracker"
	Vcpus        uint32
	MemoryMB     uint64
	Kernel       string
	Initrd       string
	Flake        string
	KernelParams []string
	Volumes      []Volume
	// Network, assigned by IPAM: the guest address (no prefix), its MAC,
	// the host TAP interface name and the gateway the guest routes through.
	IP      string
	MAC     string
	TAP     string
	Gateway string
	Labels  map[string]string
}

// Clone returns a deep copy of s.
func (s Spec) Clone() Spec {
	c := s
	c.KernelParams = append([]string(nil), s.KernelParams...)
	c.Volumes = append([]Volume(nil), s.Volumes...)
	if s.Labels != nil {
		c.Labels = make(map[string]string, len(s.Labels))
		for k, v := range s.Labels {
			c.Labels[k] = v
		}
	}
	return c
}

// Instance is a driver's view of one VM on this host.
type Instance struct {
	Name string
	// ID is the VM id the instance was started with (from Spec.ID); zero
	// when the driver cannot tell.
	ID uint64
	// Running reports whether the VM's process runs now.
	Running bool
	// PID is the runner process id, or zero when the driver has no process
	// (fake) or the VM is not running.
	PID int
	// Handle is a driver-specific handle (systemd unit, QMP socket...),
	// informational only.
	Handle string
	// StartedAt is when the running instance started; zero when not running.
	StartedAt time.Time
}

// Exit describes how a VM's process ended.
type Exit struct {
	// Code is the process exit code, or -1 when it was killed by a signal.
	Code int
	// Signal is the terminating signal's name ("SIGKILL"), empty if none.
	Signal string
	// Reason is a one-line human explanation ("exited with code 1",
	// "killed by SIGKILL after 10s grace", "stopped").
	Reason string
	// Clean is true when the VM shut down on purpose: a guest poweroff with
	// code 0 or a Stop requested through the driver. A restart policy of
	// "on-failure" restarts only exits that are not clean.
	Clean bool
	// At is when the exit was observed.
	At time.Time
}

// String returns Reason, or a summary of the code and signal.
func (e Exit) String() string {
	if e.Reason != "" {
		return e.Reason
	}
	if e.Signal != "" {
		return "killed by " + e.Signal
	}
	if e.Code == 0 {
		return "exited cleanly"
	}
	return "exited with code " + strconv.Itoa(e.Code)
}
