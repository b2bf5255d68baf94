// Package nix provides the microVM driver for microvm.nix hosts: each VM is
// a NixOS configuration generated from its spec and run by the runner that
// microvm.nix builds for it.
//
// Per VM, under Options.Dir/<name>/ (the VM's state dir):
//
//	flake/flake.nix, flake/flake.lock   the static flake from nix/vm-flake
//	flake/vm.json                       the spec as data (see nix/vm-flake/flake.nix)
//	current -> /nix/store/…-microvm-…   the runner: nix build of
//	                                    nixosConfigurations.<name>.config.microvm.declaredRunner
//	built.json                          what current was built from (Prepare is idempotent)
//	console.log                         build logs and the runner's output (the serial console)
//	qemu.pid, exit.json, <name>.sock    supervisor pidfile, last exit, hypervisor socket
//
// The flake lives in its own subdirectory because nix copies a path flake's
// whole directory into the store: the state dir holds sockets (which nix
// refuses to copy), console logs and volume images.
//
// No user value is ever part of Nix source: the spec travels only as JSON,
// read by builtins.fromJSON. VM names must be DNS labels (they are
// attribute names on nix's command line and parts of store path names);
// kernel parameters, labels and paths are free text.
//
// A spec's Flake (blixard vm create --flake REF[#MODULE]) names a guest
// flake whose nixosModules.MODULE (default "default") joins the VM's NixOS
// configuration; the cluster's values (hypervisor, vcpu, mem, interfaces,
// host name, socket) win over the guest's. The build then runs with
// --impure (builtins.getFlake of an unlocked reference). Spec.Kernel and
// Initrd are not used by microvm.nix, whose kernel comes from the NixOS
// configuration; they reach the flake as blixard.spec (the test stubs boot
// them).
//
// Start runs current/bin/microvm-run with the VM state dir as working
// directory under microvm/vmproc's Supervisor (ExecSupervisor by default: own
// process group, pidfile and start time for re-adoption, output appended to
// console.log), and returns once the hypervisor has created its control
// socket (<name>.sock: the flake sets microvm.socket to it). Stop runs
// current/bin/microvm-shutdown, again every 2 s while the VM lives (a
// power-button press during boot is lost), and kills the runner with
// SIGKILL once the grace period has passed; runners without
// microvm-shutdown get SIGTERM instead.
//
// Networking is the qemu driver's: Prepare makes the VM's host network
// (TAP with one queue per vcpu, /32 route, iptables chains) through
// microvm/network, Destroy removes it; Options.NoNetwork leaves the
// interface out of the VM, Options.ExternalNetwork uses TAPs made by
// someone else (microvm.nix's host module).
//
// Flake inputs are pinned by nix/vm-flake/flake.lock; Options.OverrideInputs
// replaces them per node (a local nixpkgs checkout, a microvm.nix fork, or
// the stub flakes in nix/testdata that the tests use, because this
// development machine has no nixpkgs).
//
// Tests (need nix: scripts/nix-deps.sh installs Debian's nix-bin; they
// skip, saying so, without it): golden nix eval of the mapped options for
// representative and hostile specs (go test -update rewrites
// testdata/*.golden), the actors/drivertest contract with stub inputs and
// a fake hypervisor (the test binary), and one real TCG boot of the guest
// from scripts/guest.sh through nix build, microvm-run and
// microvm-shutdown.
//
// Who may import it: cmd/ (wiring) and tests. It imports microvm,
// microvm/network, microvm/qemu (the supervisor), microvm/vmproc (the VM
// records) and nix (the embedded flake).
package nix
