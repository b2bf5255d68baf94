package main

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/blixard/blixard/client"
	"github.com/blixard/blixard/proto/blixardpb"
)

// requestTimeout bounds a command that does not wait for a VM.
const requestTimeout = 30 * time.Second

func (a *app) vmCmd() *cobra.Command {
	vm := &cobra.Command{
		Use:   "vm",
		Short: "Create, control and inspect microVMs",
		RunE:  groupRunE,
	}
	vm.AddCommand(a.vmCreateCmd(), a.vmLifecycleCmd("start"), a.vmLifecycleCmd("stop"), a.vmLifecycleCmd("delete"),
		a.vmListCmd(), a.vmStatusCmd(), a.vmLogsCmd(), a.vmMigrateCmd())
	return vm
}

var (
	hypervisors    = []string{"qemu", "cloud-hypervisor", "firecracker"}
	restartPolicys = []string{"always", "on-failure", "never"}
)

func oneOf(flag, v string, allowed []string) error {
	for _, x := range allowed {
		if v == x {
			return nil
		}
	}
	return usagef("invalid --%s %q: want %s", flag, v, strings.Join(allowed, "|"))
}

func (a *app) vmCreateCmd() *cobra.Command {
	var (
		vcpus                       uint32
		memory                      uint64
		hypervisor, tenant, restart string
		kernel, initrd, flake       string
		params                      []string
		labels                      map[string]string
		node                        uint64
		noStart, wait               bool
		timeout                     time.Duration
	)
	cmd := &cobra.Command{
		Use:   "create NAME",
		Short: "Create a VM (and start it unless --no-start)",
		Long: `Create a VM. The cluster places it on a node with room (or on --node) and
that node boots it. NAME is a DNS label: lowercase letters, digits and '-',
1-63 characters, starting and ending with a letter or digit.`,
		Example: `  blixard vm create web --vcpus 2 --memory 1024 --wait
  blixard vm create db --kernel /boot/vmlinuz --initrd /boot/initrd.img --restart on-failure`,
		Args: exactArgs("NAME"),
		RunE: a.runE(func(cmd *cobra.Command, args []string) error {
			if err := oneOf("hypervisor", hypervisor, hypervisors); err != nil {
				return err
			}
			if err := oneOf("restart", restart, restartPolicys); err != nil {
				return err
			}
			if flake != "" && (kernel != "" || initrd != "") {
				return usagef("--flake excludes --kernel and --initrd")
			}
			if initrd != "" && kernel == "" {
				return usagef("--initrd needs --kernel")
			}
			if timeout <= 0 {
				return usagef("invalid --timeout %s: must be positive", timeout)
			}
			// The node opens these paths; a relative one means the
			// caller's directory, as it does for every other CLI.
			for _, p := range []*string{&kernel, &initrd} {
				if *p != "" && !filepath.IsAbs(*p) {
					abs, err := filepath.Abs(*p)
					if err != nil {
						return err
					}
					*p = abs
				}
			}
			spec := &blixardpb.VmSpec{
				Name:         args[0],
				Tenant:       tenant,
				Hypervisor:   hypervisor,
				Vcpus:        vcpus,
				MemoryMb:     memory,
				Kernel:       kernel,
				Initrd:       initrd,
				Flake:        flake,
				KernelParams: params,
				Restart:      &blixardpb.RestartPolicy{Mode: restart},
				NodeId:       node,
				Labels:       labels,
			}
			t := requestTimeout
			if wait {
				t = timeout
			}
			return a.withClient(cmd.Context(), t, func(ctx context.Context, c *client.Client) error {
				rec, err := c.CreateVM(ctx, spec, noStart)
				if err != nil {
					return err
				}
				if !wait {
					return a.printVM(rec, fmt.Sprintf("vm %s created%s", spec.Name, placement(rec)))
				}
				target := blixardpb.VmStatus_VM_STATUS_RUNNING
				if noStart {
					target = blixardpb.VmStatus_VM_STATUS_STOPPED
				}
				fmt.Fprintf(a.phaseOut(), "vm %s: created\n", spec.Name)
				return a.wait(ctx, c, spec.Name, target)
			})
		}),
	}
	f := cmd.Flags()
	f.Uint32Var(&vcpus, "vcpus", 1, "virtual CPUs (1-64)")
	f.Uint64Var(&memory, "memory", 256, "memory in MiB (64 MiB - 1 TiB)")
	f.StringVar(&hypervisor, "hypervisor", "qemu", "hypervisor: qemu|cloud-hypervisor|firecracker")
	f.StringVar(&tenant, "tenant", "default", "tenant (a DNS label); VMs of different tenants are isolated")
	f.Uint64Var(&node, "node", 0, "pin the VM to this node id (default: the scheduler chooses)")
	f.StringVar(&restart, "restart", "always", "restart policy: always|on-failure|never")
	f.StringVar(&kernel, "kernel", "", "guest kernel image path on the node (a relative path is made absolute against the current directory)")
	f.StringVar(&initrd, "initrd", "", "guest initrd path on the node, with --kernel (relative: as --kernel)")
	f.StringVar(&flake, "flake", "", "flake reference of a microvm.nix guest (nix driver; excludes --kernel/--initrd)")
	f.StringArrayVar(&params, "kernel-param", nil, "extra kernel command line parameter (repeatable)")
	f.StringToStringVar(&labels, "label", nil, "label key=value (repeatable)")
	f.BoolVar(&noStart, "no-start", false, "create the VM stopped")
	f.BoolVar(&wait, "wait", false, "wait until the VM runs (or is stopped, with --no-start), printing each phase")
	f.DurationVar(&timeout, "timeout", 2*time.Minute, "how long --wait waits")
	return cmd
}

