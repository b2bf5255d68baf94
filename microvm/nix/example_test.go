package nix_test

import (
	"context"
	"log"
	"time"

	"github.com/blixard/blixard/microvm"
	"github.com/blixard/blixard/microvm/nix"
)

// A node agent's wiring: VM state under <data-dir>/vms, the pinned inputs
// replaced by a local nixpkgs checkout, and one VM's life.
func Example() {
	d, err := nix.New(nix.Options{
		Dir:            "/var/lib/blixard/vms",
		OverrideInputs: map[string]string{"nixpkgs": "path:/srv/nixpkgs"},
	})
	if err != nil {
		log.Fatal(err)
	}
	defer d.Close() // running VMs keep running; a new driver re-adopts them

	ctx := context.Background()
	spec := microvm.Spec{
		Name: "web", ID: 1, Tenant: "acme", Vcpus: 2, MemoryMB: 512,
		Flake: "github:acme/web-guest#web", // a NixOS module for the guest
		IP:    "10.0.0.2", MAC: "02:00:00:00:00:01", TAP: "vm-1", Gateway: "10.0.0.1",
	}
	// nix build of the runner (the build log goes to the VM's console log).
	if err := d.Prepare(ctx, spec); err != nil {
		log.Fatal(err)
	}
	if _, err := d.Start(ctx, spec); err != nil {
		log.Fatal(err)
	}
	// microvm-shutdown, then SIGKILL after 30 s.
	if err := d.Stop(ctx, spec.Name, 30*time.Second); err != nil {
		log.Fatal(err)
	}
	if err := d.Destroy(ctx, spec.Name); err != nil {
		log.Fatal(err)
	}
}
