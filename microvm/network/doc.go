// Package network provides the host side of a microVM's network on Linux:
// the routed model of microvm.nix, plus anti-spoofing and tenant isolation
// in iptables.
//
// For each VM, Setup makes, measuring before each step so that a second
// run changes nothing:
//
//   - a persistent TAP named VM.TAP (vnet_hdr; multi_queue with VM.Queues
//     queues when Queues > 1) owned by VM.Owner, up, with IPv6 disabled and
//     proxy ARP on (so a guest configured with a wider prefix still reaches
//     its neighbours through the host);
//   - the gateway address VM.Gateway as a /32 on the TAP (every VM's TAP
//     holds the same gateway address, as in microvm.nix's "routed network"
//     example) and the host route VM.IP/32 dev TAP: there is no bridge, each
//     guest has its own Ethernet segment;
//   - net.ipv4.ip_forward = 1 (left on by Teardown: other VMs and the host
//     may rely on it);
//   - iptables filter chains. Node level: BLIXARD-FWD, jumped to from the
//     top of FORWARD, and BLIXARD-IN, jumped to from the top of INPUT. Per
//     VM: BLIXARD-<tap>, which drops packets arriving from the TAP whose
//     source address is not VM.IP or whose source MAC is not VM.MAC; it is
//     jumped to from BLIXARD-FWD and BLIXARD-IN for "-i <tap>". Per tenant:
//     BLIXARD-T-<hash of the tenant>, jumped to from BLIXARD-FWD for
//     traffic forwarded from a tenant's TAP; it RETURNs for "-o <tap>" of
//     each TAP of the same tenant and DROPs whatever else leaves through a
//     VM TAP (Host.TAPPrefix, default "vm-"), so VMs of different tenants
//     cannot reach each other on this host.
//
// The chains only drop; they never accept. What passes them is decided by
// the host's own rules and policies (a host whose FORWARD policy is DROP
// must accept the VM TAPs' traffic itself).
//
// Teardown removes the TAP (and with it its address and route), the VM's
// chain, its jumps and its tenant rule; a tenant chain left with no member
// and a node-level chain left with no rule are removed too, together with
// their jump. After the last VM is torn down the filter table is as before
// the first Setup. Teardown is idempotent.
//
// Both work in the network namespace of the calling thread: a node agent
// run under "ip netns exec" confines everything to that namespace. Changes
// are serialised within the process and, through a lock file
// (Host.LockPath), across the agents sharing a host.
//
// Not covered: ARP is not filtered (the routed model confines a guest's
// ARP to its own TAP), IPv6 is switched off on the TAP rather than routed,
// and isolation between VMs on different hosts is not this package's job.
//
// Needs root (CAP_NET_ADMIN), the iptables command (nft or legacy variant;
// the rules use only the standard matches and the mac match) and
// /dev/net/tun.
// Tests use the networktest package to run everything inside a network
// namespace of their own.
//
// Who may import it: the microVM drivers (microvm/qemu, microvm/nix), cmd/
// and tests.
package network
