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

	"github.com/blixard/blixard/actors"
	"github.com/blixard/blixard/consensus"
	"github.com/blixard/blixard/microvm/fake"
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
		return nil, errors.New("driver nix is not available in this build yet; use --driver qemu or --driver fake")
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
