// Package qemu provides the microVM driver for hosts without Nix: it runs
// each VM as a qemu-system-x86_64 process on qemu's virtio-mmio "microvm"
// machine, with the command line that microvm.nix's qemu runner builds for
// the same VM.
//
// The parts, each usable alone:
//
//   - Machine.Args: the pure command-line builder (spec in, argv out; no
//     shell, and every value that reaches qemu's option parser escaped).
//   - QMP: a client of qemu's JSON control socket (capabilities,
//     system_powerdown, quit, query-status), used for graceful stops.
//   - ResolveAccel: kvm, tcg, or auto — a short KVM probe boot that falls
//     back to TCG (and says why) where KVM opens but guests hang, as under
//     nested virtualisation; the answer is cached per process.
//   - Supervisor: runs the qemu process (an alias of microvm/vmproc's).
//     ExecSupervisor starts it as a child in its own process group and
//     records pid and start time in a pidfile, so a restarted agent
//     re-adopts the exact process (never a recycled pid). A systemd
//     supervisor can replace it.
//   - Driver: the node agent's Driver contract (actors.Driver) on top,
//     its per-VM records (runs, exits, Stop, Wait, Logs) kept by a
//     microvm/vmproc Table:
//     state dir per VM under Options.Dir (spec.json, qemu.pid, console.log,
//     qmp.sock, exit.json, volume images), volumes created with truncate
//     and mkfs.ext4, graceful stop (ACPI powerdown, SIGKILL after grace),
//     re-adoption, exit classification from the console (poweroff is clean;
//     reboot and kernel panic are not, although qemu exits 0 for all three
//     because of -no-reboot and panic=-1).
//
// TCG guests get the host TSC frequency as tsc_early_khz: the microvm
// machine has no PIT, HPET or ACPI PM timer, and without kvmclock a kernel
// cannot calibrate its clocks and hangs early in boot. Under TCG an
// uncompressed kernel (vmlinux, booted through its PVH entry) reaches
// userspace several times faster than a bzImage, whose decompression runs
// emulated; scripts/guest.sh builds both for the test guest.
//
// Tests: golden argv files (go test -update rewrites testdata/*.golden), a
// fake qemu (the test binary re-executed) for the driver contract, and a
// few real TCG boots of the guest from scripts/guest.sh, skipped with the
// reason when qemu or the guest is missing.
//
// Network: a spec with a TAP gets a virtio-net device on it and the guest
// the routed configuration ip=<ip>::<gateway>:255.255.255.255:<name>:eth0:off.
// Prepare makes the host side through Options.Network (microvm/network by
// default: TAP, gateway /32, host route, anti-spoofing and tenant chains;
// needs root) and Destroy removes it. Options.ExternalNetwork attaches to
// TAPs made by something else and touches no host networking;
// Options.NoNetwork boots without a NIC.
//
// Who may import it: cmd/ (wiring) and tests. It imports microvm,
// microvm/network and microvm/vmproc.
package qemu
