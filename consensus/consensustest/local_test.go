package consensustest

import (
	"context"
	"errors"
	"sync"
	"testing"

	"github.com/blixard/blixard/consensus"
	"github.com/blixard/blixard/proto/blixardpb"
)

func node(id uint64) *blixardpb.Command {
	return &blixardpb.Command{Op: &blixardpb.Command_UpsertNode{UpsertNode: &blixardpb.UpsertNode{
		Node: &blixardpb.NodeRecord{Id: id, Vcpus: 128, MemoryMb: 65536}}}}
}

func create(name string, pin uint64) *blixardpb.Command {
	return &blixardpb.Command{Op: &blixardpb.Command_CreateVm{CreateVm: &blixardpb.CreateVm{
		Spec: &blixardpb.VmSpec{Name: name, Vcpus: 1, MemoryMb: 256, NodeId: pin}}}}
}

func TestLocalProposeReadEffects(t *testing.T) {
	ctx := context.Background()
	var got []consensus.Effect
	l := NewLocal(WithClock(func() int64 { return 42 }), WithEffects(2, func(e []consensus.Effect) { got = append(got, e...) }))
	for _, c := range []*blixardpb.Command{node(1), node(2), create("a", 1), create("b", 2)} {
		res, err := l.Propose(ctx, c)
		if err != nil || res.GetError().GetCode() != blixardpb.Code_OK {
			t.Fatalf("propose: %v %v", res, err)
		}
	}
	if l.Index() != 4 {
		t.Errorf("index = %d, want 4", l.Index())
	}
	// Only b concerns node 2.
	if len(got) != 1 || got[0].VM.GetSpec().GetName() != "b" {
		t.Fatalf("effects for node 2 = %v", got)
	}
	var vm *blixardpb.VmRecord
	if err := l.Read(ctx, false, func(s *consensus.State) { vm, _ = s.VM("b") }); err != nil {
		t.Fatal(err)
	}
	if vm.GetCreatedUnixMs() != 42 || vm.GetNodeId() != 2 {
		t.Errorf("vm b = %v: want the clock's time and node 2", vm)
	}
	// A command with its own time keeps it; the caller's command is not modified.
	c := create("c", 0)
	c.TimeUnixMs = 7
	res, _ := l.Propose(ctx, c)
	if res.GetVm().GetCreatedUnixMs() != 7 {
		t.Errorf("created = %d, want 7", res.GetVm().GetCreatedUnixMs())
	}
	d := create("d", 0)
	l.Propose(ctx, d)
	if d.TimeUnixMs != 0 {
		t.Error("Propose modified the caller's command")
	}
}

func TestLocalUnavailable(t *testing.T) {
	ctx := context.Background()
	l := NewLocal()
	l.SetUnavailable(true)
	if _, err := l.Propose(ctx, node(1)); !errors.Is(err, consensus.ErrUnavailable) {
		t.Fatalf("propose err = %v", err)
	}
	if err := l.Read(ctx, false, func(*consensus.State) {}); !errors.Is(err, consensus.ErrUnavailable) {
		t.Fatalf("linearizable read err = %v", err)
	}
	if err := l.Read(ctx, true, func(*consensus.State) {}); err != nil {
		t.Fatalf("stale read err = %v", err)
	}
	if l.Index() != 0 {
		t.Fatal("unavailable propose was applied")
	}
	l.SetUnavailable(false)
	if _, err := l.Propose(ctx, node(1)); err != nil {
		t.Fatal(err)
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := l.Propose(cctx, node(2)); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled propose err = %v", err)
	}
}

// Effects reach the hook in log order even with concurrent proposers, and
// a hook may propose.
func TestLocalEffectsInOrder(t *testing.T) {
	ctx := context.Background()
	var mu sync.Mutex
	var ids []uint64
	var l *Local
	l = NewLocal(WithEffects(1, func(es []consensus.Effect) {
		mu.Lock()
		defer mu.Unlock()
		for _, e := range es {
			ids = append(ids, e.VM.GetId())
		}
	}))
	l.Propose(ctx, node(1))
	var wg sync.WaitGroup
	for i := 0; i < 4; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := 0; j < 25; j++ {
				l.Propose(ctx, create("v"+string(rune('a'+i))+string(rune('a'+j)), 0))
			}
		}()
	}
	wg.Wait()
	mu.Lock()
	defer mu.Unlock()
	if len(ids) != 100 {
		t.Fatalf("%d effects, want 100", len(ids))
	}
	for i := 1; i < len(ids); i++ {
		if ids[i] <= ids[i-1] {
			t.Fatalf("effects out of log order: %v", ids)
		}
	}
}
