package qemu_test

import (
	"context"
	"fmt"
	"time"

	"github.com/blixard/blixard/microvm"
	"github.com/blixard/blixard/microvm/qemu"
)

// How the node agent wires the driver (cmd/blixard does this for
// --driver qemu): one driver per host, state under <data-dir>/vms.
func Example() {
	accel, err := qemu.ParseAccel("auto") // --accel auto|kvm|tcg
	if err != nil {
		panic(err)
	}
	d, err := qemu.New(qemu.Options{
		Dir:   "/var/lib/blixard/vms",
		Accel: accel,
		// Without root, boot without NICs. As root, leave it false: Prepare
		// makes each VM's TAP, route and iptables chains, Destroy removes them.
		NoNetwork: true,
	})
	if err != nil {
		panic(err)
	}
	defer d.Close()

	ctx := context.Background()
	spec := microvm.Spec{
		Name: "web", Vcpus: 1, MemoryMB: 256,
		// build/guest/vmlinux boots fastest (PVH, nothing to decompress).
		Kernel: "build/guest/vmlinux", Initrd: "build/guest/initrd.img",
	}
	if err := d.Prepare(ctx, spec); err != nil {
		panic(err)
	}
	in, err := d.Start(ctx, spec)
	if err != nil {
		panic(err)
	}
	fmt.Println("running as pid", in.PID)
	// ACPI powerdown, SIGKILL after 30 s.
	if err := d.Stop(ctx, spec.Name, 30*time.Second); err != nil {
		panic(err)
	}
	exit, _ := d.Wait(ctx, spec.Name)
	fmt.Println(exit.Reason)
}
