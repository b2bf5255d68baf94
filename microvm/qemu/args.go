package qemu

import (
	"fmt"
	"net"
	"path/filepath"
	"strconv"
	"strings"
	"unicode"

	"github.com/blixard/blixard/microvm"
)

// State dir file names. The driver keeps one state dir per VM.
const (
	consoleFile = "console.log"
	qmpFile     = "qmp.sock"
	specFile    = "spec.json"
	exitFile    = "exit.json"
)

// maxSocketPath is the longest path a unix socket address holds (sun_path
// is 108 bytes including the terminating NUL).
const maxSocketPath = 107

// Machine is everything the command line depends on: the spec plus the
// host-side choices the driver makes for it. Args is a pure function of it.
type Machine struct {
	Spec microvm.Spec
	// Binary is argv[0]; empty means "qemu-system-x86_64".
	Binary string
	// StateDir holds the console log, QMP socket and default volume images.
	StateDir string
	// Accel is the resolved accelerator: AccelKVM or AccelTCG (never auto).
	Accel Accel
	// TSCKHz is the host TSC frequency, passed to TCG guests as
	// tsc_early_khz: the microvm machine has no PIT, HPET or PM timer to
	// calibrate against, and without kvmclock a guest kernel hangs at boot
	// unless told the frequency. Ignored under KVM; 0 omits the parameter.
	TSCKHz uint64
	// NoNetwork leaves out the network device (and the guest IP parameters)
	// even when the spec names a TAP: boot tests run without root networking.
	NoNetwork bool
	// PrefixLen is the guest address's prefix length in the ip= parameter;
	// 0 means 32, the routed model (a /32 per VM, reached through its TAP).
	PrefixLen int
}

// ConsolePath, QMPPath are the state dir files qemu writes.
func (m Machine) ConsolePath() string { return filepath.Join(m.StateDir, consoleFile) }

// QMPPath is the QMP control socket of the VM.
func (m Machine) QMPPath() string { return filepath.Join(m.StateDir, qmpFile) }

// VolumePath is where volume v lives on the host.
func (m Machine) VolumePath(v microvm.Volume) string {
	if v.Image != "" {
		return v.Image
	}
	return filepath.Join(m.StateDir, v.Name+".img")
}

// Args returns the qemu argv (argv[0] included) for m: the command line
// microvm.nix's qemu runner builds for the same VM, on the virtio-mmio
// "microvm" machine. It is pure: no file is read or created. Values that
// reach qemu's option parser have their commas doubled, so no spec field
// can add an option; argv is never passed through a shell.
func (m Machine) Args() ([]string, error) {
	s := m.Spec
	if err := validate(m); err != nil {
		return nil, err
	}
	bin := m.Binary
	if bin == "" {
		bin = "qemu-system-x86_64"
	}
	vcpus := s.Vcpus
	if vcpus == 0 {
		vcpus = 1
	}
	mem := s.MemoryMB
	if mem == 0 {
		mem = 256
	}

	// Machine options, sorted by name as microvm.nix emits them.
	machine := "microvm,accel=" + string(m.Accel) +
		",acpi=on,mem-merge=on,pcie=off,pic=off,pit=off,rtc=on,usb=off"
	cpu := "max"
	if m.Accel == AccelKVM {
		cpu = "host,+x2apic,-sgx"
	}

	args := []string{bin,
		"-name", opt(s.Name),
		"-M", machine,
		"-m", strconv.FormatUint(mem, 10) + "M",
		"-smp", strconv.FormatUint(uint64(vcpus), 10),
		"-nodefaults", "-no-user-config",
		"-no-reboot",
		"-kernel", s.Kernel,
	}
	if s.Initrd != "" {
		args = append(args, "-initrd", s.Initrd)
	}
	args = append(args,
		"-chardev", "file,id=console,path="+opt(m.ConsolePath())+",append=on",
		"-serial", "chardev:console",
		"-device", "virtio-rng-device",
		"-cpu", cpu,
		"-device", "i8042",
		"-append", kernelCmdline(m),
		"-nographic",
		"-qmp", "unix:"+opt(m.QMPPath())+",server=on,wait=off",
	)
	for i, v := range s.Volumes {
		id := "vd" + driveLetters(i)
		ro := "off"
		if v.ReadOnly {
			ro = "on"
		}
		dev := "virtio-blk-device,drive=" + id
		if v.Name != "" && len(v.Name) <= 20 {
			dev += ",serial=" + opt(v.Name)
		}
		args = append(args,
			"-drive", "id="+id+",format=raw,file="+opt(m.VolumePath(v))+
				",if=none,aio=threads,discard=unmap,read-only="+ro,
			"-device", dev,
		)
	}
	if hasNetwork(m) {
		netdev := "tap,id=net0,ifname=" + s.TAP + ",script=no,downscript=no"
		if vcpus > 1 {
			netdev += ",queues=" + strconv.FormatUint(uint64(vcpus), 10)
		}
		// microvm.nix turns on mq=on (with MSI-X vectors) only for PCI
		// devices; on virtio-mmio the device keeps one queue pair and the
		// multi-queue TAP still works.
		args = append(args,
			"-netdev", netdev,
			"-device", "virtio-net-device,netdev=net0,mac="+s.MAC,
		)
	}
	return args, nil
}

func hasNetwork(m Machine) bool { return !m.NoNetwork && m.Spec.TAP != "" }

