package network

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/coreos/go-iptables/iptables"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

const filter = "filter"

// procMu serialises changes within the process; the lock file does across
// processes.
var procMu sync.Mutex

// lock takes the process and host-wide network lock.
func (h *Host) lock(ctx context.Context) (unlock func(), err error) {
	procMu.Lock()
	path := h.lockPath()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		procMu.Unlock()
		return nil, fmt.Errorf("lock file: %w", err)
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		procMu.Unlock()
		return nil, fmt.Errorf("lock file: %w", err)
	}
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if err == nil {
			return func() {
				unix.Flock(int(f.Fd()), unix.LOCK_UN)
				f.Close()
				procMu.Unlock()
			}, nil
		}
		if !errors.Is(err, unix.EWOULDBLOCK) && !errors.Is(err, unix.EINTR) {
			f.Close()
			procMu.Unlock()
			return nil, fmt.Errorf("locking %s: %w", path, err)
		}
		select {
		case <-ctx.Done():
			f.Close()
			procMu.Unlock()
			return nil, fmt.Errorf("locking %s: %w", path, ctx.Err())
		case <-tick.C:
		}
	}
}

// Setup makes the host side of vm's network (see the package comment) in
// the calling thread's network namespace. It is idempotent: every step
// measures first and acts only on a difference.
func (h *Host) Setup(ctx context.Context, vm VM) error {
	if err := h.check(vm, true); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("network of vm %s: %w", vm.Name, err)
	}
	unlock, err := h.lock(ctx)
	if err != nil {
		return fmt.Errorf("network of vm %s: %w", vm.Name, err)
	}
	defer unlock()
	if err := h.setupLink(vm); err != nil {
		return fmt.Errorf("network of vm %s: %w", vm.Name, err)
	}
	if err := ensureSysctl("/proc/sys/net/ipv4/ip_forward", "1"); err != nil {
		return fmt.Errorf("network of vm %s: enabling forwarding: %w", vm.Name, err)
	}
	ipt, err := iptables.New()
	if err != nil {
		return fmt.Errorf("network of vm %s: iptables: %w", vm.Name, err)
	}
	if err := h.setupChains(ipt, vm); err != nil {
		return fmt.Errorf("network of vm %s: %w", vm.Name, err)
	}
	return nil
}

// tapMatches reports whether an existing TAP has the settings vm needs.
func tapMatches(t *netlink.Tuntap, vm VM) bool {
	want := netlink.TUNTAP_NO_PI | netlink.TUNTAP_VNET_HDR
	if vm.Queues > 1 {
		want |= netlink.TUNTAP_MULTI_QUEUE
	}
	have := t.Flags & (netlink.TUNTAP_NO_PI | netlink.TUNTAP_VNET_HDR | netlink.TUNTAP_MULTI_QUEUE)
	return t.Mode == netlink.TUNTAP_MODE_TAP && have == want && !t.NonPersist &&
		t.Owner == vm.Owner && t.Group == vm.Group
}

// inUse reports whether a hypervisor has the TAP open: attached queues
// (multi-queue TAPs report them) or carrier (a TAP has carrier while a
// queue is attached).
func inUse(t *netlink.Tuntap) bool {
	return t.Queues > 0 || t.Attrs().RawFlags&unix.IFF_LOWER_UP != 0
}

