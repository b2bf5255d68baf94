package main

import (
	"context"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/spf13/cobra"

	"github.com/blixard/blixard/client"
	"github.com/blixard/blixard/proto/blixardpb"
)

func (a *app) clusterCmd() *cobra.Command {
	c := &cobra.Command{
		Use:   "cluster",
		Short: "Inspect the cluster",
		RunE:  groupRunE,
	}
	c.AddCommand(&cobra.Command{
		Use:   "status",
		Short: "Show the cluster id, Raft leader and term, and every node with its usage",
		Args:  exactArgs(),
		RunE: a.runE(func(cmd *cobra.Command, args []string) error {
			return a.withClient(cmd.Context(), requestTimeout, func(ctx context.Context, c *client.Client) error {
				st, err := c.ClusterStatus(ctx)
				if err != nil {
					return err
				}
				if a.output == "json" {
					return writeJSON(a.stdout, toClusterJSON(st))
				}
				return writeClusterStatus(a.stdout, st)
			})
		}),
	})
	c.AddCommand(&cobra.Command{
		Use:   "leave ID",
		Short: "Make node ID leave the cluster for good",
		Long: `Make node ID leave the cluster for good: it stops its VMs (the cluster
re-places them on other nodes), removes its node record and its Raft
replica, leaves gossip and exits. Any node takes the request. The node id
can never rejoin; start the host again with a new --node-id. Refused for
the only voter and for nodes that run without gossip membership.`,
		Args: exactArgs("ID"),
		RunE: a.runE(func(cmd *cobra.Command, args []string) error {
			id, err := parseNodeID(args[0])
			if err != nil {
				return err
			}
			return a.withClient(cmd.Context(), 3*time.Minute, func(ctx context.Context, c *client.Client) error {
				if _, err := c.LeaveCluster(ctx, id); err != nil {
					return err
				}
				fmt.Fprintf(a.stdout, "node %d left the cluster\n", id)
				return nil
			})
		}),
	})
	return c
}

func (a *app) nodeCmd() *cobra.Command {
	n := &cobra.Command{
		Use:   "node",
		Short: "List nodes and control scheduling on them",
		RunE:  groupRunE,
	}
	n.AddCommand(&cobra.Command{
		Use:     "list",
		Aliases: []string{"ls"},
		Short:   "List nodes with their capacity and usage",
		Args:    exactArgs(),
		RunE: a.runE(func(cmd *cobra.Command, args []string) error {
			return a.withClient(cmd.Context(), requestTimeout, func(ctx context.Context, c *client.Client) error {
				nodes, err := c.ListNodes(ctx)
				if err != nil {
					return err
				}
				if a.output == "json" {
					out := make([]nodeJSON, 0, len(nodes))
					for _, ni := range nodes {
						out = append(out, toNodeJSON(ni))
					}
					return writeJSON(a.stdout, out)
				}
				return writeNodeTable(a.stdout, nodes)
			})
		}),
	})
	n.AddCommand(a.nodeDrainCmd(),
		a.nodeSchedulableCmd("eligible", true,
			"Mark a node schedulable again",
			"Mark a node schedulable again: the scheduler may place new VMs on it (a drained\nnode's VMs do not move back)."))
	return n
}

func (a *app) nodeSchedulableCmd(verb string, schedulable bool, short, long string) *cobra.Command {
	return &cobra.Command{
		Use:   verb + " ID",
		Short: short,
		Long:  long,
		Args:  exactArgs("ID"),
		RunE: a.runE(func(cmd *cobra.Command, args []string) error {
			id, err := parseNodeID(args[0])
			if err != nil {
				return err
			}
			return a.withClient(cmd.Context(), requestTimeout, func(ctx context.Context, c *client.Client) error {
				rec, err := c.SetNodeSchedulable(ctx, id, schedulable)
				if err != nil {
					return err
				}
				if a.output == "json" {
					return writeJSON(a.stdout, toNodeJSON(nodeInfo(rec)))
				}
				if schedulable {
					fmt.Fprintf(a.stdout, "node %d: schedulable\n", id)
				} else {
					fmt.Fprintf(a.stdout, "node %d: unschedulable (no new VMs; existing VMs stay)\n", id)
				}
				return nil
			})
		}),
	}
}

