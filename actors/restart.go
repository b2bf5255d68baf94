package actors

import (
	"fmt"
	"time"

	"github.com/blixard/blixard/proto/blixardpb"
)

// Restart policy modes, as in blixardpb.RestartPolicy.mode.
const (
	RestartAlways    = "always"
	RestartOnFailure = "on-failure"
	RestartNever     = "never"
)

// Defaults of the restart policy and backoff.
const (
	DefaultMaxRestarts   = 5
	DefaultRestartWindow = 10 * time.Minute
	DefaultBackoffBase   = time.Second
	DefaultBackoffMax    = 60 * time.Second
	// backoffJitter is the fraction of a delay the jitter may take away:
	// a delay d becomes a value in (d*(1-backoffJitter), d].
	backoffJitter = 0.2
)

// restartPolicy is a VM's restart policy with defaults applied.
type restartPolicy struct {
	mode   string
	max    int
	window time.Duration
}

func policyOf(p *blixardpb.RestartPolicy) restartPolicy {
	rp := restartPolicy{mode: RestartAlways, max: DefaultMaxRestarts, window: DefaultRestartWindow}
	switch p.GetMode() {
	case RestartOnFailure, RestartNever:
		rp.mode = p.GetMode()
	}
	if p.GetMaxRestarts() > 0 {
		rp.max = int(p.GetMaxRestarts())
	}
	if p.GetWindowSeconds() > 0 {
		rp.window = time.Duration(p.GetWindowSeconds()) * time.Second
	}
	return rp
}

// restarts applies a policy to the exits of one VM generation.
type restarts struct {
	policy restartPolicy
	times  []time.Time // restarts decided within the window
	total  uint32      // restarts in this generation (reported)
}

// decision is what to do after an exit or a failed start.
type decision struct {
	restart bool
	delay   time.Duration
	// status and message to report: starting (restart pending), stopped
	// (clean exit, no restart) or failed.
	status  blixardpb.VmStatus
	message string
}

// decide records an exit (clean or not, with its reason) at now and
// returns what to do. r draws the jitter, in [0, 1).
func (rs *restarts) decide(now time.Time, clean bool, reason string, base, max time.Duration, r float64) decision {
	p := rs.policy
	if p.mode == RestartNever || (p.mode == RestartOnFailure && clean) {
		if clean {
			return decision{status: blixardpb.VmStatus_VM_STATUS_STOPPED, message: reason}
		}
		return decision{status: blixardpb.VmStatus_VM_STATUS_FAILED, message: fmt.Sprintf("%s (restart policy %s)", reason, p.mode)}
	}
	kept := rs.times[:0]
	for _, t := range rs.times {
		if now.Sub(t) < p.window {
			kept = append(kept, t)
		}
	}
	rs.times = kept
	if len(rs.times) >= p.max {
		return decision{
			status:  blixardpb.VmStatus_VM_STATUS_FAILED,
			message: fmt.Sprintf("restart limit reached (%d restarts within %s); last exit: %s", p.max, p.window, reason),
		}
	}
	delay := backoffDelay(len(rs.times), base, max, r)
	rs.times = append(rs.times, now)
	rs.total++
	return decision{
		restart: true,
		delay:   delay,
		status:  blixardpb.VmStatus_VM_STATUS_STARTING,
		message: fmt.Sprintf("%s; restart %d in %s", reason, rs.total, delay.Round(time.Millisecond)),
	}
}

// reset forgets the restart history (an explicit start).
func (rs *restarts) reset(p restartPolicy) {
	*rs = restarts{policy: p}
}

// backoffDelay returns the delay before restart attempt n (0-based):
// base·2ⁿ capped at max, minus up to backoffJitter of it drawn from r.
func backoffDelay(n int, base, max time.Duration, r float64) time.Duration {
	d := base
	for i := 0; i < n && d < max; i++ {
		d *= 2
	}
	if d > max {
		d = max
	}
	if r < 0 || r >= 1 {
		r = 0
	}
	return d - time.Duration(float64(d)*backoffJitter*r)
}
