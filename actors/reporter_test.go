package actors

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/asynkron/protoactor-go/actor"

	"github.com/blixard/blixard/consensus"
	"github.com/blixard/blixard/proto/blixardpb"
)

// gateReplica records ReportVmStatus proposals; each blocks until the
// test lets it through, answering with the queued error (nil: success).
type gateReplica struct {
	mu      sync.Mutex
	cmds    []*blixardpb.Command
	release chan error
}

func newGateReplica() *gateReplica { return &gateReplica{release: make(chan error)} }

// ProposeBatch is never called: the reporter proposes one report at a time.
func (g *gateReplica) ProposeBatch(context.Context, []*blixardpb.Command) ([]*blixardpb.Result, error) {
	return nil, errors.New("gateReplica: unexpected batch")
}

func (g *gateReplica) Propose(ctx context.Context, cmd *blixardpb.Command) (*blixardpb.Result, error) {
	g.mu.Lock()
	g.cmds = append(g.cmds, cmd)
	g.mu.Unlock()
	select {
	case err := <-g.release:
		if err != nil {
			return nil, err
		}
		return &blixardpb.Result{Error: &blixardpb.Error{}}, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

func (g *gateReplica) Read(context.Context, bool, func(*consensus.State)) error { return nil }

func (g *gateReplica) proposed() []*blixardpb.ReportVmStatus {
	g.mu.Lock()
	defer g.mu.Unlock()
	out := make([]*blixardpb.ReportVmStatus, len(g.cmds))
	for i, c := range g.cmds {
		out[i] = c.GetReportVmStatus()
	}
	return out
}

func (g *gateReplica) requestIDs() []string {
	g.mu.Lock()
	defer g.mu.Unlock()
	var out []string
	for _, c := range g.cmds {
		out = append(out, c.GetRequestId())
	}
	return out
}

type reporterHarness struct {
	t     *testing.T
	sys   *actor.ActorSystem
	clock *ManualClock
	g     *gateReplica
	pid   *actor.PID
}

func newReporterHarness(t *testing.T) *reporterHarness {
	h := &reporterHarness{
		t:     t,
		sys:   actor.NewActorSystem(actor.WithLoggerFactory(func(*actor.ActorSystem) *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) })),
		clock: NewManualClock(epoch),
		g:     newGateReplica(),
	}
	cfg := VMSupervisorConfig{
		NodeID: 3, Driver: nil, Replica: h.g, Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
		Clock: h.clock, Rand: fixedRand(0),
	}.withDefaults()
	h.pid = h.sys.Root.Spawn(newReporterProps(cfg))
	t.Cleanup(func() {
		if err := h.sys.Root.StopFuture(h.pid).Wait(); err != nil {
			t.Error(err)
		}
		h.sys.Shutdown()
	})
	return h
}

func (h *reporterHarness) send(name string, gen uint64, st blixardpb.VmStatus, restarts uint32, msg string) {
	h.sys.Root.Send(h.pid, &statusReport{name: name, vmID: 1, generation: gen, status: st, restarts: restarts, message: msg})
}

func (h *reporterHarness) waitProposals(n int) []*blixardpb.ReportVmStatus {
	h.t.Helper()
	var p []*blixardpb.ReportVmStatus
	eventually(h.t, itoa(n)+" proposals", func() bool { p = h.g.proposed(); return len(p) == n })
	return p
}

// flush makes sure every message sent so far was handled.
func (h *reporterHarness) flush() {
	h.t.Helper()
	// Touch is answered by protoactor itself, in mailbox order.
	f := h.sys.Root.RequestFuture(h.pid, &actor.Touch{}, 5*time.Second)
	if _, err := f.Result(); err != nil {
		h.t.Fatal(err)
	}
}

func TestReporterCoalescesFlaps(t *testing.T) {
	h := newReporterHarness(t)
	h.send("web", 1, starting, 0, "boot")
	h.waitProposals(1) // in flight, blocked at the gate
	for i := 0; i < 100; i++ {
		h.send("web", 1, starting, uint32(i), "flap")
		h.send("web", 1, running, uint32(i), "flap")
	}
	h.send("web", 1, failed, 100, "last")
	h.flush()
	h.g.release <- nil
	p := h.waitProposals(2)
	h.g.release <- nil
	h.flush()
	if got := len(h.g.proposed()); got != 2 {
		t.Fatalf("%d proposals for 201 reports, want 2", got)
	}
	last := p[1]
	if last.GetStatus() != failed || last.GetRestarts() != 100 || last.GetMessage() != "last" || last.GetNodeId() != 3 {
		t.Errorf("second proposal = %v, want the last report", last)
	}
}

func TestReporterRetriesWhenUnavailable(t *testing.T) {
	h := newReporterHarness(t)
	h.send("web", 1, running, 0, "")
	h.waitProposals(1)
	h.g.release <- consensus.ErrUnavailable
	eventually(t, "a retry timer", func() bool { return len(h.clock.Pending()) == 1 })
	if d := h.clock.Pending()[0]; d != time.Second {
		t.Errorf("retry delay = %v, want 1s", d)
	}
	h.clock.Advance(time.Second)
	h.waitProposals(2)
	h.g.release <- nil
	h.flush()
	ids := h.g.requestIDs()
	if ids[0] == "" || ids[0] != ids[1] {
		t.Errorf("request ids %q: a retry must reuse the id", ids)
	}
}

func TestReporterDropsSupersededGenerations(t *testing.T) {
	h := newReporterHarness(t)
	h.send("web", 2, running, 0, "")
	h.waitProposals(1)
	h.send("web", 1, failed, 0, "old generation")
	h.flush()
	h.g.release <- nil
	h.flush()
	if p := h.g.proposed(); len(p) != 1 {
		t.Errorf("proposals = %v, want only generation 2's", p)
	}
	// Many VMs at once: one proposal each, none lost.
	for _, name := range []string{"a", "b", "c"} {
		h.send(name, 1, running, 0, "")
	}
	for i := 0; i < 3; i++ {
		h.g.release <- nil
	}
	h.waitProposals(4)
}
