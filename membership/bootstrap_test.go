package membership

import (
	"fmt"
	"testing"
)

func TestBootstrapSet(t *testing.T) {
	m := func(id uint64, expect int, st State) Member {
		return Member{Meta: Meta{NodeID: id, Expect: expect}, State: st}
	}
	self := Meta{NodeID: 2, Expect: 3}
	ids := func(ms []Meta) string {
		var out []uint64
		for _, x := range ms {
			out = append(out, x.NodeID)
		}
		return fmt.Sprint(out)
	}
	for _, tc := range []struct {
		name       string
		view       []Member
		want       string
		ok, exists bool
	}{
		{"too few", []Member{m(1, 3, StateAlive)}, "[]", false, false},
		{"dead ones do not count", []Member{m(1, 3, StateAlive), m(3, 3, StateDead)}, "[]", false, false},
		{"other expectations do not count", []Member{m(1, 3, StateAlive), m(3, 5, StateAlive)}, "[]", false, false},
		{"exactly n", []Member{m(3, 3, StateAlive), m(1, 3, StateAlive)}, "[1 2 3]", true, false},
		{"the n lowest ids", []Member{m(4, 3, StateAlive), m(3, 3, StateAlive), m(1, 3, StateAlive)}, "[1 2 3]", true, false},
		{"a running cluster wins", []Member{m(1, 3, StateAlive), m(3, 3, StateAlive), m(7, 0, StateAlive)}, "[]", false, true},
	} {
		got, ok, exists := BootstrapSet(self, tc.view, 3)
		if ids(got) != tc.want || ok != tc.ok || exists != tc.exists {
			t.Errorf("%s: got %s ok=%v exists=%v, want %s ok=%v exists=%v", tc.name, ids(got), ok, exists, tc.want, tc.ok, tc.exists)
		}
	}
}
