package qemu

import (
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/blixard/blixard/microvm"
)

// routedTap creates, inside a new named network namespace, the host side of
// the routed network model for one VM: a persistent TAP (vnet_hdr, and
// multi-queue with one queue per vcpu when vcpus > 1) holding the gateway
// address as a /32, and a /32 route to the guest through it. It returns the
// namespace name; the namespace (and the TAP with it) is deleted when the
// test ends. It skips when the machine cannot do this (not root, no netns).
func routedTap(t *testing.T, tap, gateway, guest string, vcpus int) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to create a network namespace and a TAP")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("ip (iproute2) not installed; scripts/guest.sh installs it")
	}
	name := fmt.Sprintf("blxq%d", os.Getpid())
	errc := make(chan error, 1)
	// A dedicated, locked goroutine: should restoring the thread's namespace
	// fail, the thread dies with the goroutine instead of being reused.
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			errc <- err
			return
		}
		defer orig.Close()
		ns, err := netns.NewNamed(name) // the thread is now inside it
		if err != nil {
			errc <- fmt.Errorf("creating netns: %w", err)
			return
		}
		ns.Close()
		err = configureRoutedTap(tap, gateway, guest, vcpus)
		if rerr := netns.Set(orig); rerr == nil {
			runtime.UnlockOSThread()
		}
		errc <- err
	}()
	err := <-errc
	t.Cleanup(func() { netns.DeleteNamed(name) })
	if err != nil && strings.Contains(err.Error(), "creating netns") {
		t.Skipf("cannot create a network namespace here: %v", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	return name
}

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

func configureRoutedTap(tap, gateway, guest string, vcpus int) error {
	lo, err := netlink.LinkByName("lo")
	if err != nil {
		return err
	}
	if err := netlink.LinkSetUp(lo); err != nil {
		return err
	}
	link := &netlink.Tuntap{
		LinkAttrs: netlink.LinkAttrs{Name: tap},
		Mode:      netlink.TUNTAP_MODE_TAP,
		Flags:     netlink.TUNTAP_NO_PI | netlink.TUNTAP_VNET_HDR,
		Queues:    1,
	}
	if vcpus > 1 {
		link.Flags |= netlink.TUNTAP_MULTI_QUEUE
		link.Queues = vcpus
	}
	if err := netlink.LinkAdd(link); err != nil {
		return fmt.Errorf("creating tap %s: %w", tap, err)
	}
	for _, f := range link.Fds {
		f.Close() // the TAP persists; qemu attaches by name
	}
	if err := netlink.LinkSetUp(link); err != nil {
		return err
	}
	gw := &netlink.Addr{IPNet: &net.IPNet{IP: net.ParseIP(gateway), Mask: net.CIDRMask(32, 32)}}
	if err := netlink.AddrAdd(link, gw); err != nil {
		return fmt.Errorf("gateway address: %w", err)
	}
	route := &netlink.Route{
		LinkIndex: link.Attrs().Index,
		Dst:       &net.IPNet{IP: net.ParseIP(guest), Mask: net.CIDRMask(32, 32)},
		Scope:     netlink.SCOPE_LINK,
	}
	if err := netlink.RouteAdd(route); err != nil {
		return fmt.Errorf("route to the guest: %w", err)
	}
	return nil
}

// TestNetworkTCG boots the guest with two vcpus on a multi-queue TAP in a
// network namespace (the routed /32 model) and fetches a page from the
// guest's HTTP server through it. All traffic stays inside the namespace.
func TestNetworkTCG(t *testing.T) {
	kernel, initrd := guest(t)
	const tap, gateway, guestIP = "vm-t1", "10.0.0.1", "10.0.0.2"
	ns := routedTap(t, tap, gateway, guestIP, 2)
	dir := shortTempDir(t, "bn")
	// qemu must open the TAP inside the namespace.
	wrapper := filepath.Join(dir, "qemu-in-netns")
	script := "#!/bin/sh\nexec ip netns exec " + ns + " qemu-system-x86_64 \"$@\"\n"
	if err := os.WriteFile(wrapper, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	d, err := New(Options{Dir: filepath.Join(dir, "vms"), Binary: wrapper, Accel: AccelTCG})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	ctx := testCtx(t, 5*time.Minute)
	spec := microvm.Spec{
		Name: "net", Vcpus: 2, MemoryMB: 256, Kernel: kernel, Initrd: initrd,
		IP: guestIP, MAC: "02:0a:00:00:00:02", TAP: tap, Gateway: gateway,
	}
	if err := d.Prepare(ctx, spec); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Destroy(testCtx(t, time.Minute), spec.Name) })
	start := time.Now()
	if _, err := d.Start(ctx, spec); err != nil {
		t.Fatal(err)
	}
	console := waitConsole(t, d, spec.Name, "BLIXARD-GUEST-READY", 3*time.Minute)
	t.Logf("TCG boot with 2 vcpus and network: READY after %s", time.Since(start).Round(time.Millisecond))
	if !strings.Contains(console, "blixard-guest: eth0 10.0.0.2/32 gw 10.0.0.1") {
		t.Fatalf("guest network not configured; console:\n%s", lastLines([]byte(console), 20))
	}
	deadline := time.Now().Add(time.Minute)
	for {
		body, err := httpGetInNetns(ns, guestIP+":80", 3*time.Second)
		if err == nil && strings.HasPrefix(body, "blixard guest ") {
			t.Logf("guest answered over the TAP: %q", strings.TrimSpace(body))
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no HTTP answer from the guest at %s: %v (%q)", guestIP, err, body)
		}
		time.Sleep(500 * time.Millisecond)
	}
	if err := d.Stop(ctx, spec.Name, time.Minute); err != nil {
		t.Fatal(err)
	}
	if e, err := d.Wait(ctx, spec.Name); err != nil || !e.Clean {
		t.Fatalf("exit = %+v, %v", e, err)
	}
}
