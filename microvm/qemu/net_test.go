package qemu

import (
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netns"

	"github.com/blixard/blixard/microvm"
	"github.com/blixard/blixard/microvm/network"
	"github.com/blixard/blixard/microvm/network/networktest"
)

// httpGetInNetns fetches / from addr with a socket created inside the
// named namespace, and returns the response body.
func httpGetInNetns(ns, addr string, timeout time.Duration) (string, error) {
	type result struct {
		conn net.Conn
		err  error
	}
	ch := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			ch <- result{nil, err}
			return
		}
		defer orig.Close()
		target, err := netns.GetFromName(ns)
		if err != nil {
			ch <- result{nil, err}
			return
		}
		defer target.Close()
		if err := netns.Set(target); err != nil {
			ch <- result{nil, err}
			return
		}
		// The socket belongs to the namespace it was created in.
		c, err := net.DialTimeout("tcp", addr, timeout)
		if rerr := netns.Set(orig); rerr == nil {
			runtime.UnlockOSThread()
		}
		ch <- result{c, err}
	}()
	r := <-ch
	if r.err != nil {
		return "", r.err
	}
	defer r.conn.Close()
	r.conn.SetDeadline(time.Now().Add(timeout))
	if _, err := r.conn.Write([]byte("GET / HTTP/1.0\r\nHost: guest\r\n\r\n")); err != nil {
		return "", err
	}
	resp, err := io.ReadAll(r.conn)
	_, body, ok := strings.Cut(string(resp), "\r\n\r\n")
	if !ok {
		return "", fmt.Errorf("no HTTP response (%v): %q", err, resp)
	}
	return body, nil
}

