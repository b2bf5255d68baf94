//go:build !linux

package network

import (
	"context"
	"errors"
)

var errUnsupported = errors.New("vm networking needs Linux")

// Setup needs Linux.
func (h *Host) Setup(ctx context.Context, vm VM) error { return errUnsupported }

// Teardown needs Linux.
func (h *Host) Teardown(ctx context.Context, vm VM) error { return errUnsupported }
