package nix

import (
	"bytes"
	"context"
	"encoding/json"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/blixard/blixard/microvm"
	nixfiles "github.com/blixard/blixard/nix"
)

// mappedOptions is the nix expression the golden test applies to the VM
// flake's nixosConfigurations: the microvm.nix options the flake sets.
const mappedOptions = `cs: builtins.mapAttrs (n: s: {
  hostName = s.config.networking.hostName;
  kernelParams = s.config.boot.kernelParams;
  microvm = { inherit (s.config.microvm) hypervisor vcpu mem socket interfaces volumes shares; };
  spec = s.config.blixard.spec;
}) cs`

// hostile holds what an attacker would put into Nix source if values were
// spliced in: quotes, antiquotations, backslashes, newlines, comments.
const hostile = "a\"b${x}c\\d\ne'' ${builtins.abort \"pwned\"} # /* */ `id` $(id)"

var goldenSpecs = map[string]microvm.Spec{
	"minimal": {Name: "web", ID: 1, Kernel: "/boot/vmlinux"},
	"network_volumes": {
		Name: "db-1", ID: 42, Generation: 3, Tenant: "acme", Hypervisor: "qemu", Vcpus: 4, MemoryMB: 1024,
		KernelParams: []string{"quiet", "blixard.role=db"},
		Volumes: []microvm.Volume{
			{Name: "data", SizeMB: 512, MountPoint: "/var/lib/db"},
			{Name: "seed", Image: "/srv/images/seed.img", ReadOnly: true},
		},
		IP: "10.100.0.7", MAC: "02:00:0a:64:00:07", TAP: "vm-42", Gateway: "10.100.0.1",
		Labels: map[string]string{"app": "db"},
	},
	// Not a valid name for the driver (names are DNS labels); the flake
	// must still take every value verbatim.
	"hostile": {
		Name: hostile, ID: 9, Tenant: hostile, Hypervisor: "cloud-hypervisor", Vcpus: 1, MemoryMB: 128,
		Kernel: hostile, Initrd: hostile,
		KernelParams: []string{hostile, `x="${y}"`, `\`, "\n"},
		Volumes:      []microvm.Volume{{Name: hostile, Image: hostile, MountPoint: "/" + hostile, SizeMB: 1}},
		IP:           "10.0.0.2", MAC: "02:00:00:00:00:02", TAP: hostile, Gateway: hostile,
		Labels: map[string]string{hostile: hostile},
	},
}

// evalFlake writes the VM flake with f as vm.json into a temporary dir and
// returns nix eval --json of mappedOptions, with the stub inputs.
func evalFlake(t *testing.T, f vmFile, extra ...string) []byte {
	t.Helper()
	dir := t.TempDir()
	data, err := f.marshal()
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"flake.nix", "flake.lock"} {
		b, err := os.ReadFile(filepath.Join(repoDir(t), "nix/vm-flake", name))
		if err != nil {
			t.Fatal(err)
		}
		emb, err := fs.ReadFile(nixfiles.VMFlake(), name)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(b, emb) {
			t.Fatalf("embedded %s differs from nix/vm-flake/%s", name, name)
		}
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(dir, vmFileName), data, 0o644); err != nil {
		t.Fatal(err)
	}
	opts := stubOptions(t, dir)
	args := []string{"--extra-experimental-features", "nix-command flakes", "eval", "--json"}
	for _, n := range []string{"microvm", "nixpkgs"} {
		args = append(args, "--override-input", n, opts.OverrideInputs[n])
	}
	args = append(args, opts.ExtraArgs...)
	args = append(args, extra...)
	args = append(args, "path:"+dir+"#nixosConfigurations", "--apply", mappedOptions)
	var stderr bytes.Buffer
	cmd := exec.Command("nix", args...)
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("nix eval: %v\n%s", err, stderr.Bytes())
	}
	return out
}

// TestFlakeMapping evaluates the VM flake for representative specs and
// compares the microvm.nix options it sets with testdata/<case>.golden
// (go test -update rewrites them). The hostile case proves that no value
// is spliced into Nix source: every string comes back verbatim.
func TestFlakeMapping(t *testing.T) {
	needNix(t)
	for name, spec := range goldenSpecs {
		t.Run(name, func(t *testing.T) {
			stateDir := "/var/lib/blixard/vms/" + spec.Name
			out := evalFlake(t, newVMFile(spec, stateDir))

			var got map[string]struct {
				HostName     string   `json:"hostName"`
				KernelParams []string `json:"kernelParams"`
				Microvm      struct {
					Hypervisor string `json:"hypervisor"`
					Interfaces []struct {
						ID  string `json:"id"`
						MAC string `json:"mac"`
					} `json:"interfaces"`
					Volumes []struct {
						Image      string  `json:"image"`
						MountPoint *string `json:"mountPoint"`
					} `json:"volumes"`
				} `json:"microvm"`
				Spec microvm.Spec `json:"spec"`
			}
			if err := json.Unmarshal(out, &got); err != nil {
				t.Fatalf("nix eval output: %v\n%s", err, out)
			}
			c, ok := got[spec.Name]
			if !ok || len(got) != 1 {
				t.Fatalf("nixosConfigurations = %s, want exactly one named %q", out, spec.Name)
			}
			if c.HostName != spec.Name {
				t.Errorf("hostName = %q, want %q", c.HostName, spec.Name)
			}
			params := c.KernelParams
			if spec.TAP != "" && spec.IP != "" {
				wantIP := "ip=" + spec.IP + "::" + spec.Gateway + ":255.255.255.255:" + spec.Name + ":eth0:off"
				if len(params) == 0 || params[0] != wantIP {
					t.Errorf("first kernel param = %q, want %q", params, wantIP)
				} else {
					params = params[1:]
				}
			}
			if !reflect.DeepEqual(params, append([]string{}, spec.KernelParams...)) {
				t.Errorf("kernel params = %q, want %q", params, spec.KernelParams)
			}
			if spec.TAP != "" && (len(c.Microvm.Interfaces) != 1 || c.Microvm.Interfaces[0].ID != spec.TAP || c.Microvm.Interfaces[0].MAC != spec.MAC) {
				t.Errorf("interfaces = %+v, want tap %q mac %q", c.Microvm.Interfaces, spec.TAP, spec.MAC)
			}
			for i, v := range spec.Volumes {
				want := v.Image
				if want == "" {
					want = filepath.Join(stateDir, v.Name+".img")
				}
				if i >= len(c.Microvm.Volumes) || c.Microvm.Volumes[i].Image != want {
					t.Errorf("volume %d = %+v, want image %q", i, c.Microvm.Volumes, want)
				}
			}
			if !reflect.DeepEqual(c.Spec, spec) {
				t.Errorf("blixard.spec round trip:\n got %+v\nwant %+v", c.Spec, spec)
			}

			var pretty bytes.Buffer
			if err := json.Indent(&pretty, out, "", "  "); err != nil {
				t.Fatal(err)
			}
			pretty.WriteByte('\n')
			golden := filepath.Join("testdata", name+".golden")
			if *update {
				if err := os.MkdirAll("testdata", 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(golden, pretty.Bytes(), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatalf("%v (go test -update writes it)", err)
			}
			if !bytes.Equal(pretty.Bytes(), want) {
				t.Errorf("mapped options differ from %s (go test -update rewrites it):\n%s", golden, diffLines(string(want), pretty.String()))
			}
		})
	}
}

// diffLines is a small line diff for golden mismatches.
func diffLines(want, got string) string {
	w, g := strings.Split(want, "\n"), strings.Split(got, "\n")
	var b strings.Builder
	for i := 0; i < len(w) || i < len(g); i++ {
		var wl, gl string
		if i < len(w) {
			wl = w[i]
		}
		if i < len(g) {
			gl = g[i]
		}
		if wl != gl {
			b.WriteString("- " + wl + "\n+ " + gl + "\n")
		}
	}
	return b.String()
}

// TestGuestFlake checks vm create --flake: the guest flake's module is in
// the configuration, the cluster's values win over the guest's, and a
// "#module" fragment picks another module. The reference travels as data
// (vm.json) and is read with builtins.getFlake.
func TestGuestFlake(t *testing.T) {
	needNix(t)
	guest := "path:" + filepath.Join(repoDir(t), "nix/testdata/stub-guest")
	for _, c := range []struct {
		flake, param string
	}{
		{guest, "guest-module=default"},
		{guest + "#web", "guest-module=web"},
	} {
		spec := microvm.Spec{Name: "g", Vcpus: 2, MemoryMB: 128, Flake: c.flake}
		out := evalFlake(t, newVMFile(spec, "/var/lib/blixard/vms/g"), "--impure")
		var got map[string]struct {
			HostName     string   `json:"hostName"`
			KernelParams []string `json:"kernelParams"`
			Microvm      struct {
				Vcpu   int    `json:"vcpu"`
				Socket string `json:"socket"`
			} `json:"microvm"`
		}
		if err := json.Unmarshal(out, &got); err != nil {
			t.Fatal(err)
		}
		g := got["g"]
		if g.HostName != "g" || g.Microvm.Vcpu != 2 || g.Microvm.Socket != "g.sock" {
			t.Errorf("%s: hostName %q, vcpu %d, socket %q; want the cluster's g, 2, g.sock", c.flake, g.HostName, g.Microvm.Vcpu, g.Microvm.Socket)
		}
		if len(g.KernelParams) == 0 || g.KernelParams[0] != c.param {
			t.Errorf("%s: kernel params %q, want %q from the guest module first", c.flake, g.KernelParams, c.param)
		}
	}

	// Through the driver: the build runs with --impure.
	opts := stubOptions(t, t.TempDir())
	d, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	spec := microvm.Spec{Name: "guest", Kernel: "/k", Flake: guest + "#web"}
	if err := d.Prepare(context.Background(), spec); err != nil {
		t.Fatal(err)
	}
	run, err := os.ReadFile(filepath.Join(opts.Dir, "guest", currentLink, runScript))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(run), "guest-module=web") {
		t.Errorf("runner lacks the guest module's kernel parameter:\n%s", run)
	}
}
