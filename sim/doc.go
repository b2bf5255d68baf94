// Package sim is blixard's simulation harness: N nodes in one process,
// each with its real dragonboat NodeHost (over a fault-injecting
// in-process transport plugged into dragonboat's transport hook), its real
// memberlist gossip member (over an in-process transport with the same
// fault model), its real actors (a node agent without a protoactor
// remote, reached through the api actor's local PID) and the fake driver,
// whose VM "processes" are all recorded with start and stop times.
//
// A run (Run) draws a fault schedule and a workload from its seed. During
// the fault phase concurrent clients create, start, stop, delete, migrate
// and read VMs through random nodes, retrying on other nodes with the same
// request id, while the schedule crashes and restarts nodes (host power
// loss: VMs die, data dirs survive), partitions the network
// (majority/minority, one-way, bridge), pauses nodes (their network
// freezes, then delivers what it held) and, for the whole phase, drops
// and delays messages. The liveness phase heals everything, restarts what
// is down and waits for convergence. Then the checkers judge the run:
//
//   - linearizable: the history of the VM registry against a porcupine
//     model of create/start/stop/delete/migrate/get (a check that times
//     out fails); a failing run gets porcupine's HTML visualisation;
//   - single-copy: no two runs of one VM overlap in time, on any nodes;
//   - durable: the last acknowledged write of each name, when nothing may
//     have followed it, is what the final state holds;
//   - converged: after the liveness phase every node is alive, every
//     replica's state snapshot hashes the same at the same index, no VM is
//     in a transitional status, and every VM desired running runs exactly
//     once on its node (nothing else runs);
//   - goroutine-leak (Config.CheckLeaks): nothing the run started is left.
//
// What the seed fixes and what it does not: the fault schedule (which
// fault, which nodes, when, for how long) and every client's sequence of
// operations (kind, VM name, first node, migrate target) are functions of
// the seed. Goroutine scheduling is not: message fates (loss, delay) are
// drawn from a seeded generator in the order the goroutines ask, Raft
// elections and timings differ, so responses — and with them the history
// — vary between replays. A failing seed is replayed with `blixard sim
// --seed S` (same flags); a bug that depends on a rare interleaving may
// need `--runs K` at that seed to show again, and each failure writes its
// report and history next to the porcupine visualisation.
//
// Planted bugs (consensus/simbug, the simbugs build tag) prove that the
// checkers can fail: see planted_test.go. docs/sim.md has the operator's
// view and the bugs the harness found.
//
// Who may import it: cmd/ only.
package sim
