package consensus

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lni/dragonboat/v4"
	"github.com/lni/dragonboat/v4/logger"
	"google.golang.org/protobuf/proto"

	"github.com/blixard/blixard/proto/blixardpb"
)

func startSingle(t *testing.T, cfg ReplicaConfig) *Replica {
	t.Helper()
	if cfg.ReplicaID == 0 {
		cfg.ReplicaID = 1
	}
	if cfg.DataDir == "" {
		cfg.DataDir = t.TempDir()
	}
	if cfg.RaftAddr == "" {
		cfg.RaftAddr = freeAddr(t)
	}
	cfg.Logger = testLogger
	r, err := StartReplica(cfg)
	if err != nil {
		t.Fatalf("starting replica: %v", err)
	}
	t.Cleanup(func() { r.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := r.WaitReady(ctx); err != nil {
		t.Fatalf("replica not ready: %v", err)
	}
	return r
}

func vmNames(t *testing.T, r *Replica, stale bool) []string {
	t.Helper()
	var names []string
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := r.Read(ctx, stale, func(s *State) {
		for _, v := range s.VMs() {
			names = append(names, v.GetSpec().GetName())
		}
	}); err != nil {
		t.Fatalf("reading replica %d: %v", r.ID(), err)
	}
	return names
}

// TestReplicaSingleNodeBootstrapAndRestart: with no initial members a
// replica bootstraps alone; restarted from its data dir (here with a
// different member list, which must be ignored) it recovers its state
// from the local snapshot plus the log.
func TestReplicaSingleNodeBootstrapAndRestart(t *testing.T) {
	verifyNoLeaks(t)
	dir, addr := t.TempDir(), freeAddr(t)
	var restores atomic.Int64
	cfg := ReplicaConfig{
		DataDir:            dir,
		RaftAddr:           addr,
		SnapshotEntries:    5,
		CompactionOverhead: 2,
		OnRestore:          func() { restores.Add(1) },
	}
	r := startSingle(t, cfg)
	if leader, _, ok := r.LeaderID(); !ok || leader != 1 {
		t.Fatalf("single replica: leader %d (known %t), want itself", leader, ok)
	}
	var want []string
	mustPropose(t, r, upsertNodeCmd(1))
	for i := 0; i < 12; i++ {
		name := fmt.Sprintf("vm-%02d", i)
		mustPropose(t, r, createVMCmd(name))
		want = append(want, name)
	}
	if got := vmNames(t, r, false); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("linearizable read: vms %v, want %v", got, want)
	}
	if got := vmNames(t, r, true); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("stale read: vms %v, want %v", got, want)
	}
	applied := r.AppliedIndex()
	if applied == 0 {
		t.Fatal("applied index is 0 after 13 commands")
	}
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	if restores.Load() != 0 {
		t.Fatalf("OnRestore called %d times before any restart", restores.Load())
	}

	cfg.InitialMembers = map[uint64]string{1: addr, 2: freeAddr(t)}
	r = startSingle(t, cfg)
	if got := vmNames(t, r, false); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("after restart: vms %v, want %v", got, want)
	}
	if got := r.AppliedIndex(); got < applied {
		t.Fatalf("after restart: applied index %d, was %d", got, applied)
	}
	if restores.Load() == 0 {
		t.Error("restart with a local snapshot did not call OnRestore")
	}
	m, err := r.Membership(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(m.Voters) != 1 || m.Voters[1] != addr {
		t.Errorf("membership after restart: voters %v, want only 1=%s (the ignored member list leaked in)", m.Voters, addr)
	}
}

