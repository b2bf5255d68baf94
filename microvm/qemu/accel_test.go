package qemu

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestParseAccel(t *testing.T) {
	for in, want := range map[string]Accel{"": AccelAuto, "auto": AccelAuto, "KVM": AccelKVM, " tcg ": AccelTCG} {
		if got, err := ParseAccel(in); err != nil || got != want {
			t.Errorf("ParseAccel(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	if _, err := ParseAccel("hvf"); err == nil || !strings.Contains(err.Error(), "auto, kvm or tcg") {
		t.Errorf("ParseAccel(hvf): err = %v", err)
	}
}

func TestParseCPUMHz(t *testing.T) {
	got, err := parseCPUMHz(strings.NewReader("processor\t: 0\nmodel name\t: AMD EPYC\ncpu MHz\t\t: 2096.014\ncpu MHz\t\t: 1.0\n"))
	if err != nil || got != 2096014 {
		t.Fatalf("parseCPUMHz = %d, %v; want 2096014", got, err)
	}
	if _, err := parseCPUMHz(strings.NewReader("processor : 0\n")); err == nil {
		t.Fatal("no cpu MHz line parsed")
	}
}

func TestResolveAccelConfigured(t *testing.T) {
	for _, a := range []Accel{AccelKVM, AccelTCG} {
		if got, _ := ResolveAccel(context.Background(), a, Probe{Binary: "/nonexistent"}); got != a {
			t.Errorf("ResolveAccel(%s) = %s", a, got)
		}
	}
}

// fakeBinary writes an executable shell script standing in for qemu.
func fakeBinary(t *testing.T, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "qemu-fake")
	if err := os.WriteFile(p, []byte("#!/bin/sh\n"+body+"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestResolveAccelAutoFallsBack(t *testing.T) {
	ctx := context.Background()
	// No KVM device at all.
	got, why := ResolveAccel(ctx, AccelAuto, Probe{Device: filepath.Join(t.TempDir(), "kvm"), Kernel: "/k"})
	if got != AccelTCG || !strings.Contains(why, "kvm unusable") {
		t.Errorf("without /dev/kvm: %s (%s), want tcg because kvm is unusable", got, why)
	}
	// The device opens (/dev/null stands in) but qemu fails to start KVM.
	failing := fakeBinary(t, `echo "Could not access KVM kernel module: No such file or directory" >&2; exit 1`)
	got, why = ResolveAccel(ctx, AccelAuto, Probe{Device: "/dev/null", Binary: failing, Kernel: "/k"})
	if got != AccelTCG || !strings.Contains(why, "Could not access KVM") {
		t.Errorf("failing qemu: %s (%s), want tcg with qemu's message", got, why)
	}
	// The guest hangs (nested KVM): the probe times out.
	hanging := fakeBinary(t, `exec sleep 30`)
	start := time.Now()
	got, why = ResolveAccel(ctx, AccelAuto, Probe{Device: "/dev/null", Binary: hanging, Kernel: "/k", Timeout: 300 * time.Millisecond})
	if got != AccelTCG || !strings.Contains(why, "no exit within") {
		t.Errorf("hanging guest: %s (%s), want tcg after a timeout", got, why)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("hanging probe took %s", d)
	}
	// A guest that boots to its panic and exits: KVM is chosen.
	count := filepath.Join(t.TempDir(), "count")
	booting := fakeBinary(t, `echo run >> `+count+`; echo "Kernel panic - not syncing: VFS: Unable to mount root fs"; exit 0`)
	p := Probe{Device: "/dev/null", Binary: booting, Kernel: "/k"}
	got, why = ResolveAccel(ctx, AccelAuto, p)
	if got != AccelKVM || !strings.Contains(why, "booted") {
		t.Errorf("booting guest: %s (%s), want kvm", got, why)
	}
	// The answer is cached per process: the probe does not run again.
	if got2, _ := ResolveAccel(ctx, AccelAuto, p); got2 != AccelKVM {
		t.Errorf("cached answer = %s", got2)
	}
	if b, _ := os.ReadFile(count); strings.Count(string(b), "run") != 1 {
		t.Errorf("probe ran %d times, want once", strings.Count(string(b), "run"))
	}
	// No probe kernel: no probe, TCG.
	if got, why := ResolveAccel(ctx, AccelAuto, Probe{Device: "/dev/null", Binary: booting + "-other"}); got != AccelTCG || !strings.Contains(why, "no probe kernel") {
		t.Errorf("no probe kernel: %s (%s)", got, why)
	}
}
