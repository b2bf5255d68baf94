package systemd

import (
	"fmt"
	"time"

	sddbus "github.com/coreos/go-systemd/v22/dbus"
	"github.com/godbus/dbus/v5"
)

// The memory overhead is what a VM's unit may use beyond the guest's
// memory: qemu's own heap, device emulation, page tables and the runner
// around it. MemoryMax = memory + MemoryOverheadPercent % of it (rounded up
// to a MiB) + MemoryOverheadMB.
const (
	MemoryOverheadMB      = 64
	MemoryOverheadPercent = 2
)

// DefaultStopTimeout is the unit's TimeoutStopUSec when the Supervisor sets
// none: how long `systemctl stop` waits after SIGTERM before SIGKILL. The
// driver's own stop (QMP powerdown, then Signal) does not depend on it.
const DefaultStopTimeout = 30 * time.Second

// UnitName is the transient service a VM runs as.
func UnitName(vm string) string { return "blixard-vm-" + vm + ".service" }

// Identifier is the SyslogIdentifier of a VM's unit: `journalctl -t` takes it.
func Identifier(vm string) string { return "blixard-vm-" + vm }

// UnitSpec is what a VM's unit is made from.
type UnitSpec struct {
	Name        string   // the VM's name (a DNS label)
	Argv        []string // the runner: argv[0] is an absolute path
	Dir         string   // the VM state dir, the unit's working directory
	Vcpus       uint32   // 0: no CPU quota
	MemoryMB    uint64   // 0: no memory limit
	Env         []string // KEY=value pairs added to the unit's environment
	StopTimeout time.Duration
}

// MemoryMax is the unit's memory limit in bytes for a VM of memoryMB MiB.
func MemoryMax(memoryMB uint64) uint64 {
	pct := (memoryMB*MemoryOverheadPercent + 99) / 100
	return (memoryMB + pct + MemoryOverheadMB) << 20
}

// Properties are the properties of spec's transient unit, in the order
// they are sent to StartTransientUnit.
func Properties(spec UnitSpec) []sddbus.Property {
	stop := spec.StopTimeout
	if stop <= 0 {
		stop = DefaultStopTimeout
	}
	props := []sddbus.Property{
		sddbus.PropDescription(fmt.Sprintf("blixard vm %s", spec.Name)),
		// exec: the start job fails when argv[0] cannot be executed.
		sddbus.PropType("exec"),
		// The flag go-systemd calls uncleanIsFailure is systemd's
		// ExecStart "ignore failure" (the "-" prefix): false, or a killed
		// runner would count as a clean exit and a missing one as started.
		sddbus.PropExecStart(spec.Argv, false),
		prop("WorkingDirectory", spec.Dir),
		prop("Restart", "no"),
		prop("KillMode", "mixed"),
		prop("TimeoutStopUSec", uint64(stop/time.Microsecond)),
		prop("StandardOutput", "journal"),
		prop("StandardError", "journal"),
		prop("SyslogIdentifier", Identifier(spec.Name)),
	}
	if len(spec.Env) > 0 {
		props = append(props, prop("Environment", spec.Env))
	}
	if spec.MemoryMB > 0 {
		props = append(props,
			prop("MemoryAccounting", true),
			prop("MemoryMax", MemoryMax(spec.MemoryMB)))
	}
	if spec.Vcpus > 0 {
		props = append(props,
			prop("CPUAccounting", true),
			prop("CPUQuotaPerSecUSec", uint64(spec.Vcpus)*uint64(time.Second/time.Microsecond)))
	}
	return props
}

func prop(name string, v any) sddbus.Property {
	return sddbus.Property{Name: name, Value: dbus.MakeVariant(v)}
}
