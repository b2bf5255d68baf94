// Package consensus provides the replicated cluster state of blixard: the
// pure, deterministic state machine (State: VM and node records, placement,
// IPAM, idempotent request table, snapshot codec) and its wiring into
// dragonboat v4 (Replica: one NodeHost and one shard per process).
//
// Who may import it: actors/, sim/ and cmd/. It imports proto/ only
// (plus dragonboat).
//
// The contract of State: Apply is a function of (state, index, command)
// alone. It reads no clock (time arrives as Command.time_unix_ms), draws no
// randomness, performs no I/O and never lets map iteration order reach its
// output. Two States fed the same log save byte-identical snapshots.
// Invalid commands yield a typed Result error and leave the state unchanged
// except for the applied index.
//
// The model, in short (the scenario scripts in testdata/*.txt tell it as
// stories):
//
//   - Placement happens in apply: alive and schedulable nodes with the VM's
//     vcpus and memory free (VMs whose desired state is running count;
//     stopped VMs keep their node but hold nothing), scored by the cluster's
//     policy — spread (most free memory, the default) or binpack (least free
//     memory that fits) — ties to the lowest node id.
//   - Every change of a VM's desired state, placement or spec bumps its
//     generation and yields an Effect; so does a delete. ReportVmStatus is
//     accepted only from the VM's node and for its current generation.
//   - A node that goes down or leaves has its running VMs re-placed; those
//     with restart mode "never" become lost instead, and those that fit
//     nowhere wait unplaced (node 0, status pending, a message saying why)
//     until a command adds room, then are placed lowest id first.
//   - IPAM hands out the lowest free address of the subnet (default
//     10.0.0.0/24, set once by InitCluster). The network address, the
//     broadcast address and the first host address — the host-side gateway
//     of the routed network model — are never given to VMs. The MAC is
//     02:00 followed by the address's four octets; the TAP is
//     vm-<base36 id>.
//   - Commands with a request id are remembered (the last MaxRequests
//     ones, failures included, evicted oldest first): a retry returns the first
//     result and changes nothing.
package consensus
