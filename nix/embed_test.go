package nixfiles

import (
	"encoding/json"
	"io/fs"
	"strings"
	"testing"
)

func TestVMFlakeFiles(t *testing.T) {
	fsys := VMFlake()
	flake, err := fs.ReadFile(fsys, "flake.nix")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"builtins.fromJSON (builtins.readFile ./vm.json)",
		"nixosConfigurations.${vm.name}",
		"microvm.nixosModules.microvm",
	} {
		if !strings.Contains(string(flake), want) {
			t.Errorf("flake.nix lacks %q", want)
		}
	}
	b, err := fs.ReadFile(fsys, "flake.lock")
	if err != nil {
		t.Fatal(err)
	}
	var lock struct {
		Nodes map[string]struct {
			Inputs map[string]any `json:"inputs"`
			Locked map[string]any `json:"locked"`
		} `json:"nodes"`
		Root    string `json:"root"`
		Version int    `json:"version"`
	}
	if err := json.Unmarshal(b, &lock); err != nil {
		t.Fatalf("flake.lock: %v", err)
	}
	root := lock.Nodes[lock.Root]
	for _, in := range []string{"nixpkgs", "microvm"} {
		node, ok := root.Inputs[in].(string)
		if !ok {
			t.Fatalf("flake.lock: root has no input %s", in)
		}
		if rev, _ := lock.Nodes[node].Locked["rev"].(string); len(rev) != 40 {
			t.Errorf("flake.lock: input %s is not pinned to a commit (rev %q)", in, rev)
		}
	}
}
