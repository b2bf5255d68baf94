package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// Bad `blixard bench` invocations exit 2 with one line naming the problem,
// before any suite starts and without touching the docs.
func TestBenchUsageErrors(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"bench", "--suite", "commit,bogus"}, `invalid --suite: unknown suite "bogus": want one or more of commit,boot,failover,scale`},
		{[]string{"bench", "--quick", "--write", filepath.Join(t.TempDir(), "missing", "b.md")}, `invalid --write`},
		{[]string{"bench", "extra"}, `unexpected argument "extra"`},
		{[]string{"bench", "commit", "--duration", "0s"}, "invalid --duration"},
		{[]string{"bench", "commit", "--batches", "-1"}, "invalid --batches -1: must be 0 or more"},
	} {
		out, errOut, code := runCLI(t, nil, tc.args...)
		if code != exitUsage || !strings.Contains(errOut, tc.want) || strings.Count(errOut, "\n") != 1 || out != "" {
			t.Errorf("blixard %s: exit %d, stdout %q, stderr %q; want exit 2 and %q", strings.Join(tc.args, " "), code, out, errOut, tc.want)
		}
	}
}

// The quick mode writes no file unless --write names one.
func TestBenchQuickWritesNothingByDefault(t *testing.T) {
	t.Chdir(t.TempDir())
	if err := os.Mkdir("docs", 0o755); err != nil {
		t.Fatal(err)
	}
	// The scale suite alone, with nothing else to start; quick.
	out, errOut, code := runCLI(t, nil, "bench", "--quick", "--suite", "scale")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	if !strings.Contains(out, "### scale") || !strings.Contains(out, "RSS per VM actor") {
		t.Fatalf("no scale table in:\n%s", out)
	}
	if _, err := os.Stat(filepath.Join("docs", "benchmarks.md")); !os.IsNotExist(err) {
		t.Fatalf("quick mode wrote docs/benchmarks.md (stat: %v)", err)
	}
}
