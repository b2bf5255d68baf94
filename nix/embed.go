// Package nixfiles holds blixard's Nix sources and gives them to Go code.
//
// vm-flake/ is the static flake of one microVM: flake.nix maps a vm.json
// (the VM's spec, as data) to microvm.nix options and flake.lock pins its
// nixpkgs and microvm inputs. The nix driver (microvm/nix) copies both
// files next to each VM's vm.json and builds the runner from them.
// module.nix is the NixOS module services.blixard; it yields the same
// systemd unit as packaging/systemd/blixard.service (module_test.go
// evaluates it and compares the two).
// testdata/ holds stub nixpkgs and microvm flakes, and a stub NixOS module
// system (stub-nixos), for tests on machines without nixpkgs.
//
// Who may import it: microvm/nix and tests. It imports only the standard
// library.
package nixfiles

import (
	"embed"
	"io/fs"
)

//go:embed vm-flake/flake.nix vm-flake/flake.lock
var files embed.FS

// VMFlake returns the files of the static VM flake (flake.nix and
// flake.lock) at the root of the returned file system.
func VMFlake() fs.FS {
	sub, err := fs.Sub(files, "vm-flake")
	if err != nil {
		panic(err) // the embedded tree always has vm-flake
	}
	return sub
}
