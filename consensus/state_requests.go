package consensus

import "github.com/blixard/blixard/proto/blixardpb"

// requestTable remembers the results of the last MaxRequests commands
// that carried a request id, in log order, so a client that retries (say,
// after ErrUnavailable) gets the first result instead of a second effect.
// Failed commands are remembered too: a copy of a command that failed
// (ALREADY_EXISTS, say) can still be in flight — a proposal re-issued after
// a lost message, a message held by a slow network — and applied later,
// when it would succeed, after the client was told it failed (the
// simulator found this: TestFailedRequestIsNotAppliedLater).
type requestTable struct {
	byID  map[string]*requestEntry
	order []*requestEntry // oldest first; order[head:] is live
	head  int
}

// requestEntry is one remembered result. It keeps the outcome compactly:
// a copy of the VM or node record as it was after the first application
// (the domain struct, whose strings and slices are immutable and shared,
// so the copy is one allocation), or neither for commands that return no
// record. Entries restored from a snapshot keep the decoded Result
// instead. Either way a retry gets exactly the first Result, and Save
// writes the same bytes for the entry.
type requestEntry struct {
	id     string
	index  uint64
	vm     *vm
	node   *node
	result *blixardpb.Result // restored from a snapshot; nil otherwise
	vmCopy vm                // what vm points to: one allocation for both
}

// newRequestEntry remembers the outcome out of the command with request
// id at log index idx.
func newRequestEntry(id string, idx uint64, out outcome) *requestEntry {
	e := &requestEntry{id: id, index: idx, result: out.res}
	if out.err != nil {
		e.result = errResult(out.err)
	}
	if out.vm != nil {
		e.vmCopy = *out.vm
		e.vm = &e.vmCopy
	}
	if out.node != nil {
		cp := *out.node
		cp.vms = nil // derived; the record does not show it
		e.node = &cp
	}
	return e
}

// outcome is the remembered outcome of the first application.
func (e *requestEntry) outcome() outcome {
	return outcome{vm: e.vm, node: e.node, res: e.result}
}

// resultProto is the entry's Result as the snapshot stores it: the
// restored one, or a freshly built one.
func (e *requestEntry) resultProto() *blixardpb.Result {
	if e.result != nil {
		return e.result
	}
	return e.outcome().result()
}

func newRequestTable() requestTable {
	return requestTable{byID: make(map[string]*requestEntry)}
}

func (t *requestTable) get(id string) (*requestEntry, bool) {
	e, ok := t.byID[id]
	return e, ok
}

func (t *requestTable) len() int { return len(t.order) - t.head }

// add appends an entry, evicting the oldest when the table is full.
func (t *requestTable) add(e *requestEntry) {
	for t.len() >= MaxRequests {
		old := t.order[t.head]
		t.order[t.head] = nil
		t.head++
		delete(t.byID, old.id)
	}
	// Compact once the dead prefix is as long as the live part.
	if t.head > 0 && t.head >= t.len() {
		n := copy(t.order, t.order[t.head:])
		clear(t.order[n:])
		t.order = t.order[:n]
		t.head = 0
	}
	t.order = append(t.order, e)
	t.byID[e.id] = e
}

// entries returns the live entries, oldest first.
func (t *requestTable) entries() []*requestEntry { return t.order[t.head:] }
