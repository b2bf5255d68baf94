package membership

import "sort"

// BootstrapSet decides, from the gossip view, which nodes bootstrap a new
// cluster together under --bootstrap-expect n: self (which announces
// Expect n) and the live members announcing the same n. Once at least n
// such nodes are visible, the n lowest node ids form the cluster: every
// node that sees the same candidates computes the same set. ok is false
// while fewer than n are visible. exists is true when a live member
// announces neither Expect nor Joining: a cluster is running, and the
// node should join it instead.
func BootstrapSet(self Meta, view []Member, n int) (members []Meta, ok, exists bool) {
	cands := []Meta{self}
	for _, m := range view {
		if m.State != StateAlive && m.State != StateSuspect {
			continue
		}
		switch {
		case m.Expect == n && m.NodeID != self.NodeID:
			cands = append(cands, m.Meta)
		case m.Expect == 0 && !m.Joining && !m.Leaving:
			exists = true
		}
	}
	if exists || len(cands) < n {
		return nil, false, exists
	}
	sort.Slice(cands, func(i, j int) bool { return cands[i].NodeID < cands[j].NodeID })
	return cands[:n], true, false
}
