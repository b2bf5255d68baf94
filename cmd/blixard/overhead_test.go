package main

import (
	"bufio"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/blixard/blixard/cmd/blixard/internal/benchsuite"
)

// BenchmarkAgentOverhead boots 20 real guests (qemu, TCG, 128 MiB, no
// network) on one agent and reports what the agent itself costs per running
// VM: resident memory and goroutines (from its /metrics, before any VM and
// with all 20 READY) and CPU time per VM-minute while the guests idle. The
// guests' own qemu processes are not counted. Run it alone:
//
//	go test ./cmd/blixard -run '^$' -bench AgentOverhead -benchtime 1x -timeout 30m
func BenchmarkAgentOverhead(b *testing.B) {
	const vms = 20
	kernel, initrd := qemuGuest(b)
	bin := buildBinary(b)
	tmp := b.TempDir()
	p := freePorts(b, 4)
	api := fmt.Sprintf("127.0.0.1:%d", p[0])
	metrics := fmt.Sprintf("127.0.0.1:%d", p[3])
	dataDir := filepath.Join(tmp, "node1")
	logf, err := os.Create(filepath.Join(tmp, "node1.log"))
	if err != nil {
		b.Fatal(err)
	}
	agent := exec.Command(bin, "run", "--node-id", "1", "--data-dir", dataDir,
		"--api-addr", api, "--raft-addr", fmt.Sprintf("127.0.0.1:%d", p[1]),
		"--gossip-addr", fmt.Sprintf("127.0.0.1:%d", p[2]), "--metrics-addr", metrics,
		"--driver", "qemu", "--accel", "tcg", "--no-network", "--stop-vms-on-exit",
		"--vcpus", strconv.Itoa(vms), "--memory-mb", strconv.Itoa(vms*128), "--log-format", "json")
	agent.Stdout, agent.Stderr = logf, logf
	if err := agent.Start(); err != nil {
		b.Fatal(err)
	}
	done := make(chan struct{})
	go func() { agent.Wait(); logf.Close(); close(done) }()
	b.Cleanup(func() {
		agent.Process.Signal(syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(time.Minute):
			agent.Process.Kill()
			<-done
		}
		for _, pid := range benchsuite.QemuPids(dataDir) {
			syscall.Kill(pid, syscall.SIGKILL)
		}
	})
	cli := func(args ...string) (string, error) {
		out, err := exec.Command(bin, append([]string{"--addr", api}, args...)...).CombinedOutput()
		return string(out), err
	}
	sample := func() map[string]float64 {
		resp, err := http.Get("http://" + metrics + "/metrics")
		if err != nil {
			b.Fatal(err)
		}
		defer resp.Body.Close()
		m := map[string]float64{}
		sc := bufio.NewScanner(resp.Body)
		for sc.Scan() {
			f := strings.Fields(sc.Text())
			if len(f) == 2 && !strings.HasPrefix(f[0], "#") {
				if v, err := strconv.ParseFloat(f[1], 64); err == nil {
					m[f[0]] = v
				}
			}
		}
		io.Copy(io.Discard, resp.Body)
		return m
	}
	waitUntil(b, time.Minute, "the agent's API", func() (bool, string) {
		out, err := cli("vm", "list")
		return err == nil, out
	})
	// Let the fresh agent's start-up garbage settle before the baseline.
	time.Sleep(3 * time.Second)
	before := sample()

	start := time.Now()
	var wg sync.WaitGroup
	errs := make(chan string, vms)
	for i := 0; i < vms; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			if out, err := cli("vm", "create", fmt.Sprintf("g%02d", i), "--memory", "128",
				"--kernel", kernel, "--initrd", initrd, "--restart", "never", "--wait", "--timeout", "15m"); err != nil {
				errs <- out
			}
		}(i)
	}
	wg.Wait()
	close(errs)
	for e := range errs {
		b.Fatalf("vm create: %s", e)
	}
	waitUntil(b, 20*time.Minute, fmt.Sprintf("all %d guests printing %s", vms, guestReady), func() (bool, string) {
		ready := 0
		for i := 0; i < vms; i++ {
			log, _ := os.ReadFile(filepath.Join(dataDir, "vms", fmt.Sprintf("g%02d", i), "console.log"))
			if strings.Contains(string(log), guestReady) {
				ready++
			}
		}
		return ready == vms, fmt.Sprintf("%d ready", ready)
	})
	boot := time.Since(start)
	if n := len(benchsuite.QemuPids(dataDir)); n != vms {
		b.Fatalf("want %d qemu processes, got %d", vms, n)
	}
	idleFrom := sample()
	const idle = 30 * time.Second
	time.Sleep(idle)
	after := sample()
	if after["blixard_local_vms_running"] != vms {
		b.Fatalf("agent reports %v running VMs, want %d", after["blixard_local_vms_running"], vms)
	}
	rss := (after["process_resident_memory_bytes"] - before["process_resident_memory_bytes"]) / vms
	gor := (after["go_goroutines"] - before["go_goroutines"]) / vms
	cpu := (after["process_cpu_seconds_total"] - idleFrom["process_cpu_seconds_total"]) / (vms * idle.Minutes())
	b.Logf("agent before: RSS %.1f MiB, %v goroutines; with %d running guests: RSS %.1f MiB, %v goroutines; all READY after %s",
		before["process_resident_memory_bytes"]/(1<<20), before["go_goroutines"], vms,
		after["process_resident_memory_bytes"]/(1<<20), after["go_goroutines"], boot.Round(time.Second))
	b.ReportMetric(rss/1024, "KiB-RSS/VM")
	b.ReportMetric(gor, "goroutines/VM")
	b.ReportMetric(cpu*1000, "agent-CPU-ms/VM-min")
	b.ReportMetric(boot.Seconds(), "s-all-ready")
}