// TestReplicaProposeStampsTime: the proposer, not apply, reads the
// clock, and only when the command carries no time; the caller's command
// is left untouched.
func TestReplicaProposeStampsTime(t *testing.T) {
	verifyNoLeaks(t)
	r := startSingle(t, ReplicaConfig{})
	mustPropose(t, r, upsertNodeCmd(1))

	cmd := createVMCmd("stamped")
	before := time.Now().UnixMilli()
	res := mustPropose(t, r, cmd)
	after := time.Now().UnixMilli()
	if got := res.GetVm().GetCreatedUnixMs(); got < before || got > after {
		t.Errorf("created_unix_ms %d, want the proposer's clock in [%d, %d]", got, before, after)
	}
	if cmd.GetTimeUnixMs() != 0 {
		t.Errorf("Propose modified the caller's command: time_unix_ms %d", cmd.GetTimeUnixMs())
	}

	cmd = createVMCmd("given")
	cmd.TimeUnixMs = 1234
	if got := mustPropose(t, r, cmd).GetVm().GetCreatedUnixMs(); got != 1234 {
		t.Errorf("created_unix_ms %d, want the command's own 1234", got)
	}
}

// TestReplicaTypedErrorsAreResults: a command the state machine rejects
// is a successful proposal with a typed Result error, not a Go error.
func TestReplicaTypedErrorsAreResults(t *testing.T) {
	verifyNoLeaks(t)
	r := startSingle(t, ReplicaConfig{})
	res, err := r.Propose(context.Background(), deleteVMCmd("missing"))
	if err != nil {
		t.Fatalf("propose: %v", err)
	}
	if res.GetError().GetCode() != blixardpb.Code_NOT_FOUND {
		t.Fatalf("deleting a missing vm: result %v, want NOT_FOUND", res)
	}
}

// TestReplicaEffectsOnlyForLocalNode: OnEffects sees the effects that
// concern this node and nothing else.
func TestReplicaEffectsOnlyForLocalNode(t *testing.T) {
	verifyNoLeaks(t)
	got := make(chan []Effect, 16)
	r := startSingle(t, ReplicaConfig{OnEffects: func(e []Effect) { got <- e }})
	mustPropose(t, r, upsertNodeCmd(1))
	mustPropose(t, r, upsertNodeCmd(2))
	pinned := func(name string, node uint64) *blixardpb.Command {
		c := createVMCmd(name)
		c.GetCreateVm().Spec.NodeId = node
		return c
	}
	mustPropose(t, r, pinned("elsewhere", 2))
	mustPropose(t, r, pinned("here", 1))
	select {
	case effs := <-got:
		if len(effs) != 1 || effs[0].VM.GetSpec().GetName() != "here" || effs[0].VM.GetNodeId() != 1 {
			t.Fatalf("first effects delivered: %+v, want one for vm here on node 1", effs)
		}
	default:
		t.Fatal("no effect delivered for a vm placed on the local node")
	}
	select {
	case effs := <-got:
		t.Fatalf("unexpected further effects: %+v", effs)
	default:
	}
}

