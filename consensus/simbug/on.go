//go:build simbugs

package simbug

import (
	"sync/atomic"
	"time"
)

// Available reports whether this build can plant bugs (the simbugs tag).
const Available = true

var planted atomic.Uint32

// On reports whether b is planted.
func On(b Bug) bool { return Bug(planted.Load())&b != 0 }

// Plant sets the planted bugs to exactly bugs (0 clears them).
func Plant(bugs Bug) { planted.Store(uint32(bugs)) }

// WallClockMs is what the ApplyWallClock bug reads: the wall clock.
func WallClockMs() int64 { return time.Now().UnixMilli() }
