package network_test

import (
	"context"
	"errors"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/blixard/blixard/microvm/network"
	"github.com/blixard/blixard/microvm/network/networktest"
)

// Three VMs of the cluster's default subnet: a1 and a2 of tenant a (a2
// with two queues), b1 of tenant b.
var (
	a1 = network.VM{Name: "a1", TAP: "vm-2", IP: "10.0.0.2", MAC: "02:0a:00:00:00:02", Gateway: "10.0.0.1", Tenant: "a"}
	a2 = network.VM{Name: "a2", TAP: "vm-3", IP: "10.0.0.3", MAC: "02:0a:00:00:00:03", Gateway: "10.0.0.1", Tenant: "a", Queues: 2}
	b1 = network.VM{Name: "b1", TAP: "vm-4", IP: "10.0.0.4", MAC: "02:0a:00:00:00:04", Gateway: "10.0.0.1", Tenant: "b"}
)

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	return ctx
}

func setup(t *testing.T, w networktest.Network, vms ...network.VM) {
	t.Helper()
	for _, vm := range vms {
		if err := w.Setup(testCtx(t), vm); err != nil {
			t.Fatal(err)
		}
	}
}

func teardown(t *testing.T, w networktest.Network, vms ...network.VM) {
	t.Helper()
	for _, vm := range vms {
		if err := w.Teardown(testCtx(t), vm); err != nil {
			t.Fatal(err)
		}
	}
}

// TestSetupIdempotentTeardownComplete: a second Setup of the same VMs
// changes no link, address, route or filter rule; Teardown brings the
// namespace back to exactly its state before the first Setup, and a second
// Teardown is a no-op.
func TestSetupIdempotentTeardownComplete(t *testing.T) {
	ns := networktest.New(t)
	w := networktest.Network{NS: ns, Host: &network.Host{LockPath: t.TempDir() + "/lock"}}
	before := ns.State(t)

	setup(t, w, a1, a2, b1)
	first := ns.State(t)
	setup(t, w, a1, a2, b1)
	if second := ns.State(t); second != first {
		t.Fatalf("a second Setup changed the state:\n--- after the first\n%s\n--- after the second\n%s", first, second)
	}
	checks := []struct{ what, text string }{
		{"tap a1 with vnet_hdr, single queue", "tun type tap pi off vnet_hdr on persist on"},
		{"tap a2 multi-queue", "vnet_hdr on multi_queue"},
		{"gateway on a1's tap", "vm-2    inet 10.0.0.1/32"},
		{"route to a1", "10.0.0.2 dev vm-2 scope link"},
		{"route to a2", "10.0.0.3 dev vm-3 scope link"},
		{"forward jump", "-A FORWARD -j BLIXARD-FWD"},
		{"input jump", "-A INPUT -j BLIXARD-IN"},
		{"a1 ip anti-spoofing", "-A BLIXARD-vm-2 ! -s 10.0.0.2/32 -j DROP"},
		{"a1 mac anti-spoofing", "-A BLIXARD-vm-2 -m mac ! --mac-source 02:0a:00:00:00:02 -j DROP"},
		{"a1 forward jump", "-A BLIXARD-FWD -i vm-2 -j BLIXARD-vm-2"},
		{"a1 input jump", "-A BLIXARD-IN -i vm-2 -j BLIXARD-vm-2"},
		{"a1 tenant jump", "-A BLIXARD-FWD -i vm-2 -j " + network.TenantChain("a")},
		{"a2 in tenant a", "-A " + network.TenantChain("a") + " -o vm-3 -j RETURN"},
		{"tenant a drops other VMs", "-A " + network.TenantChain("a") + " -o vm-+ -j DROP"},
		{"b1 in tenant b", "-A " + network.TenantChain("b") + " -o vm-4 -j RETURN"},
	}
	for _, c := range checks {
		if !strings.Contains(first, c.text) {
			t.Errorf("%s: %q missing from\n%s", c.what, c.text, first)
		}
	}
	if strings.Contains(first, "-A "+network.TenantChain("b")+" -o vm-2") {
		t.Errorf("a1 is a member of tenant b:\n%s", first)
	}
	if got := ns.Exec(t, "cat", "/proc/sys/net/ipv4/ip_forward"); strings.TrimSpace(got) != "1" {
		t.Errorf("ip_forward = %q", got)
	}

	// Partial teardown keeps the other VMs' setup (and the shared gateway
	// address's local route) intact.
	teardown(t, w, a2)
	partial := ns.State(t)
	for _, gone := range []string{"vm-3", "10.0.0.3"} {
		if strings.Contains(partial, gone) {
			t.Errorf("%s left after a2's Teardown:\n%s", gone, partial)
		}
	}
	for _, kept := range []string{"10.0.0.2 dev vm-2 scope link", "-A BLIXARD-FWD -i vm-4 -j BLIXARD-vm-4", "local 10.0.0.1 dev vm-"} {
		if !strings.Contains(partial, kept) {
			t.Errorf("%q lost by a2's Teardown:\n%s", kept, partial)
		}
	}

	teardown(t, w, a1, b1, a2, a1)
	if after := ns.State(t); after != before {
		t.Fatalf("Teardown left something behind:\n--- before Setup\n%s\n--- after Teardown\n%s", before, after)
	}
}

