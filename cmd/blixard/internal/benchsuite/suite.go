package benchsuite

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime"
	"slices"
	"strings"
	"time"
)

// Suites lists the suites in the order they run.
var Suites = []string{"commit", "boot", "failover", "scale"}

// Config says what to run and with what.
type Config struct {
	// Quick runs every suite with few samples (seconds each, for CI).
	Quick bool
	// Suites to run, a subset of Suites; empty runs all.
	Suites []string
	// Bin is the blixard binary that node and load-generator processes
	// run (normally the running executable).
	Bin string
	// GuestDir holds the test guest, vmlinux and initrd.img
	// (scripts/guest.sh builds it in build/guest).
	GuestDir string
	// WorkDir is the scratch directory (data dirs, logs); a fresh temp
	// dir when empty. It is removed afterwards unless Keep is set.
	WorkDir string
	Keep    bool
	// Log receives progress lines (nil discards them).
	Log io.Writer
}

// CheckSuites returns names as a list of known suites, or an error naming
// the unknown one.
func CheckSuites(names []string) error {
	for _, n := range names {
		if !slices.Contains(Suites, n) {
			return fmt.Errorf("unknown suite %q: want one or more of %s", n, strings.Join(Suites, ","))
		}
	}
	return nil
}

// Table is one suite's result, rendered as a markdown table.
type Table struct {
	Suite   string
	Title   string
	Header  []string
	Rows    [][]string
	Targets []Target
	Notes   []string
	// Skipped is the reason the suite did not run, if it did not.
	Skipped string
}

// Target is one of the targets and whether this run met it.
type Target struct {
	What     string // e.g. "p99 at 64 ≤ 10 ms"
	Measured string // the number measured, e.g. "12.3 ms"
	Met      bool
}

// env is what a running suite needs.
type env struct {
	cfg  Config
	work string
	log  func(format string, args ...any)
}

func (e *env) quick() bool { return e.cfg.Quick }

// Run runs the selected suites one after another and returns their
// tables. A suite that fails yields a table saying so; the returned error
// joins every suite's failure.
func Run(ctx context.Context, cfg Config) ([]Table, error) {
	if err := CheckSuites(cfg.Suites); err != nil {
		return nil, err
	}
	names := cfg.Suites
	if len(names) == 0 {
		names = Suites
	}
	work := cfg.WorkDir
	if work == "" {
		d, err := os.MkdirTemp("", "blixard-bench-")
		if err != nil {
			return nil, err
		}
		work = d
	} else if err := os.MkdirAll(work, 0o750); err != nil {
		return nil, err
	}
	if !cfg.Keep {
		defer os.RemoveAll(work)
	}
	logw := cfg.Log
	if logw == nil {
		logw = io.Discard
	}
	e := &env{cfg: cfg, work: work, log: func(format string, args ...any) {
		fmt.Fprintf(logw, "bench: "+format+"\n", args...)
	}}
	var tables []Table
	var errs []error
	for _, name := range Suites {
		if !slices.Contains(names, name) {
			continue
		}
		if ctx.Err() != nil {
			errs = append(errs, ctx.Err())
			break
		}
		e.log("suite %s (quick=%v)", name, cfg.Quick)
		t0 := time.Now()
		var ts []Table
		var err error
		switch name {
		case "commit":
			ts, err = runCommit(ctx, e)
		case "boot":
			ts, err = runBoot(ctx, e)
		case "failover":
			ts, err = runFailover(ctx, e)
		case "scale":
			ts, err = runScale(ctx, e)
		}
		e.log("suite %s done in %s", name, time.Since(t0).Round(100*time.Millisecond))
		if err != nil {
			errs = append(errs, fmt.Errorf("suite %s: %w", name, err))
			ts = append(ts, Table{Suite: name, Title: name, Notes: []string{"**failed**: " + oneLine(err.Error())}})
		}
		tables = append(tables, ts...)
	}
	return tables, errors.Join(errs...)
}

func oneLine(s string) string { return strings.Join(strings.Fields(s), " ") }