// TestNetworkTCG boots two real guests through the driver in a network
// namespace of its own, with the driver making the host network (TAP,
// route, iptables chains): a1 of tenant a with 2 vcpus (a multi-queue
// TAP), b1 of tenant b. A third VM of tenant a, "probe", is a networktest
// endpoint on its own TAP (the guests have no shell to drive, so a guest
// cannot be the client). It proves:
//   - the namespace's host stack reaches each guest's HTTP server at its IP;
//   - probe (tenant a) gets a SYN-ACK from a1's port 80: VM-to-VM
//     forwarding through the host works within a tenant, with a real guest
//     kernel answering;
//   - probe's SYN to b1 (tenant b) is dropped by tenant a's chain (its
//     counter rises) and no answer from b1 ever reaches probe;
//   - Destroy leaves no qemu process, state dir, TAP, route, chain or rule:
//     the namespace is as before.
//
// It does not prove that a guest cannot spoof (TestIsolation in
// microvm/network does, with endpoints) nor isolation across hosts.
func TestNetworkTCG(t *testing.T) {
	kernel, initrd := guest(t)
	ns := networktest.New(t)
	dir := shortTempDir(t, "bn")
	hostNet := networktest.Network{NS: ns, Host: &network.Host{LockPath: filepath.Join(dir, "net.lock")}}
	baseline := ns.State(t)

	// qemu must open the TAPs inside the namespace.
	wrapper := filepath.Join(dir, "qemu-in-netns")
	script := "#!/bin/sh\nexec ip netns exec " + ns.Name() + " qemu-system-x86_64 \"$@\"\n"
	if err := os.WriteFile(wrapper, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	d, err := New(Options{Dir: filepath.Join(dir, "vms"), Binary: wrapper, Accel: AccelTCG, Network: hostNet})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	ctx := testCtx(t, 5*time.Minute)
	const gw = "10.0.0.1"
	a1 := microvm.Spec{
		Name: "a1", ID: 2, Tenant: "a", Vcpus: 2, MemoryMB: 256, Kernel: kernel, Initrd: initrd,
		IP: "10.0.0.2", MAC: "02:0a:00:00:00:02", TAP: "vm-2", Gateway: gw,
	}
	b1 := microvm.Spec{
		Name: "b1", ID: 4, Tenant: "b", Vcpus: 1, MemoryMB: 256, Kernel: kernel, Initrd: initrd,
		IP: "10.0.0.4", MAC: "02:0a:00:00:00:04", TAP: "vm-4", Gateway: gw,
	}
	probe := network.VM{Name: "probe", TAP: "vm-3", IP: "10.0.0.3", MAC: "02:0a:00:00:00:03", Gateway: gw, Tenant: "a"}

	pids := map[string]int{}
	start := time.Now()
	for _, s := range []microvm.Spec{a1, b1} {
		if err := d.Prepare(ctx, s); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { d.Destroy(testCtx(t, time.Minute), s.Name) })
		in, err := d.Start(ctx, s)
		if err != nil {
			t.Fatal(err)
		}
		pids[s.Name] = in.PID
	}
	if err := hostNet.Setup(ctx, probe); err != nil {
		t.Fatal(err)
	}
	ep := ns.Attach(t, probe)
	for _, s := range []microvm.Spec{a1, b1} {
		console := waitConsole(t, d, s.Name, "BLIXARD-GUEST-READY", 3*time.Minute)
		if want := "blixard-guest: eth0 " + s.IP + "/32 gw " + gw; !strings.Contains(console, want) {
			t.Fatalf("%s: guest network not configured (%q); console:\n%s", s.Name, want, lastLines([]byte(console), 20))
		}
	}
	t.Logf("two TCG guests READY after %s", time.Since(start).Round(time.Millisecond))

	for _, s := range []microvm.Spec{a1, b1} {
		deadline := time.Now().Add(time.Minute)
		for {
			body, err := httpGetInNetns(ns.Name(), s.IP+":80", 3*time.Second)
			if err == nil && strings.HasPrefix(body, "blixard guest ") {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("no HTTP answer from %s at %s: %v (%q)", s.Name, s.IP, err, body)
			}
			time.Sleep(200 * time.Millisecond)
		}
	}

	probeIP := net.ParseIP(probe.IP)
	synAckFrom := func(ip string, port uint16) func(networktest.Packet) bool {
		return func(p networktest.Packet) bool {
			return p.Proto == 6 && p.Src.Equal(net.ParseIP(ip)) && p.DstPort == port &&
				p.TCPFlags&(networktest.TCPSyn|networktest.TCPAck) == networktest.TCPSyn|networktest.TCPAck
		}
	}
	ep.SendIP(ep.MAC, networktest.TCP(probeIP, net.ParseIP(a1.IP), 40001, 80, 1, networktest.TCPSyn))
	if p, err := ep.Expect(10*time.Second, synAckFrom(a1.IP, 40001)); err != nil {
		t.Fatalf("probe (tenant a) got no SYN-ACK from a1:80 (tenant a): %v %v", p, err)
	}

	tenantA := network.TenantChain("a")
	before := ns.DropCount(t, tenantA)
	ep.SendIP(ep.MAC, networktest.TCP(probeIP, net.ParseIP(b1.IP), 40002, 80, 1, networktest.TCPSyn))
	ns.WaitDrops(t, tenantA, before, 10*time.Second)
	// A later SYN to a1 is answered; nothing from b1 arrives before it.
	ep.SendIP(ep.MAC, networktest.TCP(probeIP, net.ParseIP(a1.IP), 40003, 80, 1, networktest.TCPSyn))
	if _, err := ep.Expect(10*time.Second, func(p networktest.Packet) bool {
		if p.Src.Equal(net.ParseIP(b1.IP)) {
			t.Errorf("probe (tenant a) received from b1 (tenant b): %v", p)
		}
		return synAckFrom(a1.IP, 40003)(p)
	}); err != nil {
		t.Fatalf("no SYN-ACK from a1 after the dropped SYN to b1: %v", err)
	}

	ep.Close()
	if err := hostNet.Teardown(ctx, probe); err != nil {
		t.Fatal(err)
	}
	for _, s := range []microvm.Spec{a1, b1} {
		if err := d.Destroy(ctx, s.Name); err != nil {
			t.Fatal(err)
		}
		if procExists(pids[s.Name]) {
			t.Errorf("%s: qemu pid %d still exists after Destroy", s.Name, pids[s.Name])
		}
		if _, err := os.Stat(d.vms.StateDir(s.Name)); !os.IsNotExist(err) {
			t.Errorf("%s: state dir left after Destroy: %v", s.Name, err)
		}
	}
	if after := ns.State(t); after != baseline {
		t.Fatalf("Destroy left network state behind:\n--- before\n%s\n--- after\n%s", baseline, after)
	}
}