func (h *Host) setupLink(vm VM) error {
	link, err := netlink.LinkByName(vm.TAP)
	var notFound netlink.LinkNotFoundError
	switch {
	case errors.As(err, &notFound):
		link = nil
	case err != nil:
		return fmt.Errorf("looking up %s: %w", vm.TAP, err)
	}
	if link != nil {
		t, ok := link.(*netlink.Tuntap)
		switch {
		case !ok:
			return fmt.Errorf("interface %s exists and is a %s, not a TAP", vm.TAP, link.Type())
		case tapMatches(t, vm):
		case inUse(t):
			// Prepare never disturbs a running VM: the new settings apply
			// once the hypervisor has let go of the TAP.
			h.log().Warn("network: tap in use with other settings; left as is", "vm", vm.Name, "tap", vm.TAP)
		default:
			h.log().Info("network: recreating tap with new settings", "vm", vm.Name, "tap", vm.TAP)
			if err := netlink.LinkDel(link); err != nil {
				return fmt.Errorf("deleting %s: %w", vm.TAP, err)
			}
			link = nil
		}
	}
	if link == nil {
		t := &netlink.Tuntap{
			LinkAttrs: netlink.LinkAttrs{Name: vm.TAP},
			Mode:      netlink.TUNTAP_MODE_TAP,
			Flags:     netlink.TUNTAP_NO_PI | netlink.TUNTAP_VNET_HDR,
			Queues:    1,
			Owner:     vm.Owner,
			Group:     vm.Group,
		}
		if vm.Queues > 1 {
			t.Flags |= netlink.TUNTAP_MULTI_QUEUE
			t.Queues = vm.Queues
		}
		if err := netlink.LinkAdd(t); err != nil {
			return fmt.Errorf("creating tap %s: %w", vm.TAP, err)
		}
		for _, f := range t.Fds {
			f.Close() // the TAP persists; the hypervisor opens it by name
		}
		h.log().Info("network: created tap", "vm", vm.Name, "tap", vm.TAP, "queues", max(vm.Queues, 1))
		if link, err = netlink.LinkByName(vm.TAP); err != nil {
			return fmt.Errorf("looking up %s: %w", vm.TAP, err)
		}
	}
	// Before the link goes up, so it never gets an IPv6 link-local address.
	if _, err := os.Stat("/proc/sys/net/ipv6/conf/" + vm.TAP); err == nil {
		if err := ensureSysctl("/proc/sys/net/ipv6/conf/"+vm.TAP+"/disable_ipv6", "1"); err != nil {
			return fmt.Errorf("disabling ipv6 on %s: %w", vm.TAP, err)
		}
	}
	if err := ensureSysctl("/proc/sys/net/ipv4/conf/"+vm.TAP+"/proxy_arp", "1"); err != nil {
		return fmt.Errorf("proxy arp on %s: %w", vm.TAP, err)
	}
	if link.Attrs().Flags&net.FlagUp == 0 {
		if err := netlink.LinkSetUp(link); err != nil {
			return fmt.Errorf("setting %s up: %w", vm.TAP, err)
		}
	}

	gw := &net.IPNet{IP: net.ParseIP(vm.Gateway).To4(), Mask: net.CIDRMask(32, 32)}
	addrs, err := netlink.AddrList(link, netlink.FAMILY_V4)
	if err != nil {
		return fmt.Errorf("addresses of %s: %w", vm.TAP, err)
	}
	haveGW := false
	for _, a := range addrs {
		if a.IPNet.String() == gw.String() {
			haveGW = true
			continue
		}
		if err := netlink.AddrDel(link, &a); err != nil {
			return fmt.Errorf("removing stale address %s from %s: %w", a.IPNet, vm.TAP, err)
		}
	}
	if !haveGW {
		if err := netlink.AddrAdd(link, &netlink.Addr{IPNet: gw}); err != nil {
			return fmt.Errorf("gateway address %s on %s: %w", gw, vm.TAP, err)
		}
	}

	dst := &net.IPNet{IP: net.ParseIP(vm.IP).To4(), Mask: net.CIDRMask(32, 32)}
	want := netlink.Route{LinkIndex: link.Attrs().Index, Dst: dst, Scope: netlink.SCOPE_LINK, Table: unix.RT_TABLE_MAIN}
	routes, err := netlink.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Dst: dst, Table: unix.RT_TABLE_MAIN},
		netlink.RT_FILTER_DST|netlink.RT_FILTER_TABLE)
	if err != nil {
		return fmt.Errorf("routes to %s: %w", dst, err)
	}
	ok := false
	for _, r := range routes {
		if r.LinkIndex == want.LinkIndex && r.Scope == want.Scope && r.Gw == nil {
			ok = true
		}
	}
	if !ok {
		// Replace: a stale route to this address (an earlier VM that held
		// it) gives way to the VM that holds it now.
		if err := netlink.RouteReplace(&want); err != nil {
			return fmt.Errorf("route %s dev %s: %w", dst, vm.TAP, err)
		}
	}
	return nil
}

