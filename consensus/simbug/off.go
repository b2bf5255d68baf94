//go:build !simbugs

package simbug

// Available reports whether this build can plant bugs (the simbugs tag).
const Available = false

// On reports whether b is planted; without the simbugs tag never.
func On(Bug) bool { return false }

// Plant is a no-op without the simbugs tag; callers check Available.
func Plant(Bug) {}

// WallClockMs is what the ApplyWallClock bug reads; never called without
// the simbugs tag.
func WallClockMs() int64 { return 0 }
