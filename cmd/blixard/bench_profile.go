package main

import (
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"runtime/pprof"
	"syscall"
	"time"

	"github.com/blixard/blixard/cmd/blixard/internal/benchsuite"
)

// A benchmark hook: when BLIXARD_PROFILE_DIR is set, SIGUSR1 makes the
// process write a CPU profile of the next few seconds to
// $BLIXARD_PROFILE_DIR/cpu-<pid>.pprof (benchsuite.ProfileSeconds). The
// commit suite of `blixard bench` sets it on the nodes it starts and
// profiles the leader under load this way. Without the variable nothing
// is installed.
func init() {
	dir := os.Getenv(benchsuite.ProfileDirEnv)
	if dir == "" {
		return
	}
	ch := make(chan os.Signal, 1)
	signal.Notify(ch, syscall.SIGUSR1)
	go func() {
		for range ch {
			path := filepath.Join(dir, fmt.Sprintf("cpu-%d.pprof", os.Getpid()))
			tmp := path + ".tmp"
			f, err := os.Create(tmp)
			if err != nil {
				continue
			}
			if err := pprof.StartCPUProfile(f); err != nil {
				f.Close()
				continue
			}
			time.Sleep(benchsuite.ProfileSeconds * time.Second)
			pprof.StopCPUProfile()
			if f.Close() == nil {
				os.Rename(tmp, path)
			}
		}
	}()
}
