package actors

import (
	"context"
	"log/slog"
	"sort"
	"sync"
	"time"

	"github.com/asynkron/protoactor-go/actor"

	"github.com/blixard/blixard/consensus"
	"github.com/blixard/blixard/proto/blixardpb"
)

// VMSupervisorConfig configures the vms supervisor. Driver and Replica are
// required; zero values of the rest mean the documented default.
type VMSupervisorConfig struct {
	// NodeID is this node's id: VMs placed here get an actor.
	NodeID  uint64
	Driver  Driver
	Replica Replica
	// Logger defaults to slog.Default().
	Logger *slog.Logger
	// Clock measures restart windows, backoff and retries (default: the
	// system clock).
	Clock Clock
	// Rand draws the backoff jitter (default: a seeded PCG). The
	// supervisor serialises calls.
	Rand Rand
	// BackoffBase and BackoffMax bound the restart backoff: base·2ⁿ capped
	// at max, with up to 20% jitter taken off (default 1 s and 60 s).
	// Driver errors and report retries back off the same way.
	BackoffBase time.Duration
	BackoffMax  time.Duration
	// StopGrace is the graceful-stop time before a forced kill (default 30 s).
	StopGrace time.Duration
	// OpTimeout bounds one driver step (prepare+start, stop, destroy...)
	// (default 10 min: a nix build may be slow).
	OpTimeout time.Duration
	// MaxActorRestarts within ActorRestartWindow is how often a panicking
	// VM actor is restarted before the supervisor gives up on it and
	// reports the VM failed (default 10 within 1 min).
	MaxActorRestarts   int
	ActorRestartWindow time.Duration
	// ReportConcurrency caps the status proposals in flight (default 32);
	// each VM has at most one in flight.
	ReportConcurrency int
	// ReportTimeout bounds one status proposal (default 10 s).
	ReportTimeout time.Duration
	// ReconcileInterval, when positive, reconciles periodically in
	// addition to on start and on request.
	ReconcileInterval time.Duration
	// Gateway is the guest's default gateway, passed to drivers in Spec.
	Gateway string
}

func (c VMSupervisorConfig) withDefaults() VMSupervisorConfig {
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.Clock == nil {
		c.Clock = SystemClock()
	}
	if c.BackoffBase <= 0 {
		c.BackoffBase = DefaultBackoffBase
	}
	if c.BackoffMax <= 0 {
		c.BackoffMax = DefaultBackoffMax
	}
	if c.BackoffMax < c.BackoffBase {
		c.BackoffMax = c.BackoffBase
	}
	if c.StopGrace <= 0 {
		c.StopGrace = 30 * time.Second
	}
	if c.OpTimeout <= 0 {
		c.OpTimeout = 10 * time.Minute
	}
	if c.MaxActorRestarts <= 0 {
		c.MaxActorRestarts = 10
	}
	if c.ActorRestartWindow <= 0 {
		c.ActorRestartWindow = time.Minute
	}
	if c.ReportConcurrency <= 0 {
		c.ReportConcurrency = 32
	}
	if c.ReportTimeout <= 0 {
		c.ReportTimeout = 10 * time.Second
	}
	return c
}

// NewVMSupervisor returns the props of the `vms` actor: it spawns one
// child actor per VM placed on this node (named "vm/<name>"), routes
// ApplyEffects to them, reconciles (on start, on Reconcile and every
// ReconcileInterval), answers LocalVMsRequest, and runs the status
// reporter that proposes ReportVmStatus, coalesced per VM.
//
// A panicking VM actor is restarted (one-for-one, at most
// MaxActorRestarts within ActorRestartWindow) and re-adopts its VM
// through Driver.Recover. Stopping the supervisor stops its actors but
// leaves the VMs running for the next agent to recover.
func NewVMSupervisor(cfg VMSupervisorConfig) *actor.Props {
	cfg = cfg.withDefaults()
	if cfg.Driver == nil || cfg.Replica == nil {
		panic("actors: VMSupervisorConfig needs a Driver and a Replica")
	}
	env := &vmEnv{
		driver:    cfg.Driver,
		clock:     cfg.Clock,
		rand:      newLockedRand(cfg.Rand),
		log:       cfg.Logger,
		base:      cfg.BackoffBase,
		max:       cfg.BackoffMax,
		grace:     cfg.StopGrace,
		opTimeout: cfg.OpTimeout,
		gateway:   cfg.Gateway,
	}
	strategy := actor.NewOneForOneStrategy(cfg.MaxActorRestarts, cfg.ActorRestartWindow, actor.DefaultDecider)
	return actor.PropsFromProducer(func() actor.Actor {
		return &vmsActor{cfg: cfg, env: env}
	}, actor.WithSupervisor(strategy))
}