// Markdown renders t.
func (t Table) Markdown() string {
	var b strings.Builder
	fmt.Fprintf(&b, "### %s\n\n", t.Title)
	if t.Skipped != "" {
		fmt.Fprintf(&b, "Skipped: %s\n", t.Skipped)
		return b.String()
	}
	if len(t.Header) > 0 {
		b.WriteString("| " + strings.Join(t.Header, " | ") + " |\n")
		b.WriteString("|" + strings.Repeat("---|", len(t.Header)) + "\n")
		for _, r := range t.Rows {
			b.WriteString("| " + strings.Join(r, " | ") + " |\n")
		}
		b.WriteString("\n")
	}
	for _, tg := range t.Targets {
		verdict := "**missed**"
		if tg.Met {
			verdict = "met"
		}
		fmt.Fprintf(&b, "- target %s: %s (%s)\n", tg.What, verdict, tg.Measured)
	}
	if len(t.Targets) > 0 {
		b.WriteString("\n")
	}
	for _, n := range t.Notes {
		b.WriteString(n + "\n")
	}
	return b.String()
}

// Report renders a whole run: the machine, the mode and every table.
func Report(tables []Table, quick bool, started time.Time, took time.Duration) string {
	var b strings.Builder
	mode := "full"
	if quick {
		mode = "quick"
	}
	fmt.Fprintf(&b, "Run %s UTC, %s mode, %s; `blixard bench`.\n\n", started.UTC().Format("2006-01-02 15:04"), mode, took.Round(time.Second))
	fmt.Fprintf(&b, "Machine: %s\n\n", MachineDescription())
	for _, t := range tables {
		b.WriteString(t.Markdown())
		b.WriteString("\n")
	}
	return b.String()
}

// MachineDescription is a one-line description of this machine: CPUs,
// memory, OS, kernel, Go, KVM, load average.
func MachineDescription() string {
	var parts []string
	cpu := "?"
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(l, ":"); ok && strings.TrimSpace(k) == "model name" {
				cpu = strings.TrimSpace(v)
				break
			}
		}
	}
	parts = append(parts, fmt.Sprintf("%d × %s", runtime.NumCPU(), cpu))
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		var kb int64
		fmt.Sscanf(string(b), "MemTotal: %d kB", &kb)
		parts = append(parts, fmt.Sprintf("%.1f GiB RAM", float64(kb)/(1<<20)))
	}
	if b, err := os.ReadFile("/etc/os-release"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(l, "PRETTY_NAME="); ok {
				parts = append(parts, strings.Trim(v, `"`))
			}
		}
	}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		parts = append(parts, "Linux "+strings.TrimSpace(string(b)))
	}
	parts = append(parts, runtime.Version())
	if f, err := os.OpenFile("/dev/kvm", os.O_RDWR, 0); err == nil {
		f.Close()
		parts = append(parts, "/dev/kvm present")
	} else {
		parts = append(parts, "no /dev/kvm (qemu under TCG)")
	}
	if b, err := os.ReadFile("/proc/loadavg"); err == nil {
		f := strings.Fields(string(b))
		if len(f) >= 3 {
			parts = append(parts, "load average "+strings.Join(f[:3], " ")+" at the end")
		}
	}
	return strings.Join(parts, ", ")
}

// Doc markers delimit the generated part of docs/benchmarks.md.
const (
	DocBegin = "<!-- blixard bench: generated, begin -->"
	DocEnd   = "<!-- blixard bench: generated, end -->"
)

// WriteDoc replaces the generated part of the markdown file at path with
// report, keeping everything outside the markers. A file without markers
// gets the generated part after its first line (its title) and keeps the
// rest below.
func WriteDoc(path, report string) error {
	old, err := os.ReadFile(path)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	gen := DocBegin + "\n\n" + report + DocEnd + "\n"
	s := string(old)
	var out string
	i, j := strings.Index(s, DocBegin), strings.Index(s, DocEnd)
	switch {
	case i >= 0 && j > i:
		out = s[:i] + gen + "\n" + strings.TrimLeft(s[j+len(DocEnd):], "\n")
	case s == "":
		out = "# Benchmarks\n\n" + gen
	default:
		title, rest, _ := strings.Cut(s, "\n")
		out = title + "\n\n" + gen + "\n" + strings.TrimLeft(rest, "\n")
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(out), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}
