package sim

import (
	"sync/atomic"
	"time"

	"github.com/lni/vfs"
)

// slowDisk is a node's Raft storage under the disk fault: the OS
// filesystem wrapped with vfs's error-injection hook (the one wrapper
// dragonboat accepts for its log and snapshots), which here injects no
// error but waits before every write and fsync while a delay is set.
type slowDisk struct {
	delay atomic.Int64 // nanoseconds; 0: a healthy disk
	fs    *vfs.ErrorFS
	// Slowed counts the operations that waited (for the report).
	slowed atomic.Int64
}

func newSlowDisk() *slowDisk {
	d := &slowDisk{}
	d.fs = vfs.Wrap(vfs.Default, d)
	return d
}

func (d *slowDisk) setDelay(x time.Duration) { d.delay.Store(int64(x)) }

// MaybeError is vfs.Injector: it waits, and never fails.
func (d *slowDisk) MaybeError(op vfs.Op) error {
	if op == vfs.OpRead {
		return nil
	}
	if x := time.Duration(d.delay.Load()); x > 0 {
		d.slowed.Add(1)
		time.Sleep(x)
	}
	return nil
}
