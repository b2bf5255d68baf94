package consensus

import (
	"os"
	"path/filepath"
)

// HasData reports whether dataDir holds a replica's Raft data (the node
// host directory StartReplica creates), i.e. whether a start on it is a
// restart. Callers that must decide between joining and restarting before
// starting the replica use it.
func HasData(dataDir string) bool {
	st, err := os.Stat(filepath.Join(dataDir, "raft"))
	return err == nil && st.IsDir()
}
