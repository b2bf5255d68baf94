package benchsuite

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// GuestReady is what the test guest's init prints on its console once
// userspace runs (scripts/guest.sh).
const GuestReady = "BLIXARD-GUEST-READY"

// markerPoll is how often both sides of the boot comparison look at
// their console file: the same detector on both, so the ratio measures
// orchestration, not detection.
const markerPoll = 10 * time.Millisecond

// waitForMarker polls the file at path every markerPoll until it
// contains marker, and returns when it saw it. abort is checked on every
// poll; a non-nil error from it ends the wait.
func waitForMarker(ctx context.Context, path, marker string, timeout time.Duration, abort func() error) (time.Time, error) {
	deadline := time.Now().Add(timeout)
	var off int64
	var carry []byte
	for {
		if f, err := os.Open(path); err == nil {
			if _, err := f.Seek(off, io.SeekStart); err == nil {
				b, _ := io.ReadAll(f)
				off += int64(len(b))
				buf := append(carry, b...)
				if bytes.Contains(buf, []byte(marker)) {
					f.Close()
					return time.Now(), nil
				}
				if k := len(marker) - 1; len(buf) > k {
					carry = append([]byte(nil), buf[len(buf)-k:]...)
				} else {
					carry = buf
				}
			}
			f.Close()
		}
		if err := abort(); err != nil {
			return time.Time{}, err
		}
		if time.Now().After(deadline) {
			return time.Time{}, fmt.Errorf("no %s in %s after %s", marker, path, timeout)
		}
		select {
		case <-ctx.Done():
			return time.Time{}, ctx.Err()
		case <-time.After(markerPoll):
		}
	}
}

// QemuPids returns the pids of live (not zombie) qemu processes whose
// command line names a file under dir, sorted. The CLI's qemu tests use it
// too.
func QemuPids(dir string) []int {
	dir = filepath.Clean(dir) + string(filepath.Separator)
	ents, _ := os.ReadDir("/proc")
	var pids []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		argv := procArgv(pid)
		if len(argv) == 0 || !strings.Contains(filepath.Base(argv[0]), "qemu-system") {
			continue
		}
		if st, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid)); err == nil {
			if i := bytes.LastIndexByte(st, ')'); i > 0 && i+2 < len(st) && st[i+2] == 'Z' {
				continue
			}
		}
		for _, a := range argv[1:] {
			if strings.Contains(a, dir) {
				pids = append(pids, pid)
				break
			}
		}
	}
	sort.Ints(pids)
	return pids
}

func procArgv(pid int) []string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil || len(b) == 0 {
		return nil
	}
	return strings.Split(strings.TrimRight(string(b), "\x00"), "\x00")
}

// bootAgent is a single-node `blixard run --driver qemu` process.
type bootAgent struct {
	e       *env
	dir     string
	api     string
	dataDir string
	p       *proc
	// cg holds cgroups with the limits of the last A's qemu, for B′.
	cg *cgroupCopy
}

func startBootAgent(ctx context.Context, e *env) (*bootAgent, error) {
	dir, err := os.MkdirTemp(e.work, "boot-")
	if err != nil {
		return nil, err
	}
	addrs, err := freeAddrs(3)
	if err != nil {
		return nil, err
	}
	a := &bootAgent{e: e, dir: dir, api: addrs[0], dataDir: filepath.Join(dir, "node1")}
	a.p, err = startProc(filepath.Join(dir, "node1.log"), e.cfg.Bin, "run",
		"--node-id", "1", "--initial-cluster", "1="+addrs[1],
		"--driver", "qemu", "--accel", "tcg", "--no-network",
		"--data-dir", a.dataDir, "--api-addr", addrs[0], "--raft-addr", addrs[1], "--gossip-addr", addrs[2],
		"--log-format", "json")
	if err != nil {
		return nil, err
	}
	err = poll(ctx, time.Minute, "the qemu agent's API", func() (bool, error) {
		if a.p.exited() {
			return false, fmt.Errorf("agent exited: %s", oneLine(a.p.logTail(2048)))
		}
		_, _, err := a.cli(ctx, "vm", "list")
		return err == nil, nil
	})
	if err != nil {
		a.stop()
		return nil, err
	}
	return a, nil
}

