package nixfiles

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// evalModule evaluates module.nix with Debian's nix-bin against the stub
// module system in testdata/stub-nixos (there is no nixpkgs here) and the
// given NixOS configuration (a Nix expression).
func evalModule(t *testing.T, userConfig string) moduleResult {
	t.Helper()
	nix, err := exec.LookPath("nix-instantiate")
	if err != nil {
		t.Skip("needs nix-instantiate (Debian's nix-bin; scripts/nix-deps.sh installs it)")
	}
	cmd := exec.Command(nix, "--eval", "--strict", "--json",
		"--option", "build-users-group", "",
		filepath.Join("testdata", "stub-nixos", "eval.nix"),
		"--arg", "module", "./module.nix",
		"--arg", "userConfig", userConfig)
	out, err := cmd.Output()
	if err != nil {
		var stderr []byte
		if ee, ok := err.(*exec.ExitError); ok {
			stderr = ee.Stderr
		}
		t.Fatalf("nix-instantiate: %v\n%s", err, stderr)
	}
	var r moduleResult
	if err := json.Unmarshal(out, &r); err != nil {
		t.Fatalf("decoding %s: %v", out, err)
	}
	return r
}

type moduleResult struct {
	Service struct {
		Description           *string           `json:"description"`
		Documentation         []string          `json:"documentation"`
		WantedBy              []string          `json:"wantedBy"`
		Wants                 []string          `json:"wants"`
		After                 []string          `json:"after"`
		StartLimitIntervalSec any               `json:"startLimitIntervalSec"`
		Path                  []string          `json:"path"`
		Environment           map[string]string `json:"environment"`
		ServiceConfig         map[string]any    `json:"serviceConfig"`
	} `json:"service"`
	Firewall struct {
		TCP []int `json:"allowedTCPPorts"`
		UDP []int `json:"allowedUDPPorts"`
	} `json:"firewall"`
	KernelModules []string `json:"kernelModules"`
	NixFeatures   []string `json:"nixFeatures"`
	Tmpfiles      []string `json:"tmpfiles"`
}

// unit is a systemd unit as section → key → values (a key given on
// several lines, or as a space-separated list, collects all its words).
type unit map[string]map[string][]string

func (u unit) add(section, key, value string) {
	if u[section] == nil {
		u[section] = map[string][]string{}
	}
	// systemd reads yes/true and no/false alike.
	switch value {
	case "yes", "true":
		value = "true"
	case "no", "false":
		value = "false"
	}
	u[section][key] = append(u[section][key], strings.Fields(value)...)
}

// parseUnit reads a unit file.
func parseUnit(t *testing.T, path string) unit {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	u := unit{}
	section := ""
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		switch {
		case line == "" || strings.HasPrefix(line, "#"):
		case strings.HasPrefix(line, "["):
			section = strings.Trim(line, "[]")
		default:
			k, v, ok := strings.Cut(line, "=")
			if !ok {
				t.Fatalf("%s: bad line %q", path, line)
			}
			u.add(section, k, v)
		}
	}
	return u
}

// render is the unit NixOS writes for the module's systemd.services entry.
func (r moduleResult) render() unit {
	s := r.Service
	u := unit{}
	if s.Description != nil {
		u.add("Unit", "Description", *s.Description)
	}
	for k, v := range map[string][]string{"Documentation": s.Documentation, "Wants": s.Wants, "After": s.After} {
		if len(v) > 0 {
			u.add("Unit", k, strings.Join(v, " "))
		}
	}
	if s.StartLimitIntervalSec != nil {
		u.add("Unit", "StartLimitIntervalSec", fmt.Sprint(s.StartLimitIntervalSec))
	}
	if len(s.WantedBy) > 0 {
		u.add("Install", "WantedBy", strings.Join(s.WantedBy, " "))
	}
	for k, v := range s.ServiceConfig {
		switch v := v.(type) {
		case []any:
			for _, e := range v {
				u.add("Service", k, fmt.Sprint(e))
			}
		case float64:
			u.add("Service", k, fmt.Sprintf("%d", int64(v)))
		default:
			u.add("Service", k, fmt.Sprint(v))
		}
	}
	return u
}

const enabledConfig = `{
  services.blixard = {
    enable = true;
    package = { outPath = "/nix/store/00000000000000000000000000000000-blixard"; };
    nodeId = 2;
    address = "10.0.0.2";
    join = [ "10.0.0.1:7003" "10.0.0.3:7003" ];
    gossipKeyFile = "/run/keys/blixard-gossip";
    memoryMB = 8192;
    openFirewall = true;
    microvm.overrideInputs = { nixpkgs = "path:/etc/nixpkgs"; };
    extraFlags = [ "--log-level" "debug" ];
  };
  nix.package = "/nix/store/00000000000000000000000000000000-nix";
}`

