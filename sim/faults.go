package sim

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sort"
	"strings"
	"time"
)

// Fault is a kind of injected fault; Faults is a set of them.
type Fault uint32

const (
	// FaultCrash crashes a minority of nodes (host power loss: the node's
	// VMs die with it, its data dir survives) and restarts them later.
	FaultCrash Fault = 1 << iota
	// FaultPartition cuts the network: majority/minority, one-way, or a
	// bridge (two sides that only one node sees both of).
	FaultPartition
	// FaultLoss drops messages at random (LossRate) during the fault phase.
	FaultLoss
	// FaultDelay delays messages by up to MaxDelay (reordering them)
	// during the fault phase.
	FaultDelay
	// FaultPause freezes a node's network for a while and then delivers
	// what was held.
	FaultPause
	// FaultDisk makes a minority of nodes' Raft storage slow for a while:
	// every write and fsync of their log and snapshots waits DiskDelay
	// first (a failing or overloaded disk). Failed writes are not
	// injected: dragonboat treats an I/O error as fatal and stops the
	// NodeHost, which the crash fault already covers.
	FaultDisk
)

// Link fault rates while FaultLoss / FaultDelay are on.
const (
	LossRate = 0.05
	MaxDelay = 20 * time.Millisecond
	// DiskDelay bounds the wait a slow disk adds to each write and fsync
	// (drawn per window from [DiskDelay/10, DiskDelay)).
	DiskDelay = 200 * time.Millisecond
)

var faultNames = []struct {
	f    Fault
	name string
}{{FaultCrash, "crash"}, {FaultPartition, "partition"}, {FaultLoss, "loss"}, {FaultDelay, "delay"}, {FaultPause, "pause"}, {FaultDisk, "disk"}}

// AllFaults is every fault kind.
const AllFaults = FaultCrash | FaultPartition | FaultLoss | FaultDelay | FaultPause | FaultDisk

// ParseFaults parses a comma-separated list of fault names ("all" for
// every one, "none" for none).
func ParseFaults(s string) (Fault, error) {
	var out Fault
	for _, p := range strings.Split(s, ",") {
		p = strings.TrimSpace(p)
		switch p {
		case "", "none":
			continue
		case "all":
			out |= AllFaults
			continue
		}
		found := false
		for _, f := range faultNames {
			if f.name == p {
				out |= f.f
				found = true
			}
		}
		if !found {
			return 0, fmt.Errorf("unknown fault %q: allowed are crash, partition, loss, delay, pause, disk, all, none", p)
		}
	}
	return out, nil
}

func (f Fault) String() string {
	var parts []string
	for _, x := range faultNames {
		if f&x.f != 0 {
			parts = append(parts, x.name)
		}
	}
	if len(parts) == 0 {
		return "none"
	}
	return strings.Join(parts, ",")
}

// faultEvent is one window of the schedule: at At (from the start of
// the fault phase) the fault begins; it is healed after For.
type faultEvent struct {
	At, For time.Duration
	Kind    string // crash, partition-majority, partition-one-way, partition-bridge, pause, disk-slow
	Nodes   []uint64
	// Side is the other side of a partition.
	Side []uint64
	// Delay is what a slow disk adds to each write and fsync.
	Delay time.Duration
}

func (e faultEvent) String() string {
	s := fmt.Sprintf("%6.2fs +%4.2fs %s %v", e.At.Seconds(), e.For.Seconds(), e.Kind, e.Nodes)
	if len(e.Side) > 0 {
		s += fmt.Sprintf(" | %v", e.Side)
	}
	if e.Delay > 0 {
		s += fmt.Sprintf(" +%dms per write", e.Delay.Milliseconds())
	}
	return s
}

