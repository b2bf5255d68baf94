package client

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/blixard/blixard/proto/blixardpb"
)

// watchPoll is the long-poll timeout of one WatchVM call in WaitFor.
const watchPoll = 5 * time.Second

// StatusName is the lower-case name of a VM status as the CLI prints it
// ("running", "stopped", ...).
func StatusName(s blixardpb.VmStatus) string {
	if s == blixardpb.VmStatus_VM_STATUS_UNSPECIFIED {
		return "pending"
	}
	return strings.ToLower(strings.TrimPrefix(s.String(), "VM_STATUS_"))
}

// DesiredName is "running" or "stopped".
func DesiredName(d blixardpb.DesiredState) string {
	if d == blixardpb.DesiredState_DESIRED_STOPPED {
		return "stopped"
	}
	return "running"
}

// WaitTimeoutError is returned by WaitFor when ctx ends before the VM
// reaches its target; Last is the last record seen (nil if none).
type WaitTimeoutError struct {
	Name   string
	Target string
	Last   *blixardpb.VmRecord
}

func (e *WaitTimeoutError) Error() string {
	last := "unknown"
	if e.Last != nil {
		last = StatusName(e.Last.GetStatus())
	}
	return fmt.Sprintf("timed out waiting for vm %s to be %s (last status: %s)", e.Name, e.Target, last)
}

// Is makes a WaitTimeoutError match ErrDeadlineExceeded.
func (e *WaitTimeoutError) Is(target error) bool { return target == ErrDeadlineExceeded }

// WaitFor watches the VM until its status is target and returns its
// record. onPhase (optional) sees every distinct record on the way,
// including the first. With target VM_STATUS_UNSPECIFIED it waits until
// the VM is gone (deleted) and returns nil, nil. It fails when the VM
// fails while waiting for running (status failed), disappears while waiting
// for a status, or when ctx ends (*WaitTimeoutError).
func (c *Client) WaitFor(ctx context.Context, name string, target blixardpb.VmStatus, onPhase func(*blixardpb.VmRecord)) (*blixardpb.VmRecord, error) {
	targetName := StatusName(target)
	if target == blixardpb.VmStatus_VM_STATUS_UNSPECIFIED {
		targetName = "deleted"
	}
	var last *blixardpb.VmRecord
	for {
		poll := watchPoll
		if dl, ok := ctx.Deadline(); ok {
			if left := time.Until(dl); left < poll {
				poll = left
			}
		}
		if poll <= 0 {
			return nil, &WaitTimeoutError{Name: name, Target: targetName, Last: last}
		}
		rec, err := c.WatchVM(ctx, name, last, poll)
		switch {
		case errors.Is(err, ErrNotFound):
			if target == blixardpb.VmStatus_VM_STATUS_UNSPECIFIED {
				return nil, nil
			}
			return nil, err
		case err != nil:
			if ctx.Err() != nil {
				return nil, &WaitTimeoutError{Name: name, Target: targetName, Last: last}
			}
			return nil, err
		}
		if last == nil || changed(last, rec) {
			if onPhase != nil {
				onPhase(rec)
			}
		}
		last = rec
		// A status seen while a migration hands the VM over belongs to the
		// node it is leaving: the wait goes on until it has arrived.
		if target != blixardpb.VmStatus_VM_STATUS_UNSPECIFIED && rec.GetStatus() == target && rec.GetMigrateTo() == 0 {
			return rec, nil
		}
		if rec.GetStatus() == blixardpb.VmStatus_VM_STATUS_FAILED && target != blixardpb.VmStatus_VM_STATUS_FAILED &&
			target != blixardpb.VmStatus_VM_STATUS_UNSPECIFIED && target != blixardpb.VmStatus_VM_STATUS_STOPPED {
			msg := rec.GetMessage()
			if msg == "" {
				msg = "no reason given"
			}
			return rec, &Error{Code: blixardpb.Code_FAILED_PRECONDITION, Message: fmt.Sprintf("vm %s failed: %s", name, msg)}
		}
	}
}

func changed(a, b *blixardpb.VmRecord) bool {
	return a.GetGeneration() != b.GetGeneration() || a.GetStatus() != b.GetStatus() ||
		a.GetDesired() != b.GetDesired() || a.GetNodeId() != b.GetNodeId() || a.GetRestarts() != b.GetRestarts() ||
		a.GetMigrateTo() != b.GetMigrateTo()
}