func (a *bootAgent) stop() {
	a.p.stop(20 * time.Second)
	for _, pid := range QemuPids(a.dataDir) {
		syscall.Kill(pid, syscall.SIGKILL)
	}
}

func (a *bootAgent) cli(ctx context.Context, args ...string) (string, string, error) {
	cmd := exec.CommandContext(ctx, a.e.cfg.Bin, append([]string{"--addr", a.api}, args...)...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	if err != nil {
		err = fmt.Errorf("blixard %s: %v: %s", strings.Join(args, " "), err, oneLine(errb.String()))
	}
	return out.String(), errb.String(), err
}

// bootA boots VM name through the agent: from exec of `vm create --wait`
// to READY on its console file.
// bootCPU is the CPU time spent during one boot, up to READY.
type bootCPU struct {
	qemu, agent, cli time.Duration
}

func (a *bootAgent) bootA(ctx context.Context, name, kernel, initrd string) (time.Duration, []string, bootCPU, error) {
	var cpu bootCPU
	vmDir := filepath.Join(a.dataDir, "vms", name)
	console := filepath.Join(vmDir, "console.log")
	cmd := exec.CommandContext(ctx, a.e.cfg.Bin, "--addr", a.api, "vm", "create", name, "--kernel", kernel, "--initrd", initrd,
		"--memory", "128", "--restart", "never", "--wait", "--timeout", "2m")
	var errb bytes.Buffer
	cmd.Stderr = &errb
	agentPid := a.p.cmd.Process.Pid
	agent0, children0 := procCPU(agentPid), childrenCPU()
	t0 := time.Now()
	if err := cmd.Start(); err != nil {
		return 0, nil, cpu, err
	}
	cliDone := make(chan error, 1)
	go func() { cliDone <- cmd.Wait() }()
	var cliErr error
	cliExited := false
	seen, err := waitForMarker(ctx, console, GuestReady, 3*time.Minute, func() error {
		if cliExited {
			return nil
		}
		select {
		case cliErr = <-cliDone:
			cliExited = true
			if cliErr != nil {
				return fmt.Errorf("vm create: %v: %s", cliErr, oneLine(errb.String()))
			}
		default:
		}
		return nil
	})
	if err != nil {
		return 0, nil, cpu, err
	}
	d := seen.Sub(t0)
	pids := QemuPids(vmDir)
	if len(pids) != 1 {
		return 0, nil, cpu, fmt.Errorf("want one qemu for %s, found %v", name, pids)
	}
	cpu.qemu, cpu.agent = procCPU(pids[0]), procCPU(agentPid)-agent0
	if cg, err := copyCgroups(pids[0], "bench-hand-"+name); err == nil {
		a.cg = cg
	} else {
		a.e.log("boot: cannot copy %s's cgroups for the hand-run twin: %v", name, err)
	}
	if !cliExited {
		if cliErr = <-cliDone; cliErr != nil {
			return 0, nil, cpu, fmt.Errorf("vm create: %v: %s", cliErr, oneLine(errb.String()))
		}
	}
	cpu.cli = childrenCPU() - children0
	argv := procArgv(pids[0])
	if _, _, err := a.cli(ctx, "vm", "delete", name, "--wait", "--timeout", "1m"); err != nil {
		return 0, nil, cpu, err
	}
	err = poll(ctx, time.Minute, name+"'s qemu gone", func() (bool, error) { return len(QemuPids(vmDir)) == 0, nil })
	return d, argv, cpu, err
}

// bootB runs argv (the agent's qemu command line) by hand with every
// mention of fromDir rewritten to toDir: from exec to READY on its
// console file.
func bootB(ctx context.Context, argv []string, fromDir, toDir string, cg *cgroupCopy) (time.Duration, time.Duration, error) {
	if err := os.MkdirAll(toDir, 0o750); err != nil {
		return 0, 0, err
	}
	args := make([]string, len(argv))
	console := ""
	for i, s := range argv {
		args[i] = strings.ReplaceAll(s, fromDir, toDir)
		if c, ok := strings.CutPrefix(args[i], "file,id=console,path="); ok {
			console, _, _ = strings.Cut(c, ",")
		}
	}
	if console == "" {
		return 0, 0, fmt.Errorf("no console file chardev in the agent's qemu argv %q", argv)
	}
	out, err := os.Create(filepath.Join(toDir, "qemu.out"))
	if err != nil {
		return 0, 0, err
	}
	defer out.Close()
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Stdout, cmd.Stderr = out, out
	t0 := time.Now()
	if err := cmd.Start(); err != nil {
		return 0, 0, err
	}
	if cg != nil {
		// As the agent does: the runner moves into its cgroups right
		// after the exec.
		if err := cg.join(cmd.Process.Pid); err != nil {
			cmd.Process.Kill()
			cmd.Wait()
			return 0, 0, fmt.Errorf("joining the cgroups: %w", err)
		}
	}
	exited := make(chan struct{})
	go func() {
		cmd.Wait()
		close(exited)
	}()
	defer func() {
		cmd.Process.Signal(syscall.SIGKILL)
		<-exited
	}()
	seen, err := waitForMarker(ctx, console, GuestReady, 3*time.Minute, func() error {
		select {
		case <-exited:
			b, _ := os.ReadFile(out.Name())
			return fmt.Errorf("hand-run qemu exited before READY: %s", oneLine(string(b)))
		default:
			return nil
		}
	})
	if err != nil {
		return 0, 0, err
	}
	return seen.Sub(t0), procCPU(cmd.Process.Pid), nil
}

// bootSkip says why the boot suite cannot run here, or "".
func bootSkip(kernel, initrd string) string {
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		return "qemu-system-x86_64 not on PATH (Debian: apt-get install qemu-system-x86; `make bench` installs it)"
	}
	if _, err := os.Stat("/proc/self/cmdline"); err != nil {
		return "no /proc to read the agent's qemu command line from"
	}
	for _, p := range []string{kernel, initrd} {
		if _, err := os.Stat(p); err != nil {
			return fmt.Sprintf("test guest missing (%v): build it with scripts/guest.sh or pass --guest-dir", err)
		}
	}
	return ""
}

