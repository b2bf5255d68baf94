package nix

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/blixard/blixard/microvm"
	"github.com/blixard/blixard/microvm/network"
	"github.com/blixard/blixard/microvm/network/networktest"
	"github.com/blixard/blixard/microvm/qemu"
	"github.com/blixard/blixard/microvm/vmproc"
)

// TestNetworkBoot boots one real guest through the nix driver in a
// network namespace of its own, the driver making the host network (TAP,
// /32 route, iptables chains). It proves that the flake's tap interface
// and ip= parameter reach a guest that configures eth0 from them (the
// guest says so on its console), that the namespace's host stack reaches
// the guest's HTTP server at its IP, and that Destroy leaves the namespace
// as it was.
func TestNetworkBoot(t *testing.T) {
	if testing.Short() {
		t.Skip("boots a kernel under TCG; skipped with -short")
	}
	needNix(t)
	kernel, initrd := testGuest(t)
	ns := networktest.New(t)
	dir, err := os.MkdirTemp("", "bxn")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	hostNet := networktest.Network{NS: ns, Host: &network.Host{LockPath: filepath.Join(dir, "net.lock")}}
	baseline := ns.State(t)

	// qemu must open the TAP inside the namespace: the stub runner execs
	// $BLIXARD_STUB_QEMU.
	wrapper := filepath.Join(dir, "qemu-in-netns")
	script := "#!/bin/sh\nexec ip netns exec " + ns.Name() + " qemu-system-x86_64 \"$@\"\n"
	if err := os.WriteFile(wrapper, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	opts := stubOptions(t, filepath.Join(dir, "vms"))
	opts.Network = hostNet
	opts.Supervisor = &qemu.ExecSupervisor{Env: []string{"BLIXARD_STUB_QEMU=" + wrapper}}
	d, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() }) // after the Destroy cleanup below
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()

	const gw = "10.0.0.1"
	spec := microvm.Spec{
		Name: "n1", ID: 2, Tenant: "a", Vcpus: 1, MemoryMB: 256, Kernel: kernel, Initrd: initrd,
		KernelParams: []string{"tsc_early_khz=" + strconv.FormatUint(qemu.HostTSCKHz(), 10)},
		IP:           "10.0.0.2", MAC: "02:0a:00:00:00:02", TAP: "vm-2", Gateway: gw,
	}
	t.Cleanup(func() { d.Destroy(context.Background(), spec.Name) })
	start := time.Now()
	if err := d.Prepare(ctx, spec); err != nil {
		t.Fatal(err)
	}
	in, err := d.Start(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	console := waitLog(t, d, spec.Name, "BLIXARD-GUEST-READY", 3*time.Minute)
	if want := "blixard-guest: eth0 " + spec.IP + "/32 gw " + gw; !strings.Contains(console, want) {
		t.Fatalf("guest network not configured from the flake's ip= (%q); console tail:\n%s", want, vmproc.LastLines([]byte(console), 20))
	}
	t.Logf("READY with network after %s", time.Since(start).Round(time.Millisecond))

	deadline := time.Now().Add(time.Minute)
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	for {
		body, err := httpGet(ns, spec.IP+":80")
		if err == nil && strings.HasPrefix(body, "blixard guest ") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no HTTP answer from the guest at %s: %v (%q)", spec.IP, err, body)
		}
		<-tick.C
	}

	if err := d.Destroy(ctx, spec.Name); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat("/proc/" + strconv.Itoa(in.PID)); err == nil {
		t.Errorf("qemu pid %d still exists after Destroy", in.PID)
	}
	if _, err := os.Stat(filepath.Join(opts.Dir, spec.Name)); !os.IsNotExist(err) {
		t.Errorf("state dir left after Destroy: %v", err)
	}
	if after := ns.State(t); after != baseline {
		t.Fatalf("Destroy left network state behind:\n--- before\n%s\n--- after\n%s", baseline, after)
	}
}

// httpGet fetches / from addr over a socket made inside ns and returns the
// response body.
func httpGet(ns *networktest.Netns, addr string) (string, error) {
	var body string
	err := ns.Do(func() error {
		c, err := net.DialTimeout("tcp", addr, 3*time.Second)
		if err != nil {
			return err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(3 * time.Second))
		if _, err := c.Write([]byte("GET / HTTP/1.0\r\nHost: guest\r\n\r\n")); err != nil {
			return err
		}
		resp, err := io.ReadAll(c)
		_, b, ok := strings.Cut(string(resp), "\r\n\r\n")
		if !ok {
			return fmt.Errorf("no HTTP response (%v): %q", err, resp)
		}
		body = b
		return nil
	})
	return body, err
}
