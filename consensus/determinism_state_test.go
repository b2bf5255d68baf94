package consensus

import (
	"bytes"
	"fmt"
	"math/rand"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	sm "github.com/lni/dragonboat/v4/statemachine"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/testing/protocmp"

	"github.com/blixard/blixard/proto/blixardpb"
)

// randomCommand draws a command from a small universe of names and node
// ids, so commands collide often: duplicates, unknown names, stale
// reports, full nodes, retried request ids and invalid input.
func randomCommand(r *rand.Rand, s *State) *blixardpb.Command {
	name := fmt.Sprintf("vm%d", r.Intn(40))
	nodeID := uint64(r.Intn(8) + 1)
	var c *blixardpb.Command
	switch k := r.Intn(100); {
	case k < 8:
		c = &blixardpb.Command{Op: &blixardpb.Command_UpsertNode{UpsertNode: &blixardpb.UpsertNode{Node: &blixardpb.NodeRecord{
			Id: nodeID, Vcpus: uint32(r.Intn(16)), MemoryMb: uint64(r.Intn(8)) * 1024,
			Labels: map[string]string{"a": "1", "b": "2", "c": fmt.Sprint(r.Intn(3))},
		}}}}
	case k < 14:
		c = cmdStatus(nodeID, blixardpb.NodeStatus(r.Intn(6)))
	case k < 17:
		c = cmdSchedulable(nodeID, r.Intn(2) == 0)
	case k < 18:
		c = cmdRemove(nodeID)
	case k < 19:
		c = cmdInit(&blixardpb.ClusterConfig{Subnet: []string{"", "10.9.0.0/28", "10.0.0.0/24"}[r.Intn(3)],
			Placement: []string{"", "binpack", "spread"}[r.Intn(3)]})
	case k < 45:
		sp := &blixardpb.VmSpec{Name: name, Vcpus: uint32(r.Intn(5)), MemoryMb: uint64(r.Intn(5)) * 512,
			Labels: map[string]string{"x": "1", "y": "2"}}
		if r.Intn(8) == 0 {
			sp.NodeId = nodeID
		}
		if r.Intn(4) == 0 {
			sp.Restart = &blixardpb.RestartPolicy{Mode: restartModes[r.Intn(3)]}
		}
		if r.Intn(20) == 0 {
			sp.Name = "Bad_Name"
		}
		c = &blixardpb.Command{Op: &blixardpb.Command_CreateVm{CreateVm: &blixardpb.CreateVm{Spec: sp, NoStart: r.Intn(6) == 0}}}
	case k < 55:
		c = cmdStart(name)
	case k < 63:
		c = cmdStop(name)
	case k < 70:
		c = cmdDelete(name)
	case k < 76:
		to := nodeID
		if r.Intn(2) == 0 {
			to = 0
		}
		c = cmdMigrate(name, to)
	default:
		rep := &blixardpb.ReportVmStatus{Name: name, Status: blixardpb.VmStatus(r.Intn(8)), Restarts: uint32(r.Intn(3)), Message: "m"}
		if v, ok := s.vms[name]; ok && r.Intn(5) != 0 {
			rep.NodeId, rep.Generation = v.node, v.gen
		} else {
			rep.NodeId, rep.Generation = nodeID, uint64(r.Intn(4))
		}
		c = cmdReport(rep)
	}
	if r.Intn(3) == 0 {
		c.RequestId = fmt.Sprintf("req-%d", r.Intn(50))
	}
	c.TimeUnixMs = int64(r.Intn(1 << 30))
	return c
}

