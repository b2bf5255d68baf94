// Package benchsuite is the harness behind `blixard bench`: it runs the
// commit, boot, failover and scale suites of issue 8 side by side with
// what a user would otherwise pick (raw dragonboat, etcd, qemu run by
// hand), and renders one markdown table per suite.
//
// Each suite has a quick mode (seconds, for CI; it measures the same
// things with fewer samples) and a full mode. Suites start what they need
// themselves: `blixard run` processes (the binary given in Config.Bin),
// etcd members, qemu. Where the machine lacks a tool (etcd, qemu, the
// test guest), the suite says so in its table instead of failing.
//
// Only cmd/blixard imports this package. Its own Go benchmarks
// (bench_test.go) run the scale suite's measurements (MeasureState,
// SpawnVMActors) under `go test -bench` for profiling; the in-process
// Raft and state-machine micro-benchmarks stay in consensus/, where they
// use the package's internals.
package benchsuite
