package actors

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/asynkron/protoactor-go/actor"

	"github.com/blixard/blixard/consensus"
	"github.com/blixard/blixard/proto/blixardpb"
)

// The status reporter turns the VM actors' observations into
// ReportVmStatus proposals. Per VM the latest observation wins and at most
// one proposal is in flight, so a flapping VM costs at most one proposal
// per round trip instead of one per flap; ReportConcurrency caps the
// proposals in flight across VMs. Proposals that fail with
// consensus.ErrUnavailable (or time out) are retried with backoff unless
// a newer observation replaced them. Reports for a generation older than
// one already seen for the VM are dropped, and so are reports the state
// machine rejects as stale.

// statusReport is one observation to propose.
type statusReport struct {
	name       string
	vmID       uint64
	generation uint64
	status     blixardpb.VmStatus
	restarts   uint32
	message    string
	// requestID is assigned when the reporter first proposes it and kept
	// across retries, so a retried proposal is applied once.
	requestID string
}

// reportForget drops what the reporter holds for a VM that left this
// node, up to generation.
type reportForget struct {
	name       string
	vmID       uint64
	generation uint64
}

type proposalDone struct {
	name string
	rep  *statusReport
	res  *blixardpb.Result
	err  error
}

type reportRetry struct {
	name string
	seq  int
}

type reportSlot struct {
	id        uint64 // the VM id and highest generation seen
	gen       uint64
	pending   *statusReport
	inflight  bool
	queued    bool
	retries   int
	timerStop func() bool
	timerSeq  int
}

type reporterActor struct {
	replica     Replica
	nodeID      uint64
	clock       Clock
	rand        Rand
	log         *slog.Logger
	base, max   time.Duration
	timeout     time.Duration
	concurrency int

	self     *actor.PID
	system   *actor.ActorSystem
	slots    map[string]*reportSlot
	queue    []string
	inflight int
	nextID   uint64
	ctx      context.Context
	cancel   context.CancelFunc
	wg       sync.WaitGroup
}

func newReporterProps(cfg VMSupervisorConfig) *actor.Props {
	return actor.PropsFromProducer(func() actor.Actor {
		return &reporterActor{
			replica: cfg.Replica, nodeID: cfg.NodeID, clock: cfg.Clock, rand: newLockedRand(cfg.Rand),
			log: cfg.Logger, base: cfg.BackoffBase, max: cfg.BackoffMax,
			timeout: cfg.ReportTimeout, concurrency: cfg.ReportConcurrency,
		}
	})
}

func (r *reporterActor) Receive(c actor.Context) {
	switch m := c.Message().(type) {
	case *actor.Started:
		r.self, r.system = c.Self(), c.ActorSystem()
		r.slots = make(map[string]*reportSlot)
		r.queue, r.inflight = nil, 0
		r.ctx, r.cancel = context.WithCancel(context.Background())
	case *actor.Stopping, *actor.Restarting:
		if r.cancel != nil {
			r.cancel()
			for _, s := range r.slots {
				if s.timerStop != nil {
					s.timerStop()
				}
			}
			r.wg.Wait()
			r.cancel = nil
		}
	case *statusReport:
		r.report(m)
	case *reportForget:
		if s := r.slots[m.name]; s != nil && (s.id < m.vmID || (s.id == m.vmID && s.gen <= m.generation)) {
			r.stopTimer(s)
			if s.inflight {
				s.pending = nil
			} else {
				delete(r.slots, m.name)
			}
		}
	case *proposalDone:
		r.done(m)
	case *reportRetry:
		if s := r.slots[m.name]; s != nil && s.timerSeq == m.seq && s.timerStop != nil {
			s.timerStop = nil
			r.enqueue(m.name, s)
			r.pump()
		}
	}
}