// checkInvariants recomputes every derived index from the VM records.
func checkInvariants(t testing.TB, s *State) {
	t.Helper()
	used := map[uint64][2]uint64{}
	placed := map[uint64]int{}
	ips := 0
	for name, v := range s.vms {
		if v.name != name || s.vmByID[v.id] != v {
			t.Fatalf("vm %q: name/id index broken", name)
		}
		if v.ip != 0 {
			ips++
		}
		if v.node != 0 {
			n, ok := s.nodes[v.node]
			if !ok {
				t.Fatalf("vm %q placed on missing node %d", name, v.node)
			}
			if n.vms[v.id] != v {
				t.Fatalf("vm %q missing from node %d's set", name, v.node)
			}
			placed[v.node]++
			if v.holds() {
				u := used[v.node]
				used[v.node] = [2]uint64{u[0] + uint64(v.spec.vcpus), u[1] + v.spec.memoryMB}
			}
		}
		if v.moveTo != 0 {
			if _, ok := s.nodes[v.moveTo]; !ok || v.node == 0 || v.moveTo == v.node {
				t.Fatalf("vm %q on node %d hands over to node %d (missing, unplaced or itself)", name, v.node, v.moveTo)
			}
			if v.reserves() {
				u := used[v.moveTo]
				used[v.moveTo] = [2]uint64{u[0] + uint64(v.spec.vcpus), u[1] + v.spec.memoryMB}
			}
		}
		wantWaiting := v.node == 0 && v.desired == blixardpb.DesiredState_DESIRED_RUNNING && v.status != blixardpb.VmStatus_VM_STATUS_LOST
		if _, w := s.waiting[v.id]; w != wantWaiting {
			t.Fatalf("vm %q: waiting=%v, want %v", name, w, wantWaiting)
		}
	}
	if s.waitingOrder != nil {
		if len(s.waitingOrder) != len(s.waiting) {
			t.Fatalf("waiting order has %d vms, waiting set %d", len(s.waitingOrder), len(s.waiting))
		}
		for i, v := range s.waitingOrder {
			if s.waiting[v.id] != v || (i > 0 && s.waitingOrder[i-1].id >= v.id) {
				t.Fatalf("waiting order broken at %d", i)
			}
		}
	}
	if len(s.vmByID) != len(s.vms) {
		t.Fatalf("%d vms by id, %d by name", len(s.vmByID), len(s.vms))
	}
	if ips != s.ipam.used {
		t.Fatalf("ipam says %d used, vms hold %d", s.ipam.used, ips)
	}
	if len(s.nodeOrder) != len(s.nodes) {
		t.Fatalf("node order has %d, map %d", len(s.nodeOrder), len(s.nodes))
	}
	for i, n := range s.nodeOrder {
		if i > 0 && s.nodeOrder[i-1].id >= n.id {
			t.Fatalf("node order not sorted")
		}
		if u := used[n.id]; n.usedVcpus != u[0] || n.usedMemMB != u[1] || len(n.vms) != placed[n.id] {
			t.Fatalf("node %d: used %d/%d vms %d, recomputed %d/%d vms %d", n.id, n.usedVcpus, n.usedMemMB, len(n.vms), u[0], u[1], placed[n.id])
		}
	}
}

// checkRoundTrip saves s, restores it into a fresh State and checks that
// the copy saves the same bytes, answers every query the same way, and
// behaves the same on the next command.
func checkRoundTrip(t testing.TB, s *State) {
	t.Helper()
	b1 := saveBytes(t, s)
	// Save streams exactly the deterministic encoding of the whole message.
	whole, err := proto.MarshalOptions{Deterministic: true}.Marshal(s.snapshotProto())
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(b1[8:], whole) {
		t.Fatalf("Save body differs from the deterministic Snapshot encoding")
	}
	c := NewState()
	if err := c.Restore(bytes.NewReader(b1)); err != nil {
		t.Fatalf("Restore: %v", err)
	}
	checkInvariants(t, c)
	if b2 := saveBytes(t, c); !bytes.Equal(b1, b2) {
		t.Fatalf("re-saved snapshot differs (%d vs %d bytes)", len(b1), len(b2))
	}
	sameQueries(t, s, c)
	if s.ipam.first != c.ipam.first {
		// Not visible, but must not change which address comes next.
		a1, _ := s.ipam.next()
		a2, _ := c.ipam.next()
		if a1 != a2 {
			t.Fatalf("next address %s vs %s after restore", ipString(a1), ipString(a2))
		}
	}
}

