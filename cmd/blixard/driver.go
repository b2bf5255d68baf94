package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/blixard/blixard/actors"
	"github.com/blixard/blixard/consensus"
	"github.com/blixard/blixard/microvm/fake"
	"github.com/blixard/blixard/microvm/nix"
	"github.com/blixard/blixard/microvm/qemu"
	"github.com/blixard/blixard/microvm/systemd"
	"github.com/spf13/cobra"
)

// newDriver builds the VM driver that `run --driver` names, with its state
// under dataDir. To add a driver: a case here, a new*Driver function below
// taking what it needs from runFlags, and its name in runFlags.check.
func newDriver(f runFlags, dataDir string, log *slog.Logger) (actors.Driver, error) {
	switch f.driver {
	case "fake":
		return fake.New(filepath.Join(dataDir, "fake"), fake.WithNodeID(f.nodeID))
	case "qemu":
		return newQemuDriver(f, dataDir, log)
	case "nix":
		return newNixDriver(f, dataDir, log)
	}
	return nil, fmt.Errorf("unknown driver %q", f.driver)
}

// geteuid is os.Geteuid; tests replace it.
var geteuid = os.Geteuid

// newQemuDriver builds the qemu driver. With networking (the default) each
// VM gets a TAP, a host route and iptables chains, which needs root and the
// iptables command; --no-network boots VMs without a NIC instead.
func newQemuDriver(f runFlags, dataDir string, log *slog.Logger) (actors.Driver, error) {
	if !f.noNetwork {
		if geteuid() != 0 {
			return nil, errors.New("the qemu driver gives each VM a TAP, a host route and iptables rules, which needs root: run blixard as root, or pass --no-network to boot VMs without a network")
		}
		if _, err := exec.LookPath("iptables"); err != nil {
			return nil, errors.New("the qemu driver's VM networking needs the iptables command (Debian: apt-get install iptables), or pass --no-network to boot VMs without a network")
		}
	}
	sup, err := systemd.SupervisorFor(context.Background(), supervisorMode, log)
	if err != nil {
		return nil, err
	}
	return qemu.New(qemu.Options{
		Dir:        filepath.Join(dataDir, "vms"),
		Accel:      qemu.Accel(f.accel),
		NoNetwork:  f.noNetwork,
		Logger:     log,
		Supervisor: sup,
	})
}

// supervisorMode is `run --supervisor`: what runs the VMs' processes.
// supervisorFlag registers it on the run command.
var supervisorMode = "auto"

func supervisorFlag(cmd *cobra.Command) {
	cmd.Flags().StringVar(&supervisorMode, "supervisor", "auto",
		"what runs each VM's process: auto|systemd|exec (auto: a transient systemd unit when systemd is PID 1, else a child process with a pidfile)")
}

// vmGateway is the guests' default gateway: the first host address of the
// VM subnet, which IPAM never hands out (10.0.0.1 for the default
// 10.0.0.0/24). The routed model puts it on every VM's TAP. It reads
// --subnet, so a node must be given the cluster's subnet when it is not
// the default.
func vmGateway(subnet string) string {
	if subnet == "" {
		subnet = consensus.DefaultSubnet
	}
	p, err := netip.ParsePrefix(subnet)
	if err != nil || !p.Addr().Is4() {
		return ""
	}
	return p.Masked().Addr().Next().String()
}

// The nix driver's flags of `blixard run`; nixDriverFlags registers them
// on the run command.
var (
	nixOverrideInputs []string
	nixExtraArgs      string
)

func nixDriverFlags(cmd *cobra.Command) {
	fl := cmd.Flags()
	fl.StringArrayVar(&nixOverrideInputs, "nix-override-input", nil, "nix driver: replace an input of the VM flake, name=flake-ref (repeatable), e.g. nixpkgs=path:/srv/nixpkgs")
	fl.StringVar(&nixExtraArgs, "nix-extra-args", "", "nix driver: extra arguments for nix build, split like a shell does ('' is an empty argument), e.g. \"--option sandbox false\"")
}

// newNixDriver builds the nix driver: each VM's runner is built by
// microvm.nix from the VM flake in nix/vm-flake, and runs under the
// --supervisor. Networking is the qemu driver's (root, iptables) unless
// --no-network.
func newNixDriver(f runFlags, dataDir string, log *slog.Logger) (actors.Driver, error) {
	if _, err := exec.LookPath("nix"); err != nil {
		return nil, errors.New("the nix driver needs the nix command (Debian: apt-get install nix-bin), or use --driver qemu")
	}
	if !f.noNetwork {
		if geteuid() != 0 {
			return nil, errors.New("the nix driver gives each VM a TAP, a host route and iptables rules, which needs root: run blixard as root, or pass --no-network to boot VMs without a network")
		}
		if _, err := exec.LookPath("iptables"); err != nil {
			return nil, errors.New("the nix driver's VM networking needs the iptables command (Debian: apt-get install iptables), or pass --no-network to boot VMs without a network")
		}
	}
	overrides := map[string]string{}
	for _, o := range nixOverrideInputs {
		name, ref, ok := strings.Cut(o, "=")
		if !ok || name == "" || ref == "" {
			return nil, fmt.Errorf("--nix-override-input %q: want name=flake-ref", o)
		}
		overrides[name] = ref
	}
	extra, err := splitArgs(nixExtraArgs)
	if err != nil {
		return nil, fmt.Errorf("--nix-extra-args: %w", err)
	}
	sup, err := systemd.SupervisorFor(context.Background(), supervisorMode, log)
	if err != nil {
		return nil, err
	}
	return nix.New(nix.Options{
		Dir:            filepath.Join(dataDir, "vms"),
		OverrideInputs: overrides,
		ExtraArgs:      extra,
		NoNetwork:      f.noNetwork,
		Supervisor:     sup,
		Logger:         log,
	})
}

// splitArgs splits s into words like a POSIX shell without expansions:
// blanks separate words, '...' and "..." quote (so ” is an empty word),
// a backslash outside single quotes escapes the next character.
func splitArgs(s string) ([]string, error) {
	var (
		words []string
		cur   strings.Builder
		in    bool // inside a word
		quote rune
		esc   bool
	)
	for _, r := range s {
		switch {
		case esc:
			cur.WriteRune(r)
			esc = false
		case quote == '\'' && r == '\'', quote == '"' && r == '"':
			quote = 0
		case quote == '\'':
			cur.WriteRune(r)
		case r == '\\':
			esc, in = true, true
		case quote == '"':
			cur.WriteRune(r)
		case r == '\'' || r == '"':
			quote, in = r, true
		case r == ' ' || r == '\t' || r == '\n':
			if in {
				words = append(words, cur.String())
				cur.Reset()
				in = false
			}
		default:
			cur.WriteRune(r)
			in = true
		}
	}
	if quote != 0 || esc {
		return nil, fmt.Errorf("unterminated quote or escape in %q", s)
	}
	if in {
		words = append(words, cur.String())
	}
	return words, nil
}