// nodeDrainCmd marks a node unschedulable and moves its VMs off it.
func (a *app) nodeDrainCmd() *cobra.Command {
	var maxParallel int
	var deadline time.Duration
	var noMigrate, force bool
	cmd := &cobra.Command{
		Use:   "drain ID",
		Short: "Mark a node unschedulable and move its VMs to other nodes",
		Long: `Mark a node unschedulable (no new VMs are placed on it), then move its VMs
to other nodes, --max-parallel at a time, each by cold migration: the VM
stops on the node and starts where the scheduler places it. Running VMs are
waited for until they run again; stopped ones only change placement.

Volumes live on the host's disk and do not travel: a VM with volumes is
not moved unless --force, which recreates its volumes empty on the new
node. Pinned VMs (created with --node) cannot move and are reported.
Draining the last schedulable node is refused. 'node eligible ID' makes the
node schedulable again.`,
		Example: `  blixard node drain 3
  blixard node drain 3 --max-parallel 2 --deadline 30m`,
		Args: exactArgs("ID"),
		RunE: a.runE(func(cmd *cobra.Command, args []string) error {
			id, err := parseNodeID(args[0])
			if err != nil {
				return err
			}
			if maxParallel < 1 {
				return usagef("invalid --max-parallel %d: want at least 1", maxParallel)
			}
			if deadline <= 0 {
				return usagef("invalid --deadline %s: must be positive", deadline)
			}
			return a.withClient(cmd.Context(), deadline, func(ctx context.Context, c *client.Client) error {
				return a.drain(ctx, c, id, maxParallel, !noMigrate, force)
			})
		}),
	}
	f := cmd.Flags()
	f.IntVar(&maxParallel, "max-parallel", 1, "VMs moved at once")
	f.DurationVar(&deadline, "deadline", 10*time.Minute, "give up (exit 1) when the VMs have not all moved by then; the node stays unschedulable")
	f.BoolVar(&noMigrate, "no-migrate", false, "only mark the node unschedulable; its VMs stay")
	f.BoolVar(&force, "force", false, "also move VMs with volumes (their volumes are recreated empty on the new node)")
	return cmd
}

func (a *app) drain(ctx context.Context, c *client.Client, id uint64, maxParallel int, migrate, force bool) error {
	nodes, err := c.ListNodes(ctx)
	if err != nil {
		return err
	}
	found, others := false, 0
	for _, ni := range nodes {
		r := ni.GetNode()
		if r.GetId() == id {
			found = true
			continue
		}
		if r.GetSchedulable() && r.GetStatus() == blixardpb.NodeStatus_NODE_STATUS_ALIVE {
			others++
		}
	}
	if !found {
		return fmt.Errorf("node %d not found", id)
	}
	if others == 0 && migrate {
		return fmt.Errorf("cannot drain node %d: it is the last schedulable node, its VMs would have nowhere to go (make another node eligible or add one first)", id)
	}
	if _, err := c.SetNodeSchedulable(ctx, id, false); err != nil {
		return err
	}
	out := a.phaseOut()
	fmt.Fprintf(out, "node %d: unschedulable\n", id)
	if !migrate {
		return nil
	}
	vms, err := c.ListVMs(ctx)
	if err != nil {
		return err
	}
	var todo []*blixardpb.VmRecord
	var failures []string
	for _, v := range vms {
		if v.GetNodeId() != id {
			continue
		}
		if len(v.GetSpec().GetVolumes()) > 0 && !force {
			failures = append(failures, fmt.Sprintf("vm %s has volumes on node %d (use --force to recreate them empty elsewhere)", v.GetSpec().GetName(), id))
			continue
		}
		todo = append(todo, v)
	}
	sem := make(chan struct{}, maxParallel)
	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, v := range todo {
		sem <- struct{}{}
		wg.Add(1)
		go func(v *blixardpb.VmRecord) {
			defer wg.Done()
			defer func() { <-sem }()
			rec, err := a.moveVM(ctx, c, v, 0)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				failures = append(failures, fmt.Sprintf("vm %s: %v", v.GetSpec().GetName(), err))
				fmt.Fprintf(out, "vm %s: not moved: %v\n", v.GetSpec().GetName(), err)
				return
			}
			fmt.Fprintf(out, "vm %s: node %d -> node %d (%s)\n", v.GetSpec().GetName(), id, rec.GetNodeId(), client.StatusName(rec.GetStatus()))
		}(v)
	}
	wg.Wait()
	if len(failures) > 0 {
		sort.Strings(failures)
		return fmt.Errorf("node %d is unschedulable but %d vm(s) did not move: %s", id, len(failures), strings.Join(failures, "; "))
	}
	if a.output == "json" {
		return writeJSON(a.stdout, map[string]any{"node_id": id, "schedulable": false, "moved": len(todo)})
	}
	fmt.Fprintf(a.stdout, "node %d drained: %d vm(s) moved\n", id, len(todo))
	return nil
}