// ensureSysctl writes value to path unless it holds it already.
func ensureSysctl(path, value string) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	if string(bytes.TrimSpace(b)) == value {
		return nil
	}
	return os.WriteFile(path, []byte(value+"\n"), 0o644)
}

func (h *Host) setupChains(ipt *iptables.IPTables, vm VM) error {
	vmChain, tenantChain := VMChain(vm.TAP), TenantChain(vm.Tenant)
	for _, c := range []struct{ chain, from string }{{ForwardChain, "FORWARD"}, {InputChain, "INPUT"}} {
		if err := ensureChain(ipt, c.chain); err != nil {
			return err
		}
		if err := ensureJump(ipt, c.from, c.chain); err != nil {
			return err
		}
	}

	// The VM's anti-spoofing chain: exactly these rules, in this order.
	if err := ensureChain(ipt, vmChain); err != nil {
		return err
	}
	spoof := [][]string{
		{"!", "-s", vm.IP + "/32", "-j", "DROP"},
		{"-m", "mac", "!", "--mac-source", vm.MAC, "-j", "DROP"},
	}
	have, err := ipt.List(filter, vmChain)
	if err != nil {
		return fmt.Errorf("listing %s: %w", vmChain, err)
	}
	same := len(have) == len(spoof)+1 // -N line first
	for i, r := range spoof {
		if !same {
			break
		}
		// -C, not text: iptables prints the MAC in its own case.
		same, err = ipt.Exists(filter, vmChain, r...)
		if err != nil {
			return fmt.Errorf("checking %s: %w", vmChain, err)
		}
		if same && !strings.Contains(have[i+1], "DROP") {
			same = false
		}
	}
	if !same {
		if err := ipt.ClearChain(filter, vmChain); err != nil {
			return fmt.Errorf("flushing %s: %w", vmChain, err)
		}
		for _, r := range spoof {
			if err := ipt.Append(filter, vmChain, r...); err != nil {
				return fmt.Errorf("anti-spoofing rule in %s: %w", vmChain, err)
			}
		}
		h.log().Info("network: anti-spoofing chain", "vm", vm.Name, "chain", vmChain, "ip", vm.IP, "mac", vm.MAC)
	}

	// The tenant chain: RETURN for each member TAP first, DROP for any
	// other VM TAP last.
	if err := ensureChain(ipt, tenantChain); err != nil {
		return err
	}
	drop := []string{"-o", h.prefix() + "+", "-j", "DROP"}
	rules, err := ipt.List(filter, tenantChain)
	if err != nil {
		return fmt.Errorf("listing %s: %w", tenantChain, err)
	}
	if len(rules) < 2 || rules[len(rules)-1] != ruleText(tenantChain, drop) {
		if err := ipt.DeleteIfExists(filter, tenantChain, drop...); err != nil {
			return fmt.Errorf("tenant chain %s: %w", tenantChain, err)
		}
		if err := ipt.Append(filter, tenantChain, drop...); err != nil {
			return fmt.Errorf("tenant chain %s: %w", tenantChain, err)
		}
	}
	member := []string{"-o", vm.TAP, "-j", "RETURN"}
	if !slices.Contains(rules, ruleText(tenantChain, member)) {
		if err := ipt.Insert(filter, tenantChain, 1, member...); err != nil {
			return fmt.Errorf("tenant chain %s: %w", tenantChain, err)
		}
		h.log().Info("network: tenant member", "vm", vm.Name, "tenant", vm.Tenant, "chain", tenantChain)
	}
	// A TAP is a member of one tenant only.
	chains, err := ipt.ListChains(filter)
	if err != nil {
		return fmt.Errorf("listing chains: %w", err)
	}
	for _, c := range chains {
		if strings.HasPrefix(c, tenantPrefix) && c != tenantChain {
			if _, err := h.dropMember(ipt, c, vm.TAP); err != nil {
				return err
			}
		}
	}

	// Jumps for traffic from the TAP: exactly these.
	want := map[string][][]string{
		ForwardChain: {{"-i", vm.TAP, "-j", vmChain}, {"-i", vm.TAP, "-j", tenantChain}},
		InputChain:   {{"-i", vm.TAP, "-j", vmChain}},
	}
	for _, chain := range []string{ForwardChain, InputChain} {
		if err := syncTapRules(ipt, chain, vm.TAP, want[chain]); err != nil {
			return err
		}
	}
	return nil
}