// kernelCmdline is the -append value: console, reboot and panic settings as
// microvm.nix sets them, the TCG clock hint, the routed IP configuration in
// the kernel's ip= syntax, then the spec's own parameters.
func kernelCmdline(m Machine) string {
	s := m.Spec
	p := []string{"earlyprintk=ttyS0", "console=ttyS0", "reboot=t", "panic=-1"}
	if m.Accel == AccelTCG && m.TSCKHz > 0 {
		p = append(p, "tsc_early_khz="+strconv.FormatUint(m.TSCKHz, 10))
	}
	if hasNetwork(m) && s.IP != "" {
		prefix := m.PrefixLen
		if prefix == 0 {
			prefix = 32
		}
		mask := net.IP(net.CIDRMask(prefix, 32)).String()
		// ip=<client>:<server>:<gateway>:<netmask>:<hostname>:<device>:<autoconf>
		p = append(p, "ip="+s.IP+"::"+s.Gateway+":"+mask+":"+s.Name+":eth0:off")
	}
	for _, kp := range s.KernelParams {
		p = append(p, kernelParam(kp))
	}
	return strings.Join(p, " ")
}

// kernelParam quotes a parameter holding spaces the way the kernel's own
// parser understands (param="a b"); validate rejected what cannot be quoted.
func kernelParam(kp string) string {
	if !strings.ContainsAny(kp, " \t") {
		return kp
	}
	if k, v, ok := strings.Cut(kp, "="); ok {
		return k + `="` + v + `"`
	}
	return `"` + kp + `"`
}

// opt escapes a value for qemu's option parser (QemuOpts): a comma is
// written twice, so it cannot end the value and start another option.
func opt(v string) string { return strings.ReplaceAll(v, ",", ",,") }

// driveLetters names the i-th drive like the kernel names disks: a..z, aa...
func driveLetters(i int) string {
	s := ""
	for i++; i > 0; i = (i - 1) / 26 {
		s = string(rune('a'+(i-1)%26)) + s
	}
	return s
}

// validate rejects what qemu or the guest could misread. The errors wrap
// microvm.ErrInvalidSpec: retrying does not help.
func validate(m Machine) error {
	s := m.Spec
	bad := func(format string, a ...any) error {
		return fmt.Errorf("%w: %s", microvm.ErrInvalidSpec, fmt.Sprintf(format, a...))
	}
	if s.Name == "" {
		return bad("empty name")
	}
	if s.Hypervisor != "" && s.Hypervisor != "qemu" {
		return bad("hypervisor %q: the qemu driver runs only qemu", s.Hypervisor)
	}
	if s.Kernel == "" {
		return bad("vm %s has no kernel (the qemu driver boots --kernel/--initrd)", s.Name)
	}
	if m.Accel != AccelKVM && m.Accel != AccelTCG {
		return bad("accelerator %q (want kvm or tcg)", m.Accel)
	}
	if m.StateDir == "" {
		return bad("no state dir")
	}
	if n := len(m.QMPPath()); n > maxSocketPath {
		return bad("QMP socket path %s is %d bytes, longer than a unix socket allows (%d)", m.QMPPath(), n, maxSocketPath)
	}
	for _, f := range []struct{ what, v string }{
		{"name", s.Name}, {"kernel", s.Kernel}, {"initrd", s.Initrd}, {"state dir", m.StateDir},
	} {
		if hasControl(f.v) {
			return bad("%s %q contains control characters", f.what, f.v)
		}
	}
	for _, kp := range s.KernelParams {
		if kp == "" || hasControl(kp) {
			return bad("kernel parameter %q is empty or contains control characters", kp)
		}
		if strings.ContainsAny(kp, " \t") && strings.Contains(kp, `"`) {
			return bad("kernel parameter %q holds both spaces and quotes", kp)
		}
	}
	seen := map[string]bool{}
	for _, v := range s.Volumes {
		if v.Image == "" {
			if v.Name == "" || v.Name == "." || v.Name == ".." || strings.ContainsAny(v.Name, "/\x00") {
				return bad("volume name %q cannot name a file in the state dir", v.Name)
			}
			if v.SizeMB == 0 {
				return bad("volume %q has neither an image nor a size", v.Name)
			}
		}
		if hasControl(v.Name) || hasControl(v.Image) {
			return bad("volume %q contains control characters", v.Name)
		}
		p := m.VolumePath(v)
		if seen[p] {
			return bad("volume image %s attached twice", p)
		}
		seen[p] = true
	}
	if hasNetwork(m) {
		if len(s.TAP) > 15 || !isIfname(s.TAP) {
			return bad("tap name %q (want at most 15 letters, digits, '-' or '_')", s.TAP)
		}
		if _, err := net.ParseMAC(s.MAC); err != nil || len(s.MAC) != 17 {
			return bad("mac %q (want xx:xx:xx:xx:xx:xx)", s.MAC)
		}
		if s.IP != "" {
			if ip := net.ParseIP(s.IP); ip == nil || ip.To4() == nil {
				return bad("ip %q (want an IPv4 address)", s.IP)
			}
			if s.Gateway != "" && net.ParseIP(s.Gateway).To4() == nil {
				return bad("gateway %q (want an IPv4 address)", s.Gateway)
			}
		}
		if m.PrefixLen < 0 || m.PrefixLen > 32 {
			return bad("prefix length %d", m.PrefixLen)
		}
	}
	return nil
}

func hasControl(s string) bool {
	for _, r := range s {
		if unicode.IsControl(r) {
			return true
		}
	}
	return false
}

func isIfname(s string) bool {
	if s == "" {
		return false
	}
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_') {
			return false
		}
	}
	return true
}
