package systemd

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/blixard/blixard/microvm/qemu"
)

// Modes are the values SupervisorFor accepts (`blixard run --supervisor`).
var Modes = []string{"auto", "systemd", "exec"}

// booted is where systemd says it is PID 1 (sd_booted); tests replace it.
var booted = "/run/systemd/system"

// SupervisorFor returns the supervisor mode names: "systemd" (an error when
// systemd is not PID 1 or cannot be reached), "exec" (LimitedExec: a child
// process with a pidfile, limits in cgroups where the host lets us write
// them), or "auto": systemd when it is PID 1 and answers over D-Bus, else
// exec, with the reason logged.
func SupervisorFor(ctx context.Context, mode string, log *slog.Logger) (qemu.Supervisor, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	switch mode {
	case "exec":
		return &LimitedExec{Logger: log}, nil
	case "systemd", "auto":
	default:
		return nil, fmt.Errorf("unknown supervisor %q: use auto, systemd or exec", mode)
	}
	s, err := probe(ctx, log)
	if err == nil {
		log.Info("supervisor: systemd (transient units blixard-vm-<name>.service)")
		return s, nil
	}
	if mode == "systemd" {
		return nil, fmt.Errorf("supervisor systemd: %w", err)
	}
	log.Info("supervisor: exec", "reason", err.Error())
	return &LimitedExec{Logger: log}, nil
}

// probe returns a connected systemd Supervisor, or why there is none.
func probe(ctx context.Context, log *slog.Logger) (*Supervisor, error) {
	if _, err := os.Stat(booted); err != nil {
		return nil, fmt.Errorf("systemd is not PID 1 (no %s)", booted)
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	s := &Supervisor{Logger: log}
	conn, _, err := s.connection(ctx)
	if err != nil {
		return nil, err
	}
	if _, err := conn.GetManagerProperty("Version"); err != nil {
		s.Close()
		return nil, fmt.Errorf("systemd does not answer over D-Bus: %w", err)
	}
	return s, nil
}