// ruleText is how iptables -S prints a plain rule of chain.
func ruleText(chain string, spec []string) string {
	return "-A " + chain + " " + strings.Join(spec, " ")
}

func ensureChain(ipt *iptables.IPTables, chain string) error {
	ok, err := ipt.ChainExists(filter, chain)
	if err != nil {
		return fmt.Errorf("looking for chain %s: %w", chain, err)
	}
	if !ok {
		if err := ipt.NewChain(filter, chain); err != nil {
			return fmt.Errorf("creating chain %s: %w", chain, err)
		}
	}
	return nil
}

// ensureJump puts "-j chain" at the top of builtin unless it is there.
func ensureJump(ipt *iptables.IPTables, builtin, chain string) error {
	ok, err := ipt.Exists(filter, builtin, "-j", chain)
	if err != nil {
		return fmt.Errorf("checking jump %s -> %s: %w", builtin, chain, err)
	}
	if !ok {
		if err := ipt.Insert(filter, builtin, 1, "-j", chain); err != nil {
			return fmt.Errorf("jump %s -> %s: %w", builtin, chain, err)
		}
	}
	return nil
}

// tapRules returns the rules of chain that match packets from tap, as
// argument lists for iptables -D.
func tapRules(ipt *iptables.IPTables, chain, tap string) ([][]string, error) {
	rules, err := ipt.List(filter, chain)
	if err != nil {
		return nil, fmt.Errorf("listing %s: %w", chain, err)
	}
	var out [][]string
	for _, r := range rules {
		f := strings.Fields(r)
		if len(f) < 2 || f[0] != "-A" {
			continue
		}
		if i := slices.Index(f, "-i"); i > 0 && i+1 < len(f) && f[i+1] == tap {
			out = append(out, f[2:])
		}
	}
	return out, nil
}

// syncTapRules makes the rules of chain for packets from tap exactly want.
func syncTapRules(ipt *iptables.IPTables, chain, tap string, want [][]string) error {
	have, err := tapRules(ipt, chain, tap)
	if err != nil {
		return err
	}
	for _, r := range have {
		if !slices.ContainsFunc(want, func(w []string) bool { return slices.Equal(w, r) }) {
			if err := ipt.Delete(filter, chain, r...); err != nil {
				return fmt.Errorf("removing stale rule from %s: %w", chain, err)
			}
		}
	}
	for _, w := range want {
		if !slices.ContainsFunc(have, func(r []string) bool { return slices.Equal(w, r) }) {
			if err := ipt.Append(filter, chain, w...); err != nil {
				return fmt.Errorf("rule in %s: %w", chain, err)
			}
		}
	}
	return nil
}

// dropMember removes tap's RETURN rule from tenant chain c and removes c
// when no member is left. It reports whether c was removed.
func (h *Host) dropMember(ipt *iptables.IPTables, c, tap string) (bool, error) {
	member := []string{"-o", tap, "-j", "RETURN"}
	rules, err := ipt.List(filter, c)
	if err != nil {
		return false, fmt.Errorf("listing %s: %w", c, err)
	}
	if slices.Contains(rules, ruleText(c, member)) {
		if err := ipt.Delete(filter, c, member...); err != nil {
			return false, fmt.Errorf("removing %s from %s: %w", tap, c, err)
		}
		rules = slices.DeleteFunc(rules, func(r string) bool { return r == ruleText(c, member) })
	}
	for _, r := range rules {
		if strings.HasSuffix(r, " -j RETURN") {
			return false, nil
		}
	}
	// No member left: nothing jumps here any more (each member's jump
	// went with it).
	if err := ipt.ClearAndDeleteChain(filter, c); err != nil {
		return false, fmt.Errorf("removing empty tenant chain %s: %w", c, err)
	}
	return true, nil
}