// vmEntry is the supervisor's record of one VM actor.
type vmEntry struct {
	pid *actor.PID
	// id and gen order the records the actor acts on: a VM deleted and
	// created again under the same name has a higher id and starts over
	// at generation 1.
	id  uint64
	gen uint64
	// seq is the effect sequence number that last touched the entry;
	// reconciliation leaves entries touched after its read alone.
	seq      uint64
	removing bool
	// pending is a newer record placing the VM here again while the
	// removing actor still runs; it is spawned once that one stops.
	pending *blixardpb.VmRecord
	view    LocalVM
}

type vmsActor struct {
	cfg VMSupervisorConfig
	env *vmEnv

	self     *actor.PID
	system   *actor.ActorSystem
	reporter *actor.PID
	entries  map[string]*vmEntry
	byPID    map[string]string // pid id → vm name
	seq      uint64

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
	rec    reconcileState
}

func (s *vmsActor) Receive(c actor.Context) {
	switch m := c.Message().(type) {
	case *actor.Started:
		s.started(c)
	case *actor.Stopping, *actor.Restarting:
		s.teardown()
	case *ApplyEffects:
		s.applyEffects(c, m.Effects)
	case ApplyEffects:
		s.applyEffects(c, m.Effects)
	case *Reconcile:
		s.requestReconcile(c, c.Sender())
	case Reconcile:
		s.requestReconcile(c, c.Sender())
	case *reconcileRead:
		s.reconcileRead(c, m)
	case *reconcileTick:
		s.reconcileTick(c, m)
	case *LocalVMsRequest, LocalVMsRequest:
		c.Respond(s.localVMs())
	case *vmStatus:
		s.vmStatus(c, m)
	case *actor.Terminated:
		s.terminated(c, m.Who)
	}
}

func (s *vmsActor) started(c actor.Context) {
	s.self, s.system = c.Self(), c.ActorSystem()
	s.entries = make(map[string]*vmEntry)
	s.byPID = make(map[string]string)
	s.ctx, s.cancel = context.WithCancel(context.Background())
	s.rec = reconcileState{}
	rep, err := c.SpawnNamed(newReporterProps(s.cfg), "reporter")
	if err != nil {
		panic("actors: spawning the status reporter: " + err.Error())
	}
	s.reporter = rep
	s.startReconcile(c)
}

func (s *vmsActor) teardown() {
	if s.cancel == nil {
		return
	}
	s.cancel()
	s.stopReconcileTimer()
	s.wg.Wait()
	s.cancel = nil
}

// applyEffects routes effects to the VM actors, dropping stale ones.
func (s *vmsActor) applyEffects(c actor.Context, effects []consensus.Effect) {
	for _, e := range effects {
		if e.VM == nil || !e.Concerns(s.cfg.NodeID) {
			continue
		}
		s.seq++
		here := !e.Deleted && e.VM.GetNodeId() == s.cfg.NodeID
		s.route(c, e.VM, here, s.seq)
	}
}

// route makes the VM actor for rec converge on it: spawn it when placed
// here, tell it to go when not. Records not newer than what the actor has
// are dropped.
func (s *vmsActor) route(c actor.Context, rec *blixardpb.VmRecord, here bool, seq uint64) {
	name := rec.GetSpec().GetName()
	e := s.entries[name]
	if e != nil && !newer(rec, e.id, e.gen) {
		return
	}
	switch {
	case e == nil && here:
		s.spawn(c, rec, false, seq)
	case e == nil:
		// Not ours any more and no actor: make sure nothing is left behind.
		s.spawn(c, rec, true, seq)
	case e.removing:
		e.id, e.gen, e.seq = rec.GetId(), rec.GetGeneration(), seq
		if here {
			e.pending = rec
		} else {
			e.pending = nil
		}
	case rec.GetId() != e.id:
		// Another VM under the same name: the old one goes first.
		e.id, e.gen, e.seq, e.removing, e.view.Removing = rec.GetId(), rec.GetGeneration(), seq, true, true
		if here {
			e.pending = rec
		}
		c.Send(e.pid, &vmUpdate{remove: true})
	default:
		e.gen, e.seq = rec.GetGeneration(), seq
		if !here {
			e.removing = true
			e.view.Removing = true
		}
		c.Send(e.pid, &vmUpdate{rec: rec, remove: !here})
	}
}

