package main

import (
	"context"
	"fmt"
	"strconv"

	"github.com/spf13/cobra"

	"github.com/blixard/blixard/client"
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
	n.AddCommand(a.nodeSchedulableCmd("drain", false,
		"Mark a node unschedulable: no new VMs are placed on it",
		`Mark a node unschedulable: the scheduler places no new VMs on it. VMs already
on it keep running there for now; moving them off arrives with gossip
membership.`),
		a.nodeSchedulableCmd("eligible", true,
			"Mark a node schedulable again",
			"Mark a node schedulable again: the scheduler may place new VMs on it."))
	return n
}

func (a *app) nodeSchedulableCmd(verb string, schedulable bool, short, long string) *cobra.Command {
	return &cobra.Command{
		Use:   verb + " ID",
		Short: short,
		Long:  long,
		Args:  exactArgs("ID"),
		RunE: a.runE(func(cmd *cobra.Command, args []string) error {
			id, err := strconv.ParseUint(args[0], 10, 64)
			if err != nil || id == 0 {
				return usagef("invalid node id %q: want a positive integer", args[0])
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