// schedule draws the fault windows of a run from its seed: one window at
// a time, minW–maxW long (by default 0.3–3 s: long enough, past 2 s, for
// the cluster to declare a cut-off node down and re-place its VMs, which
// is what fencing is for), with 0.2–0.8 s of calm between them, until
// phase ends. Link faults (loss, delay) are not windows: they hold for
// the whole fault phase.
func schedule(seed uint64, nodes int, faults Fault, phase, minW, maxW time.Duration) []faultEvent {
	rng := rand.New(rand.NewPCG(seed, 0x73636864))
	var kinds []string
	if faults&FaultCrash != 0 {
		kinds = append(kinds, "crash")
	}
	if faults&FaultPartition != 0 && nodes >= 3 {
		kinds = append(kinds, "partition-majority", "partition-one-way", "partition-bridge")
	}
	if faults&FaultPause != 0 {
		kinds = append(kinds, "pause")
	}
	if faults&FaultDisk != 0 {
		kinds = append(kinds, "disk-slow")
	}
	if len(kinds) == 0 {
		return nil
	}
	ids := make([]uint64, nodes)
	for i := range ids {
		ids[i] = uint64(i + 1)
	}
	var out []faultEvent
	at := time.Duration(200+rng.IntN(400)) * time.Millisecond
	for at < phase {
		span := max(int((maxW-minW)/time.Millisecond), 1)
		e := faultEvent{At: at, For: minW + time.Duration(rng.IntN(span))*time.Millisecond, Kind: kinds[rng.IntN(len(kinds))]}
		perm := append([]uint64(nil), ids...)
		rng.Shuffle(len(perm), func(i, j int) { perm[i], perm[j] = perm[j], perm[i] })
		minority := (nodes - 1) / 2
		switch e.Kind {
		case "crash":
			e.Nodes = sorted(perm[:1+rng.IntN(max(minority, 1))])
			e.For += 500 * time.Millisecond // a restart takes a while anyway
		case "partition-majority", "partition-one-way":
			k := 1 + rng.IntN(max(minority, 1))
			e.Nodes, e.Side = sorted(perm[:k]), sorted(perm[k:])
		case "partition-bridge":
			// perm[0] is the bridge; the rest split in two.
			rest := perm[1:]
			k := max(len(rest)/2, 1)
			e.Nodes, e.Side = sorted(rest[:k]), sorted(rest[k:])
			e.Kind = fmt.Sprintf("partition-bridge(%d)", perm[0])
		case "pause":
			e.Nodes = []uint64{perm[0]}
		case "disk-slow":
			e.Nodes = sorted(perm[:1+rng.IntN(max(minority, 1))])
			e.Delay = DiskDelay/10 + time.Duration(rng.Int64N(int64(DiskDelay-DiskDelay/10)))
		}
		out = append(out, e)
		at += e.For + time.Duration(200+rng.IntN(600))*time.Millisecond
	}
	return out
}

func sorted(ids []uint64) []uint64 {
	out := append([]uint64(nil), ids...)
	sort.Slice(out, func(i, j int) bool { return out[i] < out[j] })
	return out
}

// inject runs the schedule until it or ctx ends, healing each window at
// its end. It returns how many windows began.
func (c *cluster) inject(ctx context.Context, events []faultEvent) int {
	start := time.Now()
	n := 0
	for _, e := range events {
		if !sleepUntil(ctx, start.Add(e.At)) {
			return n
		}
		n++
		c.log.Warn("sim fault", "event", e.String())
		c.begin(e)
		ok := sleepUntil(ctx, start.Add(e.At+e.For))
		c.heal(e)
		if !ok {
			return n
		}
	}
	return n
}

func (c *cluster) begin(e faultEvent) {
	switch {
	case e.Kind == "crash":
		for _, id := range e.Nodes {
			c.node(id).stop(true)
		}
	case e.Kind == "partition-majority":
		c.cutBetween(e.Nodes, e.Side, true)
	case e.Kind == "partition-one-way":
		c.cutBetween(e.Nodes, e.Side, false)
	case strings.HasPrefix(e.Kind, "partition-bridge"):
		c.cutBetween(e.Nodes, e.Side, true)
	case e.Kind == "pause":
		for _, id := range e.Nodes {
			c.net.Pause(id)
		}
	case e.Kind == "disk-slow":
		for _, id := range e.Nodes {
			c.node(id).disk.setDelay(e.Delay)
		}
	}
}

func (c *cluster) heal(e faultEvent) {
	switch {
	case e.Kind == "crash":
		for _, id := range e.Nodes {
			if err := c.node(id).start(); err != nil {
				c.log.Error("sim: restarting node", "node", id, "err", err)
			}
		}
	case e.Kind == "pause":
		for _, id := range e.Nodes {
			c.net.Resume(id)
		}
	case e.Kind == "disk-slow":
		for _, id := range e.Nodes {
			c.node(id).disk.setDelay(0)
		}
	default:
		c.net.HealAll()
	}
}

// cutBetween cuts a→b for every a in as, b in bs, and the reverse when
// both.
func (c *cluster) cutBetween(as, bs []uint64, both bool) {
	for _, a := range as {
		for _, b := range bs {
			c.net.Cut(a, b)
			if both {
				c.net.Cut(b, a)
			}
		}
	}
}

func sleepUntil(ctx context.Context, t time.Time) bool {
	d := time.Until(t)
	if d <= 0 {
		return ctx.Err() == nil
	}
	tm := time.NewTimer(d)
	defer tm.Stop()
	select {
	case <-tm.C:
		return true
	case <-ctx.Done():
		return false
	}
}
