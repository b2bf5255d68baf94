package membership

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// roleFile, in a node's data dir, records the Raft role the leader gave
// the node when it joined ("voter" or "non-voting"): a restart must start
// the replica in the same role, and its presence means the join is done.
const roleFile = "raft-role"

// ReadRole returns the recorded role; ok is false when none is recorded.
func ReadRole(dataDir string) (role string, ok bool, err error) {
	b, err := os.ReadFile(filepath.Join(dataDir, roleFile))
	if os.IsNotExist(err) {
		return "", false, nil
	}
	if err != nil {
		return "", false, fmt.Errorf("reading raft role: %w", err)
	}
	return strings.TrimSpace(string(b)), true, nil
}

// WriteRole records role durably (write, sync, rename).
func WriteRole(dataDir, role string) error {
	tmp := filepath.Join(dataDir, roleFile+".tmp")
	f, err := os.Create(tmp)
	if err != nil {
		return fmt.Errorf("writing raft role: %w", err)
	}
	if _, err := f.WriteString(role + "\n"); err != nil {
		f.Close()
		return fmt.Errorf("writing raft role: %w", err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("writing raft role: %w", err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("writing raft role: %w", err)
	}
	if err := os.Rename(tmp, filepath.Join(dataDir, roleFile)); err != nil {
		return fmt.Errorf("writing raft role: %w", err)
	}
	return nil
}