// TestSetupRepairs: Setup puts back what was removed behind its back and
// replaces drifted rules, without duplicating what is there.
func TestSetupRepairs(t *testing.T) {
	ns := networktest.New(t)
	w := networktest.Network{NS: ns, Host: &network.Host{LockPath: t.TempDir() + "/lock"}}
	setup(t, w, a1, b1)
	want := ns.State(t)
	ns.Exec(t, "ip", "route", "del", "10.0.0.2/32")
	ns.Exec(t, "ip", "addr", "del", "10.0.0.1/32", "dev", "vm-2")
	ns.Exec(t, "iptables", "-w", "-F", "BLIXARD-vm-2")
	ns.Exec(t, "iptables", "-w", "-A", "BLIXARD-vm-2", "-j", "ACCEPT")
	ns.Exec(t, "iptables", "-w", "-D", "FORWARD", "-j", "BLIXARD-FWD")
	ns.Exec(t, "ip", "link", "set", "vm-4", "down")
	setup(t, w, a1, b1)
	if got := ns.State(t); got != want {
		t.Fatalf("Setup did not repair:\n--- want\n%s\n--- got\n%s", want, got)
	}
	teardown(t, w, a1, b1)
}

func TestInvalid(t *testing.T) {
	h := &network.Host{}
	for _, vm := range []network.VM{
		{Name: "x", TAP: "eth0", IP: "10.0.0.2", MAC: "02:00:00:00:00:02", Gateway: "10.0.0.1"},
		{Name: "x", TAP: "vm-aaaaaaaaaaaaaaaa", IP: "10.0.0.2", MAC: "02:00:00:00:00:02", Gateway: "10.0.0.1"},
		{Name: "x", TAP: "vm-1", IP: "fe80::1", MAC: "02:00:00:00:00:02", Gateway: "10.0.0.1"},
		{Name: "x", TAP: "vm-1", IP: "10.0.0.2", MAC: "02:00", Gateway: "10.0.0.1"},
		{Name: "x", TAP: "vm-1", IP: "10.0.0.2", MAC: "02:00:00:00:00:02", Gateway: ""},
		{Name: "x", TAP: "vm-1 -j ACCEPT", IP: "10.0.0.2", MAC: "02:00:00:00:00:02", Gateway: "10.0.0.1"},
	} {
		if err := h.Setup(context.Background(), vm); !errors.Is(err, network.ErrInvalid) {
			t.Errorf("Setup(%+v) = %v, want ErrInvalid", vm, err)
		}
	}
}

