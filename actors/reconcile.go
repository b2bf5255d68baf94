package actors

import (
	"context"
	"fmt"
	"time"

	"github.com/asynkron/protoactor-go/actor"

	"github.com/blixard/blixard/consensus"
	"github.com/blixard/blixard/microvm"
	"github.com/blixard/blixard/proto/blixardpb"
)

// Reconciliation compares the desired state with the driver's inventory
// and makes the VM actors converge: adopt what runs (the new actor's
// Recover), start what is missing, stop and destroy what is not placed
// here. It never blocks the supervisor: the read and the listing run in a
// goroutine that sends reconcileRead back.
//
// Effects keep arriving while the read is in flight. Every effect gets a
// sequence number; the read remembers the last one before it started, and
// the VMs an effect touched after that are left alone: the effect is at
// least as new as the read (a linearizable read reflects every command
// applied before it began).

type reconcileState struct {
	running   bool
	again     bool
	waiters   []*actor.PID
	retries   int
	timerStop func() bool
	timerSeq  int
}

type reconcileRead struct {
	seq     uint64
	desired []*blixardpb.VmRecord
	insts   []microvm.Instance
	err     error
}

type reconcileTick struct{ seq int }

func (s *vmsActor) requestReconcile(c actor.Context, sender *actor.PID) {
	if sender != nil {
		s.rec.waiters = append(s.rec.waiters, sender)
	}
	if s.rec.running {
		s.rec.again = true
		return
	}
	s.startReconcile(c)
}

func (s *vmsActor) startReconcile(c actor.Context) {
	s.stopReconcileTimer()
	s.rec.running = true
	seq, self, sys := s.seq, s.self, s.system
	replica, drv, node := s.cfg.Replica, s.cfg.Driver, s.cfg.NodeID
	ctx, cancel := context.WithTimeout(s.ctx, s.cfg.OpTimeout)
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		defer cancel()
		r := &reconcileRead{seq: seq}
		r.err = replica.Read(ctx, false, func(st *consensus.State) { r.desired = st.VMsOnNode(node) })
		if r.err != nil {
			r.err = fmt.Errorf("reading the desired state: %w", r.err)
		} else if r.insts, r.err = drv.List(ctx); r.err != nil {
			r.err = fmt.Errorf("listing the driver's vms: %w", r.err)
		}
		sys.Root.Send(self, r)
	}()
}

func (s *vmsActor) stopReconcileTimer() {
	if s.rec.timerStop != nil {
		s.rec.timerStop()
		s.rec.timerStop = nil
	}
	s.rec.timerSeq++
}

func (s *vmsActor) scheduleReconcile(d time.Duration) {
	s.stopReconcileTimer()
	seq, self, sys := s.rec.timerSeq, s.self, s.system
	s.rec.timerStop = s.cfg.Clock.AfterFunc(d, func() { sys.Root.Send(self, &reconcileTick{seq: seq}) })
}

func (s *vmsActor) reconcileTick(c actor.Context, m *reconcileTick) {
	if m.seq != s.rec.timerSeq || s.cancel == nil {
		return
	}
	s.rec.timerStop = nil
	s.requestReconcile(c, nil)
}

func (s *vmsActor) reconcileRead(c actor.Context, m *reconcileRead) {
	s.rec.running = false
	if s.cancel == nil {
		return
	}
	res := &ReconcileResult{Err: m.err}
	if m.err != nil {
		d := backoffDelay(s.rec.retries, s.cfg.BackoffBase, s.cfg.BackoffMax, s.env.rand.Float64())
		s.rec.retries++
		s.cfg.Logger.Warn("reconcile failed; retrying", "in", d, "err", m.err)
		s.respondReconcile(c, res)
		s.scheduleReconcile(d)
		return
	}
	s.rec.retries = 0

	insts := make(map[string]microvm.Instance, len(m.insts))
	for _, in := range m.insts {
		insts[in.Name] = in
	}
	desired := make(map[string]bool, len(m.desired))
	for _, rec := range m.desired {
		name := rec.GetSpec().GetName()
		desired[name] = true
		e := s.entries[name]
		if e != nil && (e.seq > m.seq || !newer(rec, e.id, e.gen)) {
			continue // an effect or an earlier pass already acted on this
		}
		if e == nil {
			switch in, ok := insts[name]; {
			case ok && in.Running:
				res.Adopted++
			case rec.GetDesired() == blixardpb.DesiredState_DESIRED_RUNNING:
				res.Started++
			}
		}
		s.route(c, rec, true, m.seq)
	}
	for name, e := range s.entries {
		if desired[name] || e.seq > m.seq || e.removing {
			continue
		}
		res.Removed++
		e.removing, e.view.Removing, e.seq = true, true, m.seq
		c.Send(e.pid, &vmUpdate{remove: true})
	}
	for _, in := range m.insts {
		if desired[in.Name] || s.entries[in.Name] != nil {
			continue
		}
		res.Removed++
		s.spawn(c, &blixardpb.VmRecord{Id: in.ID, Spec: &blixardpb.VmSpec{Name: in.Name}}, true, m.seq)
	}
	s.cfg.Logger.Info(fmt.Sprintf("reconcile: adopted %d, started %d, removed %d", res.Adopted, res.Started, res.Removed))
	s.respondReconcile(c, res)
	if s.rec.again {
		s.rec.again = false
		s.startReconcile(c)
		return
	}
	if s.cfg.ReconcileInterval > 0 {
		s.scheduleReconcile(s.cfg.ReconcileInterval)
	}
}

func (s *vmsActor) respondReconcile(c actor.Context, res *ReconcileResult) {
	for _, w := range s.rec.waiters {
		c.Send(w, res)
	}
	s.rec.waiters = nil
}
