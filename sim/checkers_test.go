package sim

import (
	"strings"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"

	"github.com/blixard/blixard/microvm/fake"
	"github.com/blixard/blixard/proto/blixardpb"
)

// The checkers on hand-made evidence: each must fail on a violation and
// pass without one.

func TestSingleCopyFailsOnOverlap(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	run := func(node uint64, id uint64, from, to int) nodeRun {
		r := nodeRun{Node: node, Run: fake.Run{Name: "web", ID: id, Seq: 1, StartedAt: at(from)}}
		if to >= 0 {
			r.StoppedAt = at(to)
		}
		return r
	}
	end := at(1000)
	if v, _ := checkSingleCopy([]nodeRun{run(1, 7, 0, 100), run(2, 7, 100, 200), run(3, 8, 50, -1)}, end); len(v) != 0 {
		t.Errorf("back-to-back runs and another vm reported: %v", v)
	}
	v, ov := checkSingleCopy([]nodeRun{run(1, 7, 0, 100), run(2, 7, 90, -1)}, end)
	if len(v) != 1 || ov != 10*time.Millisecond || !strings.Contains(v[0], "ran twice at once for 10ms") {
		t.Errorf("overlap of 10 ms: got %v, %s", v, ov)
	}
	if v, _ := checkSingleCopy([]nodeRun{run(1, 7, 0, -1), run(2, 7, 500, -1)}, end); len(v) != 1 {
		t.Errorf("two runs still running: got %v", v)
	}
}

func op(client int, kind OpKind, name string, call, ret int64, code blixardpb.Code) Op {
	return Op{Client: client, In: opInput{Kind: kind, Name: name}, Call: call, Return: ret, Out: opOutput{Code: code}}
}

func TestModelRejectsALostCreate(t *testing.T) {
	get := op(1, OpGet, "web", 30, 40, blixardpb.Code_NOT_FOUND)
	create := op(0, OpCreate, "web", 10, 20, blixardpb.Code_OK)
	if porcupine.CheckOperations(registryModel, porcupineOps([]Op{create, get})) {
		t.Error("a create answered OK, then a read that misses it, was accepted")
	}
	// Concurrent, the read may come first.
	get.Call = 15
	if !porcupine.CheckOperations(registryModel, porcupineOps([]Op{create, get})) {
		t.Error("a read concurrent with the create was rejected")
	}
	// A create of unknown outcome may or may not have happened.
	unknown := Op{Client: 0, In: opInput{Kind: OpCreate, Name: "web"}, Call: 10, Out: opOutput{Unknown: true}}
	seen := op(1, OpGet, "web", 30, 40, blixardpb.Code_OK)
	seen.Out.Running = true
	for _, h := range [][]Op{{unknown, get}, {unknown, seen}} {
		if !porcupine.CheckOperations(registryModel, porcupineOps(h)) {
			t.Errorf("unknown create with %v rejected", h[1].Out)
		}
	}
	// A stop answered OK must be seen by a later read.
	stop := op(0, OpStop, "web", 50, 60, blixardpb.Code_OK)
	if porcupine.CheckOperations(registryModel, porcupineOps([]Op{create, stop, {Client: 1, In: opInput{Kind: OpGet, Name: "web"}, Call: 70, Return: 80, Out: opOutput{Code: blixardpb.Code_OK, Running: true}}})) {
		t.Error("a read of running after an acknowledged stop was accepted")
	}
}

func TestDurableFailsOnALostWrite(t *testing.T) {
	create := op(0, OpCreate, "web", 10, 20, blixardpb.Code_OK)
	rec := &blixardpb.VmRecord{Spec: &blixardpb.VmSpec{Name: "web"}, Desired: blixardpb.DesiredState_DESIRED_RUNNING}
	if v := checkDurable([]Op{create}, finalState{"web": rec}, true); !v.OK {
		t.Errorf("kept create reported: %s", v.Detail)
	}
	if v := checkDurable([]Op{create}, finalState{}, true); v.OK || !strings.Contains(v.Detail, "acknowledged create lost") {
		t.Errorf("lost create: %+v", v)
	}
	del := op(1, OpDelete, "web", 30, 40, blixardpb.Code_OK)
	if v := checkDurable([]Op{create, del}, finalState{"web": rec}, true); v.OK {
		t.Error("a vm back after an acknowledged delete was accepted")
	}
	// A later write of unknown outcome makes the name undecidable.
	unknown := Op{In: opInput{Kind: OpDelete, Name: "web"}, Call: 50, Out: opOutput{Unknown: true}}
	if v := checkDurable([]Op{create, unknown}, finalState{}, true); !v.OK {
		t.Errorf("undecidable name judged: %s", v.Detail)
	}
	if v := checkDurable([]Op{create}, nil, false); v.OK {
		t.Error("no final state passed")
	}
}

func TestScheduleIsAFunctionOfTheSeed(t *testing.T) {
	a := schedule(42, 5, AllFaults, 8*time.Second, 300*time.Millisecond, 3*time.Second)
	b := schedule(42, 5, AllFaults, 8*time.Second, 300*time.Millisecond, 3*time.Second)
	c := schedule(43, 5, AllFaults, 8*time.Second, 300*time.Millisecond, 3*time.Second)
	if len(a) == 0 || len(a) != len(b) {
		t.Fatalf("schedules of one seed: %d and %d windows", len(a), len(b))
	}
	for i := range a {
		if a[i].String() != b[i].String() {
			t.Fatalf("window %d differs: %s vs %s", i, a[i], b[i])
		}
	}
	same := len(a) == len(c)
	for i := 0; same && i < len(a); i++ {
		same = a[i].String() == c[i].String()
	}
	if same {
		t.Error("seeds 42 and 43 drew the same schedule")
	}
	for _, e := range a {
		if strings.HasPrefix(e.Kind, "crash") && len(e.Nodes) > 2 {
			t.Errorf("crash of a majority of 5: %s", e)
		}
	}
}

func TestParseFaults(t *testing.T) {
	f, err := ParseFaults("crash, partition")
	if err != nil || f != FaultCrash|FaultPartition || f.String() != "crash,partition" {
		t.Errorf("crash,partition: %v %v", f, err)
	}
	if f, _ := ParseFaults("all"); f != AllFaults {
		t.Errorf("all: %v", f)
	}
	if _, err := ParseFaults("crash,flood"); err == nil || !strings.Contains(err.Error(), `unknown fault "flood"`) {
		t.Errorf("bad fault: %v", err)
	}
}
