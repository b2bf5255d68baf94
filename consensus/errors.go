package consensus

import "errors"

// ErrUnavailable means the outcome of a proposal or read is unknown because
// the cluster has no quorum, no leader, or this replica is closing. It is
// safe to retry with the same request id.
var ErrUnavailable = errors.New("cluster unavailable (no quorum or no leader)")