func runBoot(ctx context.Context, e *env) ([]Table, error) {
	pairs := 5
	if e.quick() {
		pairs = 1
	}
	title := "boot — `vm create --wait` → READY vs the same qemu command by hand → READY"
	guest, err := filepath.Abs(e.cfg.GuestDir)
	if err != nil {
		return nil, err
	}
	kernel, initrd := filepath.Join(guest, "vmlinux"), filepath.Join(guest, "initrd.img")
	if why := bootSkip(kernel, initrd); why != "" {
		e.log("boot: skipped: %s", why)
		return []Table{{Suite: "boot", Title: title, Skipped: why}}, nil
	}
	e.log("boot: starting a single-node qemu agent (TCG)")
	a, err := startBootAgent(ctx, e)
	if err != nil {
		return nil, err
	}
	defer a.stop()
	if !e.quick() {
		// One unmeasured boot first, so that neither side of the first
		// pair pays for a cold page cache (the kernel is 60+ MiB).
		e.log("boot: warm-up boot")
		if _, _, _, err := a.bootA(ctx, "warmup", kernel, initrd); err != nil {
			return nil, fmt.Errorf("warm-up: %w", err)
		}
	}
	var as, bs, ratios, cgRatios []float64
	t := Table{Suite: "boot", Title: title, Header: []string{"pair", "A: blixard", "B: by hand", "A/B", "B′: by hand in A's cgroup limits", "qemu CPU to READY A / B", "agent + CLI CPU during A"}}
	for i := 0; i < pairs; i++ {
		name := fmt.Sprintf("boot%d", i)
		da, argv, ca, err := a.bootA(ctx, name, kernel, initrd)
		if err != nil {
			return nil, fmt.Errorf("pair %d, A: %w", i+1, err)
		}
		db, qb, err := bootB(ctx, argv, filepath.Join(a.dataDir, "vms", name), filepath.Join(a.dir, fmt.Sprintf("hand%d", i)), nil)
		if err != nil {
			return nil, fmt.Errorf("pair %d, B: %w", i+1, err)
		}
		bcg := "—"
		if a.cg != nil {
			dc, _, err := bootB(ctx, argv, filepath.Join(a.dataDir, "vms", name), filepath.Join(a.dir, fmt.Sprintf("handcg%d", i)), a.cg)
			a.cg.remove()
			a.cg = nil
			if err != nil {
				return nil, fmt.Errorf("pair %d, B′: %w", i+1, err)
			}
			rc := da.Seconds() / dc.Seconds()
			cgRatios = append(cgRatios, rc)
			bcg = fmt.Sprintf("%.2f s (A/B′ %.2f)", dc.Seconds(), rc)
		}
		r := da.Seconds() / db.Seconds()
		e.log("boot: pair %d: A %.2fs B %.2fs A/B %.2f", i+1, da.Seconds(), db.Seconds(), r)
		as, bs, ratios = append(as, da.Seconds()), append(bs, db.Seconds()), append(ratios, r)
		t.Rows = append(t.Rows, []string{fmt.Sprint(i + 1), fmt.Sprintf("%.2f s", da.Seconds()), fmt.Sprintf("%.2f s", db.Seconds()), fmt.Sprintf("%.2f", r),
			bcg, fmt.Sprintf("%.2f s / %.2f s", ca.qemu.Seconds(), qb.Seconds()), fmt.Sprintf("%.2f s + %.2f s", ca.agent.Seconds(), ca.cli.Seconds())})
	}
	t.Rows = append(t.Rows, []string{"median", fmt.Sprintf("%.2f s", Median(as)), fmt.Sprintf("%.2f s", Median(bs)), fmt.Sprintf("%.2f", Median(ratios)), medianOr(cgRatios, "A/B′ %.2f"), "", ""})
	t.Targets = []Target{{What: "boot ratio (median A/B) ≤ 1.10", Measured: fmt.Sprintf("%.2f", Median(ratios)), Met: Median(ratios) <= 1.10}}
	if len(cgRatios) > 0 {
		t.Targets = append(t.Targets, Target{What: "boot ratio against qemu under the same cgroup limits (median A/B′) ≤ 1.10", Measured: fmt.Sprintf("%.2f", Median(cgRatios)), Met: Median(cgRatios) <= 1.10})
	}
	t.Notes = []string{fmt.Sprintf("Pairs run interleaved A B A B. A: `blixard vm create --memory 128 --wait` against a single-node "+
		"`blixard run --driver qemu --accel tcg --no-network`, timed from exec of the CLI. B: the qemu argv the agent ran for "+
		"the same pair (read from /proc), state paths rewritten to a fresh directory, timed from exec. Both sides detect "+
		"%s by polling their console file every %s. Guest: build/guest vmlinux + busybox initramfs. The full mode boots once, unmeasured, before the pairs. "+
		"CPU columns: what the guest's qemu had used when READY appeared, and what the agent and the CLI used from exec of the CLI "+
		"to READY (the CLI's once it exited). B′ runs the same argv again, moved right after exec into fresh cgroups next to "+
		"A's with A's CPU and memory limits (the agent puts each VM in <cgroup>/blixard/vm-<name>, CPU quota = vcpus): on a "+
		"loaded host a cgroup-v1 group competes with the root cgroup's tasks as one nice-0 task, so A/B includes that "+
		"scheduling penalty and A/B′ isolates the orchestration.", GuestReady, markerPoll)}
	if errors.Is(ctx.Err(), context.Canceled) {
		return nil, ctx.Err()
	}
	return []Table{t}, nil
}

func medianOr(xs []float64, format string) string {
	if len(xs) == 0 {
		return ""
	}
	return fmt.Sprintf(format, Median(xs))
}