// placement describes where a fresh record landed.
func placement(rec *blixardpb.VmRecord) string {
	if rec.GetNodeId() == 0 {
		if m := rec.GetMessage(); m != "" {
			return fmt.Sprintf(" (pending: %s)", m)
		}
		return " (pending)"
	}
	s := fmt.Sprintf(" on node %d", rec.GetNodeId())
	if ip := rec.GetIp(); ip != "" {
		s += fmt.Sprintf(", ip %s", ip)
	}
	return s
}

// printVM prints rec as JSON with -o json, else the line msg.
func (a *app) printVM(rec *blixardpb.VmRecord, msg string) error {
	if a.output == "json" {
		return writeJSON(a.stdout, toVMJSON(rec))
	}
	fmt.Fprintln(a.stdout, msg)
	return nil
}

// phaseOut is where --wait prints phases: stdout for tables, stderr with
// -o json (stdout then carries only the final JSON).
func (a *app) phaseOut() interface{ Write([]byte) (int, error) } {
	if a.output == "json" {
		return a.stderr
	}
	return a.stdout
}

// wait follows the VM until target (VM_STATUS_UNSPECIFIED: deleted),
// printing each phase: "scheduled on node N", then each status.
func (a *app) wait(ctx context.Context, c *client.Client, name string, target blixardpb.VmStatus) error {
	out := a.phaseOut()
	var last *blixardpb.VmRecord
	rec, err := c.WaitFor(ctx, name, target, func(r *blixardpb.VmRecord) {
		if target == blixardpb.VmStatus_VM_STATUS_RUNNING && r.GetNodeId() != 0 && r.GetNodeId() != last.GetNodeId() {
			fmt.Fprintf(out, "vm %s: scheduled on node %d\n", name, r.GetNodeId())
		}
		if last == nil || r.GetStatus() != last.GetStatus() || r.GetRestarts() != last.GetRestarts() {
			line := fmt.Sprintf("vm %s: %s", name, client.StatusName(r.GetStatus()))
			if r.GetRestarts() > 0 {
				line += fmt.Sprintf(" (restarts: %d)", r.GetRestarts())
			}
			if m := r.GetMessage(); m != "" && r.GetStatus() != blixardpb.VmStatus_VM_STATUS_RUNNING {
				line += ": " + m
			}
			fmt.Fprintln(out, line)
		}
		last = r
	})
	var wt *client.WaitTimeoutError
	if errors.As(err, &wt) && errors.Is(ctx.Err(), context.Canceled) {
		return fmt.Errorf("interrupted while %s", strings.TrimPrefix(wt.Error(), "timed out "))
	}
	if err != nil {
		return err
	}
	if target == blixardpb.VmStatus_VM_STATUS_UNSPECIFIED {
		fmt.Fprintf(out, "vm %s: deleted\n", name)
		return nil
	}
	if a.output == "json" {
		return writeJSON(a.stdout, toVMJSON(rec))
	}
	return nil
}