// moveVM migrates v (to target, 0: the scheduler's choice) and, when it
// should run, waits until it runs on its new node.
func (a *app) moveVM(ctx context.Context, c *client.Client, v *blixardpb.VmRecord, target uint64) (*blixardpb.VmRecord, error) {
	rec, err := c.MigrateVM(ctx, v.GetSpec().GetName(), target)
	if err != nil {
		return nil, err
	}
	if rec.GetDesired() != blixardpb.DesiredState_DESIRED_RUNNING {
		return rec, nil
	}
	return c.WaitFor(ctx, v.GetSpec().GetName(), blixardpb.VmStatus_VM_STATUS_RUNNING, nil)
}

// vmMigrateCmd is `vm migrate NAME [--to ID]` (to be added to the vm group).
func (a *app) vmMigrateCmd() *cobra.Command {
	var to uint64
	var deadline time.Duration
	var force bool
	cmd := &cobra.Command{
		Use:   "migrate NAME",
		Short: "Move a VM to another node (cold: stop, re-place, start)",
		Long: `Move a VM to node --to (default: where the scheduler places it) by cold
migration: it stops on its node and starts on the new one; the command waits
until it runs there. A VM with volumes is refused unless --force (volumes
are recreated empty on the new node).`,
		Args: exactArgs("NAME"),
		RunE: a.runE(func(cmd *cobra.Command, args []string) error {
			if deadline <= 0 {
				return usagef("invalid --deadline %s: must be positive", deadline)
			}
			return a.withClient(cmd.Context(), deadline, func(ctx context.Context, c *client.Client) error {
				v, err := c.GetVM(ctx, args[0])
				if err != nil {
					return err
				}
				if len(v.GetSpec().GetVolumes()) > 0 && !force {
					return fmt.Errorf("vm %s has volumes on node %d: they do not move (use --force to recreate them empty on the new node)", v.GetSpec().GetName(), v.GetNodeId())
				}
				rec, err := a.moveVM(ctx, c, v, to)
				if err != nil {
					return err
				}
				return a.printVM(rec, fmt.Sprintf("vm %s: node %d -> node %d (%s)", rec.GetSpec().GetName(), v.GetNodeId(), rec.GetNodeId(), client.StatusName(rec.GetStatus())))
			})
		}),
	}
	cmd.Flags().Uint64Var(&to, "to", 0, "target node id (default: the scheduler chooses)")
	cmd.Flags().DurationVar(&deadline, "deadline", 2*time.Minute, "how long to wait for the VM to run on its new node")
	cmd.Flags().BoolVar(&force, "force", false, "move a VM with volumes (recreated empty)")
	return cmd
}

// parseNodeID reads a node id argument: a positive integer.
func parseNodeID(arg string) (uint64, error) {
	id, err := strconv.ParseUint(arg, 10, 64)
	if err != nil || id == 0 {
		return 0, usagef("invalid node id %q: want a positive integer", arg)
	}
	return id, nil
}
