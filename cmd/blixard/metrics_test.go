package main

import (
	"fmt"
	"io"
	"net/http"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// `run --metrics-addr` serves Prometheus metrics (the Go runtime's, the
// process's and the node's own) and pprof; a dev node leads its cluster.
func TestRunMetricsEndpoint(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary and runs a node")
	}
	bin := buildBinary(t)
	p := freePorts(t, 4)
	metrics := fmt.Sprintf("127.0.0.1:%d", p[3])
	cmd := exec.Command(bin, "run", "--dev",
		"--api-addr", fmt.Sprintf("127.0.0.1:%d", p[0]), "--raft-addr", fmt.Sprintf("127.0.0.1:%d", p[1]),
		"--gossip-addr", fmt.Sprintf("127.0.0.1:%d", p[2]), "--metrics-addr", metrics)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-done
	})
	get := func(path string) (string, error) {
		resp, err := http.Get("http://" + metrics + path)
		if err != nil {
			return "", err
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if resp.StatusCode != http.StatusOK {
			return "", fmt.Errorf("%s: %s", path, resp.Status)
		}
		return string(b), err
	}
	var body string
	waitUntil(t, time.Minute, "the dev node reporting itself leader on /metrics", func() (bool, string) {
		var err error
		body, err = get("/metrics")
		// The node's own registration and fence heartbeats are proposals.
		return err == nil && strings.Contains(body, "\nblixard_raft_is_leader 1\n") &&
			strings.Contains(body, "\nblixard_raft_propose_seconds_count{kind=\"single\"} "), fmt.Sprint(err, "\n", body)
	})
	for _, want := range []string{"go_goroutines ", "process_resident_memory_bytes ", "blixard_raft_applied_index ", "blixard_local_vms_running 0\n",
		"\nblixard_raft_propose_commands_count ", "\nblixard_raft_propose_failures_total "} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	if out, err := get("/debug/pprof/goroutine?debug=1"); err != nil || !strings.Contains(out, "goroutine profile:") {
		t.Errorf("pprof goroutine profile: %v\n%.200s", err, out)
	}
}

// A --metrics-addr that cannot be bound fails the run with one line.
func TestRunMetricsAddrInUse(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary and runs a node")
	}
	bin := buildBinary(t)
	p := freePorts(t, 3)
	out, err := exec.Command(bin, "run", "--dev",
		"--api-addr", fmt.Sprintf("127.0.0.1:%d", p[0]), "--raft-addr", fmt.Sprintf("127.0.0.1:%d", p[1]),
		"--gossip-addr", fmt.Sprintf("127.0.0.1:%d", p[2]), "--metrics-addr", "127.0.0.1:bad").CombinedOutput()
	if err == nil {
		t.Fatalf("run with a bad --metrics-addr succeeded:\n%s", out)
	}
	if !strings.Contains(string(out), "error: metrics address:") {
		t.Errorf("want a one-line metrics address error, got:\n%s", out)
	}
}