func (a *app) vmLifecycleCmd(verb string) *cobra.Command {
	var (
		wait    bool
		timeout time.Duration
	)
	short := map[string]string{
		"start":  "Set a VM's desired state to running",
		"stop":   "Set a VM's desired state to stopped",
		"delete": "Delete a VM (its node stops it and cleans up)",
	}[verb]
	cmd := &cobra.Command{
		Use:   verb + " NAME",
		Short: short,
		Args:  exactArgs("NAME"),
		RunE: a.runE(func(cmd *cobra.Command, args []string) error {
			name := args[0]
			if timeout <= 0 {
				return usagef("invalid --timeout %s: must be positive", timeout)
			}
			t := requestTimeout
			if wait {
				t = timeout
			}
			return a.withClient(cmd.Context(), t, func(ctx context.Context, c *client.Client) error {
				var (
					rec    *blixardpb.VmRecord
					err    error
					target blixardpb.VmStatus
				)
				switch verb {
				case "start":
					rec, err = c.StartVM(ctx, name)
					target = blixardpb.VmStatus_VM_STATUS_RUNNING
				case "stop":
					rec, err = c.StopVM(ctx, name)
					target = blixardpb.VmStatus_VM_STATUS_STOPPED
				case "delete":
					rec, err = c.DeleteVM(ctx, name)
					target = blixardpb.VmStatus_VM_STATUS_UNSPECIFIED
				}
				if err != nil {
					return err
				}
				if !wait {
					msg := map[string]string{"start": "start requested", "stop": "stop requested", "delete": "deleted"}[verb]
					return a.printVM(rec, fmt.Sprintf("vm %s: %s", name, msg))
				}
				return a.wait(ctx, c, name, target)
			})
		}),
	}
	cmd.Flags().BoolVar(&wait, "wait", false, map[string]string{
		"start":  "wait until the VM runs, printing each phase",
		"stop":   "wait until the VM is stopped, printing each phase",
		"delete": "wait until the VM is gone",
	}[verb])
	cmd.Flags().DurationVar(&timeout, "timeout", 2*time.Minute, "how long --wait waits")
	return cmd
}

func (a *app) vmListCmd() *cobra.Command {
	return &cobra.Command{
		Use:     "list",
		Aliases: []string{"ls"},
		Short:   "List VMs",
		Args:    exactArgs(),
		RunE: a.runE(func(cmd *cobra.Command, args []string) error {
			return a.withClient(cmd.Context(), requestTimeout, func(ctx context.Context, c *client.Client) error {
				vms, err := c.ListVMs(ctx)
				if err != nil {
					return err
				}
				if a.output == "json" {
					out := make([]vmJSON, 0, len(vms))
					for _, r := range vms {
						out = append(out, toVMJSON(r))
					}
					return writeJSON(a.stdout, out)
				}
				return writeVMTable(a.stdout, vms)
			})
		}),
	}
}

func (a *app) vmStatusCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "status NAME",
		Short: "Show a VM",
		Args:  exactArgs("NAME"),
		RunE: a.runE(func(cmd *cobra.Command, args []string) error {
			return a.withClient(cmd.Context(), requestTimeout, func(ctx context.Context, c *client.Client) error {
				rec, err := c.GetVM(ctx, args[0])
				if err != nil {
					return err
				}
				if a.output == "json" {
					return writeJSON(a.stdout, toVMJSON(rec))
				}
				return writeVMDetail(a.stdout, rec)
			})
		}),
	}
}

// followPoll is how often `vm logs -f` asks for new output.
const followPoll = 500 * time.Millisecond

func (a *app) vmLogsCmd() *cobra.Command {
	var (
		follow bool
		lines  int
	)
	cmd := &cobra.Command{
		Use:   "logs NAME",
		Short: "Print a VM's console log (from the node it runs on)",
		Args:  exactArgs("NAME"),
		RunE: a.runE(func(cmd *cobra.Command, args []string) error {
			if lines < 0 {
				return usagef("invalid -n %d: must be >= 0 (0 prints everything)", lines)
			}
			name := args[0]
			ctx := cmd.Context()
			c, err := a.dial(ctx)
			if err != nil {
				return err
			}
			defer c.Close()
			rctx, cancel := context.WithTimeout(ctx, requestTimeout)
			data, next, err := c.Logs(rctx, name, -1, lines)
			cancel()
			if err != nil {
				return err
			}
			if _, err := a.stdout.Write(data); err != nil {
				return err
			}
			if !follow {
				return nil
			}
			t := time.NewTicker(followPoll)
			defer t.Stop()
			for {
				select {
				case <-ctx.Done():
					return nil // interrupted: a normal end of -f
				case <-t.C:
				}
				rctx, cancel := context.WithTimeout(ctx, requestTimeout)
				data, n, err := c.Logs(rctx, name, next, 0)
				cancel()
				switch {
				case ctx.Err() != nil:
					return nil
				case errors.Is(err, client.ErrNotFound):
					return fmt.Errorf("vm %s is gone", name)
				case err != nil:
					return err
				}
				if n < next {
					// The log was rotated or the VM moved: start over.
					n = 0
				}
				next = n
				if _, err := a.stdout.Write(data); err != nil {
					return err
				}
			}
		}),
	}
	cmd.Flags().BoolVarP(&follow, "follow", "f", false, "keep printing new output until interrupted")
	cmd.Flags().IntVarP(&lines, "lines", "n", 100, "print the last n lines (0: all)")
	return cmd
}
