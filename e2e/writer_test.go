//go:build e2e

package e2e

import (
	"fmt"
	"slices"
	"sort"
	"sync"
	"testing"
	"time"
)

// Writer creates stopped VMs named <prefix>-<n> in a loop with the CLI,
// rotating the first address over all nodes; it records every
// acknowledged name and the times of the acks.
type Writer struct {
	addrs  []string
	prefix string
	stop   chan struct{}
	wg     sync.WaitGroup

	mu    sync.Mutex
	acked []Ack
	fails []CLIResult
}

// Ack is one acknowledged write.
type Ack struct {
	Name       string
	Start, End time.Time
}

// StartWriter runs workers concurrent writers against addrs.
func StartWriter(t *testing.T, addrs []string, prefix string, workers int) *Writer {
	w := &Writer{addrs: addrs, prefix: prefix, stop: make(chan struct{})}
	var next int
	var nmu sync.Mutex
	for k := 0; k < workers; k++ {
		w.wg.Add(1)
		go func() {
			defer w.wg.Done()
			for {
				select {
				case <-w.stop:
					return
				default:
				}
				nmu.Lock()
				next++
				i := next
				nmu.Unlock()
				name := fmt.Sprintf("%s-%d", prefix, i)
				rot := append(slices.Clone(addrs[i%len(addrs):]), addrs[:i%len(addrs)]...)
				r := CLI(45*time.Second, rot, "vm", "create", name, "--no-start", "--memory", "64")
				w.mu.Lock()
				if r.Code == 0 {
					w.acked = append(w.acked, Ack{Name: name, Start: r.Start, End: r.End})
				} else {
					w.fails = append(w.fails, r)
				}
				w.mu.Unlock()
			}
		}()
	}
	t.Cleanup(func() { w.Stop() })
	return w
}

// Stop ends the writers (idempotent), waiting for writes in flight.
func (w *Writer) Stop() {
	select {
	case <-w.stop:
	default:
		close(w.stop)
	}
	w.wg.Wait()
}

// Acked returns the acknowledged writes so far, in ack order.
func (w *Writer) Acked() []Ack {
	w.mu.Lock()
	defer w.mu.Unlock()
	a := slices.Clone(w.acked)
	sort.Slice(a, func(i, j int) bool { return a[i].End.Before(a[j].End) })
	return a
}

// Fails returns the writes that were not acknowledged.
func (w *Writer) Fails() []CLIResult {
	w.mu.Lock()
	defer w.mu.Unlock()
	return slices.Clone(w.fails)
}

// waitAcks waits until the writer has at least n acks.
func (c *Cluster) waitAcks(w *Writer, n int, timeout time.Duration) {
	c.t.Helper()
	c.waitFor(timeout, fmt.Sprintf("%d acknowledged writes", n), func() bool { return len(w.Acked()) >= n })
}

// checkAcked fails the test unless every acknowledged write is in vms.
func checkAcked(t *testing.T, acked []Ack, vms []VM, where string) {
	t.Helper()
	have := map[string]bool{}
	for _, vm := range vms {
		have[vm.Name] = true
	}
	missing := 0
	for _, a := range acked {
		if !have[a.Name] {
			missing++
			if missing <= 10 {
				t.Errorf("%s: acknowledged write %s (acked %s) is missing", where, a.Name, a.End.Format("15:04:05.000"))
			}
		}
	}
	if missing > 0 {
		t.Errorf("%s: %d of %d acknowledged writes missing", where, missing, len(acked))
	} else {
		t.Logf("%s: all %d acknowledged writes present", where, len(acked))
	}
}