// TestModuleYieldsThePackagedUnit: the NixOS module's unit is
// packaging/systemd/blixard.service, key for key, except where the node's
// flags travel (ExecStart carries them instead of $BLIXARD_OPTS from
// /etc/default/blixard) and the environment NixOS sets (PATH).
func TestModuleYieldsThePackagedUnit(t *testing.T) {
	r := evalModule(t, enabledConfig)
	got := r.render()
	want := parseUnit(t, filepath.Join("..", "packaging", "systemd", "blixard.service"))

	wantExec := want["Service"]["ExecStart"]
	gotExec := got["Service"]["ExecStart"]
	for _, u := range []unit{got, want} {
		delete(u["Service"], "ExecStart")
		delete(u["Service"], "Environment")
		delete(u["Service"], "EnvironmentFile")
	}
	for _, section := range []string{"Unit", "Service", "Install"} {
		for k, w := range want[section] {
			g, ok := got[section][k]
			if !ok {
				t.Errorf("[%s] %s: the module does not set it (packaged unit: %q)", section, k, w)
				continue
			}
			if !slices.Equal(sorted(g), sorted(w)) {
				t.Errorf("[%s] %s: module %q, packaged unit %q", section, k, g, w)
			}
		}
		for k, g := range got[section] {
			if _, ok := want[section][k]; !ok {
				t.Errorf("[%s] %s=%q: set by the module only", section, k, g)
			}
		}
	}

	// ExecStart: the packaged command with the package's binary and the
	// options as flags in place of $BLIXARD_OPTS.
	if len(wantExec) == 0 || wantExec[0] != "/usr/bin/blixard" || wantExec[len(wantExec)-1] != "$BLIXARD_OPTS" {
		t.Fatalf("packaged ExecStart = %q, want /usr/bin/blixard ... $BLIXARD_OPTS", wantExec)
	}
	prefix := append([]string{"/nix/store/00000000000000000000000000000000-blixard/bin/blixard"}, wantExec[1:len(wantExec)-1]...)
	if len(gotExec) < len(prefix) || !slices.Equal(gotExec[:len(prefix)], prefix) {
		t.Fatalf("module ExecStart = %q, want it to start with %q", gotExec, prefix)
	}
	flags := strings.Join(gotExec[len(prefix):], " ")
	for _, f := range []string{
		"--node-id 2", "--api-addr 10.0.0.2:7001", "--raft-addr 10.0.0.2:7002", "--gossip-addr 10.0.0.2:7003",
		"--driver nix", "--join 10.0.0.1:7003,10.0.0.3:7003", "--gossip-key-file /run/keys/blixard-gossip",
		"--memory-mb 8192", "--nix-override-input 'nixpkgs=path:/etc/nixpkgs'", "--log-level debug",
	} {
		if !strings.Contains(flags, f) {
			t.Errorf("module ExecStart flags %q lack %q", flags, f)
		}
	}
	if strings.Contains(flags, "--vcpus") || strings.Contains(flags, "--initial-cluster") {
		t.Errorf("module ExecStart flags %q carry options that were not set", flags)
	}

	if !slices.Equal(r.Firewall.TCP, []int{7001, 7002, 7003}) || !slices.Equal(r.Firewall.UDP, []int{7003}) {
		t.Errorf("firewall TCP %v UDP %v, want 7001-7003 and 7003", r.Firewall.TCP, r.Firewall.UDP)
	}
	if !slices.Contains(r.NixFeatures, "flakes") || !slices.Contains(r.NixFeatures, "nix-command") {
		t.Errorf("nix experimental features %v: the nix driver needs flakes and nix-command", r.NixFeatures)
	}
	if !slices.Contains(r.Service.Path, "/nix/store/00000000000000000000000000000000-nix") {
		t.Errorf("unit PATH %v lacks nix (the nix driver runs nix build)", r.Service.Path)
	}
	if env := r.Service.Environment; env["NIX_REMOTE"] != "daemon" {
		t.Errorf("unit environment %v: nix must build through the daemon (the store is read-only to the unit)", env)
	}
	if !slices.Contains(r.KernelModules, "tun") {
		t.Errorf("kernel modules %v lack tun", r.KernelModules)
	}
}

// TestModuleOptions: an initial cluster, the qemu driver, no firewall
// opening, a data dir elsewhere, and a disabled module.
func TestModuleOptions(t *testing.T) {
	r := evalModule(t, `{
  services.blixard = {
    enable = true;
    package = { outPath = "/opt/blixard"; };
    nodeId = 1;
    address = "192.168.1.10";
    initialCluster = { "1" = "192.168.1.10:7002"; "2" = "192.168.1.11:7002"; };
    driver = "qemu";
    accel = "tcg";
    vcpus = 4;
    dataDir = "/srv/blixard";
  };
}`)
	execStart := fmt.Sprint(r.Service.ServiceConfig["ExecStart"])
	for _, f := range []string{"--data-dir /srv/blixard", "--initial-cluster '1=192.168.1.10:7002,2=192.168.1.11:7002'", "--driver qemu", "--accel tcg", "--vcpus 4"} {
		if !strings.Contains(execStart, f) {
			t.Errorf("ExecStart %q lacks %q", execStart, f)
		}
	}
	if strings.Contains(execStart, "--join") || strings.Contains(execStart, "--nix-override-input") {
		t.Errorf("ExecStart %q carries options that were not set", execStart)
	}
	if rw := fmt.Sprint(r.Service.ServiceConfig["ReadWritePaths"]); !strings.Contains(rw, "/srv/blixard") {
		t.Errorf("ReadWritePaths %s lack the data dir", rw)
	}
	if !slices.Equal(r.Tmpfiles, []string{"d /srv/blixard 0700 root root -"}) {
		t.Errorf("tmpfiles %q, want the data dir created", r.Tmpfiles)
	}
	if r.Firewall.TCP != nil || r.NixFeatures != nil {
		t.Errorf("firewall %v, nix features %v: set although openFirewall is false and the driver is qemu", r.Firewall, r.NixFeatures)
	}

	off := evalModule(t, `{
  services.blixard = { enable = false; package = { outPath = "/opt/blixard"; }; nodeId = 1; address = "192.168.1.10"; };
}`)
	if off.Service.ServiceConfig["ExecStart"] != nil || off.KernelModules != nil {
		t.Errorf("a disabled module defines the unit: %+v", off)
	}
}

func sorted(s []string) []string {
	c := slices.Clone(s)
	slices.Sort(c)
	return c
}
