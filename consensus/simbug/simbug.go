// Package simbug plants known bugs into blixard for the simulator's
// "prove the harness can fail" tests (sim/planted_test.go).
//
// In a normal build On is a constant false and the planted branches
// compile away. Built with the `simbugs` tag (go test -tags simbugs
// ./sim/, or a blixard binary built that way for `blixard sim --plant`),
// Plant switches a bug on process-wide. Never build a release with the
// tag.
//
// Who may import it: consensus/, actors/ (the planted branches) and sim/.
// It lives under consensus/ because DESIGN.md §2 fixes the top-level
// layout and lets consensus/ import only proto/ (and its own packages),
// while actors/ and sim/ may import consensus/; it imports nothing.
package simbug

// Bug names one planted bug.
type Bug uint32

const (
	// SkipFence makes the self-fencing loop never fence (actors/fence.go):
	// a node cut off from its quorum keeps its VMs running while the
	// cluster re-places them elsewhere.
	SkipFence Bug = 1 << iota
	// ApplyWallClock makes apply read the wall clock instead of the
	// command's time (consensus/apply.go): replicas diverge and their
	// snapshots hash differently.
	ApplyWallClock
	// AckBeforeCommit makes the api actor answer a write as succeeded as
	// soon as it is proposed, before it commits (actors/api.go).
	AckBeforeCommit
)

// Names maps the CLI names of the bugs to the bugs.
var Names = map[string]Bug{
	"skip-fence":        SkipFence,
	"apply-wall-clock":  ApplyWallClock,
	"ack-before-commit": AckBeforeCommit,
}

func (b Bug) String() string {
	for n, x := range Names {
		if x == b {
			return n
		}
	}
	return "none"
}
