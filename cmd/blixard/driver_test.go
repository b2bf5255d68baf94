package main

import (
	"io"
	"log/slog"
	"strings"
	"testing"

	"github.com/blixard/blixard/actors"
)

func TestNewDriver(t *testing.T) {
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	defer func(g func() int) { geteuid = g }(geteuid)
	geteuid = func() int { return 1000 }

	for _, c := range []struct {
		f       runFlags
		wantErr string
	}{
		{runFlags{driver: "fake", nodeID: 1}, ""},
		{runFlags{driver: "qemu", accel: "tcg", noNetwork: true}, ""},
		{runFlags{driver: "qemu", accel: "tcg"}, "needs root"},
		{runFlags{driver: "nix"}, "not available"},
	} {
		d, err := newDriver(c.f, t.TempDir(), log)
		if c.wantErr == "" {
			if err != nil || d == nil {
				t.Errorf("newDriver(%+v) = %v, %v", c.f, d, err)
			}
			if cl, ok := d.(actors.DriverCloser); ok {
				cl.Close()
			}
			continue
		}
		if err == nil || !strings.Contains(err.Error(), c.wantErr) {
			t.Errorf("newDriver(%+v) error = %v, want one saying %q", c.f, err, c.wantErr)
		}
		if c.wantErr == "needs root" && !strings.Contains(err.Error(), "--no-network") {
			t.Errorf("the not-root error does not offer --no-network: %v", err)
		}
	}
}

func TestVMGateway(t *testing.T) {
	for in, want := range map[string]string{"": "10.0.0.1", "10.0.0.0/24": "10.0.0.1", "10.9.8.7/16": "10.9.0.1", "fd00::/64": ""} {
		if got := vmGateway(in); got != want {
			t.Errorf("vmGateway(%q) = %q, want %q", in, got, want)
		}
	}
}
