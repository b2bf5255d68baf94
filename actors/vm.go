package actors

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/asynkron/protoactor-go/actor"

	"github.com/blixard/blixard/microvm"
	"github.com/blixard/blixard/proto/blixardpb"
)

// vmEnv is what every VM actor of one supervisor shares.
type vmEnv struct {
	driver    Driver
	clock     Clock
	rand      Rand
	log       *slog.Logger
	base, max time.Duration
	grace     time.Duration
	opTimeout time.Duration
	gateway   string
}

// vmActor owns one VM on this host: prepare → start → watch → stop or
// destroy, its restart policy, and re-adoption through Driver.Recover.
//
// Driver calls never run in Receive: each runs in a goroutine (one at a
// time) that sends its outcome back as an opDone message, and a watcher
// goroutine blocked in Driver.Wait sends the instance's exit as vmExited.
// Both are tied to the incarnation's context, cancelled and awaited when
// the actor stops or is restarted, so no goroutine outlives the actor.
//
// The same vmActor value serves every incarnation (the producer returns
// it), so the record and the restart history survive a supervisor
// restart after a panic; the per-incarnation fields are reset in started.
type vmActor struct {
	env  *vmEnv
	name string

	// Kept across incarnations.
	rec      *blixardpb.VmRecord
	spec     microvm.Spec
	remove   bool
	restarts restarts
	// down is set when the VM stays down until a new generation: the
	// restart policy gave up (failed) or declined (clean exit).
	down       *decision
	lastStatus vmStatus

	// Per incarnation.
	self       *actor.PID
	parent     *actor.PID
	system     *actor.ActorSystem
	ctx        context.Context
	cancel     context.CancelFunc
	wg         sync.WaitGroup
	opBusy     bool
	opSeq      int
	recovered  bool
	running    bool
	epoch      int // numbers adopted/started instances; stale exits are ignored
	timerStop  func() bool
	timerSeq   int
	waitRetry  bool // a retry timer (not a restart) is pending
	retries    int  // consecutive driver errors, for the retry delay
	removeDone bool
}

type opKind int

const (
	opRecover opKind = iota
	opStart
	opStop
	opRemove
)

func (k opKind) String() string {
	return [...]string{"recover", "start", "stop", "remove"}[k]
}

type opDone struct {
	seq     int
	kind    opKind
	inst    microvm.Instance
	running bool
	err     error
}

type vmExited struct {
	epoch int
	exit  microvm.Exit
	err   error
}

type vmTimer struct{ seq int }

func newVMActor(env *vmEnv, rec *blixardpb.VmRecord, remove bool) *vmActor {
	a := &vmActor{env: env, name: rec.GetSpec().GetName()}
	a.setRecord(rec, remove)
	a.restarts.reset(policyOf(rec.GetSpec().GetRestart()))
	a.restarts.total = rec.GetRestarts()
	a.lastStatus = a.recordedStatus()
	if rec.GetDesired() == blixardpb.DesiredState_DESIRED_RUNNING {
		switch st := rec.GetStatus(); st {
		case blixardpb.VmStatus_VM_STATUS_FAILED, blixardpb.VmStatus_VM_STATUS_STOPPED:
			// An earlier agent's restart policy gave up on (or declined)
			// this generation: a new agent keeps it down unless it runs.
			a.down = &decision{status: st, message: rec.GetMessage()}
		}
	}
	return a
}

// recordedStatus is what the cluster state already says about the VM, so
// an observation that matches it (a re-adopted VM still running after an
// agent restart) is not proposed again.
func (a *vmActor) recordedStatus() vmStatus {
	return vmStatus{
		name:       a.name,
		id:         a.rec.GetId(),
		generation: a.rec.GetGeneration(),
		desired:    a.rec.GetDesired(),
		status:     a.rec.GetStatus(),
		restarts:   a.rec.GetRestarts(),
		message:    a.rec.GetMessage(),
		removing:   a.remove,
	}
}

func vmProps(a *vmActor) *actor.Props {
	return actor.PropsFromProducer(func() actor.Actor { return a })
}

func (a *vmActor) setRecord(rec *blixardpb.VmRecord, remove bool) {
	a.rec = rec
	a.remove = a.remove || remove
	a.spec = specOf(rec, a.env.gateway)
}

func (a *vmActor) Receive(c actor.Context) {
	switch m := c.Message().(type) {
	case *actor.Started:
		a.started(c)
	case *actor.Restarting:
		a.teardown()
	case *actor.Stopping:
		a.teardown()
	case *vmUpdate:
		a.update(c, m)
	case *opDone:
		a.opDone(c, m)
	case *vmExited:
		a.exited(c, m)
	case *vmTimer:
		if m.seq == a.timerSeq && a.timerStop != nil {
			a.timerStop = nil
			a.waitRetry = false
			a.converge(c)
		}
	case *vmPanic:
		panic(fmt.Sprintf("vm %s: injected panic", a.name))
	}
}

