//go:build e2e

package e2e

import (
	"bufio"
	"context"
	"io"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// Sampler watches `ps` on every host throughout a scenario: one long
// `docker exec` per host prints a timestamped process list every 100 ms
// (the hosts share this machine's kernel clock). Each (VM, host) pair's
// consecutive sightings form an observed run; observed runs lie inside
// the real ones, so two runs of one VM on two hosts that overlap prove
// the VM ran twice (overlaps shorter than the sampling gap can be missed).
type Sampler struct {
	c    *Cluster
	stop chan struct{}
	wg   sync.WaitGroup

	mu      sync.Mutex
	samples map[string][]psSample // host name -> samples in time order
}

// sampleScript prints "@<unix time>" and the process list every 100 ms.
const sampleScript = `while :; do echo "@$(date +%s.%N)"; ps -eo pid=,stat=,args=; sleep 0.1; done`

// StartSampler starts sampling; Check ends it.
func (c *Cluster) StartSampler() *Sampler {
	s := &Sampler{c: c, stop: make(chan struct{}), samples: map[string][]psSample{}}
	for _, h := range c.Hosts {
		s.wg.Add(1)
		go s.watch(h)
	}
	c.t.Cleanup(s.halt)
	return s
}

// watch streams h's samples, restarting the stream while h is down.
func (s *Sampler) watch(h *Host) {
	defer s.wg.Done()
	for stream := 0; ; stream++ {
		ctx, cancel := context.WithCancel(context.Background())
		cmd := exec.CommandContext(ctx, "docker", "exec", h.Container, "sh", "-c", sampleScript)
		out, err := cmd.StdoutPipe()
		if err == nil && cmd.Start() == nil {
			go func() {
				select {
				case <-s.stop:
					cancel()
				case <-ctx.Done():
				}
			}()
			s.read(h, stream, out)
			cmd.Wait()
		}
		cancel()
		select {
		case <-s.stop:
			return
		case <-time.After(200 * time.Millisecond): // the host is down: look again
		}
	}
}

func (s *Sampler) read(h *Host, stream int, r io.Reader) {
	sc := bufio.NewScanner(r)
	var cur *psSample
	var lines []string
	flush := func() {
		if cur == nil {
			return
		}
		for _, p := range parseQemus(strings.Join(lines, "\n")) {
			cur.vms[p.Name] = p.PID
		}
		s.mu.Lock()
		s.samples[h.Name] = append(s.samples[h.Name], *cur)
		s.mu.Unlock()
	}
	for sc.Scan() {
		line := sc.Text()
		if ts, ok := strings.CutPrefix(line, "@"); ok {
			flush()
			sec, err := strconv.ParseFloat(ts, 64)
			if err != nil {
				cur = nil
				continue
			}
			cur = &psSample{at: time.Unix(0, int64(sec*1e9)), stream: stream, vms: map[string]int{}}
			lines = lines[:0]
			continue
		}
		lines = append(lines, line)
	}
	// The last sample may be cut short by a kill: drop it.
}

func (s *Sampler) halt() {
	select {
	case <-s.stop:
	default:
		close(s.stop)
	}
	s.wg.Wait()
}

// Runs returns each VM's observed runs.
func (s *Sampler) Runs() map[string][]psRun {
	s.mu.Lock()
	defer s.mu.Unlock()
	return runsOf(s.samples)
}

// Check ends sampling and fails the test if any VM's observed runs on two
// hosts overlap in time.
func (s *Sampler) Check(t *testing.T) {
	t.Helper()
	s.halt()
	s.mu.Lock()
	n := 0
	var gap time.Duration
	for _, ss := range s.samples {
		n += len(ss)
		for i := 1; i < len(ss); i++ {
			if ss[i].stream == ss[i-1].stream {
				gap = max(gap, ss[i].at.Sub(ss[i-1].at))
			}
		}
	}
	s.mu.Unlock()
	t.Logf("ps sampler: %d samples over %d hosts, longest gap between two samples of one live host %s", n, len(s.c.Hosts), ms(gap))
	if n < 3*len(s.c.Hosts) {
		t.Errorf("ps sampler took only %d samples", n)
	}
	for _, x := range overlaps(s.Runs()) {
		t.Error(x)
	}
}