// TestIsolation plays three VMs on their TAPs (networktest endpoints, not
// guests) and checks what the host forwards: the host reaches each VM;
// a1 reaches a2 (same tenant); a1 does not reach b1 nor b1 a1 (tenant
// chains drop it); a1 cannot send with a2's address or with another MAC
// (anti-spoofing drops it). A drop is proven by the rule's counter and by
// the target receiving a later marker packet first.
func TestIsolation(t *testing.T) {
	ns := networktest.New(t)
	w := networktest.Network{NS: ns, Host: &network.Host{LockPath: t.TempDir() + "/lock"}}
	setup(t, w, a1, a2, b1)
	defer teardown(t, w, a1, a2, b1)
	e1, e2, eb := ns.Attach(t, a1), ns.Attach(t, a2), ns.Attach(t, b1)
	const wait = 5 * time.Second
	ip := func(s string) net.IP { return net.ParseIP(s) }
	udpFrom := func(src string) func(networktest.Packet) bool {
		return func(p networktest.Packet) bool { return p.Proto == 17 && p.Src.Equal(ip(src)) }
	}

	// Host to each VM (ARP through the TAP answered by the endpoint).
	for _, c := range []struct {
		vm network.VM
		e  *networktest.Endpoint
	}{{a1, e1}, {a2, e2}, {b1, eb}} {
		if err := ns.SendUDP(c.vm.IP, 9000, []byte("hello "+c.vm.Name)); err != nil {
			t.Fatal(err)
		}
		p, err := c.e.Expect(wait, udpFrom("10.0.0.1"))
		if err != nil || string(p.Payload) != "hello "+c.vm.Name {
			t.Fatalf("host -> %s: %v %v", c.vm.Name, p, err)
		}
	}

	// Same tenant: forwarded.
	e1.SendIP(e1.MAC, networktest.UDP(ip(a1.IP), ip(a2.IP), 4000, 5000, []byte("a1 to a2")))
	if p, err := e2.Expect(wait, udpFrom(a1.IP)); err != nil || string(p.Payload) != "a1 to a2" {
		t.Fatalf("a1 -> a2 (same tenant) not forwarded: %v %v", p, err)
	}

	// dropped sends pkt from e, waits for chain's drop counter, then checks
	// that target gets the host's marker before anything from src.
	dropped := func(what string, chain string, send func(), target *networktest.Endpoint, src string) {
		t.Helper()
		before := ns.DropCount(t, chain)
		send()
		ns.WaitDrops(t, chain, before, wait)
		if err := ns.SendUDP(target.IP.String(), 9001, []byte("marker")); err != nil {
			t.Fatal(err)
		}
		for {
			p, err := target.Next(wait)
			if err != nil {
				t.Fatalf("%s: no marker: %v", what, err)
			}
			if p.Src.Equal(ip(src)) && string(p.Payload) != "marker" {
				t.Fatalf("%s: delivered: %v", what, p)
			}
			if string(p.Payload) == "marker" {
				return
			}
		}
	}
	tenantA, tenantB := network.TenantChain("a"), network.TenantChain("b")
	dropped("a1 -> b1 (other tenant)", tenantA, func() {
		e1.SendIP(e1.MAC, networktest.UDP(ip(a1.IP), ip(b1.IP), 4000, 5000, []byte("a1 to b1")))
	}, eb, a1.IP)
	dropped("b1 -> a1 (other tenant)", tenantB, func() {
		eb.SendIP(eb.MAC, networktest.UDP(ip(b1.IP), ip(a1.IP), 4000, 5000, []byte("b1 to a1")))
	}, e1, b1.IP)
	dropped("a1 sending as 10.0.0.9", network.VMChain(a1.TAP), func() {
		e1.SendIP(e1.MAC, networktest.UDP(ip("10.0.0.9"), ip(a2.IP), 4000, 5000, []byte("spoofed ip")))
	}, e2, "10.0.0.9")
	dropped("a1 sending with b1's address to a2", network.VMChain(a1.TAP), func() {
		e1.SendIP(e1.MAC, networktest.UDP(ip(b1.IP), ip(a2.IP), 4000, 5000, []byte("spoofed ip")))
	}, e2, b1.IP)
	otherMAC, _ := net.ParseMAC("02:0a:00:00:00:99")
	dropped("a1 sending from another MAC", network.VMChain(a1.TAP), func() {
		e1.SendIP(otherMAC, networktest.UDP(ip(a1.IP), ip(a2.IP), 4000, 5000, []byte("spoofed mac")))
	}, e2, a1.IP)
}

// TestConcurrent sets up and tears down VMs from several goroutines at
// once (VM actors do): the result is the same as one after the other, and
// the last Teardown leaves the namespace as it was.
func TestConcurrent(t *testing.T) {
	ns := networktest.New(t)
	w := networktest.Network{NS: ns, Host: &network.Host{LockPath: t.TempDir() + "/lock"}}
	before := ns.State(t)
	vms := []network.VM{a1, a2, b1}
	for i := 5; i < 10; i++ {
		n := strconv.Itoa(i)
		vms = append(vms, network.VM{
			Name: "c" + n, TAP: "vm-" + n, IP: "10.0.0." + n, MAC: "02:0a:00:00:00:0" + n,
			Gateway: "10.0.0.1", Tenant: []string{"a", "b", "c"}[i%3],
		})
	}
	run := func(f func(context.Context, network.VM) error) {
		errs := make(chan error, len(vms))
		for _, vm := range vms {
			go func() { errs <- f(testCtx(t), vm) }()
		}
		for range vms {
			if err := <-errs; err != nil {
				t.Fatal(err)
			}
		}
	}
	run(w.Setup)
	concurrent := ns.State(t)
	setup(t, w, vms...)
	if again := ns.State(t); again != concurrent {
		t.Fatalf("Setup after concurrent Setups changed the state:\n--- concurrent\n%s\n--- again\n%s", concurrent, again)
	}
	for _, vm := range vms {
		if !strings.Contains(concurrent, "-A "+network.TenantChain(vm.Tenant)+" -o "+vm.TAP+" -j RETURN") {
			t.Errorf("%s missing from its tenant chain:\n%s", vm.Name, concurrent)
		}
	}
	run(w.Teardown)
	if after := ns.State(t); after != before {
		t.Fatalf("concurrent Teardowns left something behind:\n--- before\n%s\n--- after\n%s", before, after)
	}
}