func sameQueries(t testing.TB, a, b *State) {
	t.Helper()
	opt := protocmp.Transform()
	if d := cmp.Diff(a.VMs(), b.VMs(), opt); d != "" {
		t.Fatalf("VMs differ (-a +b):\n%s", d)
	}
	if d := cmp.Diff(a.Nodes(), b.Nodes(), opt); d != "" {
		t.Fatalf("Nodes differ (-a +b):\n%s", d)
	}
	if d := cmp.Diff(a.Config(), b.Config(), opt); d != "" {
		t.Fatalf("Config differs (-a +b):\n%s", d)
	}
	for _, n := range a.Nodes() {
		if a.NodeUsage(n.GetId()) != b.NodeUsage(n.GetId()) {
			t.Fatalf("usage of node %d differs", n.GetId())
		}
		if d := cmp.Diff(a.VMsOnNode(n.GetId()), b.VMsOnNode(n.GetId()), opt); d != "" {
			t.Fatalf("VMsOnNode(%d) differs:\n%s", n.GetId(), d)
		}
	}
	if a.AppliedIndex() != b.AppliedIndex() {
		t.Fatalf("applied index %d vs %d", a.AppliedIndex(), b.AppliedIndex())
	}
}

// TestTwoReplicasSameLogSameSnapshot: two States fed the same log save
// byte-identical snapshots. Replica b is also restored from its own
// snapshot now and then, so the rebuilt indexes take part.
func TestTwoReplicasSameLogSameSnapshot(t *testing.T) {
	for seed := int64(1); seed <= 4; seed++ {
		t.Run(fmt.Sprint("seed", seed), func(t *testing.T) {
			r := rand.New(rand.NewSource(seed))
			a, b := NewState(), NewState()
			oks := map[blixardpb.Code]int{}
			for i := uint64(1); i <= 3000; i++ {
				c := randomCommand(r, a)
				data, err := proto.Marshal(c)
				if err != nil {
					t.Fatal(err)
				}
				ra, ea := a.Apply(i, c)
				rb, eb := b.ApplyBytes(i, data)
				oks[ra.GetError().GetCode()]++
				if !proto.Equal(ra, rb) || len(ea) != len(eb) {
					t.Fatalf("step %d (%v): results differ:\n%v\n%v", i, c, ra, rb)
				}
				for j := range ea {
					if !proto.Equal(ea[j].VM, eb[j].VM) || ea[j].PrevNodeID != eb[j].PrevNodeID || ea[j].Deleted != eb[j].Deleted {
						t.Fatalf("step %d: effect %d differs", i, j)
					}
				}
				checkInvariants(t, a)
				if i%250 == 0 {
					if !bytes.Equal(saveBytes(t, a), saveBytes(t, b)) {
						t.Fatalf("step %d: snapshots differ", i)
					}
					checkRoundTrip(t, b)
					nb := NewState()
					if err := nb.Restore(bytes.NewReader(saveBytes(t, b))); err != nil {
						t.Fatal(err)
					}
					b = nb
				}
			}
			if !bytes.Equal(saveBytes(t, a), saveBytes(t, b)) {
				t.Fatal("final snapshots differ")
			}
			// The sequence must exercise both outcomes broadly.
			if oks[blixardpb.Code_OK] < 500 || len(oks) < 5 {
				t.Fatalf("weak sequence: %v", oks)
			}
			t.Logf("result codes: %v, vms at the end: %d", oks, a.NumVMs())
		})
	}
}

