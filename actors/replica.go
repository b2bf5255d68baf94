package actors

import (
	"context"

	"github.com/blixard/blixard/consensus"
	"github.com/blixard/blixard/proto/blixardpb"
)

// Replica is what the actors need from the local consensus replica;
// *consensus.Replica satisfies it, and tests use an in-memory one.
type Replica interface {
	// Propose commits cmd through Raft and returns its result once it is
	// applied locally. The error is non-nil only when the outcome is
	// unknown or the cluster is unavailable (wraps consensus.ErrUnavailable);
	// typed failures come back in Result.Error.
	Propose(ctx context.Context, cmd *blixardpb.Command) (*blixardpb.Result, error)
	// ProposeBatch commits cmds together in one Raft entry and returns
	// their results in order; the error means what Propose's does, for
	// every command at once.
	ProposeBatch(ctx context.Context, cmds []*blixardpb.Command) ([]*blixardpb.Result, error)
	// Read runs fn against the local state: after a ReadIndex round trip
	// (linearizable) unless stale is set. fn must not retain the state.
	Read(ctx context.Context, stale bool, fn func(*consensus.State)) error
}
