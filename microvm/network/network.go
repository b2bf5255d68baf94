package network

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
)

// ErrInvalid is wrapped by Setup and Teardown errors about a VM that cannot
// be set up as given; retrying does not help.
var ErrInvalid = errors.New("invalid vm network")

// VM is what the host side of one VM's network depends on.
type VM struct {
	// Name is the VM's name, for messages.
	Name string
	// TAP is the host interface name (at most 15 bytes, starting with the
	// Host's TAPPrefix).
	TAP string
	// IP is the guest's IPv4 address, MAC its Ethernet address.
	IP  string
	MAC string
	// Gateway is the host-side address the guest routes through; it is put
	// on the TAP as a /32.
	Gateway string
	// Tenant is the VM's tenant; VMs of different tenants cannot reach each
	// other through this host. Empty means "default".
	Tenant string
	// Queues is the number of TAP queues (one per vcpu); above one the TAP
	// is multi-queue. 0 means 1.
	Queues int
	// Owner and Group own the TAP, so that a hypervisor running as that
	// user can open it. 0 (root) suits a hypervisor started by a root
	// agent.
	Owner, Group uint32
}

// Host sets up and tears down VM networks on this host. The zero value is
// ready to use.
type Host struct {
	// TAPPrefix starts every VM TAP name; tenant isolation matches VM TAPs
	// by it. Empty means "vm-" (the cluster names TAPs vm-<base36 id>).
	TAPPrefix string
	// LockPath is the lock file that serialises network changes across
	// processes; empty means /run/blixard-network.lock.
	LockPath string
	// Logger receives one line per change; nil means slog.Default().
	Logger *slog.Logger
}

// Node-level chain names in the filter table.
const (
	ForwardChain = "BLIXARD-FWD"
	InputChain   = "BLIXARD-IN"
	// chainPrefix starts every chain this package makes.
	chainPrefix  = "BLIXARD-"
	tenantPrefix = "BLIXARD-T-"
)

// VMChain is the name of the anti-spoofing chain of the VM whose TAP is tap.
func VMChain(tap string) string { return chainPrefix + tap }

// TenantChain is the name of tenant's isolation chain: a hash, because
// tenant names can be longer than an iptables chain name.
func TenantChain(tenant string) string {
	if tenant == "" {
		tenant = "default"
	}
	sum := sha256.Sum256([]byte(tenant))
	return tenantPrefix + hex.EncodeToString(sum[:6])
}

func (h *Host) prefix() string {
	if h.TAPPrefix == "" {
		return "vm-"
	}
	return h.TAPPrefix
}

func (h *Host) lockPath() string {
	if h.LockPath == "" {
		return "/run/blixard-network.lock"
	}
	return h.LockPath
}

func (h *Host) log() *slog.Logger {
	if h.Logger == nil {
		return slog.Default()
	}
	return h.Logger
}

// check validates vm for Setup (full) or Teardown (TAP only).
func (h *Host) check(vm VM, full bool) error {
	bad := func(format string, a ...any) error {
		return fmt.Errorf("%w: vm %s: %s", ErrInvalid, vm.Name, fmt.Sprintf(format, a...))
	}
	if len(vm.TAP) > 15 || !isIfname(vm.TAP) {
		return bad("tap name %q (want at most 15 letters, digits, '-' or '_')", vm.TAP)
	}
	if !strings.HasPrefix(vm.TAP, h.prefix()) || len(vm.TAP) == len(h.prefix()) {
		return bad("tap name %q does not start with %q: tenant isolation matches VM TAPs by that prefix", vm.TAP, h.prefix())
	}
	if !full {
		return nil
	}
	if ip := net.ParseIP(vm.IP); ip == nil || ip.To4() == nil {
		return bad("ip %q (want an IPv4 address)", vm.IP)
	}
	if gw := net.ParseIP(vm.Gateway); gw == nil || gw.To4() == nil {
		return bad("gateway %q (want an IPv4 address)", vm.Gateway)
	}
	if vm.IP == vm.Gateway {
		return bad("ip and gateway are both %s", vm.IP)
	}
	if mac, err := net.ParseMAC(vm.MAC); err != nil || len(mac) != 6 {
		return bad("mac %q (want xx:xx:xx:xx:xx:xx)", vm.MAC)
	}
	if vm.Queues < 0 || vm.Queues > 256 {
		return bad("%d queues (want 1 to 256)", vm.Queues)
	}
	return nil
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

// Setup makes the host side of vm's network with a zero Host.
func Setup(ctx context.Context, vm VM) error { return (&Host{}).Setup(ctx, vm) }

// Teardown removes the host side of vm's network with a zero Host.
func Teardown(ctx context.Context, vm VM) error { return (&Host{}).Teardown(ctx, vm) }
