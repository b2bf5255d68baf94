package actors

import (
	"math/rand/v2"
	"sort"
	"sync"
	"time"
)

// Clock is the time source of the VM actors and the status reporter:
// restart windows, backoff delays and report retries are measured on it.
// Tests and the simulator pass a ManualClock. The shape matches
// fake.Clock, so one clock can drive both the actors and the fake driver.
type Clock interface {
	Now() time.Time
	// AfterFunc arranges for f to be called once d has passed; stop
	// cancels it and reports whether it did so before f was called. f must
	// not block: the actors only send a message from it.
	AfterFunc(d time.Duration, f func()) (stop func() bool)
}

// SystemClock returns the wall clock.
func SystemClock() Clock { return systemClock{} }

type systemClock struct{}

func (systemClock) Now() time.Time { return time.Now() }
func (systemClock) AfterFunc(d time.Duration, f func()) func() bool {
	return time.AfterFunc(d, f).Stop
}

// Rand is the random source of backoff jitter. Float64 returns a number
// in [0, 1). The supervisor serialises calls, so it need not be safe for
// concurrent use.
type Rand interface {
	Float64() float64
}

// lockedRand makes a Rand safe to share between VM actors.
type lockedRand struct {
	mu sync.Mutex
	r  Rand
}

func (l *lockedRand) Float64() float64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.r.Float64()
}

func newLockedRand(r Rand) *lockedRand {
	if r == nil {
		r = rand.New(rand.NewPCG(rand.Uint64(), rand.Uint64()))
	}
	return &lockedRand{r: r}
}

// ManualClock is a Clock that moves only when told to: Advance runs the
// callbacks that fall due, in deadline order, on the caller's goroutine.
// It records every delay it was asked for, so tests can assert backoff
// schedules. Safe for concurrent use.
type ManualClock struct {
	mu      sync.Mutex
	now     time.Time
	seq     int
	timers  []*manualTimer
	delays  []time.Duration
	changed chan struct{}
}

type manualTimer struct {
	at  time.Time
	seq int
	f   func()
}

// NewManualClock returns a manual clock reading start.
func NewManualClock(start time.Time) *ManualClock {
	return &ManualClock{now: start, changed: make(chan struct{})}
}

// Now returns the clock's current time.
func (c *ManualClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

// AfterFunc schedules f at Now()+d.
func (c *ManualClock) AfterFunc(d time.Duration, f func()) func() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.seq++
	t := &manualTimer{at: c.now.Add(d), seq: c.seq, f: f}
	c.timers = append(c.timers, t)
	c.delays = append(c.delays, d)
	c.notifyLocked()
	return func() bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		for i, x := range c.timers {
			if x == t {
				c.timers = append(c.timers[:i], c.timers[i+1:]...)
				c.notifyLocked()
				return true
			}
		}
		return false
	}
}

func (c *ManualClock) notifyLocked() {
	close(c.changed)
	c.changed = make(chan struct{})
}

// Advance moves the clock forward by d, running every callback due by the
// new time in deadline order, each with the clock reading its deadline.
func (c *ManualClock) Advance(d time.Duration) {
	c.mu.Lock()
	end := c.now.Add(d)
	for {
		sort.Slice(c.timers, func(i, j int) bool {
			if !c.timers[i].at.Equal(c.timers[j].at) {
				return c.timers[i].at.Before(c.timers[j].at)
			}
			return c.timers[i].seq < c.timers[j].seq
		})
		if len(c.timers) == 0 || c.timers[0].at.After(end) {
			break
		}
		t := c.timers[0]
		c.timers = c.timers[1:]
		if t.at.After(c.now) {
			c.now = t.at
		}
		c.notifyLocked()
		c.mu.Unlock()
		t.f()
		c.mu.Lock()
	}
	c.now = end
	c.notifyLocked()
	c.mu.Unlock()
}

// Pending returns the delays from now to each scheduled callback, soonest
// first.
func (c *ManualClock) Pending() []time.Duration {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]time.Duration, 0, len(c.timers))
	for _, t := range c.timers {
		out = append(out, t.at.Sub(c.now))
	}
	sort.Slice(out, func(i, j int) bool { return out[i] < out[j] })
	return out
}

// Requested returns every delay passed to AfterFunc so far, in call order.
func (c *ManualClock) Requested() []time.Duration {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]time.Duration(nil), c.delays...)
}

// Changed returns a channel closed the next time a timer is scheduled,
// cancelled or fired, or the clock moves: wait on it instead of polling.
func (c *ManualClock) Changed() <-chan struct{} {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.changed
}
