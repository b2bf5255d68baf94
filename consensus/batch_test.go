package consensus

import (
	"bytes"
	"context"
	"math/rand"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	sm "github.com/lni/dragonboat/v4/statemachine"
	"google.golang.org/protobuf/proto"

	"github.com/blixard/blixard/proto/blixardpb"
)

func batchCmd(cmds ...*blixardpb.Command) *blixardpb.Command {
	return &blixardpb.Command{Op: &blixardpb.Command_Batch{Batch: &blixardpb.Batch{Commands: cmds}}}
}

// TestBatchAppliesLikeSeparateCommands: a Batch entry yields, command by
// command, the results and effects of applying its commands one after
// another at the same index, and the same state. Through raftSM, the
// proposer gets every result and the other replicas build none.
func TestBatchAppliesLikeSeparateCommands(t *testing.T) {
	r := rand.New(rand.NewSource(11))
	ref := NewState()
	got := NewState()
	var fwd []Effect
	m := &raftSM{replicaID: 3, state: NewState(), onEffects: func(e []Effect) { fwd = append(fwd, e...) }}
	quiet := &raftSM{replicaID: 2, state: NewState()}
	for idx := uint64(1); idx <= 400; idx++ {
		cmds := make([]*blixardpb.Command, r.Intn(12))
		for i := range cmds {
			cmds[i] = randomCommand(r, ref)
			if i > 0 && r.Intn(10) == 0 && cmds[i-1].GetRequestId() != "" {
				cmds[i] = withRID(randomCommand(r, ref), cmds[i-1].GetRequestId()) // a retry inside the batch
			}
		}
		var want []*blixardpb.Result
		var wantFx []Effect
		for _, c := range cmds {
			res, fx := ref.Apply(idx, c)
			want = append(want, res)
			wantFx = append(wantFx, fx...)
		}
		b := batchCmd(cmds...)
		res, fx := got.Apply(idx, b)
		if res.GetError().GetCode() != blixardpb.Code_OK || len(res.GetBatch()) != len(cmds) {
			t.Fatalf("entry %d: batch result %v, want OK with %d results", idx, res, len(cmds))
		}
		for i := range want {
			if !proto.Equal(res.GetBatch()[i], want[i]) {
				t.Fatalf("entry %d command %d (%v): result\n%v\nwant\n%v", idx, i, cmds[i], res.GetBatch()[i], want[i])
			}
		}
		if len(fx) != len(wantFx) {
			t.Fatalf("entry %d: %d effects, want %d", idx, len(fx), len(wantFx))
		}
		for i := range fx {
			if !proto.Equal(fx[i].VM, wantFx[i].VM) || fx[i].PrevNodeID != wantFx[i].PrevNodeID || fx[i].Deleted != wantFx[i].Deleted {
				t.Fatalf("entry %d: effect %d differs", idx, i)
			}
		}

		data, err := proto.Marshal(b)
		if err != nil {
			t.Fatal(err)
		}
		checkFastDecoders(t, data)
		fwd = fwd[:0]
		out, err := m.Update(sm.Entry{Index: idx, Cmd: append(encodeEntry(3), data...)})
		if err != nil {
			t.Fatal(err)
		}
		dec, err := decodeResult(out.Data)
		if err != nil {
			t.Fatal(err)
		}
		if !proto.Equal(dec, res) {
			t.Fatalf("entry %d: proposer's result\n%v\nwant\n%v", idx, dec, res)
		}
		mine := 0
		for _, e := range wantFx {
			if e.Concerns(3) {
				mine++
			}
		}
		if len(fwd) != mine {
			t.Fatalf("entry %d: forwarded %d effects, want %d", idx, len(fwd), mine)
		}
		out, err = quiet.Update(sm.Entry{Index: idx, Cmd: append(encodeEntry(3), data...)})
		if err != nil {
			t.Fatal(err)
		}
		if len(out.Data) != 0 {
			t.Fatalf("entry %d: a replica that did not propose the batch encoded its result", idx)
		}
	}
	want := saveBytes(t, ref)
	for name, s := range map[string]*State{"Apply": got, "proposer": m.state, "other replica": quiet.state} {
		if !bytes.Equal(saveBytes(t, s), want) {
			t.Fatalf("%s: snapshot differs from applying the commands one by one", name)
		}
	}
}

