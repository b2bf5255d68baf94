package main

import (
	"strings"
	"testing"
)

// TestSimUsageErrors: bad flags of `blixard sim` exit 2 with one line
// naming the problem, before anything starts.
func TestSimUsageErrors(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"sim", "--faults", "crash,meteor"}, `unknown fault "meteor"`},
		{[]string{"sim", "--nodes", "9"}, "nodes 9 out of range: must be 3-7"},
		{[]string{"sim", "--clients", "100"}, "clients 100 out of range: must be 1-64"},
		{[]string{"sim", "--runs", "0"}, "invalid --runs 0"},
		{[]string{"sim", "--duration", "10ms"}, "duration 10ms too short"},
		{[]string{"sim", "--plant", "gremlins"}, `unknown --plant "gremlins"`},
		{[]string{"sim", "--seed", "-1"}, "invalid --seed -1"},
		{[]string{"sim", "extra"}, `unexpected argument "extra"`},
	} {
		out, errOut, code := runCLI(t, nil, tc.args...)
		if code != exitUsage || out != "" || strings.Count(errOut, "\n") != 1 || !strings.Contains(errOut, tc.want) {
			t.Errorf("%v: exit %d, stdout %q, stderr %q; want exit 2 and one line with %q", tc.args, code, out, errOut, tc.want)
		}
	}
}

// TestSimRunsASeed runs one small seed end to end through the CLI.
func TestSimRunsASeed(t *testing.T) {
	out, errOut, code := runCLI(t, nil, "sim", "--seed", "5", "--nodes", "3", "--clients", "2", "--ops", "30",
		"--faults", "none", "--no-migrate", "--report-dir", t.TempDir())
	if code != exitOK {
		t.Fatalf("exit %d\nstdout:\n%s\nstderr:\n%s", code, out, errOut)
	}
	for _, want := range []string{"seed 5: 3 nodes", "ok   linearizable", "ok   single-copy", "ok   durable", "ok   converged"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
}
