package actors

import (
	"context"
	"sync"
	"time"

	"github.com/blixard/blixard/consensus/simbug"
	"github.com/blixard/blixard/proto/blixardpb"
)

// Defaults of self-fencing (NodeConfig.FenceTimeout, FenceStopGrace).
const (
	DefaultFenceTimeout   = 3 * time.Second
	DefaultFenceStopGrace = 500 * time.Millisecond
)

// runFence is the node's self-fencing loop (DESIGN.md §4). Every
// FenceTimeout/6 it confirms contact with a quorum by committing a
// NodeHeartbeat. The heartbeat also moves the node's registered index, so
// the state machine refuses to set the node down on a gossip sighting
// older than it: a node that has quorum contact is never set down, even
// when gossip calls it dead (a bridge partition: soak seed 14000063, where
// the leader set down a node that reached the quorum through the bridge,
// and its VM ran twice for 16 ms). When no heartbeat that started in the
// last FenceTimeout has committed, the node fences: it stops the vms supervisor, so nothing
// restarts them, and stops every VM the driver runs (graceful for
// FenceStopGrace, then forced). While fenced it keeps stopping whatever
// runs. When a read succeeds again it registers itself (UpsertNode: a
// down proposal based on an older gossip view is then refused) and lifts
// the fence: a new vms supervisor reconciles against the state,
// restarting the VMs still placed here and reporting their status; VMs
// the cluster re-placed elsewhere in the meantime stay stopped here.
//
// The clock starts when the loop starts: a node restarted without quorum
// contact fences the VMs its previous run left running.
func (n *Node) runFence() {
	defer n.wg.Done()
	timeout := n.cfg.FenceTimeout
	every := max(timeout/6, 50*time.Millisecond)
	readTimeout := max(timeout/4, 50*time.Millisecond)
	lastOK := time.Now()
	fenced := false
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-n.ctx.Done():
			return
		case <-t.C:
		}
		start := time.Now()
		ctx, cancel := context.WithTimeout(n.ctx, readTimeout)
		// Committed is contact, whatever the result (before the node's
		// first registration it is NOT_FOUND).
		_, err := n.replica.Propose(ctx, &blixardpb.Command{
			TimeUnixMs: start.UnixMilli(),
			Op:         &blixardpb.Command_NodeHeartbeat{NodeHeartbeat: &blixardpb.NodeHeartbeat{NodeId: n.cfg.NodeID}},
		})
		cancel()
		if n.ctx.Err() != nil {
			return
		}
		if err == nil {
			lastOK = start
			if fenced {
				// Register again before any VM restarts: the leader may
				// be about to set this node down on a stale gossip view,
				// and the state machine refuses that once the node has
				// registered since the leader last saw it alive.
				// The VMs are stopped meanwhile, so the loop may wait
				// for a slow commit (a short limit kept a loaded node
				// fenced for good).
				rctx, cancel := context.WithTimeout(n.ctx, max(timeout, 5*time.Second))
				err := n.upsertSelf(rctx)
				cancel()
				if err != nil {
					n.log.Warn("lifting fence: registering this node failed; staying fenced", "err", err)
					continue
				}
				fenced = false
				n.unfence()
			}
			continue
		}
		if simbug.On(simbug.SkipFence) {
			continue // planted bug: never fence
		}
		if !fenced && time.Since(lastOK) >= timeout {
			fenced = true
			n.fenced.Store(true)
			n.log.Error("self-fencing: no contact with a quorum; stopping this node's VMs",
				"since", lastOK.Format(time.RFC3339Nano), "fence_timeout", timeout, "err", err)
			n.fence()
		} else if fenced {
			n.stopRunningVMs(n.cfg.FenceStopGrace, "fenced")
		}
	}
}

// Fenced reports whether the node has fenced itself (lost quorum contact
// and stopped its VMs).
func (n *Node) Fenced() bool { return n.fenced.Load() }

// fence stops the vms supervisor (the VM actors stop; their VMs keep
// running) and then the VMs themselves.
func (n *Node) fence() {
	if pid := n.vms.Swap(nil); pid != nil {
		if err := n.system.Root.StopFuture(pid).Wait(); err != nil {
			n.log.Warn("fencing: stopping vms supervisor", "err", err)
		}
	}
	n.stopRunningVMs(n.cfg.FenceStopGrace, "fenced")
}

// unfence starts a new vms supervisor and has it reconcile.
func (n *Node) unfence() {
	pid, err := n.system.Root.SpawnNamed(NewVMSupervisor(n.vmsCfg), "vms")
	if err != nil {
		n.log.Error("lifting fence: spawning vms supervisor; retrying on the next contact", "err", err)
		return
	}
	n.vms.Store(pid)
	n.fenced.Store(false)
	n.system.Root.Send(pid, &Reconcile{})
	n.log.Warn("self-fencing lifted: quorum contact is back; reconciling VMs (those still placed here restart and are reported)")
}

// stopRunningVMs stops every running VM of the driver concurrently.
func (n *Node) stopRunningVMs(grace time.Duration, why string) {
	ctx, cancel := context.WithTimeout(n.ctx, grace+10*time.Second)
	defer cancel()
	insts, err := n.cfg.Driver.List(ctx)
	if err != nil {
		n.log.Warn("listing vms to stop", "why", why, "err", err)
		return
	}
	var wg sync.WaitGroup
	for _, in := range insts {
		if !in.Running {
			continue
		}
		wg.Add(1)
		go func(name string) {
			defer wg.Done()
			if err := n.cfg.Driver.Stop(ctx, name, grace); err != nil {
				n.log.Warn("stopping vm", "why", why, "vm", name, "err", err)
			} else {
				n.log.Warn("stopped vm", "why", why, "vm", name)
			}
		}(in.Name)
	}
	wg.Wait()
}
