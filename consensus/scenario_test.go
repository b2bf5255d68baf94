package consensus

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/blixard/blixard/proto/blixardpb"
)

var update = flag.Bool("update", false, "rewrite the golden output of testdata/*.txt scenarios")

// TestScenarios runs the story scripts in testdata/*.txt. Each block is
// one command, "----", and the output the state machine gave: the result,
// then one line per effect. "show" prints nodes and VMs. Run with -update
// to rewrite the output, and read the diff before committing.
//
// Commands (sizes in vcpus and MiB; the log index is the time in seconds):
//
//	init [subnet=CIDR] [placement=spread|binpack] [id=ID]
//	node ID vcpus=N mem=M [status=S] [label=k:v]
//	create NAME [vcpus=1] [mem=256] [tenant=T] [node=ID] [restart=MODE] [hv=H] [no-start]
//	start|stop|delete NAME
//	migrate NAME [to=ID]
//	report NAME status=S [node=ID] [gen=G] [restarts=N] [msg=TEXT]  (node, gen: the current ones by default)
//	alive|suspect|down|drain|left ID
//	schedulable ID true|false
//	remove ID
//	show
//
// Any command takes rid=ID (a request id).
func TestScenarios(t *testing.T) {
	files, err := filepath.Glob("testdata/*.txt")
	if err != nil {
		t.Fatal(err)
	}
	if len(files) == 0 {
		t.Fatal("no scenarios in testdata/")
	}
	for _, f := range files {
		t.Run(strings.TrimSuffix(filepath.Base(f), ".txt"), func(t *testing.T) { runScenario(t, f) })
	}
}

type scenarioBlock struct {
	input  []string // comments and the command
	output string
}

func parseScenario(t *testing.T, data string) []scenarioBlock {
	var blocks []scenarioBlock
	lines := strings.Split(data, "\n")
	for i := 0; i < len(lines); {
		if strings.TrimSpace(lines[i]) == "" {
			i++
			continue
		}
		var b scenarioBlock
		for i < len(lines) && lines[i] != "----" {
			if strings.TrimSpace(lines[i]) == "" {
				t.Fatalf("line %d: blank line before ----", i+1)
			}
			b.input = append(b.input, lines[i])
			i++
		}
		if i == len(lines) {
			// Trailing comments only.
			blocks = append(blocks, b)
			break
		}
		i++ // ----
		var out []string
		for i < len(lines) && strings.TrimSpace(lines[i]) != "" {
			out = append(out, lines[i])
			i++
		}
		b.output = strings.Join(out, "\n")
		blocks = append(blocks, b)
	}
	return blocks
}