// TestBatchRefusals: a batch with a request id of its own is refused and
// changes nothing; a nested batch fails alone; an empty batch is fine.
func TestBatchRefusals(t *testing.T) {
	s := NewState()
	s.Apply(1, cmdNode(1, 8, 8192))
	res, _ := s.Apply(2, withRID(batchCmd(cmdCreateVM("a", 1, 64)), "r1"))
	if res.GetError().GetCode() != blixardpb.Code_INVALID_ARGUMENT || !strings.Contains(res.GetError().GetMessage(), "request id") {
		t.Fatalf("batch with a request id: %v, want INVALID_ARGUMENT naming the request id", res)
	}
	if _, ok := s.VM("a"); ok {
		t.Fatal("a refused batch created its vm")
	}
	res, _ = s.Apply(3, batchCmd(cmdCreateVM("b", 1, 64), batchCmd(cmdCreateVM("c", 1, 64)), cmdCreateVM("d", 1, 64)))
	if n := len(res.GetBatch()); n != 3 {
		t.Fatalf("%d results, want 3", n)
	}
	if c := res.GetBatch()[1].GetError().GetCode(); c != blixardpb.Code_INVALID_ARGUMENT {
		t.Fatalf("nested batch: %v, want INVALID_ARGUMENT", c)
	}
	for _, name := range []string{"b", "d"} {
		if _, ok := s.VM(name); !ok {
			t.Fatalf("vm %s of the batch with a nested batch was not created", name)
		}
	}
	if _, ok := s.VM("c"); ok {
		t.Fatal("the nested batch's vm was created")
	}
	res, _ = s.Apply(4, batchCmd())
	if res.GetError().GetCode() != blixardpb.Code_OK || len(res.GetBatch()) != 0 {
		t.Fatalf("empty batch: %v", res)
	}
}

// TestReplicaProposeBatch: the results come back in order, times are
// stamped as Propose stamps them without touching the caller's commands,
// and proposing the same batch again (a retry) changes nothing.
func TestReplicaProposeBatch(t *testing.T) {
	verifyNoLeaks(t)
	type proposal struct {
		n  int
		ok bool
	}
	var mu sync.Mutex
	var seen []proposal
	r := startSingle(t, ReplicaConfig{OnProposed: func(n int, d time.Duration, err error) {
		mu.Lock()
		defer mu.Unlock()
		seen = append(seen, proposal{n, err == nil && d > 0})
	}})
	mustPropose(t, r, upsertNodeCmd(1))
	ctx := context.Background()

	a, b := createVMCmd("batch-a"), createVMCmd("batch-b")
	a.RequestId, b.RequestId = "rid-a", "rid-b"
	b.TimeUnixMs = 1234
	missing := deleteVMCmd("missing")
	missing.RequestId = "rid-m"
	cmds := []*blixardpb.Command{a, b, missing}
	before := time.Now().UnixMilli()
	res, err := r.ProposeBatch(ctx, cmds)
	after := time.Now().UnixMilli()
	if err != nil {
		t.Fatal(err)
	}
	if len(res) != 3 || res[0].GetVm().GetSpec().GetName() != "batch-a" || res[1].GetVm().GetSpec().GetName() != "batch-b" ||
		res[2].GetError().GetCode() != blixardpb.Code_NOT_FOUND {
		t.Fatalf("results %v, want batch-a, batch-b, NOT_FOUND", res)
	}
	if got := res[0].GetVm().GetCreatedUnixMs(); got < before || got > after {
		t.Errorf("created_unix_ms %d, want the proposer's clock in [%d, %d]", got, before, after)
	}
	if got := res[1].GetVm().GetCreatedUnixMs(); got != 1234 {
		t.Errorf("created_unix_ms %d, want the command's own 1234", got)
	}
	if a.GetTimeUnixMs() != 0 {
		t.Errorf("ProposeBatch modified the caller's command: time_unix_ms %d", a.GetTimeUnixMs())
	}
	applied := r.AppliedIndex()
	again, err := r.ProposeBatch(ctx, cmds)
	if err != nil {
		t.Fatal(err)
	}
	for i := range res {
		if !proto.Equal(again[i], res[i]) {
			t.Fatalf("retried batch, command %d: %v, want the first result %v", i, again[i], res[i])
		}
	}
	if got := r.AppliedIndex(); got != applied+1 {
		t.Fatalf("a batch of 3 moved the applied index by %d, want 1", got-applied)
	}
	if _, err := r.ProposeBatch(ctx, []*blixardpb.Command{batchCmd(a)}); err == nil || !strings.Contains(err.Error(), "nest") {
		t.Fatalf("nested batch: %v, want an error", err)
	}
	if _, err := r.ProposeBatch(ctx, make([]*blixardpb.Command, MaxBatch+1)); err == nil {
		t.Fatal("an oversized batch was proposed")
	}
	// OnProposed saw every call: the upsert, two batches of 3, the nested
	// batch and the oversized one (both failed).
	mu.Lock()
	defer mu.Unlock()
	want := []proposal{{1, true}, {3, true}, {3, true}, {1, false}, {MaxBatch + 1, false}}
	if !slices.Equal(seen, want) {
		t.Fatalf("OnProposed saw %v, want %v", seen, want)
	}
}

