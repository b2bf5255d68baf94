package consensus

import (
	"strings"
	"testing"

	"github.com/lni/vfs"
)

// wrappedFS is the OS filesystem behind a type of our own, which
// dragonboat's NewNodeHost fails on without returning an error.
type wrappedFS struct{ vfs.FS }

// TestStartReplicaReportsNodeHostFailure is the regression test of a
// crash the simulator found: with such a custom FS, NewNodeHost returned
// (nil, nil) and StartReplica dereferenced the nil node host. It must
// return an error instead.
func TestStartReplicaReportsNodeHostFailure(t *testing.T) {
	verifyNoLeaks(t)
	r, err := StartReplica(ReplicaConfig{ReplicaID: 1, DataDir: t.TempDir(), RaftAddr: freeAddr(t), FS: wrappedFS{vfs.Default}})
	if err == nil {
		r.Close()
		t.Skip("this dragonboat accepts a wrapped OS filesystem; nothing to check")
	}
	if !strings.Contains(err.Error(), "starting raft node host") {
		t.Fatalf("error %q does not say the node host failed", err)
	}
}