func TestRestoreRejectsGarbage(t *testing.T) {
	h := baseState(t)
	good := saveBytes(t, h.s)
	before := saveBytes(t, h.s)
	for name, data := range map[string][]byte{
		"empty":     nil,
		"magic":     append([]byte("XXXX"), good[4:]...),
		"version":   append(append([]byte("BLXS"), 0, 0, 0, 9), good[8:]...),
		"truncated": good[:len(good)-3],
		"no body":   good[:8],
	} {
		if err := h.s.Restore(bytes.NewReader(data)); err == nil {
			t.Errorf("%s: Restore accepted it", name)
		}
	}
	if !bytes.Equal(before, saveBytes(t, h.s)) {
		t.Error("failed Restore changed the state")
	}
	// A snapshot whose VM sits on a node that is not in it is corrupt.
	snap := h.s.snapshotProto()
	snap.Nodes = snap.Nodes[1:]
	body, _ := proto.MarshalOptions{Deterministic: true}.Marshal(snap)
	if err := NewState().Restore(bytes.NewReader(append(good[:8:8], body...))); err == nil {
		t.Error("Restore accepted a vm on an unknown node")
	}
	// Two VMs with the same address.
	snap = h.s.snapshotProto()
	dup := proto.Clone(snap.Vms[0]).(*blixardpb.VmRecord)
	dup.Id, dup.Spec.Name = 2, "dup"
	snap.Vms = append(snap.Vms, dup)
	snap.NextVmId = 3
	body, _ = proto.MarshalOptions{Deterministic: true}.Marshal(snap)
	if err := NewState().Restore(bytes.NewReader(append(good[:8:8], body...))); err == nil {
		t.Error("Restore accepted an address assigned twice")
	}
}

// TestRaftSMMatchesApply: the adapter's Update (which builds only the
// local node's effects and encodes the Result only on the proposing
// replica) answers exactly what State.Apply answers, forwards exactly the
// effects that concern its node, and keeps the state byte-identical.
func TestRaftSMMatchesApply(t *testing.T) {
	r := rand.New(rand.NewSource(7))
	ref := NewState()
	var got [][]Effect
	m := &raftSM{replicaID: 3, state: NewState(), onEffects: func(e []Effect) { got = append(got, e) }}
	quiet := &raftSM{replicaID: 2, state: NewState()} // no hook: no effects built
	var results [][]byte
	for i := uint64(1); i <= 3000; i++ {
		c := randomCommand(r, ref)
		cmd, err := proto.Marshal(c)
		if err != nil {
			t.Fatal(err)
		}
		proposer := uint64(r.Intn(4)) // 0: unknown, 3: this replica
		data := append(encodeEntry(proposer), cmd...)
		want, effects := ref.Apply(i, c)
		got = got[:0]
		res, err := m.Update(sm.Entry{Index: i, Cmd: data})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := quiet.Update(sm.Entry{Index: i, Cmd: data}); err != nil {
			t.Fatal(err)
		}
		if res.Value != uint64(want.GetError().GetCode()) {
			t.Fatalf("step %d: code %d, want %v", i, res.Value, want.GetError())
		}
		if proposer == 0 || proposer == 3 {
			out, err := decodeResult(res.Data)
			if err != nil {
				t.Fatal(err)
			}
			if !proto.Equal(out, want) {
				t.Fatalf("step %d (%v): result\n%v\nwant\n%v", i, c, out, want)
			}
			results = append(results, res.Data)
		} else if len(res.Data) != 0 {
			t.Fatalf("step %d: a non-proposer encoded the result", i)
		}
		var mine []Effect
		for _, e := range effects {
			if e.Concerns(3) {
				mine = append(mine, e)
			}
		}
		var fwd []Effect
		for _, b := range got {
			fwd = append(fwd, b...)
		}
		if len(fwd) != len(mine) {
			t.Fatalf("step %d: forwarded %d effects, want %d", i, len(fwd), len(mine))
		}
		for j := range mine {
			if !proto.Equal(fwd[j].VM, mine[j].VM) || fwd[j].PrevNodeID != mine[j].PrevNodeID || fwd[j].Deleted != mine[j].Deleted {
				t.Fatalf("step %d: effect %d differs", i, j)
			}
		}
		if i%500 == 0 {
			want := saveBytes(t, ref)
			if !bytes.Equal(saveBytes(t, m.state), want) || !bytes.Equal(saveBytes(t, quiet.state), want) {
				t.Fatalf("step %d: snapshots differ", i)
			}
		}
	}
	checkResultDecoder(t, r, results)
}

