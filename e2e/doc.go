// Package e2e is blixard's multi-host acceptance suite: every test starts
// real hosts — Docker containers booted from the host image
// (scripts/hostimage.sh) with systemd as PID 1 — on a private Docker
// network, runs blixard in each as the packaged systemd service
// (packaging/systemd/blixard.service, flags in /etc/default/blixard), boots
// real microVMs (qemu under TCG, the test guest of scripts/guest.sh), drives
// the cluster with the blixard CLI as an operator would, injects faults
// with docker kill, docker start, docker network disconnect/connect, docker
// pause and systemctl restart, and checks ground truth on each host
// (systemctl, ip, iptables, ps, the guests' consoles).
//
// The tests carry the build tag e2e and run with `make e2e` (which builds
// the guest, the host image and the binary first). They need a Docker
// engine and root; without them every test skips with the reason.
//
// Who may import it: nobody. It uses blixard only through its binaries
// (DESIGN.md §2): the CLI built from cmd/blixard, run on the test machine
// and inside the hosts.
//
// Environment: BLIXARD_E2E_ACCEL=kvm|auto passes /dev/kvm to the hosts and
// boots guests with it (default tcg); BLIXARD_E2E_KEEP=1 leaves a failed
// test's containers running for a look.
//
// Containers and networks carry the label blixard.e2e=1: each test removes
// its own in t.Cleanup, and TestMain sweeps any a killed earlier run left.
//
// Measurements (create → READY, leader failover write gap, host loss → VMs
// running elsewhere) are logged as lines starting with "MEASURE", each with
// its breakdown; run with -v to see them.
package e2e
