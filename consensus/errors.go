package consensus

import "errors"

// ErrUnavailable means the outcome of a proposal or read is unknown because
// the cluster has no quorum, no leader, or this replica is closing. It is
// safe to retry with the same request id.
var ErrUnavailable = errors.New("cluster unavailable (no quorum or no leader)")

// ErrReplicaRemoved means a membership change named a replica id that was
// removed from the Raft shard before; removed ids can never come back.
var ErrReplicaRemoved = errors.New("replica id was removed from the cluster and cannot be reused")
