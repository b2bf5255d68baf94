package qemu

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Accel is a qemu accelerator choice.
type Accel string

const (
	// AccelAuto uses KVM when a probe guest boots under it, else TCG.
	AccelAuto Accel = "auto"
	// AccelKVM is hardware virtualisation through /dev/kvm.
	AccelKVM Accel = "kvm"
	// AccelTCG is qemu's software emulation: slow, but works everywhere.
	AccelTCG Accel = "tcg"
)

// ParseAccel accepts "auto", "kvm" and "tcg" ("" means auto).
func ParseAccel(s string) (Accel, error) {
	switch a := Accel(strings.ToLower(strings.TrimSpace(s))); a {
	case "":
		return AccelAuto, nil
	case AccelAuto, AccelKVM, AccelTCG:
		return a, nil
	}
	return "", fmt.Errorf("accelerator %q: want auto, kvm or tcg", s)
}

// Probe configures how AccelAuto decides. The zero value probes with
// qemu-system-x86_64, /dev/kvm and a 15 s timeout, but needs a Kernel.
type Probe struct {
	// Binary is the qemu binary; empty means qemu-system-x86_64.
	Binary string
	// Kernel is booted without an initrd under KVM: a kernel that boots
	// panics at "unable to mount root fs" and, with panic=-1 and
	// -no-reboot, qemu exits on its own. A guest that hangs under nested
	// KVM never gets there.
	Kernel string
	// Device is the KVM device; empty means /dev/kvm.
	Device string
	// Timeout bounds the probe boot; zero means 15 s.
	Timeout time.Duration
	// Logger receives the decision and its reason; nil means slog.Default().
	Logger *slog.Logger
}

type probeKey struct{ binary, kernel, device string }

type probeResult struct {
	accel  Accel
	reason string
}

var (
	probeMu    sync.Mutex
	probeCache = map[probeKey]probeResult{}
)

// ResolveAccel turns want into a concrete accelerator. kvm and tcg are
// returned as they are; auto runs the probe once per process (per binary,
// kernel and device; later calls reuse the answer) and falls back to TCG,
// logging why, when KVM cannot open or does not boot the probe kernel.
func ResolveAccel(ctx context.Context, want Accel, p Probe) (Accel, string) {
	switch want {
	case AccelKVM, AccelTCG:
		return want, "configured"
	}
	if p.Device == "" {
		p.Device = "/dev/kvm"
	}
	if p.Binary == "" {
		p.Binary = "qemu-system-x86_64"
	}
	log := p.Logger
	if log == nil {
		log = slog.Default()
	}
	key := probeKey{p.Binary, p.Kernel, p.Device}
	probeMu.Lock()
	defer probeMu.Unlock()
	if r, ok := probeCache[key]; ok {
		return r.accel, r.reason
	}
	r := probeKVM(ctx, p)
	if ctx.Err() != nil {
		// A cancelled probe decides nothing; do not cache it.
		return r.accel, r.reason
	}
	probeCache[key] = r
	log.Info("qemu accelerator chosen", "accel", string(r.accel), "reason", r.reason)
	return r.accel, r.reason
}

func probeKVM(ctx context.Context, p Probe) probeResult {
	tcg := func(format string, a ...any) probeResult {
		return probeResult{AccelTCG, fmt.Sprintf(format, a...)}
	}
	f, err := os.OpenFile(p.Device, os.O_RDWR, 0)
	if err != nil {
		return tcg("kvm unusable: %v", err)
	}
	f.Close()
	if p.Kernel == "" {
		return tcg("kvm not probed: no probe kernel configured")
	}
	timeout := p.Timeout
	if timeout == 0 {
		timeout = 15 * time.Second
	}
	start := time.Now()
	ok, detail := bootToPanic(ctx, p.Binary, AccelKVM, p.Kernel, 0, timeout)
	if !ok {
		return tcg("kvm probe failed: %s", detail)
	}
	return probeResult{AccelKVM, fmt.Sprintf("kvm probe kernel booted and exited in %s", time.Since(start).Round(time.Millisecond))}
}

// bootToPanic boots kernel with no root file system under accel and
// reports whether qemu exited on its own (the kernel panicked, rebooted,
// and -no-reboot ended qemu) within timeout. detail says why not.
func bootToPanic(ctx context.Context, binary string, accel Accel, kernel string, tscKHz uint64, timeout time.Duration) (bool, string) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	cpu := "max"
	if accel == AccelKVM {
		cpu = "host,+x2apic,-sgx"
	}
	cmdline := "console=ttyS0 reboot=t panic=-1 root=/dev/null"
	if accel == AccelTCG && tscKHz > 0 {
		cmdline += " tsc_early_khz=" + strconv.FormatUint(tscKHz, 10)
	}
	var out bytes.Buffer
	cmd := exec.CommandContext(ctx, binary,
		"-M", "microvm,accel="+string(accel)+",acpi=on,pic=off,pit=off,rtc=on,usb=off",
		"-cpu", cpu, "-m", "128M", "-smp", "1",
		"-nodefaults", "-no-user-config", "-no-reboot", "-nographic",
		"-kernel", kernel, "-append", cmdline,
		"-serial", "stdio")
	cmd.Stdout = &out
	cmd.Stderr = &out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.WaitDelay = time.Second
	err := cmd.Run()
	switch {
	case ctx.Err() != nil:
		return false, fmt.Sprintf("no exit within %s (guest hangs; nested KVM?); last output: %q", timeout, lastLine(out.Bytes()))
	case err != nil:
		return false, fmt.Sprintf("%v: %q", err, lastLine(out.Bytes()))
	case !bytes.Contains(out.Bytes(), []byte("Kernel panic")):
		return false, fmt.Sprintf("qemu exited before the kernel panicked: %q", lastLine(out.Bytes()))
	}
	return true, ""
}

func lastLine(b []byte) string {
	b = bytes.TrimRight(b, "\r\n")
	if i := bytes.LastIndexByte(b, '\n'); i >= 0 {
		b = b[i+1:]
	}
	return strings.TrimSpace(string(b))
}

var (
	tscOnce sync.Once
	tscKHz  uint64
)

// HostTSCKHz returns the host's TSC frequency in kHz (what a TCG guest's
// rdtsc counts in), read once from /proc/cpuinfo; 0 when unknown.
func HostTSCKHz() uint64 {
	tscOnce.Do(func() {
		f, err := os.Open("/proc/cpuinfo")
		if err != nil {
			return
		}
		defer f.Close()
		tscKHz, _ = parseCPUMHz(f)
	})
	return tscKHz
}

// parseCPUMHz reads the first "cpu MHz" line of a /proc/cpuinfo listing.
func parseCPUMHz(r io.Reader) (uint64, error) {
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok || strings.TrimSpace(k) != "cpu MHz" {
			continue
		}
		mhz, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
		if err != nil || mhz <= 0 {
			return 0, fmt.Errorf("cpu MHz %q: bad value", v)
		}
		return uint64(mhz*1000 + 0.5), nil
	}
	if err := sc.Err(); err != nil {
		return 0, err
	}
	return 0, errors.New("no cpu MHz line")
}
