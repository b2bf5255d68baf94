package main

import (
	"io"
	"log/slog"
	"os/exec"
	"reflect"
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
		{runFlags{driver: "nix", noNetwork: true}, ""},
		{runFlags{driver: "nix"}, "needs root"},
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

func TestNixDriverFlags(t *testing.T) {
	if _, err := exec.LookPath("nix"); err != nil {
		t.Skip("nix is not installed (scripts/nix-deps.sh)")
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	defer func(o []string, e string) { nixOverrideInputs, nixExtraArgs = o, e }(nixOverrideInputs, nixExtraArgs)
	for _, c := range []struct {
		overrides []string
		extra     string
		wantErr   string
	}{
		{[]string{"nixpkgs=path:/srv/nixpkgs"}, "--option sandbox false", ""},
		{[]string{"nixpkgs"}, "", "want name=flake-ref"},
		{nil, "--option sandbox 'false", "unterminated"},
	} {
		nixOverrideInputs, nixExtraArgs = c.overrides, c.extra
		d, err := newDriver(runFlags{driver: "nix", noNetwork: true}, t.TempDir(), log)
		if c.wantErr == "" {
			if err != nil {
				t.Errorf("nix driver with %q, %q: %v", c.overrides, c.extra, err)
			} else if cl, ok := d.(actors.DriverCloser); ok {
				cl.Close()
			}
			continue
		}
		if err == nil || !strings.Contains(err.Error(), c.wantErr) {
			t.Errorf("nix driver with %q, %q: error %v, want one saying %q", c.overrides, c.extra, err, c.wantErr)
		}
	}
}

func TestSplitArgs(t *testing.T) {
	for in, want := range map[string][]string{
		"":                              nil,
		"--option sandbox false":        {"--option", "sandbox", "false"},
		"--option build-users-group ''": {"--option", "build-users-group", ""},
		`a"b c"d 'e f' g\ h "\"q\""`:    {"ab cd", "e f", "g h", `"q"`},
		"  spaced\tout\n":               {"spaced", "out"},
	} {
		got, err := splitArgs(in)
		if err != nil || !reflect.DeepEqual(got, want) {
			t.Errorf("splitArgs(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
}