func runScenario(t *testing.T, file string) {
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	blocks := parseScenario(t, string(data))
	sc := &scenario{t: t, s: NewState()}
	var rewritten strings.Builder
	for bi, b := range blocks {
		var cmdLine string
		for _, l := range b.input {
			if !strings.HasPrefix(l, "#") {
				if cmdLine != "" {
					t.Fatalf("%s: block %d has two commands", file, bi+1)
				}
				cmdLine = l
			}
		}
		for _, l := range b.input {
			rewritten.WriteString(l + "\n")
		}
		if cmdLine == "" {
			continue
		}
		got := sc.run(cmdLine)
		rewritten.WriteString("----\n" + got + "\n\n")
		if !*update && got != b.output {
			t.Errorf("%s: %s\ngot:\n%s\nwant:\n%s", file, cmdLine, got, b.output)
		}
	}
	if *update {
		out := strings.TrimRight(rewritten.String(), "\n") + "\n"
		if err := os.WriteFile(file, []byte(out), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	// Every scenario's final state must survive a snapshot round trip.
	checkRoundTrip(t, sc.s)
}

type scenario struct {
	t *testing.T
	s *State
}

func (sc *scenario) run(line string) string {
	fields := strings.Fields(line)
	verb, args := fields[0], fields[1:]
	kv := map[string]string{}
	var pos []string
	for _, a := range args {
		if k, v, ok := strings.Cut(a, "="); ok {
			kv[k] = v
		} else {
			pos = append(pos, a)
		}
	}
	num := func(k string, def uint64) uint64 {
		v, ok := kv[k]
		if !ok {
			return def
		}
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			sc.t.Fatalf("%s: bad %s=%q", line, k, v)
		}
		return n
	}
	arg := func(i int) string {
		if i >= len(pos) {
			sc.t.Fatalf("%s: missing argument %d", line, i+1)
		}
		return pos[i]
	}
	id := func() uint64 {
		n, err := strconv.ParseUint(arg(0), 10, 64)
		if err != nil {
			sc.t.Fatalf("%s: bad node id", line)
		}
		return n
	}
	cmd := &blixardpb.Command{}
	switch verb {
	case "show":
		return sc.show()
	case "init":
		cmd.Op = &blixardpb.Command_InitCluster{InitCluster: &blixardpb.InitCluster{Config: &blixardpb.ClusterConfig{
			ClusterId: kv["id"], Subnet: kv["subnet"], Placement: kv["placement"]}}}
	case "node":
		rec := &blixardpb.NodeRecord{Id: id(), Vcpus: uint32(num("vcpus", 0)), MemoryMb: num("mem", 0)}
		if st, ok := kv["status"]; ok {
			rec.Status = parseNodeStatus(sc.t, st)
		}
		if l, ok := kv["label"]; ok {
			k, v, _ := strings.Cut(l, ":")
			rec.Labels = map[string]string{k: v}
		}
		cmd.Op = &blixardpb.Command_UpsertNode{UpsertNode: &blixardpb.UpsertNode{Node: rec}}
	case "create":
		sp := &blixardpb.VmSpec{Name: arg(0), Vcpus: uint32(num("vcpus", 1)), MemoryMb: num("mem", 256),
			Tenant: kv["tenant"], NodeId: num("node", 0), Hypervisor: kv["hv"]}
		if m, ok := kv["restart"]; ok {
			sp.Restart = &blixardpb.RestartPolicy{Mode: m}
		}
		noStart := len(pos) > 1 && pos[1] == "no-start"
		cmd.Op = &blixardpb.Command_CreateVm{CreateVm: &blixardpb.CreateVm{Spec: sp, NoStart: noStart}}
	case "start":
		cmd.Op = &blixardpb.Command_StartVm{StartVm: &blixardpb.StartVm{Name: arg(0)}}
	case "stop":
		cmd.Op = &blixardpb.Command_StopVm{StopVm: &blixardpb.StopVm{Name: arg(0)}}
	case "delete":
		cmd.Op = &blixardpb.Command_DeleteVm{DeleteVm: &blixardpb.DeleteVm{Name: arg(0)}}
	case "migrate":
		cmd.Op = &blixardpb.Command_MigrateVm{MigrateVm: &blixardpb.MigrateVm{Name: arg(0), TargetNodeId: num("to", 0)}}
	case "report":
		r := &blixardpb.ReportVmStatus{Name: arg(0), Status: parseVMStatus(sc.t, kv["status"]),
			Restarts: uint32(num("restarts", 0)), Message: strings.ReplaceAll(kv["msg"], "_", " ")}
		if cur, ok := sc.s.VM(arg(0)); ok {
			r.NodeId, r.Generation = cur.GetNodeId(), cur.GetGeneration()
		}
		r.NodeId, r.Generation = num("node", r.NodeId), num("gen", r.Generation)
		cmd.Op = &blixardpb.Command_ReportVmStatus{ReportVmStatus: r}
	case "alive", "suspect", "down", "drain", "left":
		st := verb
		if st == "drain" {
			st = "draining"
		}
		cmd.Op = &blixardpb.Command_SetNodeStatus{SetNodeStatus: &blixardpb.SetNodeStatus{NodeId: id(), Status: parseNodeStatus(sc.t, st)}}
	case "schedulable":
		cmd.Op = &blixardpb.Command_SetNodeSchedulable{SetNodeSchedulable: &blixardpb.SetNodeSchedulable{NodeId: id(), Schedulable: arg(1) == "true"}}
	case "remove":
		cmd.Op = &blixardpb.Command_RemoveNode{RemoveNode: &blixardpb.RemoveNode{NodeId: id()}}
	default:
		sc.t.Fatalf("unknown scenario command %q", line)
	}
	cmd.RequestId = kv["rid"]
	idx := sc.s.AppliedIndex() + 1
	cmd.TimeUnixMs = int64(idx) * 1000
	res, effects := sc.s.Apply(idx, cmd)
	var b strings.Builder
	if e := res.GetError(); e.GetCode() != blixardpb.Code_OK {
		fmt.Fprintf(&b, "error %s: %s", e.GetCode(), e.GetMessage())
	} else {
		b.WriteString("ok")
		if v := res.GetVm(); v != nil {
			b.WriteString(" " + vmLine(v))
		}
		if n := res.GetNode(); n != nil {
			b.WriteString(" " + nodeLine(n, Usage{}, false))
		}
	}
	for _, e := range effects {
		b.WriteString("\neffect")
		if e.Deleted {
			b.WriteString(" deleted")
		}
		fmt.Fprintf(&b, " %s gen=%d node=%d", e.VM.GetSpec().GetName(), e.VM.GetGeneration(), e.VM.GetNodeId())
		if e.PrevNodeID != 0 {
			fmt.Fprintf(&b, " from=%d", e.PrevNodeID)
		}
		if t := e.VM.GetMigrateTo(); t != 0 {
			fmt.Fprintf(&b, " to=%d", t)
		}
		fmt.Fprintf(&b, " desired=%s status=%s", desiredName(e.VM.GetDesired()), vmStatusName(e.VM.GetStatus()))
	}
	return b.String()
}

func (sc *scenario) show() string {
	var lines []string
	c := sc.s.Config()
	lines = append(lines, fmt.Sprintf("config subnet=%s placement=%s", c.GetSubnet(), c.GetPlacement()))
	for _, n := range sc.s.Nodes() {
		lines = append(lines, nodeLine(n, sc.s.NodeUsage(n.GetId()), true))
	}
	for _, v := range sc.s.VMs() {
		lines = append(lines, vmLine(v))
	}
	return strings.Join(lines, "\n")
}

func nodeLine(n *blixardpb.NodeRecord, u Usage, withUsage bool) string {
	s := fmt.Sprintf("node %d %s", n.GetId(), nodeStatusName(n.GetStatus()))
	if !n.GetSchedulable() {
		s += " unschedulable"
	}
	if withUsage {
		return s + fmt.Sprintf(" vcpus=%d/%d mem=%d/%d vms=%d", u.Vcpus, n.GetVcpus(), u.MemoryMB, n.GetMemoryMb(), u.VMs)
	}
	return s + fmt.Sprintf(" vcpus=%d mem=%d", n.GetVcpus(), n.GetMemoryMb())
}

func vmLine(v *blixardpb.VmRecord) string {
	s := fmt.Sprintf("vm %s id=%d node=%d gen=%d desired=%s status=%s ip=%s",
		v.GetSpec().GetName(), v.GetId(), v.GetNodeId(), v.GetGeneration(),
		desiredName(v.GetDesired()), vmStatusName(v.GetStatus()), v.GetIp())
	if t := v.GetMigrateTo(); t != 0 {
		s += fmt.Sprintf(" to=%d", t)
	}
	if v.GetRestarts() != 0 {
		s += fmt.Sprintf(" restarts=%d", v.GetRestarts())
	}
	if v.GetMessage() != "" {
		s += fmt.Sprintf(" msg=%q", v.GetMessage())
	}
	return s
}

func desiredName(d blixardpb.DesiredState) string {
	switch d {
	case blixardpb.DesiredState_DESIRED_RUNNING:
		return "running"
	case blixardpb.DesiredState_DESIRED_STOPPED:
		return "stopped"
	}
	return "unspecified"
}

func parseNodeStatus(t *testing.T, s string) blixardpb.NodeStatus {
	for st := blixardpb.NodeStatus(0); st <= blixardpb.NodeStatus_NODE_STATUS_LEFT; st++ {
		if nodeStatusName(st) == s {
			return st
		}
	}
	t.Fatalf("unknown node status %q", s)
	return 0
}

func parseVMStatus(t *testing.T, s string) blixardpb.VmStatus {
	for st := blixardpb.VmStatus(0); st <= blixardpb.VmStatus_VM_STATUS_LOST; st++ {
		if vmStatusName(st) == s {
			return st
		}
	}
	t.Fatalf("unknown vm status %q", s)
	return 0
}
