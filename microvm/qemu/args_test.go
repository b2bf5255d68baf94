package qemu

import (
	"errors"
	"flag"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/blixard/blixard/microvm"
)

var update = flag.Bool("update", false, "rewrite testdata/*.golden from the current output")

// goldenMachines are representative VMs; their argv is in testdata/<name>.golden.
var goldenMachines = map[string]Machine{
	// The smallest VM: TCG, no network, no volumes.
	"minimal_tcg": {
		Spec: microvm.Spec{
			Name: "web", Vcpus: 1, MemoryMB: 256,
			Kernel: "/guest/vmlinuz", Initrd: "/guest/initrd.img",
		},
		StateDir: "/var/lib/blixard/vms/web",
		Accel:    AccelTCG,
		TSCKHz:   2096014,
	},
	// KVM, routed network with a multi-queue TAP, two volumes, extra params.
	"kvm_net_volumes": {
		Spec: microvm.Spec{
			Name: "db", ID: 42, Hypervisor: "qemu", Vcpus: 4, MemoryMB: 1024,
			Kernel: "/nix/store/k/bzImage", Initrd: "/nix/store/i/initrd",
			KernelParams: []string{"init=/nix/store/s/init", "loglevel=4"},
			Volumes: []microvm.Volume{
				{Name: "data", SizeMB: 512, MountPoint: "/var/lib/db"},
				{Name: "seed", Image: "/srv/images/seed.img", ReadOnly: true},
			},
			IP: "10.0.0.7", MAC: "02:0a:00:00:00:07", TAP: "vm-16", Gateway: "10.0.0.1",
		},
		StateDir: "/var/lib/blixard/vms/db",
		Accel:    AccelKVM,
		TSCKHz:   2096014, // ignored under KVM
	},
	// The same network spec with NoNetwork: no netdev, no ip= parameter.
	"no_network": {
		Spec: microvm.Spec{
			Name: "quiet", Vcpus: 2, MemoryMB: 512, Kernel: "/k", Initrd: "/i",
			IP: "10.0.0.9", MAC: "02:0a:00:00:00:09", TAP: "vm-1a", Gateway: "10.0.0.1",
		},
		StateDir:  "/var/lib/blixard/vms/quiet",
		Accel:     AccelTCG,
		NoNetwork: true,
	},
	// Hostile values: quotes, spaces and commas that would add qemu options
	// if they were not escaped, and a shell metacharacter soup that no
	// shell ever sees.
	"hostile_values": {
		Spec: microvm.Spec{
			Name:   `evil,debug-threads=on`,
			Kernel: `/tmp/a dir/"kernel";rm -rf ~`, Initrd: `/tmp/it's $(initrd)`,
			KernelParams: []string{`msg=hello world`, `x="quoted"`, `$(reboot)`},
			Volumes: []microvm.Volume{
				{Name: "d,file=shadow", SizeMB: 1},
				{Name: "v2", Image: `/img/a,,b "c".img`},
			},
		},
		StateDir: "/var/lib/blixard/vms/x,server=off",
		Accel:    AccelTCG,
		TSCKHz:   1000000,
	},
}

func TestArgsGolden(t *testing.T) {
	for name, m := range goldenMachines {
		t.Run(name, func(t *testing.T) {
			args, err := m.Args()
			if err != nil {
				t.Fatalf("Args: %v", err)
			}
			var b strings.Builder
			for _, a := range args {
				b.WriteString(strconv.Quote(a))
				b.WriteByte('\n')
			}
			path := filepath.Join("testdata", name+".golden")
			if *update {
				if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(path)
			if err != nil {
				t.Fatalf("%v (run go test -update to create it)", err)
			}
			if got := b.String(); got != string(want) {
				t.Errorf("argv differs from %s (go test -update rewrites it after review):\n--- got\n%s--- want\n%s", path, got, want)
			}
		})
	}
}

// splitOpts parses a qemu option string the way QemuOpts does: options are
// separated by single commas, a doubled comma is a literal comma.
func splitOpts(s string) []string {
	var out []string
	var cur strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == ',' {
			if i+1 < len(s) && s[i+1] == ',' {
				cur.WriteByte(',')
				i++
				continue
			}
			out = append(out, cur.String())
			cur.Reset()
			continue
		}
		cur.WriteByte(s[i])
	}
	return append(out, cur.String())
}

