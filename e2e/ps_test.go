package e2e

// The ground truth of "no VM ever ran twice": parsing ps in a host and
// finding overlapping runs. No build tag: these tests run in `make test`.

import (
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"
)

// QemuProc is a qemu process seen in a host.
type QemuProc struct {
	PID  int
	Name string // the VM's name (qemu -name)
}

// parseQemus picks the live qemu processes out of `ps -eo pid=,stat=,args=`.
func parseQemus(ps string) []QemuProc {
	var procs []QemuProc
	for _, line := range strings.Split(ps, "\n") {
		f := strings.Fields(line)
		if len(f) < 3 || !strings.Contains(f[2], "qemu-system") || strings.HasPrefix(f[1], "Z") {
			continue
		}
		pid, err := strconv.Atoi(f[0])
		if err != nil {
			continue
		}
		p := QemuProc{PID: pid}
		for i := 3; i+1 < len(f); i++ {
			if f[i] == "-name" {
				p.Name = strings.SplitN(f[i+1], ",", 2)[0]
			}
		}
		procs = append(procs, p)
	}
	return procs
}

// psSample is one timestamped ps of one host.
type psSample struct {
	at     time.Time
	stream int            // which ps stream of the host (a new one after the host was down)
	vms    map[string]int // vm name -> qemu pid
}

// psRun is one observed run of a VM: consecutive samples of one host that
// show it with one pid.
type psRun struct {
	host        string
	pid         int
	first, last time.Time
}

// runsOf returns each VM's observed runs from each host's samples (in
// time order).
func runsOf(samples map[string][]psSample) map[string][]psRun {
	runs := map[string][]psRun{}
	for host, ss := range samples {
		open := map[string]*psRun{}
		for _, sm := range ss {
			for vm, r := range open {
				if pid, ok := sm.vms[vm]; !ok || pid != r.pid {
					runs[vm] = append(runs[vm], *r)
					delete(open, vm)
				}
			}
			for vm, pid := range sm.vms {
				if r, ok := open[vm]; ok {
					r.last = sm.at
				} else {
					open[vm] = &psRun{host: host, pid: pid, first: sm.at, last: sm.at}
				}
			}
		}
		for vm, r := range open {
			runs[vm] = append(runs[vm], *r)
		}
	}
	return runs
}

// overlaps describes every pair of one VM's runs on two hosts that overlap
// in time: proof that it ran twice, since observed runs lie inside real ones.
func overlaps(runs map[string][]psRun) []string {
	var out []string
	for vm, rs := range runs {
		for i := range rs {
			for j := i + 1; j < len(rs); j++ {
				a, b := rs[i], rs[j]
				if a.host != b.host && !a.last.Before(b.first) && !b.last.Before(a.first) {
					out = append(out, fmt.Sprintf("vm %s ran twice: on %s (pid %d) %s–%s and on %s (pid %d) %s–%s",
						vm, a.host, a.pid, a.first.Format("15:04:05.000"), a.last.Format("15:04:05.000"),
						b.host, b.pid, b.first.Format("15:04:05.000"), b.last.Format("15:04:05.000")))
				}
			}
		}
	}
	return out
}

func TestParseQemus(t *testing.T) {
	ps := `    1 Ss   /sbin/init
  167 Sl   /usr/bin/qemu-system-x86_64 -name web -M microvm,accel=tcg -m 128M
  168 Z    [qemu-system-x86] <defunct>
  201 S    grep qemu-system
  305 Sl   /usr/bin/qemu-system-x86_64 -M microvm -name db`
	got := parseQemus(ps)
	want := []QemuProc{{PID: 167, Name: "web"}, {PID: 305, Name: "db"}}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("parseQemus = %v, want %v", got, want)
	}
}

func TestOverlaps(t *testing.T) {
	t0 := time.Unix(1000, 0)
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	s := func(ms int, vms map[string]int) psSample { return psSample{at: at(ms), vms: vms} }
	// web moves from h1 to h2 with a gap: one run on each, no overlap.
	moved := map[string][]psSample{
		"h1": {s(0, map[string]int{"web": 10}), s(100, map[string]int{"web": 10}), s(200, nil), s(300, nil)},
		"h2": {s(50, nil), s(150, nil), s(250, map[string]int{"web": 20}), s(350, map[string]int{"web": 20})},
	}
	runs := runsOf(moved)
	if len(runs["web"]) != 2 {
		t.Fatalf("runs = %+v, want one run on each host", runs)
	}
	if o := overlaps(runs); len(o) != 0 {
		t.Fatalf("a clean move reported as %q", o)
	}
	// web seen on h2 while h1's run was still going: ran twice.
	twice := map[string][]psSample{
		"h1": {s(0, map[string]int{"web": 10}), s(100, map[string]int{"web": 10}), s(200, map[string]int{"web": 10})},
		"h2": {s(150, map[string]int{"web": 20}), s(250, map[string]int{"web": 20})},
	}
	if o := overlaps(runsOf(twice)); len(o) != 1 || !strings.Contains(o[0], "vm web ran twice: on h") {
		t.Fatalf("overlaps = %q, want one double run of web", o)
	}
	// A restart on the same host (new pid) is two runs there, not a double run.
	restarted := map[string][]psSample{
		"h1": {s(0, map[string]int{"web": 10}), s(100, map[string]int{"web": 11}), s(200, map[string]int{"web": 11})},
	}
	if r := runsOf(restarted)["web"]; len(r) != 2 || overlaps(runsOf(restarted)) != nil {
		t.Fatalf("restart on one host: runs %+v", r)
	}
}
