package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/blixard/blixard/client"
)

// Version is the blixard version, recorded in node records.
var Version = "0.1.0-dev"

// Exit codes (DESIGN.md §7).
const (
	exitOK      = 0
	exitFailed  = 1
	exitUsage   = 2
	defaultAddr = "127.0.0.1:7001"
)

// usageError marks a bad invocation (exit 2).
type usageError struct{ err error }

func (u *usageError) Error() string { return u.err.Error() }
func (u *usageError) Unwrap() error { return u.err }

func usagef(format string, args ...any) error {
	return &usageError{err: fmt.Errorf(format, args...)}
}

// app holds what every command shares: the streams, the environment and
// the global flags.
type app struct {
	stdout, stderr io.Writer
	getenv         func(string) string

	addr   string
	output string
	stale  bool

	// ran is set when a command's RunE starts: errors before that are
	// cobra's (unknown command or flag, bad arguments) and thus usage
	// errors.
	ran bool
}

// Main runs the CLI with args and returns the exit code.
func Main(ctx context.Context, args []string, stdout, stderr io.Writer, getenv func(string) string) int {
	a := &app{stdout: stdout, stderr: stderr, getenv: getenv}
	root := a.rootCmd()
	root.SetArgs(args)
	root.SetOut(stdout)
	root.SetErr(stderr)
	cmd, err := root.ExecuteContextC(ctx)
	if err == nil {
		return exitOK
	}
	code := exitFailed
	var ue *usageError
	if errors.As(err, &ue) || !a.ran {
		code = exitUsage
	}
	msg := oneLine(err.Error())
	if code == exitUsage && cmd != nil {
		msg += fmt.Sprintf(" (see '%s --help')", cmd.CommandPath())
	}
	fmt.Fprintf(stderr, "error: %s\n", msg)
	return code
}

// oneLine keeps an error message on one line.
func oneLine(s string) string {
	s = strings.TrimSpace(s)
	return strings.Join(strings.Fields(strings.ReplaceAll(s, "\n", " ")), " ")
}

func (a *app) rootCmd() *cobra.Command {
	root := &cobra.Command{
		Use:   "blixard",
		Short: "Distributed microVM orchestrator",
		Long: `blixard runs microVMs on a cluster of hosts that agree on the desired state
through Raft. Start a node agent with 'blixard run', then manage VMs against
any node with 'blixard vm ...'.`,
		SilenceUsage:  true,
		SilenceErrors: true,
		// A bare group command prints its help.
		RunE: groupRunE,
	}
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return &usageError{err: err} })
	pf := root.PersistentFlags()
	defAddr := defaultAddr
	if v := a.getenv("BLIXARD_ADDR"); v != "" {
		defAddr = v
	}
	pf.StringVar(&a.addr, "addr", defAddr, "api address of a node, host:port; a comma-separated list fails over in order (env BLIXARD_ADDR)")
	pf.StringVarP(&a.output, "output", "o", "table", "output format: table|json")
	pf.BoolVar(&a.stale, "stale", false, "serve reads from the answering node's local state instead of a linearizable read")
	root.PersistentPreRunE = func(cmd *cobra.Command, args []string) error {
		if a.output != "table" && a.output != "json" {
			return usagef("invalid --output %q: want table or json", a.output)
		}
		return nil
	}
	root.AddCommand(a.runCmd(), a.vmCmd(), a.clusterCmd(), a.nodeCmd(), a.benchCmd(), a.simCmd(), a.versionCmd())
	return root
}

func groupRunE(cmd *cobra.Command, args []string) error {
	if len(args) > 0 {
		return usagef("unknown command %q for %q", args[0], cmd.CommandPath())
	}
	return cmd.Help()
}

// runE wraps a command body: it marks that the command ran (so later
// errors are operation failures, exit 1).
func (a *app) runE(fn func(cmd *cobra.Command, args []string) error) func(*cobra.Command, []string) error {
	return func(cmd *cobra.Command, args []string) error {
		a.ran = true
		return fn(cmd, args)
	}
}

// exactArgs is cobra.ExactArgs with a usage error naming what is missing.
func exactArgs(names ...string) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		switch {
		case len(args) < len(names):
			return usagef("missing %s", strings.Join(names[len(args):], " and "))
		case len(args) > len(names):
			return usagef("unexpected argument %q", args[len(names)])
		}
		return nil
	}
}

// dial connects to the nodes of --addr.
func (a *app) dial(ctx context.Context, opts ...client.Option) (*client.Client, error) {
	var addrs []string
	for _, s := range strings.Split(a.addr, ",") {
		if s = strings.TrimSpace(s); s != "" {
			addrs = append(addrs, s)
		}
	}
	if len(addrs) == 0 {
		return nil, usagef("--addr is empty")
	}
	for _, s := range addrs {
		if _, err := client.NormalizeAddr(s); err != nil {
			return nil, &usageError{err: fmt.Errorf("invalid --addr: %w", err)}
		}
	}
	return client.Dial(ctx, addrs, append([]client.Option{client.WithStaleReads(a.stale)}, opts...)...)
}

// withClient runs fn with a client and a request deadline.
func (a *app) withClient(ctx context.Context, timeout time.Duration, fn func(ctx context.Context, c *client.Client) error) error {
	if timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, timeout)
		defer cancel()
	}
	c, err := a.dial(ctx)
	if err != nil {
		return err
	}
	defer c.Close()
	return fn(ctx, c)
}

func (a *app) versionCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the blixard version",
		Args:  exactArgs(),
		RunE: a.runE(func(cmd *cobra.Command, args []string) error {
			fmt.Fprintln(a.stdout, Version)
			return nil
		}),
	}
}
