package systemd

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/blixard/blixard/microvm/qemu"
)

// cgroupRoot is where the cgroup hierarchies are mounted; tests replace it.
var cgroupRoot = "/sys/fs/cgroup"

// cpuPeriodUS is the CFS period the exec limits use: vcpus × 100 % is a
// quota of vcpus × period.
const cpuPeriodUS = 100000

// LimitedExec is the exec supervisor for hosts without systemd as PID 1,
// with the VM's limits written to cgroups where the host lets us: the
// runner starts as qemu.ExecSupervisor starts it, then moves into the
// cgroup <Parent>/vm-<name> (cgroup v2: memory.max and cpu.max; v1: the
// memory and cpu hierarchies) with the same MemoryMax and CPU quota the
// systemd supervisor sets. When the cgroups cannot be written (read-only
// /sys/fs/cgroup, no root, controllers not delegated) the VM runs anyway
// and the supervisor logs that the limits are not enforced. The limits
// apply from a moment after the exec (microseconds to milliseconds: the
// time to write a few files), which is before qemu allocates guest memory.
type LimitedExec struct {
	qemu.ExecSupervisor
	// Parent is the cgroup the VMs' cgroups are made under; "" means "blixard".
	Parent string
	// Logger receives "limits not enforced" warnings; nil discards them.
	Logger *slog.Logger
}

var _ qemu.ResourceSupervisor = (*LimitedExec)(nil)

// StartVM implements qemu.ResourceSupervisor.
func (e *LimitedExec) StartVM(ctx context.Context, dir string, argv []string, logPath string, res qemu.Resources) (qemu.Process, error) {
	p, err := e.ExecSupervisor.Start(ctx, dir, argv, logPath)
	if err != nil {
		return nil, err
	}
	name := res.Name
	if name == "" {
		name = filepath.Base(dir)
	}
	if res.MemoryMB == 0 && res.Vcpus == 0 {
		return p, nil
	}
	log := e.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	paths, err := applyLimits(cgroupRoot, e.parent(), "vm-"+name, p.PID(), res)
	if err != nil {
		log.Warn("exec: cgroup limits not enforced", "vm", name, "err", err)
	}
	go func() {
		<-p.Done()
		for _, d := range paths {
			os.Remove(d) // an empty cgroup is removed with rmdir
		}
	}()
	return p, nil
}

func (e *LimitedExec) parent() string {
	if e.Parent == "" {
		return "blixard"
	}
	return e.Parent
}

// applyLimits makes the cgroup name under parent with res's limits and
// moves pid into it; it returns the cgroup directories it made (for
// removal once the process is gone).
func applyLimits(root, parent, name string, pid int, res qemu.Resources) ([]string, error) {
	if _, err := os.Stat(filepath.Join(root, "cgroup.controllers")); err == nil {
		d, err := applyV2(root, parent, name, pid, res)
		if d == "" {
			return nil, err
		}
		return []string{d}, err
	}
	return applyV1(root, parent, name, pid, res)
}

func applyV2(root, parent, name string, pid int, res qemu.Resources) (string, error) {
	var ctrls []string
	if res.MemoryMB > 0 {
		ctrls = append(ctrls, "+memory")
	}
	if res.Vcpus > 0 {
		ctrls = append(ctrls, "+cpu")
	}
	// Controllers must be enabled in every ancestor's subtree_control.
	for _, d := range []string{root, filepath.Join(root, parent)} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return "", err
		}
		if err := writeFile(filepath.Join(d, "cgroup.subtree_control"), strings.Join(ctrls, " ")); err != nil {
			return "", err
		}
	}
	d := filepath.Join(root, parent, name)
	if err := os.MkdirAll(d, 0o755); err != nil {
		return "", err
	}
	if res.MemoryMB > 0 {
		if err := writeFile(filepath.Join(d, "memory.max"), strconv.FormatUint(MemoryMax(res.MemoryMB), 10)); err != nil {
			return d, err
		}
	}
	if res.Vcpus > 0 {
		quota := fmt.Sprintf("%d %d", uint64(res.Vcpus)*cpuPeriodUS, cpuPeriodUS)
		if err := writeFile(filepath.Join(d, "cpu.max"), quota); err != nil {
			return d, err
		}
	}
	return d, writeFile(filepath.Join(d, "cgroup.procs"), strconv.Itoa(pid))
}

// v1Knobs are the files of one cgroup v1 hierarchy that carry a limit.
type v1Knobs struct {
	hierarchy string
	files     [][2]string // file, value
}

func applyV1(root, parent, name string, pid int, res qemu.Resources) ([]string, error) {
	var plan []v1Knobs
	if res.MemoryMB > 0 {
		plan = append(plan, v1Knobs{"memory", [][2]string{
			{"memory.limit_in_bytes", strconv.FormatUint(MemoryMax(res.MemoryMB), 10)},
		}})
	}
	if res.Vcpus > 0 {
		plan = append(plan, v1Knobs{"cpu", [][2]string{
			{"cpu.cfs_period_us", strconv.Itoa(cpuPeriodUS)},
			{"cpu.cfs_quota_us", strconv.FormatUint(uint64(res.Vcpus)*cpuPeriodUS, 10)},
		}})
	}
	var made []string
	for _, h := range plan {
		base := filepath.Join(root, h.hierarchy)
		if _, err := os.Stat(base); err != nil {
			return made, fmt.Errorf("no cgroup v1 %s hierarchy at %s", h.hierarchy, base)
		}
		d := filepath.Join(base, parent, name)
		if err := os.MkdirAll(d, 0o755); err != nil {
			return made, err
		}
		made = append(made, d)
		for _, f := range h.files {
			if err := writeFile(filepath.Join(d, f[0]), f[1]); err != nil {
				return made, err
			}
		}
		if err := writeFile(filepath.Join(d, "cgroup.procs"), strconv.Itoa(pid)); err != nil {
			return made, err
		}
	}
	if len(made) == 0 {
		return nil, errors.New("no limits to apply")
	}
	return made, nil
}

// writeFile writes value to an existing cgroup file (never creates one).
func writeFile(path, value string) error {
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	if _, err := f.WriteString(value); err != nil {
		f.Close()
		return fmt.Errorf("writing %q to %s: %w", value, path, err)
	}
	return f.Close()
}