func (s *vmsActor) spawn(c actor.Context, rec *blixardpb.VmRecord, remove bool, seq uint64) {
	name := rec.GetSpec().GetName()
	a := newVMActor(s.env, rec, remove)
	pid, err := c.SpawnNamed(vmProps(a), "vm/"+name)
	if err != nil {
		// Only a name clash is possible, and entries prevent it.
		s.cfg.Logger.Error("spawning vm actor", "vm", name, "err", err)
		return
	}
	s.entries[name] = &vmEntry{
		pid: pid, id: rec.GetId(), gen: rec.GetGeneration(), seq: seq, removing: remove,
		view: LocalVM{Name: name, ID: rec.GetId(), Generation: rec.GetGeneration(), Desired: rec.GetDesired(), Status: rec.GetStatus(), Removing: remove},
	}
	s.byPID[pid.Id] = name
}

// vmStatus records a VM actor's observation and hands it to the reporter
// unless the VM is being removed from this node (its record belongs to
// another node now, or is gone).
func (s *vmsActor) vmStatus(c actor.Context, m *vmStatus) {
	e := s.entries[m.name]
	if e == nil || m.id != e.view.ID || m.generation < e.view.Generation || s.cancel == nil {
		return
	}
	e.view = LocalVM{Name: m.name, ID: m.id, Generation: m.generation, Desired: m.desired, Status: m.status, Restarts: m.restarts, Message: m.message, Removing: e.removing || m.removing}
	if e.view.Removing || m.id != e.id || m.generation < e.gen {
		return
	}
	c.Send(s.reporter, &statusReport{
		name: m.name, vmID: m.id, generation: m.generation,
		status: m.status, restarts: m.restarts, message: m.message,
	})
}

func (s *vmsActor) terminated(c actor.Context, who *actor.PID) {
	if s.cancel == nil {
		return // stopping: the children and the reporter go together
	}
	name, ok := s.byPID[who.Id]
	if !ok {
		if s.reporter != nil && who.Id == s.reporter.Id {
			s.cfg.Logger.Error("status reporter stopped; respawning it")
			if rep, err := c.SpawnNamed(newReporterProps(s.cfg), "reporter"); err == nil {
				s.reporter = rep
			}
		}
		return
	}
	delete(s.byPID, who.Id)
	e := s.entries[name]
	if e == nil || e.pid.Id != who.Id {
		return
	}
	delete(s.entries, name)
	c.Send(s.reporter, &reportForget{name: name, vmID: e.id, generation: e.gen})
	if e.pending != nil {
		s.spawn(c, e.pending, false, e.seq)
		return
	}
	if !e.removing {
		// The one-for-one strategy gave up on a panicking actor.
		msg := "node agent: the vm actor failed repeatedly and was stopped"
		s.cfg.Logger.Error(msg, "vm", name)
		c.Send(s.reporter, &statusReport{name: name, vmID: e.view.ID, generation: e.gen, status: blixardpb.VmStatus_VM_STATUS_FAILED, restarts: e.view.Restarts, message: msg})
	}
}

// newer reports whether rec is newer than the record (id, gen).
func newer(rec *blixardpb.VmRecord, id, gen uint64) bool {
	if rec.GetId() != id {
		return rec.GetId() > id
	}
	return rec.GetGeneration() > gen
}

func (s *vmsActor) localVMs() *LocalVMs {
	out := &LocalVMs{VMs: make([]LocalVM, 0, len(s.entries))}
	for _, e := range s.entries {
		out.VMs = append(out.VMs, e.view)
	}
	sort.Slice(out.VMs, func(i, j int) bool { return out.VMs[i].Name < out.VMs[j].Name })
	return out
}