// TestArgsNoInjection parses the hostile argv back as qemu would and checks
// that every value arrives whole and no option was added.
func TestArgsNoInjection(t *testing.T) {
	m := goldenMachines["hostile_values"]
	args, err := m.Args()
	if err != nil {
		t.Fatal(err)
	}
	value := func(flag string, n int) string {
		t.Helper()
		for i := 0; i < len(args)-1; i++ {
			if args[i] == flag {
				if n == 0 {
					return args[i+1]
				}
				n--
			}
		}
		t.Fatalf("no %d-th %s in %q", n, flag, args)
		return ""
	}
	if got := splitOpts(value("-name", 0)); len(got) != 1 || got[0] != m.Spec.Name {
		t.Errorf("-name parses as %q, want the single value %q", got, m.Spec.Name)
	}
	if got := value("-kernel", 0); got != m.Spec.Kernel {
		t.Errorf("-kernel = %q, want %q", got, m.Spec.Kernel)
	}
	if got := value("-initrd", 0); got != m.Spec.Initrd {
		t.Errorf("-initrd = %q, want %q", got, m.Spec.Initrd)
	}
	wantDrives := []string{filepath.Join(m.StateDir, "d,file=shadow.img"), `/img/a,,b "c".img`}
	for i, want := range wantDrives {
		opts := splitOpts(value("-drive", i))
		files := 0
		for _, o := range opts {
			if v, ok := strings.CutPrefix(o, "file="); ok {
				files++
				if v != want {
					t.Errorf("drive %d file = %q, want %q", i, v, want)
				}
			}
		}
		if files != 1 || len(opts) != 7 {
			t.Errorf("drive %d parses into %d options with %d file=: %q", i, len(opts), files, opts)
		}
	}
	qmp := splitOpts(strings.TrimPrefix(value("-qmp", 0), "unix:"))
	if qmp[0] != m.QMPPath() || len(qmp) != 3 || qmp[1] != "server=on" {
		t.Errorf("-qmp parses as %q, want path %q then server=on,wait=off", qmp, m.QMPPath())
	}
	chardev := splitOpts(value("-chardev", 0))
	if chardev[2] != "path="+m.ConsolePath() || len(chardev) != 4 {
		t.Errorf("-chardev parses as %q", chardev)
	}
	appendArg := value("-append", 0)
	for _, want := range []string{` msg="hello world" `, ` x="quoted" `, ` $(reboot)`} {
		if !strings.Contains(appendArg, want) {
			t.Errorf("-append %q lacks %q", appendArg, want)
		}
	}
}

func TestArgsRejects(t *testing.T) {
	base := func() Machine {
		return Machine{
			Spec: microvm.Spec{
				Name: "web", Kernel: "/k", IP: "10.0.0.2", MAC: "02:00:00:00:00:02",
				TAP: "vm-2", Gateway: "10.0.0.1",
			},
			StateDir: "/var/lib/blixard/vms/web",
			Accel:    AccelTCG,
		}
	}
	cases := map[string]func(m *Machine){
		"no kernel":             func(m *Machine) { m.Spec.Kernel = "" },
		"other hypervisor":      func(m *Machine) { m.Spec.Hypervisor = "firecracker" },
		"accel auto unresolved": func(m *Machine) { m.Accel = AccelAuto },
		"tap too long":          func(m *Machine) { m.Spec.TAP = "vm-0123456789abc" },
		"tap with comma":        func(m *Machine) { m.Spec.TAP = "vm,x" },
		"bad mac":               func(m *Machine) { m.Spec.MAC = "02:00:00:00:00:02,x=y" },
		"ipv6":                  func(m *Machine) { m.Spec.IP = "fe80::1" },
		"newline in name":       func(m *Machine) { m.Spec.Name = "web\n-x" },
		"newline in param":      func(m *Machine) { m.Spec.KernelParams = []string{"a\nb"} },
		"spaces and quotes":     func(m *Machine) { m.Spec.KernelParams = []string{`a="b c"`} },
		"volume escapes dir":    func(m *Machine) { m.Spec.Volumes = []microvm.Volume{{Name: "../x", SizeMB: 1}} },
		"volume without size":   func(m *Machine) { m.Spec.Volumes = []microvm.Volume{{Name: "x"}} },
		"volume twice": func(m *Machine) {
			m.Spec.Volumes = []microvm.Volume{{Name: "x", SizeMB: 1}, {Name: "x", SizeMB: 2}}
		},
		"socket path too long": func(m *Machine) { m.StateDir = "/" + strings.Repeat("d", 100) },
	}
	for name, mutate := range cases {
		t.Run(name, func(t *testing.T) {
			m := base()
			mutate(&m)
			if _, err := m.Args(); !errors.Is(err, microvm.ErrInvalidSpec) {
				t.Fatalf("Args: err = %v, want ErrInvalidSpec", err)
			}
		})
	}
	if _, err := base().Args(); err != nil {
		t.Fatalf("base machine: %v", err)
	}
}

func TestDriveLetters(t *testing.T) {
	for i, want := range map[int]string{0: "a", 1: "b", 25: "z", 26: "aa", 27: "ab", 701: "zz", 702: "aaa"} {
		if got := driveLetters(i); got != want {
			t.Errorf("driveLetters(%d) = %q, want %q", i, got, want)
		}
	}
}
