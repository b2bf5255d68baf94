package nix

import (
	"context"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"

	"github.com/blixard/blixard/microvm"
	"github.com/blixard/blixard/microvm/network"
	"github.com/blixard/blixard/microvm/vmproc"
)

// recordingNetwork is a Network that records what it was asked to do.
type recordingNetwork struct {
	mu       sync.Mutex
	setup    []network.VM
	teardown []network.VM
}

func (n *recordingNetwork) Setup(_ context.Context, vm network.VM) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.setup = append(n.setup, vm)
	return nil
}

func (n *recordingNetwork) Teardown(_ context.Context, vm network.VM) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.teardown = append(n.teardown, vm)
	return nil
}

func TestNetworkSetupAndTeardown(t *testing.T) {
	needNix(t)
	ctx := context.Background()
	net := &recordingNetwork{}
	opts := stubOptions(t, t.TempDir())
	opts.Network = net
	d, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	spec := microvm.Spec{Name: "netvm", Tenant: "acme", Vcpus: 2, Kernel: "/k",
		IP: "10.0.0.5", MAC: "02:00:00:00:00:05", TAP: "vm-5", Gateway: "10.0.0.1"}
	if err := d.Prepare(ctx, spec); err != nil {
		t.Fatal(err)
	}
	if err := d.Prepare(ctx, spec); err != nil {
		t.Fatal(err)
	}
	want := network.VM{Name: "netvm", TAP: "vm-5", IP: "10.0.0.5", MAC: "02:00:00:00:00:05",
		Gateway: "10.0.0.1", Tenant: "acme", Queues: 2}
	if len(net.setup) != 2 || !reflect.DeepEqual(net.setup[0], want) {
		t.Errorf("Setup calls = %+v, want twice %+v (Prepare makes sure of the network every time)", net.setup, want)
	}
	// A new driver (agent restart) finds the network to tear down in vm.json.
	d2, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	defer d2.Close()
	if err := d2.Destroy(ctx, spec.Name); err != nil {
		t.Fatal(err)
	}
	if len(net.teardown) != 1 || !reflect.DeepEqual(net.teardown[0], want) {
		t.Errorf("Teardown calls = %+v, want %+v", net.teardown, want)
	}
	if _, err := os.Stat(filepath.Join(opts.Dir, spec.Name)); !os.IsNotExist(err) {
		t.Errorf("state dir left after Destroy: %v", err)
	}
}

func TestNoNetworkLeavesTheInterfaceOut(t *testing.T) {
	needNix(t)
	net := &recordingNetwork{}
	opts := stubOptions(t, t.TempDir())
	opts.Network = net
	opts.NoNetwork = true
	d, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	spec := microvm.Spec{Name: "nonet", Kernel: "/k", IP: "10.0.0.6", MAC: "02:00:00:00:00:06", TAP: "vm-6", Gateway: "10.0.0.1"}
	if err := d.Prepare(context.Background(), spec); err != nil {
		t.Fatal(err)
	}
	var f vmFile
	if err := vmproc.ReadJSON(filepath.Join(opts.Dir, "nonet", flakeDir, vmFileName), &f); err != nil {
		t.Fatal(err)
	}
	if f.Network != nil || len(net.setup) != 0 {
		t.Errorf("NoNetwork: vm.json network = %+v, Setup calls %d; want none", f.Network, len(net.setup))
	}
	run, err := os.ReadFile(filepath.Join(opts.Dir, "nonet", currentLink, runScript))
	if err != nil {
		t.Fatal(err)
	}
	if string(run) == "" || strings.Contains(string(run), "-netdev") {
		t.Errorf("NoNetwork runner has a network device:\n%s", run)
	}
}