func (a *vmActor) started(c actor.Context) {
	a.self, a.parent, a.system = c.Self(), c.Parent(), c.ActorSystem()
	a.ctx, a.cancel = context.WithCancel(context.Background())
	a.opBusy, a.recovered, a.running, a.timerStop, a.waitRetry = false, false, false, nil, false
	if a.remove {
		a.recovered = true // nothing to adopt: go straight to stop and destroy
	}
	a.converge(c)
}

// teardown cancels and awaits the incarnation's goroutines. Running VMs
// keep running: a new incarnation or agent re-adopts them.
func (a *vmActor) teardown() {
	if a.cancel == nil {
		return
	}
	a.cancel()
	a.stopTimer()
	a.wg.Wait()
	a.cancel = nil
}

func (a *vmActor) stopTimer() {
	if a.timerStop != nil {
		a.timerStop()
		a.timerStop = nil
	}
	a.timerSeq++
	a.waitRetry = false
}

func (a *vmActor) schedule(d time.Duration, retry bool) {
	a.stopTimer()
	a.timerSeq++
	seq, self, sys := a.timerSeq, a.self, a.system
	a.waitRetry = retry
	a.timerStop = a.env.clock.AfterFunc(d, func() { sys.Root.Send(self, &vmTimer{seq: seq}) })
}

// retryLater schedules another attempt after a driver error.
func (a *vmActor) retryLater(kind opKind, err error) {
	d := backoffDelay(a.retries, a.env.base, a.env.max, a.env.rand.Float64())
	a.retries++
	a.env.log.Warn("vm driver call failed; retrying", "vm", a.name, "op", kind.String(), "in", d, "err", err)
	a.schedule(d, true)
}

func (a *vmActor) update(c actor.Context, m *vmUpdate) {
	rec := m.rec
	if rec == nil {
		rec = a.rec // reconciliation found the VM no longer placed here
	}
	newer := rec.GetGeneration() > a.rec.GetGeneration()
	if !newer && !m.remove {
		return
	}
	wasRemove := a.remove
	a.setRecord(rec, m.remove)
	if a.remove && !wasRemove {
		a.stopTimer()
		a.recovered = true
		a.report(c, a.lastStatus.status, "removing")
	}
	if newer && !a.remove {
		// A new generation: an explicit start (or stop) resets the restart
		// history and whatever kept the VM down.
		a.restarts.reset(policyOf(rec.GetSpec().GetRestart()))
		a.down = nil
		a.lastStatus = a.recordedStatus()
		if a.timerStop != nil && !a.waitRetry {
			a.stopTimer() // a pending restart: act now instead
		}
	}
	a.converge(c)
}

// converge starts the next driver operation towards the desired state,
// unless one is in flight or a timer is pending.
func (a *vmActor) converge(c actor.Context) {
	if a.opBusy || a.cancel == nil {
		return
	}
	if a.remove {
		if a.removeDone {
			return
		}
		if a.timerStop == nil {
			a.startOp(opRemove)
		}
		return
	}
	if a.timerStop != nil && a.waitRetry {
		return
	}
	if !a.recovered {
		a.startOp(opRecover)
		return
	}
	if wantsRunning(a.rec) {
		switch {
		case a.running:
			a.report(c, blixardpb.VmStatus_VM_STATUS_RUNNING, "")
		case a.down != nil:
			a.report(c, a.down.status, a.down.message)
		case a.timerStop != nil:
			// a restart is pending
		default:
			a.report(c, blixardpb.VmStatus_VM_STATUS_STARTING, a.lastStartingMessage())
			a.startOp(opStart)
		}
		return
	}
	a.stopTimer()
	if a.running {
		a.report(c, blixardpb.VmStatus_VM_STATUS_STOPPING, "")
		a.startOp(opStop)
		return
	}
	msg := ""
	if a.down != nil && a.down.status == blixardpb.VmStatus_VM_STATUS_STOPPED {
		msg = a.down.message
	}
	a.report(c, blixardpb.VmStatus_VM_STATUS_STOPPED, msg)
}

// wantsRunning reports whether rec asks this node to run the VM: it is to
// run and no migration is handing it over to another node (the hand-over
// waits for this node to report it stopped).
func wantsRunning(rec *blixardpb.VmRecord) bool {
	return rec.GetDesired() == blixardpb.DesiredState_DESIRED_RUNNING && rec.GetMigrateTo() == 0
}

// lastStartingMessage keeps the restart message while a restart boots.
func (a *vmActor) lastStartingMessage() string {
	if a.lastStatus.status == blixardpb.VmStatus_VM_STATUS_STARTING && a.lastStatus.generation == a.rec.GetGeneration() {
		return a.lastStatus.message
	}
	return ""
}

