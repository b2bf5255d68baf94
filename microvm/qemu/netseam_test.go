package qemu

import (
	"context"
	"errors"
	"reflect"
	"sync"
	"testing"
	"time"

	"github.com/blixard/blixard/microvm"
	"github.com/blixard/blixard/microvm/network"
)

// recordingNetwork is a Network that records its calls.
type recordingNetwork struct {
	mu    sync.Mutex
	calls []string
	vms   []network.VM
	fail  error
}

func (r *recordingNetwork) Setup(ctx context.Context, vm network.VM) error {
	return r.record("setup", vm)
}

func (r *recordingNetwork) Teardown(ctx context.Context, vm network.VM) error {
	return r.record("teardown", vm)
}

func (r *recordingNetwork) record(call string, vm network.VM) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.calls = append(r.calls, call+" "+vm.Name)
	r.vms = append(r.vms, vm)
	return r.fail
}

// TestNetworkSeam: Prepare makes the VM's host network from its spec (one
// TAP queue per vcpu), Destroy removes it before the state dir, a failed
// Teardown keeps the state dir for the retry; NoNetwork, ExternalNetwork
// and a spec without a TAP touch no host networking. No root needed.
func TestNetworkSeam(t *testing.T) {
	spec := microvm.Spec{
		Name: "web", Tenant: "shop", Vcpus: 3, MemoryMB: 128, Kernel: "/boot/vmlinux",
		IP: "10.0.0.5", MAC: "02:0a:00:00:00:05", TAP: "vm-5", Gateway: "10.0.0.1",
	}
	ctx := testCtx(t, time.Minute)
	rec := &recordingNetwork{}
	d, err := New(Options{Dir: t.TempDir(), Accel: AccelTCG, Network: rec})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	for range 2 {
		if err := d.Prepare(ctx, spec); err != nil {
			t.Fatal(err)
		}
	}
	want := network.VM{Name: "web", TAP: "vm-5", IP: "10.0.0.5", MAC: "02:0a:00:00:00:05", Gateway: "10.0.0.1", Tenant: "shop", Queues: 3}
	if len(rec.vms) != 2 || !reflect.DeepEqual(rec.vms[0], want) {
		t.Fatalf("Setup calls = %+v, want twice %+v", rec.vms, want)
	}

	rec.fail = errors.New("iptables exploded")
	if err := d.Destroy(ctx, "web"); err == nil {
		t.Fatal("Destroy succeeded although Teardown failed")
	}
	rec.fail = nil
	if err := d.Destroy(ctx, "web"); err != nil {
		t.Fatalf("Destroy retried: %v", err)
	}
	if err := d.Destroy(ctx, "web"); err != nil {
		t.Fatal(err)
	}
	noNIC := spec
	noNIC.Name, noNIC.TAP = "nonic", ""
	if err := d.Prepare(ctx, noNIC); err != nil {
		t.Fatal(err)
	}
	if err := d.Destroy(ctx, noNIC.Name); err != nil {
		t.Fatal(err)
	}
	if got := []string{"setup web", "setup web", "teardown web", "teardown web"}; !reflect.DeepEqual(rec.calls, got) {
		t.Errorf("calls = %q, want %q", rec.calls, got)
	}

	for name, opts := range map[string]Options{
		"NoNetwork":       {NoNetwork: true},
		"ExternalNetwork": {ExternalNetwork: true},
	} {
		rec := &recordingNetwork{}
		opts.Dir, opts.Accel, opts.Network = t.TempDir(), AccelTCG, rec
		d, err := New(opts)
		if err != nil {
			t.Fatal(err)
		}
		if err := d.Prepare(ctx, spec); err != nil {
			t.Fatal(err)
		}
		if err := d.Destroy(ctx, spec.Name); err != nil {
			t.Fatal(err)
		}
		noTAP := spec
		noTAP.TAP = ""
		if err := d.Prepare(ctx, noTAP); err != nil {
			t.Fatal(err)
		}
		d.Close()
		if len(rec.calls) != 0 {
			t.Errorf("%s: host network calls %q", name, rec.calls)
		}
	}
}
