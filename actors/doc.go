// Package actors provides blixard's node agent as protoactor-go actors:
// the node root and its remote-visible api actor (node.go, api.go), and
// the VM side described here.
//
// The vms supervisor (NewVMSupervisor) owns every VM placed on this node.
// The node root hands it the effects of applied commands (ApplyEffects,
// non-blocking, generation-tagged) and asks it to Reconcile; it spawns one
// actor per local VM ("vm/<name>"), which drives a Driver through
// prepare → start → watch → stop/destroy, applies the VM's restart policy
// (always | on-failure | never, a limit within a window, exponential
// backoff with jitter on the injected Clock and Rand), and re-adopts a
// running VM through Driver.Recover after an agent restart or after its own
// restart by the supervisor — it never starts a second copy. Observed
// statuses (starting, running, stopping, stopped, failed) flow to a status
// reporter that proposes ReportVmStatus through the Replica, coalesced per
// VM (latest wins, one in flight).
//
// Desired state is never decided here: the actors converge on what the
// replicated state machine says, and reconciliation repairs whatever an
// effect missed.
//
// Driver (driver.go) is declared here, where it is consumed; drivers live
// in microvm/ and are checked by actors/drivertest. Tests and the
// simulator inject a ManualClock and microvm/fake.
//
// Who may import it: cmd/ and sim/. It imports consensus/, proto/ and
// microvm/ (value types only).
package actors
