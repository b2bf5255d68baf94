package nix

import (
	"encoding/json"
	"fmt"
	"net"
	"path/filepath"
	"strings"

	"github.com/blixard/blixard/microvm"
)

// vmFile is vm.json: the input of nix/vm-flake/flake.nix. Field names are
// the flake's; keep both in step.
type vmFile struct {
	Name         string       `json:"name"`
	System       string       `json:"system"`
	Hypervisor   string       `json:"hypervisor"`
	Vcpus        uint32       `json:"vcpus"`
	MemoryMB     uint64       `json:"memoryMB"`
	KernelParams []string     `json:"kernelParams"`
	Volumes      []vmVolume   `json:"volumes"`
	Shares       []vmShare    `json:"shares"`
	Network      *vmNetwork   `json:"network"`
	Flake        string       `json:"flake"`
	FlakeModule  string       `json:"flakeModule"`
	Spec         microvm.Spec `json:"spec"`
}

type vmVolume struct {
	Image      string  `json:"image"`
	SizeMB     uint64  `json:"sizeMB"`
	MountPoint *string `json:"mountPoint"`
	ReadOnly   bool    `json:"readOnly"`
	Serial     *string `json:"serial"`
}

// vmShare is a microvm.shares entry. Specs have no shares yet; the flake
// maps them already so that adding them is a Go-only change.
type vmShare struct {
	Tag        string `json:"tag"`
	Source     string `json:"source"`
	MountPoint string `json:"mountPoint"`
	Proto      string `json:"proto,omitempty"`
	ReadOnly   bool   `json:"readOnly"`
}

type vmNetwork struct {
	TAP          string `json:"tap"`
	MAC          string `json:"mac"`
	IP           string `json:"ip"`
	Gateway      string `json:"gateway"`
	PrefixLength int    `json:"prefixLength"`
}

// newVMFile maps spec to vm.json for a VM whose state dir is dir. It does
// not validate: the flake must take any value verbatim (the golden tests
// feed it hostile ones).
func newVMFile(spec microvm.Spec, dir string) vmFile {
	f := vmFile{
		Name:         spec.Name,
		System:       "x86_64-linux",
		Hypervisor:   spec.Hypervisor,
		Vcpus:        spec.Vcpus,
		MemoryMB:     spec.MemoryMB,
		KernelParams: append([]string{}, spec.KernelParams...),
		Volumes:      []vmVolume{},
		Shares:       []vmShare{},
		Spec:         spec,
	}
	if f.Hypervisor == "" {
		f.Hypervisor = "qemu"
	}
	if f.Vcpus == 0 {
		f.Vcpus = 1
	}
	if f.MemoryMB == 0 {
		f.MemoryMB = 256
	}
	for _, v := range spec.Volumes {
		vol := vmVolume{Image: v.Image, SizeMB: v.SizeMB, ReadOnly: v.ReadOnly}
		if vol.Image == "" {
			vol.Image = filepath.Join(dir, v.Name+".img")
		}
		if v.MountPoint != "" {
			mp := v.MountPoint
			vol.MountPoint = &mp
		}
		if v.Name != "" && len(v.Name) <= 20 {
			serial := v.Name
			vol.Serial = &serial
		}
		f.Volumes = append(f.Volumes, vol)
	}
	if spec.Flake != "" {
		ref, module, ok := strings.Cut(spec.Flake, "#")
		f.Flake, f.FlakeModule = ref, "default"
		if ok && module != "" {
			f.FlakeModule = module
		}
	}
	if spec.TAP != "" {
		f.Network = &vmNetwork{TAP: spec.TAP, MAC: spec.MAC, IP: spec.IP, Gateway: spec.Gateway, PrefixLength: 32}
	}
	return f
}

func (f vmFile) marshal() ([]byte, error) {
	b, err := json.MarshalIndent(f, "", "  ")
	if err != nil {
		return nil, err
	}
	return append(b, '\n'), nil
}

// validate rejects specs the driver cannot build or run. The errors wrap
// microvm.ErrInvalidSpec: retrying does not help.
func validate(spec microvm.Spec) error {
	bad := func(format string, a ...any) error {
		return fmt.Errorf("%w: %s", microvm.ErrInvalidSpec, fmt.Sprintf(format, a...))
	}
	if !isLabel(spec.Name) {
		// The name is an attribute on nix's command line, part of store
		// path names and a directory name: a DNS label is safe in all.
		return bad("vm name %q is not a DNS label (letters, digits and '-', at most 63)", spec.Name)
	}
	switch spec.Hypervisor {
	case "", "qemu", "cloud-hypervisor", "firecracker", "crosvm", "kvmtool", "stratovirt", "alioth":
	default:
		return bad("hypervisor %q is not one microvm.nix knows", spec.Hypervisor)
	}
	for _, v := range spec.Volumes {
		if v.Image == "" {
			if v.Name == "" || v.Name == "." || v.Name == ".." || strings.ContainsAny(v.Name, "/\x00") {
				return bad("volume name %q cannot name a file in the state dir", v.Name)
			}
			if v.SizeMB == 0 {
				return bad("volume %q has neither an image nor a size", v.Name)
			}
		}
		if v.MountPoint != "" && !strings.HasPrefix(v.MountPoint, "/") {
			return bad("volume %q mount point %q is not absolute", v.Name, v.MountPoint)
		}
	}
	if spec.TAP != "" {
		if len(spec.TAP) > 15 || !isIfname(spec.TAP) {
			return bad("tap name %q (want at most 15 letters, digits, '-' or '_')", spec.TAP)
		}
		if _, err := net.ParseMAC(spec.MAC); err != nil || len(spec.MAC) != 17 {
			return bad("mac %q (want xx:xx:xx:xx:xx:xx)", spec.MAC)
		}
		if spec.IP != "" && net.ParseIP(spec.IP).To4() == nil {
			return bad("ip %q (want an IPv4 address)", spec.IP)
		}
		if spec.Gateway != "" && net.ParseIP(spec.Gateway).To4() == nil {
			return bad("gateway %q (want an IPv4 address)", spec.Gateway)
		}
	}
	return nil
}

// isLabel reports whether s is a DNS label: 1 to 63 letters, digits and
// hyphens, not starting or ending with a hyphen.
func isLabel(s string) bool {
	if s == "" || len(s) > 63 || s[0] == '-' || s[len(s)-1] == '-' {
		return false
	}
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-') {
			return false
		}
	}
	return true
}

func isIfname(s string) bool {
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_') {
			return false
		}
	}
	return s != ""
}