func (a *vmActor) startOp(kind opKind) {
	a.opBusy = true
	a.opSeq++
	seq, spec, env, self, sys := a.opSeq, a.spec, a.env, a.self, a.system
	ctx, cancel := context.WithTimeout(a.ctx, env.opTimeout)
	a.wg.Add(1)
	go func() {
		defer a.wg.Done()
		defer cancel()
		d := &opDone{seq: seq, kind: kind}
		switch kind {
		case opRecover:
			d.inst, d.running, d.err = env.driver.Recover(ctx, spec)
		case opStart:
			if d.err = env.driver.Prepare(ctx, spec); d.err == nil {
				d.inst, d.err = env.driver.Start(ctx, spec)
				d.running = d.err == nil
			}
		case opStop:
			d.err = env.driver.Stop(ctx, spec.Name, env.grace)
		case opRemove:
			if d.err = env.driver.Stop(ctx, spec.Name, env.grace); d.err == nil {
				d.err = env.driver.Destroy(ctx, spec.Name)
			}
		}
		sys.Root.Send(self, d)
	}()
}

func (a *vmActor) opDone(c actor.Context, d *opDone) {
	if d.seq != a.opSeq || !a.opBusy {
		return
	}
	a.opBusy = false
	if a.ctx.Err() != nil {
		return
	}
	switch d.kind {
	case opRecover:
		if d.err != nil {
			a.retryLater(d.kind, d.err)
			return
		}
		a.retries = 0
		a.recovered = true
		if d.running {
			a.env.log.Info("vm re-adopted", "vm", a.name, "started_at", d.inst.StartedAt)
			a.watch()
		}
	case opStart:
		switch {
		case d.err == nil:
			a.retries = 0
			a.watch()
			a.env.log.Info("vm started", "vm", a.name, "generation", a.rec.GetGeneration())
		case errors.Is(d.err, microvm.ErrAlreadyRunning):
			// Something runs that we did not know of: adopt it, never a second copy.
			a.recovered = false
		case errors.Is(d.err, microvm.ErrInvalidSpec):
			a.down = &decision{status: blixardpb.VmStatus_VM_STATUS_FAILED, message: "cannot run: " + d.err.Error()}
		default:
			a.afterExit(c, false, "start failed: "+d.err.Error())
			return
		}
	case opStop:
		if d.err != nil {
			a.retryLater(d.kind, d.err)
			return
		}
		a.retries = 0
		a.running = false
		a.epoch++ // the watcher's exit for this instance is no news
		a.env.log.Info("vm stopped", "vm", a.name)
	case opRemove:
		if d.err != nil {
			a.retryLater(d.kind, d.err)
			return
		}
		a.running = false
		a.epoch++
		a.removeDone = true
		a.env.log.Info("vm removed from this node", "vm", a.name, "deleted_or_moved_to", a.rec.GetNodeId())
		c.Stop(c.Self())
		return
	}
	a.converge(c)
}

// watch marks a new instance running and starts its watcher goroutine.
func (a *vmActor) watch() {
	a.running = true
	a.epoch++
	epoch, name, drv, self, sys, ctx := a.epoch, a.name, a.env.driver, a.self, a.system, a.ctx
	a.wg.Add(1)
	go func() {
		defer a.wg.Done()
		e, err := drv.Wait(ctx, name)
		if ctx.Err() != nil {
			return
		}
		sys.Root.Send(self, &vmExited{epoch: epoch, exit: e, err: err})
	}()
}

func (a *vmActor) exited(c actor.Context, m *vmExited) {
	if m.epoch != a.epoch || !a.running {
		return
	}
	if a.opBusy {
		// A stop (or remove) is in flight: its completion decides.
		return
	}
	a.running = false
	reason, clean := m.exit.String(), m.exit.Clean
	if m.err != nil {
		reason, clean = "lost track of the instance: "+m.err.Error(), false
	}
	a.env.log.Info("vm exited", "vm", a.name, "reason", reason, "clean", clean)
	if a.remove || !wantsRunning(a.rec) {
		a.converge(c)
		return
	}
	a.afterExit(c, clean, reason)
}

// afterExit applies the restart policy to an exit or a failed start.
func (a *vmActor) afterExit(c actor.Context, clean bool, reason string) {
	d := a.restarts.decide(a.env.clock.Now(), clean, reason, a.env.base, a.env.max, a.env.rand.Float64())
	if !d.restart {
		a.down = &d
		if d.status == blixardpb.VmStatus_VM_STATUS_FAILED {
			a.env.log.Warn("vm failed", "vm", a.name, "reason", d.message)
		}
		a.converge(c)
		return
	}
	a.schedule(d.delay, false)
	a.report(c, d.status, d.message)
}

// report sends the observed status to the supervisor when it changed.
func (a *vmActor) report(c actor.Context, st blixardpb.VmStatus, msg string) {
	s := vmStatus{
		name:       a.name,
		id:         a.rec.GetId(),
		generation: a.rec.GetGeneration(),
		desired:    a.rec.GetDesired(),
		status:     st,
		restarts:   a.restarts.total,
		message:    msg,
		removing:   a.remove,
	}
	if s == a.lastStatus {
		return
	}
	a.lastStatus = s
	c.Send(a.parent, &s)
}