func (r *reporterActor) report(m *statusReport) {
	s := r.slots[m.name]
	if s == nil {
		s = &reportSlot{}
		r.slots[m.name] = s
	}
	if m.vmID < s.id || (m.vmID == s.id && m.generation < s.gen) {
		return // superseded generation (or an older VM of that name)
	}
	if m.vmID != s.id || m.generation > s.gen {
		s.id, s.gen, s.retries = m.vmID, m.generation, 0
		r.stopTimer(s)
	}
	rep := *m
	rep.requestID = ""
	s.pending = &rep
	if s.timerStop == nil {
		r.enqueue(m.name, s)
	}
	r.pump()
}

func (r *reporterActor) stopTimer(s *reportSlot) {
	if s.timerStop != nil {
		s.timerStop()
		s.timerStop = nil
	}
	s.timerSeq++
}

func (r *reporterActor) enqueue(name string, s *reportSlot) {
	if s.queued || s.inflight || s.pending == nil {
		return
	}
	s.queued = true
	r.queue = append(r.queue, name)
}

// pump proposes queued reports while the concurrency cap allows.
func (r *reporterActor) pump() {
	for r.inflight < r.concurrency && len(r.queue) > 0 && r.cancel != nil {
		name := r.queue[0]
		r.queue = r.queue[1:]
		s := r.slots[name]
		if s == nil || !s.queued {
			continue
		}
		s.queued = false
		if s.inflight || s.pending == nil {
			continue
		}
		rep := s.pending
		s.pending = nil
		s.inflight = true
		r.inflight++
		if rep.requestID == "" {
			r.nextID++
			rep.requestID = fmt.Sprintf("vm-status/%d/%s/%d/%d-%d", r.nodeID, rep.name, rep.generation, r.clock.Now().UnixNano(), r.nextID)
		}
		r.propose(rep)
	}
}

func (r *reporterActor) propose(rep *statusReport) {
	cmd := &blixardpb.Command{
		RequestId:  rep.requestID,
		TimeUnixMs: r.clock.Now().UnixMilli(),
		Op: &blixardpb.Command_ReportVmStatus{ReportVmStatus: &blixardpb.ReportVmStatus{
			Name: rep.name, VmId: rep.vmID, Generation: rep.generation, NodeId: r.nodeID,
			Status: rep.status, Restarts: rep.restarts, Message: rep.message,
		}},
	}
	ctx, cancel := context.WithTimeout(r.ctx, r.timeout)
	self, sys, replica := r.self, r.system, r.replica
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		defer cancel()
		res, err := replica.Propose(ctx, cmd)
		sys.Root.Send(self, &proposalDone{name: rep.name, rep: rep, res: res, err: err})
	}()
}

func (r *reporterActor) done(m *proposalDone) {
	r.inflight--
	s := r.slots[m.name]
	if s == nil {
		r.pump()
		return
	}
	s.inflight = false
	retry := false
	switch {
	case m.err != nil:
		retry = errors.Is(m.err, consensus.ErrUnavailable) || errors.Is(m.err, context.DeadlineExceeded)
		if !retry {
			r.log.Warn("status report failed", "vm", m.name, "status", m.rep.status, "err", m.err)
		}
	case m.res.GetError().GetCode() == blixardpb.Code_UNAVAILABLE:
		retry = true
	case m.res.GetError().GetCode() != blixardpb.Code_OK:
		// Stale (FAILED_PRECONDITION) or deleted (NOT_FOUND): the cluster
		// moved on; a newer observation, if any, goes next.
		r.log.Debug("status report rejected", "vm", m.name, "err", m.res.GetError().GetMessage())
	default:
		s.retries = 0
	}
	if retry && r.cancel != nil {
		if s.pending == nil && m.rep.vmID == s.id && m.rep.generation >= s.gen {
			s.pending = m.rep
		}
		d := backoffDelay(s.retries, r.base, r.max, r.rand.Float64())
		s.retries++
		r.stopTimer(s)
		seq, self, sys, name := s.timerSeq, r.self, r.system, m.name
		s.timerStop = r.clock.AfterFunc(d, func() { sys.Root.Send(self, &reportRetry{name: name, seq: seq}) })
	} else if s.pending == nil && s.timerStop == nil {
		delete(r.slots, m.name)
	} else {
		r.enqueue(m.name, s)
	}
	r.pump()
}
