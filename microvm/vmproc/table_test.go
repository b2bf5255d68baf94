package vmproc

import (
	"os"
	"path/filepath"
	"testing"
)

func TestClassify(t *testing.T) {
	dir := t.TempDir()
	old := "Kernel panic - not syncing: an earlier run\n"
	if err := os.WriteFile(filepath.Join(dir, ConsoleFile), []byte(old+"qemu-system-x86_64: terminating on signal 15\n"), 0o640); err != nil {
		t.Fatal(err)
	}
	v := &VM{Name: "web", Dir: dir}
	signs := []Sign{{Text: "terminating on signal", Guest: "terminated from outside"}}
	for _, tc := range []struct {
		name     string
		signs    []Sign
		stopping string
		st       ProcessStatus
		reason   string
		clean    bool
	}{
		{"requested stop", nil, "stopped", ProcessStatus{Known: true, Signal: "SIGKILL", Code: -1}, "stopped", true},
		{"only this run's output counts", nil, "", ProcessStatus{Known: true}, "runner exited cleanly", true},
		{"driver sign", signs, "", ProcessStatus{Known: true}, "terminated from outside", false},
		{"exit code", nil, "", ProcessStatus{Known: true, Code: 1}, "runner exited with code 1: qemu-system-x86_64: terminating on signal 15", false},
		{"signal", nil, "", ProcessStatus{Known: true, Code: -1, Signal: "SIGSEGV"}, "killed by SIGSEGV", false},
		{"adopted", nil, "", ProcessStatus{Code: -1}, "exited (re-adopted process: exit status unknown)", false},
	} {
		tb := New(Config{Process: "runner", Signs: tc.signs}, nil)
		e := tb.classify(v, &run{logStart: int64(len(old)), stopping: tc.stopping}, tc.st)
		if e.Reason != tc.reason || e.Clean != tc.clean {
			t.Errorf("%s: exit %q clean=%v, want %q clean=%v", tc.name, e.Reason, e.Clean, tc.reason, tc.clean)
		}
		tb.Close()
	}
}