// checkResultDecoder: the hand-written Result decoder takes the fast path
// for VM results and agrees with proto.Unmarshal on them and on mangled
// copies (flipped bytes, truncations): whenever the fast path accepts an
// input, proto.Unmarshal accepts it too and yields the same message.
func checkResultDecoder(t *testing.T, r *rand.Rand, results [][]byte) {
	t.Helper()
	fast := 0
	for _, data := range results {
		for k := 0; k < 20; k++ {
			in := data
			if k > 0 && len(data) > 0 {
				in = bytes.Clone(data)
				switch k % 3 {
				case 0:
					in = in[:r.Intn(len(in))]
				default:
					in[r.Intn(len(in))] = byte(r.Intn(256))
				}
			}
			got, ok := decodeVMResult(in)
			if !ok {
				if k == 0 && strings.Contains(string(data), "vm-") {
					t.Fatalf("fast path refused a VM result %x", data)
				}
				continue
			}
			fast++
			var want blixardpb.Result
			if err := proto.Unmarshal(in, &want); err != nil {
				t.Fatalf("fast path accepted %x, proto.Unmarshal: %v", in, err)
			}
			if !proto.Equal(got, &want) {
				t.Fatalf("decoding %x:\n got %v\nwant %v", in, got, &want)
			}
		}
	}
	if fast < len(results) {
		t.Fatalf("fast path taken %d times for %d results", fast, len(results))
	}
}

// TestVMEncoderMatchesProto: the hand-written VM record encoder that
// snapshots and proposer results use writes exactly the bytes of
// marshalling record() deterministically, for every optional part of a
// record present or absent.
func TestVMEncoderMatchesProto(t *testing.T) {
	specs := recordSpecs()
	h := newHarness(t)
	h.must(cmdNode(1, 128, 4<<20))
	var en vmEncoder
	for i, sp := range specs {
		c := cmdCreate(sp)
		c.TimeUnixMs = -int64(i) * 1000 // negative times take ten varint bytes
		h.must(c)
		v := h.s.vms[sp.GetName()]
		v.message = "ünïcode message"
		for _, st := range []struct {
			ip       uint32
			restarts uint32
		}{{v.ip, 3}, {0, 0}} {
			v.ip, v.restarts = st.ip, st.restarts
			rec := v.record()
			if rec.Tap != tapName(v.id) || (v.ip != 0 && (rec.Ip != ipString(v.ip) || rec.Mac != macFromIP(v.ip))) || (v.ip == 0 && rec.Ip+rec.Mac != "") {
				t.Fatalf("record tap/ip/mac = %q/%q/%q", rec.Tap, rec.Ip, rec.Mac)
			}
			want, err := proto.MarshalOptions{Deterministic: true}.Marshal(v.record())
			if err != nil {
				t.Fatal(err)
			}
			if got := en.record(v); !bytes.Equal(got, want) {
				t.Fatalf("%s: record encoding differs:\n got %x\nwant %x", sp.GetName(), got, want)
			}
			want, err = proto.MarshalOptions{Deterministic: true}.Marshal(vmOutcome(v).result())
			if err != nil {
				t.Fatal(err)
			}
			if got := en.appendResult([]byte("x"), v); !bytes.Equal(got[1:], want) || got[0] != 'x' {
				t.Fatalf("%s: result encoding differs", sp.GetName())
			}
			// The proposer's Replica decodes it by hand.
			got, ok := decodeVMResult(want)
			if !ok || !proto.Equal(got, vmOutcome(v).result()) {
				t.Fatalf("%s: decoded result (fast path %v) differs:\n got %v\nwant %v", sp.GetName(), ok, got, vmOutcome(v).result())
			}
		}
	}
}
