// Package client is the Go client of a blixard cluster. It speaks the API
// messages of proto/blixardpb to the "api" actor of any node over
// protoactor remote; the blixard CLI is built on it.
//
// Who may import it: anyone. It imports proto/ (and protoactor-go) only.
//
// A Client runs its own small actor system whose remote listens on a local
// address the nodes can reach: node replies are delivered by dialling the
// sender's advertised address. By default the client binds 127.0.0.1 when
// the first node address is a loopback address, and otherwise the address
// of the local interface that routes to it (WithBindAddr overrides this).
// Node addresses must be given exactly as the nodes advertise them
// (their --api-addr); "localhost" is rewritten to 127.0.0.1.
//
//	c, err := client.Dial(ctx, []string{"127.0.0.1:7001", "127.0.0.1:7011"})
//	if err != nil { ... }
//	defer c.Close()
//	vm, err := c.CreateVM(ctx, &blixardpb.VmSpec{Name: "web", Vcpus: 1, MemoryMb: 256}, false)
//	if errors.Is(err, client.ErrAlreadyExists) { ... }
//	vm, err = c.WaitFor(ctx, "web", blixardpb.VmStatus_VM_STATUS_RUNNING, func(r *blixardpb.VmRecord) { ... })
//
// Failover and idempotency: every write gets a random request id when the
// method is called, and the same id is sent on every retry, so a write is
// applied at most once even when a retry reaches another node. A request
// is retried on the next address when a node answers UNAVAILABLE (no
// quorum, no leader, shutting down) or does not answer within the attempt
// timeout; retries continue, with backoff, until ctx is done or the retry
// window (WithRetryWindow) has passed. Typed failures (NOT_FOUND,
// ALREADY_EXISTS, ...) are returned at once as *Error values that match
// the sentinels of this package with errors.Is. A node the client has not
// yet heard from is probed first, once per call: a TCP dial, then a stale
// cluster-status request that must be answered within 2 s, so that a
// paused or wedged node (whose kernel still accepts connections) costs 2 s
// rather than the attempt timeout.
//
// Write batching: VM writes (create, start, stop, delete, migrate) that
// callers make while an earlier write to the same node is still
// outstanding are sent together, as one VmWriteBatchRequest, when it is
// answered; the node commits them in one Raft entry. A write made when
// nothing is outstanding goes at once, alone. Each write in a batch keeps
// its own request id, result and retries, so batching changes neither
// what a call returns nor the at-most-once guarantee; it only lets many
// concurrent callers share Raft rounds. WithWriteBatching(0) turns it off.
//
// Reads are linearizable unless the client was dialled WithStaleReads.
package client