// Teardown removes what Setup made for vm: the TAP (with its address and
// route), the VM's chain and jumps, its tenant membership, and tenant and
// node-level chains left empty. Only vm.TAP is needed. It is idempotent.
func (h *Host) Teardown(ctx context.Context, vm VM) error {
	if err := h.check(vm, false); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("network of vm %s: %w", vm.Name, err)
	}
	unlock, err := h.lock(ctx)
	if err != nil {
		return fmt.Errorf("network of vm %s: %w", vm.Name, err)
	}
	defer unlock()

	link, err := netlink.LinkByName(vm.TAP)
	var notFound netlink.LinkNotFoundError
	switch {
	case errors.As(err, &notFound):
	case err != nil:
		return fmt.Errorf("network of vm %s: looking up %s: %w", vm.Name, vm.TAP, err)
	default:
		if _, ok := link.(*netlink.Tuntap); !ok {
			return fmt.Errorf("network of vm %s: interface %s is a %s, not a TAP; not removing it", vm.Name, vm.TAP, link.Type())
		}
		if err := netlink.LinkDel(link); err != nil {
			return fmt.Errorf("network of vm %s: deleting %s: %w", vm.Name, vm.TAP, err)
		}
		h.log().Info("network: deleted tap", "vm", vm.Name, "tap", vm.TAP)
	}

	if _, err := exec.LookPath("iptables"); err != nil {
		h.log().Warn("network: iptables not installed; no rules to remove", "vm", vm.Name)
		return nil
	}
	ipt, err := iptables.New()
	if err != nil {
		return fmt.Errorf("network of vm %s: iptables: %w", vm.Name, err)
	}
	if err := h.teardownChains(ipt, vm); err != nil {
		return fmt.Errorf("network of vm %s: %w", vm.Name, err)
	}
	return nil
}

func (h *Host) teardownChains(ipt *iptables.IPTables, vm VM) error {
	chains, err := ipt.ListChains(filter)
	if err != nil {
		return fmt.Errorf("listing chains: %w", err)
	}
	for _, c := range []string{ForwardChain, InputChain} {
		if slices.Contains(chains, c) {
			if err := syncTapRules(ipt, c, vm.TAP, nil); err != nil {
				return err
			}
		}
	}
	if slices.Contains(chains, VMChain(vm.TAP)) {
		if err := ipt.ClearAndDeleteChain(filter, VMChain(vm.TAP)); err != nil {
			return fmt.Errorf("removing %s: %w", VMChain(vm.TAP), err)
		}
	}
	for _, c := range chains {
		if strings.HasPrefix(c, tenantPrefix) {
			if _, err := h.dropMember(ipt, c, vm.TAP); err != nil {
				return err
			}
		}
	}
	// Node-level chains go when no VM rule is left in them.
	for _, c := range []struct{ chain, from string }{{ForwardChain, "FORWARD"}, {InputChain, "INPUT"}} {
		if !slices.Contains(chains, c.chain) {
			continue
		}
		rules, err := ipt.List(filter, c.chain)
		if err != nil {
			return fmt.Errorf("listing %s: %w", c.chain, err)
		}
		if len(rules) > 1 {
			continue
		}
		if err := ipt.DeleteIfExists(filter, c.from, "-j", c.chain); err != nil {
			return fmt.Errorf("removing jump %s -> %s: %w", c.from, c.chain, err)
		}
		if err := ipt.DeleteChain(filter, c.chain); err != nil {
			return fmt.Errorf("removing %s: %w", c.chain, err)
		}
	}
	return nil
}
