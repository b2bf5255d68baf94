package actors

import (
	"testing"
	"time"
)

// TestLeadershipRegainedInANewTermStartsOver is the regression test of
// soak seed 8000117: the leader of term 5 was cut off while a membership
// action blocked, lost leadership, and led again in term 7 before the
// loop looked again. Its down clock and sightings must start over with
// term 7; before the fix they ran on from term 5, and it set down, on the
// stale gossip view from its isolation, two nodes that had kept quorum
// contact (each VM of theirs ran twice for 1 ms).
func TestLeadershipRegainedInANewTermStartsOver(t *testing.T) {
	t0 := time.Unix(1000, 0)
	var l leadership
	if l.observe(t0, false, 4) {
		t.Fatal("a follower leads")
	}
	if !l.observe(t0, true, 5) || !l.fresh || !l.since.Equal(t0) || l.term != 5 {
		t.Fatalf("first lead: %+v", l)
	}
	l.seenAlive[3] = 42
	t1 := t0.Add(time.Second)
	if !l.observe(t1, true, 5) || l.fresh || !l.since.Equal(t0) || l.seenAlive[3] != 42 {
		t.Fatalf("same term: since and sightings must stay: %+v", l)
	}
	t2 := t0.Add(3 * time.Second)
	if !l.observe(t2, true, 7) || !l.fresh || !l.since.Equal(t2) || l.term != 7 {
		t.Fatalf("a new term without a follower tick between: %+v, want since %v", l, t2)
	}
	if _, ok := l.seenAlive[3]; ok {
		t.Fatal("sightings of the old term survived")
	}
	l.seenAlive[3] = 50
	if l.observe(t2.Add(time.Second), false, 8) || !l.since.IsZero() || len(l.seenAlive) != 0 {
		t.Fatalf("following clears: %+v", l)
	}
}
