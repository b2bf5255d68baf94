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
package consensus
