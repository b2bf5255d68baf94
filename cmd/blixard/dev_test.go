package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

// `run --dev --data-dir D` keeps its state in D (so a restarted dev node
// re-adopts its VMs); plain --dev uses a throw-away dir.
func TestDevHonoursDataDir(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary and runs a node")
	}
	bin := buildBinary(t)
	dir := t.TempDir()
	p := freePorts(t, 3)
	cmd := exec.Command(bin, "run", "--dev", "--data-dir", dir,
		"--api-addr", fmt.Sprintf("127.0.0.1:%d", p[0]), "--raft-addr", fmt.Sprintf("127.0.0.1:%d", p[1]),
		"--gossip-addr", fmt.Sprintf("127.0.0.1:%d", p[2]))
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-done
	})
	waitUntil(t, time.Minute, "raft data in the given --data-dir", func() (bool, string) {
		_, err := os.Stat(filepath.Join(dir, "raft"))
		return err == nil, fmt.Sprint(err)
	})
	cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-done:
	case <-time.After(time.Minute):
		t.Fatal("dev node did not exit on SIGTERM")
	}
	if _, err := os.Stat(filepath.Join(dir, "raft")); err != nil {
		t.Fatalf("the dev node removed the given --data-dir: %v", err)
	}
}
