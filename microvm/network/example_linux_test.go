package network_test

import (
	"context"
	"log"

	"github.com/blixard/blixard/microvm/network"
)

// A driver's Prepare and Destroy (microvm/qemu does this): the values come
// from the VM's spec, which the cluster's IPAM filled in.
func Example() {
	h := &network.Host{} // TAPs named vm-*, lock in /run
	vm := network.VM{
		Name: "web", TAP: "vm-1", IP: "10.0.0.2", MAC: "02:00:0a:00:00:02",
		Gateway: "10.0.0.1", Tenant: "shop", Queues: 2,
	}
	ctx := context.Background()
	if err := h.Setup(ctx, vm); err != nil { // idempotent
		log.Fatal(err)
	}
	// ... qemu -netdev tap,ifname=vm-1,queues=2 ... runs the guest with
	// ip=10.0.0.2::10.0.0.1:255.255.255.255::eth0:off
	if err := h.Teardown(ctx, vm); err != nil { // idempotent
		log.Fatal(err)
	}
}