// TestBatchResultDecoder: the batch result decoder agrees with
// proto.Unmarshal on encoded batch results and on mangled copies, and
// reports a batch refused whole as an error.
func TestBatchResultDecoder(t *testing.T) {
	r := rand.New(rand.NewSource(5))
	s := NewState()
	m := &raftSM{replicaID: 1, state: s}
	fast := 0
	for idx := uint64(1); idx <= 200; idx++ {
		cmds := make([]*blixardpb.Command, r.Intn(6))
		for i := range cmds {
			cmds[i] = randomCommand(r, s)
		}
		data, err := proto.Marshal(batchCmd(cmds...))
		if err != nil {
			t.Fatal(err)
		}
		out, err := m.Update(sm.Entry{Index: idx, Cmd: append(encodeEntry(1), data...)})
		if err != nil {
			t.Fatal(err)
		}
		for k := 0; k < 10; k++ {
			in := out.Data
			if k > 0 && len(in) > 0 {
				in = bytes.Clone(in)
				if k%3 == 0 {
					in = in[:r.Intn(len(in))]
				} else {
					in[r.Intn(len(in))] = byte(r.Intn(256))
				}
			}
			got, err := decodeBatchResult(in)
			var want blixardpb.Result
			werr := proto.Unmarshal(in, &want)
			switch {
			case k == 0 && err != nil:
				t.Fatalf("entry %d: %v", idx, err)
			case err != nil:
				continue
			case werr != nil:
				t.Fatalf("entry %d: decoded %x that proto.Unmarshal refuses (%v)", idx, in, werr)
			case len(got) != len(want.GetBatch()):
				t.Fatalf("entry %d: %d results, proto.Unmarshal %d", idx, len(got), len(want.GetBatch()))
			}
			for i := range got {
				if !proto.Equal(got[i], want.GetBatch()[i]) {
					t.Fatalf("entry %d result %d:\n got %v\nwant %v", idx, i, got[i], want.GetBatch()[i])
				}
			}
			fast++
		}
	}
	if fast < 200 {
		t.Fatalf("only %d decodes", fast)
	}
	refused, err := proto.Marshal(&blixardpb.Result{Error: &blixardpb.Error{Code: blixardpb.Code_INVALID_ARGUMENT, Message: "no"}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := decodeBatchResult(refused); err == nil || !strings.Contains(err.Error(), "refused: no") {
		t.Fatalf("refused batch: %v", err)
	}
}