// TestReplicaConcurrentReadsAndWrites runs reads (both kinds), writes
// and snapshots at once; under -race it proves Lookup never overlaps
// Update. Linearizable reads must never go back in time.
func TestReplicaConcurrentReadsAndWrites(t *testing.T) {
	verifyNoLeaks(t)
	r := startSingle(t, ReplicaConfig{SnapshotEntries: 10, CompactionOverhead: 5})
	mustPropose(t, r, upsertNodeCmd(1))
	const writers, perWriter = 4, 25
	var done atomic.Bool
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for w := 0; w < writers; w++ {
		wg.Go(func() {
			for i := 0; i < perWriter; i++ {
				if _, err := propose(r, createVMCmd(fmt.Sprintf("w%d-%02d", w, i))); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	var readers sync.WaitGroup
	for rd := 0; rd < 4; rd++ {
		readers.Go(func() {
			stale := rd%2 == 1
			last := 0
			for !done.Load() {
				n := 0
				err := r.Read(context.Background(), stale, func(s *State) {
					n = len(s.VMs())
					_ = s.Nodes()
					_ = s.NodeUsage(1)
				})
				if err != nil {
					errs <- fmt.Errorf("read (stale %t): %w", stale, err)
					return
				}
				if !stale && n < last {
					errs <- fmt.Errorf("linearizable read saw %d vms after seeing %d", n, last)
					return
				}
				last = n
			}
		})
	}
	wg.Wait()
	done.Store(true)
	readers.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if got := len(vmNames(t, r, false)); got != writers*perWriter {
		t.Errorf("%d vms after the writes, want %d", got, writers*perWriter)
	}
	if r.events.snapshotsCreated.Load() == 0 {
		t.Error("no snapshot was taken during the run")
	}
}

// TestReplicaClose: Close is idempotent, and afterwards every call fails
// with ErrUnavailable instead of panicking or hanging.
func TestReplicaClose(t *testing.T) {
	verifyNoLeaks(t)
	r := startSingle(t, ReplicaConfig{})
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	if err := r.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	ctx := context.Background()
	if _, err := r.Propose(ctx, upsertNodeCmd(1)); !errors.Is(err, ErrUnavailable) {
		t.Errorf("Propose after Close: %v, want ErrUnavailable", err)
	}
	if err := r.Read(ctx, false, func(*State) {}); !errors.Is(err, ErrUnavailable) {
		t.Errorf("Read after Close: %v, want ErrUnavailable", err)
	}
	if err := r.Read(ctx, true, func(*State) {}); !errors.Is(err, ErrUnavailable) {
		t.Errorf("stale Read after Close: %v, want ErrUnavailable", err)
	}
	if err := r.WaitReady(ctx); !errors.Is(err, ErrUnavailable) {
		t.Errorf("WaitReady after Close: %v, want ErrUnavailable", err)
	}
	if _, err := r.Membership(ctx); !errors.Is(err, ErrUnavailable) {
		t.Errorf("Membership after Close: %v, want ErrUnavailable", err)
	}
	if err := r.AddVoter(ctx, 2, "127.0.0.1:1"); !errors.Is(err, ErrUnavailable) {
		t.Errorf("AddVoter after Close: %v, want ErrUnavailable", err)
	}
	if _, _, ok := r.LeaderID(); ok {
		t.Error("LeaderID after Close reports a leader")
	}
}

// TestReplicaCloseWhileBusy: Close during a storm of proposals, reads and
// membership reads neither panics nor hangs, and every call that does
// not succeed reports ErrUnavailable.
func TestReplicaCloseWhileBusy(t *testing.T) {
	verifyNoLeaks(t)
	r := startSingle(t, ReplicaConfig{})
	mustPropose(t, r, upsertNodeCmd(1))
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	var calls atomic.Int64
	for g := 0; g < 12; g++ {
		wg.Go(func() {
			for i := 0; ; i++ {
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				var err error
				switch g % 4 {
				case 0:
					_, err = r.Propose(ctx, createVMCmd(fmt.Sprintf("busy-%d-%d", g, i)))
				case 1:
					err = r.Read(ctx, false, func(*State) {})
				case 2:
					err = r.Read(ctx, true, func(*State) {})
				case 3:
					_, err = r.Membership(ctx)
				}
				cancel()
				calls.Add(1)
				if err != nil {
					if !errors.Is(err, ErrUnavailable) {
						errs <- fmt.Errorf("goroutine %d: %w", g, err)
					}
					return
				}
			}
		})
	}
	waitFor(t, 10*time.Second, "some calls to go through", func() bool { return calls.Load() > 50 })
	start := time.Now()
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	if took := time.Since(start); took > 5*time.Second {
		t.Errorf("Close and the calls in flight took %v to return", took)
	}
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

func TestReplicaConfigRejected(t *testing.T) {
	verifyNoLeaks(t)
	dir, addr := t.TempDir(), "127.0.0.1:1"
	for _, tc := range []struct {
		name string
		cfg  ReplicaConfig
		want string
	}{
		{"zero id", ReplicaConfig{DataDir: dir, RaftAddr: addr}, "replica id must be nonzero"},
		{"no dir", ReplicaConfig{ReplicaID: 1, RaftAddr: addr}, "data dir is required"},
		{"no addr", ReplicaConfig{ReplicaID: 1, DataDir: dir}, "raft address is required"},
		{"join with members", ReplicaConfig{ReplicaID: 1, DataDir: dir, RaftAddr: addr, Join: true,
			InitialMembers: map[uint64]string{1: addr}}, "joining replica takes no initial members"},
		{"members without self", ReplicaConfig{ReplicaID: 1, DataDir: dir, RaftAddr: addr,
			InitialMembers: map[uint64]string{2: addr}}, "do not include replica 1"},
		{"election too short", ReplicaConfig{ReplicaID: 1, DataDir: dir, RaftAddr: addr,
			ElectionRTT: 4, HeartbeatRTT: 2}, "must exceed twice the heartbeat"},
	} {
		r, err := StartReplica(tc.cfg)
		if err == nil {
			r.Close()
			t.Errorf("%s: started, want an error", tc.name)
			continue
		}
		if !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: error %q, want it to mention %q", tc.name, err, tc.want)
		}
	}
}

// TestReplicaMembership: a replica joins as non-voting, is promoted to
// voter, is removed, and can never come back under the same id.
func TestReplicaMembership(t *testing.T) {
	verifyNoLeaks(t)
	r1 := startSingle(t, ReplicaConfig{ReplicaID: 1})
	mustPropose(t, r1, upsertNodeCmd(1))
	mustPropose(t, r1, createVMCmd("before-join"))
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()

	addr2 := freeAddr(t)
	if err := r1.AddNonVoting(ctx, 2, addr2); err != nil {
		t.Fatalf("adding non-voting replica 2: %v", err)
	}
	if err := r1.AddNonVoting(ctx, 2, addr2); err != nil {
		t.Fatalf("adding non-voting replica 2 again (must be a no-op): %v", err)
	}
	r2 := startSingle(t, ReplicaConfig{ReplicaID: 2, RaftAddr: addr2, Join: true, NonVoting: true})
	if _, err := os.Stat(filepath.Join(r2.cfg.DataDir, nonVotingMarker)); err != nil {
		t.Fatalf("non-voting replica 2 has no role marker: %v", err)
	}
	if got := vmNames(t, r2, false); fmt.Sprint(got) != "[before-join]" {
		t.Fatalf("joined replica holds vms %v, want [before-join]", got)
	}
	// Restarted while non-voting, without the flag: its marker keeps it
	// non-voting (as a voter it would panic replaying its own addition).
	if err := r2.Close(); err != nil {
		t.Fatal(err)
	}
	r2 = startSingle(t, ReplicaConfig{ReplicaID: 2, DataDir: r2.cfg.DataDir, RaftAddr: addr2})
	if !r2.cfg.NonVoting {
		t.Fatal("non-voting replica 2 restarted as a voter")
	}
	if got := vmNames(t, r2, false); fmt.Sprint(got) != "[before-join]" {
		t.Fatalf("restarted non-voting replica holds vms %v, want [before-join]", got)
	}
	m, err := r1.Membership(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if m.NonVoting[2] != addr2 || len(m.Voters) != 1 {
		t.Fatalf("after AddNonVoting: %+v, want voter 1 and non-voting 2", m)
	}

	if err := r1.AddVoter(ctx, 2, addr2); err != nil {
		t.Fatalf("promoting replica 2: %v", err)
	}
	m, err = r2.Membership(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if m.Voters[2] != addr2 || len(m.Voters) != 2 || len(m.NonVoting) != 0 {
		t.Fatalf("after AddVoter, seen from replica 2: %+v, want voters 1 and 2", m)
	}
	mustPropose(t, r2, createVMCmd("after-promotion"))

	// Once promoted, replica 2 takes a snapshot covering its promotion and
	// drops its non-voting marker; restarted from its data dir it starts
	// as the voter it is (Join and NonVoting are ignored on restarts).
	marker := filepath.Join(r2.cfg.DataDir, nonVotingMarker)
	waitFor(t, 20*time.Second, "replica 2 to drop its non-voting marker", func() bool {
		_, err := os.Stat(marker)
		return errors.Is(err, os.ErrNotExist)
	})
	if err := r2.Close(); err != nil {
		t.Fatal(err)
	}
	r2 = startSingle(t, ReplicaConfig{ReplicaID: 2, DataDir: r2.cfg.DataDir, RaftAddr: addr2, Join: true, NonVoting: true})
	if r2.cfg.NonVoting {
		t.Error("promoted replica 2 restarted as non-voting")
	}
	mustPropose(t, r2, createVMCmd("after-restart"))
	if got := vmNames(t, r2, false); fmt.Sprint(got) != "[after-promotion after-restart before-join]" {
		t.Fatalf("restarted replica 2 holds vms %v", got)
	}

	if err := r1.RemoveReplica(ctx, 2); err != nil {
		t.Fatalf("removing replica 2: %v", err)
	}
	if err := r1.RemoveReplica(ctx, 2); err != nil {
		t.Fatalf("removing replica 2 again (must be a no-op): %v", err)
	}
	m, err = r1.Membership(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := m.Voters[2]; ok || fmt.Sprint(m.Removed) != "[2]" {
		t.Fatalf("after RemoveReplica: %+v, want 2 removed", m)
	}
	if err := r1.AddVoter(ctx, 2, addr2); !errors.Is(err, ErrReplicaRemoved) {
		t.Fatalf("re-adding removed replica 2: %v, want ErrReplicaRemoved", err)
	}
	if m.ConfigChangeID == 0 {
		t.Error("membership has no config change id after three changes")
	}
	if err := r1.AddNonVoting(ctx, 1, r1.cfg.RaftAddr); err == nil || !strings.Contains(err.Error(), "is a voter") {
		t.Errorf("demoting voter 1: %v, want an error saying it is a voter", err)
	}
	if err := r1.AddVoter(ctx, 1, "127.0.0.1:1"); err == nil || !strings.Contains(err.Error(), "already votes at") {
		t.Errorf("re-adding voter 1 at another address: %v, want an error naming its address", err)
	}
}

func TestRaftUnavailableWrapsAndExplains(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want string
	}{
		{dragonboat.ErrTimeout, "no quorum: proposal timed out (outcome unknown: it may still apply once a quorum is back)"},
		{context.DeadlineExceeded, "no quorum: proposal timed out (outcome unknown: it may still apply once a quorum is back)"},
		{dragonboat.ErrCanceled, "proposal canceled"},
		{dragonboat.ErrShardNotReady, "no leader"},
		{dragonboat.ErrSystemBusy, "overloaded"},
		{dragonboat.ErrClosed, "replica closed"},
		{dragonboat.ErrShardClosed, "replica closed"},
		{dragonboat.ErrAborted, "aborted"},
		{dragonboat.ErrRejected, "rejected"},
		{dragonboat.ErrShardNotInitialized, "recovering"},
		{errors.New("something else"), "proposal failed"},
	} {
		err := raftUnavailable("proposal", tc.err)
		if !errors.Is(err, ErrUnavailable) || !errors.Is(err, tc.err) {
			t.Errorf("%v: %v does not wrap both ErrUnavailable and the cause", tc.err, err)
		}
		if !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: message %q does not say %q", tc.err, err, tc.want)
		}
	}
}

// TestRaftLoggerLevels: dragonboat's messages reach slog at WARNING and
// above by default, routine warnings are demoted, and a repeated warning
// is logged once per window.
func TestRaftLoggerLevels(t *testing.T) {
	var buf bytes.Buffer
	sink := slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug}))
	l := newRaftLogger("raft-test-" + t.Name()).(*raftLogger)
	l.sink = func() *slog.Logger { return sink }

	l.Infof("chatty %d", 1)
	l.Debugf("chattier %d", 2)
	l.Warningf("%s became candidate", "[1:1]")
	l.Warningf("%s has lost quorum", "[1:1]")
	l.Warningf("%s has lost quorum", "[1:1]")
	l.Errorf("disk on %s", "fire")
	out := buf.String()
	for _, unwanted := range []string{"chatty 1", "chattier 2", "became candidate"} {
		if strings.Contains(out, unwanted) {
			t.Errorf("%q logged at the default WARNING level:\n%s", unwanted, out)
		}
	}
	if n := strings.Count(out, "has lost quorum"); n != 1 {
		t.Errorf("repeated warning logged %d times, want once:\n%s", n, out)
	}
	if !strings.Contains(out, `level=ERROR msg="disk on fire"`) || !strings.Contains(out, "pkg=raft-test-") {
		t.Errorf("error not logged with its package:\n%s", out)
	}

	buf.Reset()
	l.SetLevel(logger.INFO)
	l.Infof("chatty %d", 3)
	l.Warningf("%s became candidate", "[1:1]")
	out = buf.String()
	if !strings.Contains(out, `level=INFO msg="chatty 3"`) || !strings.Contains(out, `level=INFO msg="[1:1] became candidate"`) {
		t.Errorf("at INFO: want the info message and the demoted election warning:\n%s", out)
	}

	// The factory is process-global: installing it again must not panic.
	installRaftLogger(testLogger)
	installRaftLogger(nil)
}

// TestEntryEnvelope: entries carry their proposer; bare commands and
// malformed envelopes reach apply unchanged.
func TestEntryEnvelope(t *testing.T) {
	cmd, err := proto.Marshal(createVMCmd("x"))
	if err != nil {
		t.Fatal(err)
	}
	proposer, got := decodeEntry(append(encodeEntry(300), cmd...))
	if proposer != 300 || !bytes.Equal(got, cmd) {
		t.Errorf("envelope: proposer %d, command %x; want 300, %x", proposer, got, cmd)
	}
	if proposer, got := decodeEntry(cmd); proposer != 0 || !bytes.Equal(got, cmd) {
		t.Errorf("bare command: proposer %d, command %x; want 0 and the input", proposer, got)
	}
	bad := []byte{entryEnvelope, 0xff}
	if proposer, got := decodeEntry(bad); proposer != 0 || !bytes.Equal(got, bad) {
		t.Errorf("malformed envelope: proposer %d, command %x; want 0 and the input", proposer, got)
	}
	s := NewState()
	if res, _ := s.ApplyBytes(1, bad); res.GetError().GetCode() != blixardpb.Code_INVALID_ARGUMENT {
		t.Errorf("apply of a malformed envelope: %v, want INVALID_ARGUMENT", res)
	}
}

// TestProposeAppendsTimeField: appending the time field to an encoded
// command is the same as setting it.
func TestProposeAppendsTimeField(t *testing.T) {
	cmd := createVMCmd("x")
	data, err := proto.Marshal(cmd)
	if err != nil {
		t.Fatal(err)
	}
	data = appendTime(data, 42)
	var got blixardpb.Command
	if err := proto.Unmarshal(data, &got); err != nil {
		t.Fatal(err)
	}
	cmd.TimeUnixMs = 42
	if !proto.Equal(&got, cmd) {
		t.Fatalf("decoded %v, want %v", &got, cmd)
	}
}

// TestReplicaLocalVoters: the local view of the voters needs no leader
// round trip and matches the linearizable membership; after Close it is
// not known.
func TestReplicaLocalVoters(t *testing.T) {
	verifyNoLeaks(t)
	r := startSingle(t, ReplicaConfig{})
	m, err := r.Membership(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	got, ok := r.LocalVoters()
	if !ok || len(got) != 1 || got[r.ID()] != m.Voters[r.ID()] {
		t.Fatalf("local voters %v (%v), want %v", got, ok, m.Voters)
	}
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	if got, ok := r.LocalVoters(); ok {
		t.Fatalf("local voters after Close: %v", got)
	}
}
