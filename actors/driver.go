package actors

import (
	"context"
	"time"

	"github.com/blixard/blixard/microvm"
)

// Driver runs microVMs on this host. The VM actors are its only callers;
// implementations live in microvm/fake, microvm/qemu and microvm/nix, and
// actors/drivertest checks any implementation against this contract.
//
// Every method is keyed by the VM name and must be safe for concurrent use
// across names. For one name the VM actor serialises Prepare, Start, Stop,
// Destroy and Recover, but Wait, Inspect, List and Logs may run
// concurrently with any of them. Errors wrap the microvm sentinels
// (microvm.ErrNotFound, ...) where they apply. Methods honour ctx
// cancellation and then return ctx.Err() (wrapped).
type Driver interface {
	// Prepare makes everything Start needs (state dir, network, image or
	// runner) for spec. It is idempotent: preparing a prepared VM with the
	// same spec does nothing, with a changed spec it updates what is not
	// in use. It never starts the VM and never disturbs a running instance.
	Prepare(ctx context.Context, spec microvm.Spec) error

	// Start boots a prepared VM and returns the running instance. It fails
	// with microvm.ErrNotPrepared before Prepare, and with
	// microvm.ErrAlreadyRunning when an instance of spec.Name already runs:
	// a driver never runs two copies of one VM.
	Start(ctx context.Context, spec microvm.Spec) (microvm.Instance, error)

	// Wait blocks until the most recently started instance of name exits
	// and returns how it exited; if that instance already exited it
	// returns at once. It returns microvm.ErrNotFound when name was never
	// started (or was destroyed), and ctx.Err() when ctx is cancelled
	// first. Several concurrent Waits for one name all see the exit.
	Wait(ctx context.Context, name string) (microvm.Exit, error)

	// Stop shuts the VM down: a graceful request (ACPI powerdown, shutdown
	// script), then a forced kill once grace has passed. It returns after
	// the instance is gone. Stopping a VM that is not running, or unknown,
	// is not an error. The exit seen by Wait is Clean.
	Stop(ctx context.Context, name string, grace time.Duration) error

	// Destroy undoes Prepare: kills a running instance without grace and
	// removes the state dir, network and anything else the driver made for
	// name. It is idempotent; destroying an unknown VM is not an error.
	Destroy(ctx context.Context, name string) error

	// Inspect returns the driver's view of name, or microvm.ErrNotFound.
	Inspect(ctx context.Context, name string) (microvm.Instance, error)

	// Recover re-adopts spec.Name after the agent (or its VM actor)
	// restarted: when an instance runs it returns it and true, and a
	// following Wait observes its exit. When none runs it returns false
	// (and, when the VM was prepared, the instance with Running unset). It
	// never starts a VM.
	Recover(ctx context.Context, spec microvm.Spec) (microvm.Instance, bool, error)

	// List returns every VM the driver knows on this host, prepared or
	// running, sorted by name. Reconciliation compares it with the cluster
	// state.
	List(ctx context.Context) ([]microvm.Instance, error)

	// Logs reads name's console log. With offset >= 0 it returns the bytes
	// from offset to the current end (follow mode); with offset < 0 it
	// returns the last lastLines lines (0 means all). next is the offset
	// just past the returned data. An unknown VM yields microvm.ErrNotFound.
	Logs(ctx context.Context, name string, offset int64, lastLines int) (data []byte, next int64, err error)
}

// DriverCloser is an optional ability of a Driver: release what the driver
// holds (connections, file handles) when the agent shuts down. Running VMs
// are left running so a restarted agent can recover them.
type DriverCloser interface {
	Close() error
}
