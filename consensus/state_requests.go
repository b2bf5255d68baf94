package consensus

import "github.com/blixard/blixard/proto/blixardpb"

// requestTable remembers the results of the last MaxRequests successful
// commands that carried a request id, in log order, so a client that
// retries (say, after ErrUnavailable) gets the first result instead of a
// second effect. Failed commands are not remembered: they changed nothing,
// so running a retry again is safe.
type requestTable struct {
	byID  map[string]*requestEntry
	order []*requestEntry // oldest first; order[head:] is live
	head  int
}

type requestEntry struct {
	id     string
	index  uint64
	result *blixardpb.Result
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
