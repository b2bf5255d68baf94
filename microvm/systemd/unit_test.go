package systemd

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

var update = flag.Bool("update", false, "rewrite testdata/*.golden from the current output")

// render prints properties one a line as `Name (D-Bus signature) = value
// as JSON`, so the golden files show the wire type of every value.
func render(t *testing.T, spec UnitSpec) string {
	var b strings.Builder
	for _, p := range Properties(spec) {
		v, err := json.Marshal(p.Value.Value())
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(&b, "%s (%s) = %s\n", p.Name, p.Value.Signature(), v)
	}
	return b.String()
}

func TestPropertiesGolden(t *testing.T) {
	cases := map[string]UnitSpec{
		"full": {Name: "web", Argv: []string{"/usr/bin/qemu-system-x86_64", "-M", "microvm", "-qmp", "unix:/var/lib/blixard/vms/web/web.sock,server,nowait"},
			Dir: "/var/lib/blixard/vms/web", Vcpus: 2, MemoryMB: 256, Env: []string{"A=1"}, StopTimeout: 10 * time.Second},
		"no-limits": {Name: "bare", Argv: []string{"/bin/sleep", "1000"}, Dir: "/tmp/bare"},
		"quoted":    {Name: "q", Argv: []string{"/bin/sh", "-c", `echo "it's $HOME ${x}"`}, Dir: "/tmp/q dir", Vcpus: 1, MemoryMB: 64},
	}
	for name, spec := range cases {
		t.Run(name, func(t *testing.T) {
			got := render(t, spec)
			path := filepath.Join("testdata", "properties-"+name+".golden")
			if *update {
				if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(path)
			if err != nil {
				t.Fatalf("%v (run with -update to create it)", err)
			}
			if got != string(want) {
				t.Errorf("properties of %s:\n got:\n%s\nwant:\n%s", name, got, want)
			}
		})
	}
}

func TestMemoryMax(t *testing.T) {
	for _, c := range []struct{ mb, want uint64 }{
		{0, 64 << 20},
		{256, (256 + 6 + 64) << 20}, // 2 % of 256 is 5.12, rounded up
		{1000, (1000 + 20 + 64) << 20},
	} {
		if got := MemoryMax(c.mb); got != c.want {
			t.Errorf("MemoryMax(%d) = %d, want %d", c.mb, got, c.want)
		}
	}
}

func TestPropertiesLimits(t *testing.T) {
	props := map[string]any{}
	for _, p := range Properties(UnitSpec{Name: "v", Argv: []string{"/bin/true"}, Dir: "/d", Vcpus: 3, MemoryMB: 512}) {
		props[p.Name] = p.Value.Value()
	}
	if got := props["CPUQuotaPerSecUSec"]; got != uint64(3_000_000) {
		t.Errorf("CPUQuotaPerSecUSec = %v, want 3000000 (3 vcpus × 100 %%)", got)
	}
	if got := props["MemoryMax"]; got != MemoryMax(512) {
		t.Errorf("MemoryMax = %v, want %d", got, MemoryMax(512))
	}
	if got := props["Restart"]; got != "no" {
		t.Errorf("Restart = %v, want no", got)
	}
	if got := props["SyslogIdentifier"]; got != "blixard-vm-v" {
		t.Errorf("SyslogIdentifier = %v", got)
	}
}

func TestSupervisorForExec(t *testing.T) {
	s, err := SupervisorFor(context.Background(), "exec", nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := s.(*LimitedExec); !ok {
		t.Fatalf("exec mode gave %T", s)
	}
	if _, err := SupervisorFor(context.Background(), "bogus", nil); err == nil {
		t.Fatal("unknown mode accepted")
	}
}

func TestSupervisorForWithoutSystemd(t *testing.T) {
	old := booted
	booted = filepath.Join(t.TempDir(), "absent")
	t.Cleanup(func() { booted = old })
	s, err := SupervisorFor(context.Background(), "auto", nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := s.(*LimitedExec); !ok {
		t.Fatalf("auto without systemd gave %T, want exec", s)
	}
	if _, err := SupervisorFor(context.Background(), "systemd", nil); err == nil || !strings.Contains(err.Error(), "not PID 1") {
		t.Fatalf("systemd mode without systemd: err = %v, want 'not PID 1'", err)
	}
}
