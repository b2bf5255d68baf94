//go:build e2e

package e2e

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"math/big"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// label marks every container and network the suite creates.
const label = "blixard.e2e=1"

// Ports every node uses on its own address.
const (
	apiPort    = 7001
	raftPort   = 7002
	gossipPort = 7003
)

// guestDir is where the test guest is bind-mounted in a host.
const guestDir = "/usr/share/blixard/guest"

// containerArgs are the `docker run` options that boot systemd as PID 1
// from the host image on this (cgroup v1) Docker host; the same list as
// microvm/systemd.SystemdContainerArgs (copied: e2e uses binaries only).
// Not --privileged: where Docker itself lacks capabilities it asks for
// (CAP_SYS_RESOURCE here) the container would fail to start.
var containerArgs = []string{
	"--cap-add", "SYS_ADMIN", "--cap-add", "NET_ADMIN",
	"--security-opt", "seccomp=unconfined", "--security-opt", "apparmor=unconfined",
	"--cgroupns=host", "-v", "/sys/fs/cgroup:/sys/fs/cgroup",
	"--tmpfs", "/run", "--tmpfs", "/run/lock", "--tmpfs", "/tmp",
	"--device", "/dev/net/tun",
	"--entrypoint", "/sbin/init",
}

// accel is the hosts' --accel: tcg unless BLIXARD_E2E_ACCEL says kvm or
// auto (then /dev/kvm is passed to the hosts too). The default is tcg
// because guests hang under the nested KVM of the development machines.
func accel() string {
	switch a := os.Getenv("BLIXARD_E2E_ACCEL"); a {
	case "kvm", "auto":
		return a
	default:
		return "tcg"
	}
}

// env is what TestMain prepared for the tests.
var env struct {
	skip   string // non-empty: why every test skips
	image  string // blixard-host:<hash>
	bin    string // the blixard binary (static), run here and bind-mounted into hosts
	guest  string // the directory with vmlinux and initrd.img
	repo   string
	prefix string // name prefix of this run's containers and networks
}

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	repo, err := filepath.Abs("..")
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		return 1
	}
	env.repo = repo
	var suffix [3]byte
	rand.Read(suffix[:])
	env.prefix = "bx-e2e-" + hex.EncodeToString(suffix[:])
	if reason := prepare(); reason != "" {
		env.skip = reason
		fmt.Fprintln(os.Stderr, "e2e: skipping:", reason)
	}
	code := m.Run()
	if env.bin != "" {
		os.RemoveAll(filepath.Dir(env.bin))
	}
	return code
}

// prepare checks the machine, sweeps what an earlier run left behind, and
// builds the binary and the host image. It returns why the suite cannot
// run here, or "".
func prepare() string {
	if _, err := exec.LookPath("docker"); err != nil {
		return "needs docker: no docker command"
	}
	if out, err := exec.Command("docker", "info", "--format", "{{.ServerVersion}}").CombinedOutput(); err != nil {
		return fmt.Sprintf("needs a Docker engine: docker info: %v: %s", err, bytes.TrimSpace(out))
	}
	if os.Geteuid() != 0 {
		return "needs root (debootstrap for the host image)"
	}
	if _, err := os.Stat("/dev/net/tun"); err != nil {
		return "needs /dev/net/tun for the VMs' TAP devices"
	}
	if _, err := os.Stat("/dev/kvm"); err != nil && accel() != "tcg" {
		return "BLIXARD_E2E_ACCEL=" + accel() + " needs /dev/kvm"
	}
	sweep()
	env.guest = filepath.Join(env.repo, "build", "guest")
	for _, f := range []string{"vmlinux", "initrd.img"} {
		if _, err := os.Stat(filepath.Join(env.guest, f)); err != nil {
			// .ci/deps and `make e2e` build it; a missing guest is a broken setup, not a skip.
			fmt.Fprintf(os.Stderr, "e2e: no test guest (%v): run make guest\n", err)
			os.Exit(1)
		}
	}
	start := time.Now()
	dir, err := os.MkdirTemp("", "blixard-e2e-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		os.Exit(1)
	}
	env.bin = filepath.Join(dir, "blixard")
	gobin := filepath.Join(runtime.GOROOT(), "bin", "go")
	if _, err := os.Stat(gobin); err != nil {
		gobin = "go"
	}
	build := exec.Command(gobin, "build", "-o", env.bin, "./cmd/blixard")
	build.Dir = env.repo
	// Static: the hosts' libc need not match this machine's.
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "e2e: go build: %v\n%s", err, out)
		os.Exit(1)
	}
	fmt.Fprintf(os.Stderr, "e2e: binary built in %s\n", time.Since(start).Round(time.Millisecond))
	start = time.Now()
	img := exec.Command("bash", filepath.Join(env.repo, "scripts", "hostimage.sh"))
	img.Stderr = os.Stderr
	out, err := img.Output()
	if err != nil {
		fmt.Fprintf(os.Stderr, "e2e: scripts/hostimage.sh: %v\n", err)
		os.Exit(1)
	}
	env.image = strings.TrimSpace(string(out))
	fmt.Fprintf(os.Stderr, "e2e: host image %s ready in %s\n", env.image, time.Since(start).Round(time.Millisecond))
	return ""
}

// sweep removes every container and network a previous run left behind.
func sweep() {
	out, _ := exec.Command("docker", "ps", "-aq", "--filter", "label="+label).Output()
	if ids := strings.Fields(string(out)); len(ids) > 0 {
		fmt.Fprintf(os.Stderr, "e2e: removing %d leftover containers\n", len(ids))
		exec.Command("docker", append([]string{"rm", "-f"}, ids...)...).Run()
	}
	out, _ = exec.Command("docker", "network", "ls", "-q", "--filter", "label="+label).Output()
	if ids := strings.Fields(string(out)); len(ids) > 0 {
		fmt.Fprintf(os.Stderr, "e2e: removing %d leftover networks\n", len(ids))
		exec.Command("docker", append([]string{"network", "rm"}, ids...)...).Run()
	}
}

func need(t *testing.T) {
	t.Helper()
	if env.skip != "" {
		t.Skip(env.skip)
	}
	if testing.Short() {
		t.Skip("-short: the e2e suite boots containers and VMs")
	}
}

// Host is one container: a blixard host.
type Host struct {
	ID        uint64 // node id
	Name      string // container name
	IP        string
	Container string
}

func (h *Host) API() string    { return fmt.Sprintf("%s:%d", h.IP, apiPort) }
func (h *Host) Gossip() string { return fmt.Sprintf("%s:%d", h.IP, gossipPort) }

// Cluster is N hosts on one private network.
type Cluster struct {
	t       *testing.T
	Network string
	Gateway string
	Hosts   []*Host
	name    string
	keep    bool // BLIXARD_E2E_KEEP: a failed test's containers stay for a look
}

// newCluster starts n hosts on a fresh network and forms a cluster by
// --join: host 1 bootstraps alone, the others join it through gossip. It
// returns once every node is alive and a voter. Everything it creates is
// removed when the test ends.
func newCluster(t *testing.T, n int, extraFlags ...string) *Cluster {
	t.Helper()
	need(t)
	c := &Cluster{t: t, name: fmt.Sprintf("%s-%s", env.prefix, shortName(t.Name()))}
	c.createNetwork()
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i := 1; i <= n; i++ {
		h := &Host{ID: uint64(i), Name: fmt.Sprintf("h%d", i), IP: c.ip(i)}
		h.Container = c.name + "-" + h.Name
		c.Hosts = append(c.Hosts, h)
	}
	t.Cleanup(c.remove)
	for i, h := range c.Hosts {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = c.startContainer(h)
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	for _, h := range c.Hosts {
		flags := []string{
			"--node-id", strconv.FormatUint(h.ID, 10),
			"--api-addr", h.API(),
			"--raft-addr", fmt.Sprintf("%s:%d", h.IP, raftPort),
			"--gossip-addr", h.Gossip(),
			"--driver", "qemu", "--accel", accel(),
			"--vcpus", "4", "--memory-mb", "16384",
		}
		if h.ID != 1 {
			flags = append(flags, "--join", c.Hosts[0].Gossip())
		}
		flags = append(flags, extraFlags...)
		c.writeFile(h, "/etc/default/blixard", "BLIXARD_OPTS=\""+strings.Join(flags, " ")+"\"\n")
		c.mustExec(h, "systemctl", "enable", "--now", "blixard")
		if h.ID == 1 {
			c.waitNodes(60*time.Second, 1)
		}
	}
	c.waitNodes(90*time.Second, n)
	t.Logf("cluster of %d formed by --join in %s", n, time.Since(start).Round(time.Millisecond))
	return c
}

// shortName makes a test name usable in container names.
func shortName(s string) string {
	s = strings.ToLower(s)
	var b strings.Builder
	for _, r := range s {
		if (r >= 'a' && r <= 'z') || (r >= '0' && r <= '9') {
			b.WriteRune(r)
		}
	}
	s = strings.TrimPrefix(b.String(), "test")
	if len(s) > 16 {
		s = s[:16]
	}
	return s
}

// createNetwork makes the cluster's bridge network with a subnet of its own
// (fixed addresses let a killed host come back with the same one).
func (c *Cluster) createNetwork() {
	c.t.Helper()
	c.Network = c.name
	var last []byte
	for try := 0; try < 20; try++ {
		n, _ := rand.Int(rand.Reader, big.NewInt(200))
		third := 20 + n.Int64()
		subnet := fmt.Sprintf("172.29.%d.0/24", third)
		out, err := exec.Command("docker", "network", "create", "--label", label,
			"--subnet", subnet, "--gateway", fmt.Sprintf("172.29.%d.1", third), c.Network).CombinedOutput()
		if err == nil {
			c.Gateway = fmt.Sprintf("172.29.%d.1", third)
			c.t.Cleanup(func() {
				if c.keep {
					return
				}
				if out, err := exec.Command("docker", "network", "rm", c.Network).CombinedOutput(); err != nil {
					c.t.Errorf("docker network rm %s: %v: %s", c.Network, err, out)
				}
			})
			return
		}
		last = out
		if !bytes.Contains(out, []byte("overlap")) {
			break
		}
	}
	c.t.Fatalf("docker network create: %s", last)
}

func (c *Cluster) ip(i int) string {
	return strings.TrimSuffix(c.Gateway, ".1") + "." + strconv.Itoa(10+i)
}

func (c *Cluster) startContainer(h *Host) error {
	args := []string{"run", "-d", "--name", h.Container, "--hostname", h.Name, "--label", label,
		"--network", c.Network, "--ip", h.IP}
	args = append(args, containerArgs...)
	if accel() != "tcg" {
		args = append(args, "--device", "/dev/kvm")
	}
	args = append(args,
		"-v", env.bin+":/usr/bin/blixard:ro",
		"-v", env.guest+":"+guestDir+":ro",
		env.image)
	if out, err := exec.Command("docker", args...).CombinedOutput(); err != nil {
		return fmt.Errorf("docker run %s: %v: %s", h.Container, err, out)
	}
	return c.waitBooted(h, 90*time.Second)
}

// waitBooted waits for systemd in h to finish booting.
func (c *Cluster) waitBooted(h *Host, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	var state string
	for time.Now().Before(deadline) {
		out, _ := exec.Command("docker", "exec", h.Container, "systemctl", "is-system-running").Output()
		state = strings.TrimSpace(string(out))
		if state == "running" || state == "degraded" {
			return nil
		}
		time.Sleep(200 * time.Millisecond)
	}
	return fmt.Errorf("%s: systemd did not finish booting in %s (state %q)", h.Container, timeout, state)
}

// remove deletes the containers; on failure it first logs each host's
// blixard journal.
func (c *Cluster) remove() {
	if c.t.Failed() {
		for _, h := range c.Hosts {
			out, _ := exec.Command("docker", "exec", h.Container, "journalctl", "-u", "blixard", "--no-pager", "-n", "60").CombinedOutput()
			c.t.Logf("%s journal (last 60 lines of blixard):\n%s", h.Name, out)
		}
	}
	var names []string
	for _, h := range c.Hosts {
		names = append(names, h.Container)
	}
	if len(names) == 0 {
		return
	}
	if c.t.Failed() && os.Getenv("BLIXARD_E2E_KEEP") != "" {
		c.t.Logf("BLIXARD_E2E_KEEP: leaving containers %v and network %s (remove them with docker rm -f / docker network rm, or rerun the suite)", names, c.Network)
		c.keep = true
		return
	}
	out, err := exec.Command("docker", append([]string{"rm", "-f"}, names...)...).CombinedOutput()
	if err != nil && !bytes.Contains(out, []byte("No such container")) {
		c.t.Errorf("docker rm: %v: %s", err, out)
	}
}

// Exec runs argv in h and returns its combined output.
func (c *Cluster) Exec(h *Host, argv ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "docker", append([]string{"exec", h.Container}, argv...)...).CombinedOutput()
	return string(out), err
}

func (c *Cluster) mustExec(h *Host, argv ...string) string {
	c.t.Helper()
	out, err := c.Exec(h, argv...)
	if err != nil {
		c.t.Fatalf("%s: %s: %v\n%s", h.Name, strings.Join(argv, " "), err, out)
	}
	return out
}

func (c *Cluster) writeFile(h *Host, path, content string) {
	c.t.Helper()
	cmd := exec.Command("docker", "exec", "-i", h.Container, "sh", "-c", "cat > "+path)
	cmd.Stdin = strings.NewReader(content)
	if out, err := cmd.CombinedOutput(); err != nil {
		c.t.Fatalf("%s: writing %s: %v: %s", h.Name, path, err, out)
	}
}

// Docker runs a docker command (a fault) and fails the test if it fails.
func (c *Cluster) Docker(args ...string) {
	c.t.Helper()
	if out, err := exec.Command("docker", args...).CombinedOutput(); err != nil {
		c.t.Fatalf("docker %s: %v: %s", strings.Join(args, " "), err, out)
	}
}

// Addrs are the api addresses of hosts (all hosts when none is given).
func (c *Cluster) Addrs(hosts ...*Host) []string {
	if len(hosts) == 0 {
		hosts = c.Hosts
	}
	var a []string
	for _, h := range hosts {
		a = append(a, h.API())
	}
	return a
}

func (c *Cluster) Host(id uint64) *Host {
	for _, h := range c.Hosts {
		if h.ID == id {
			return h
		}
	}
	c.t.Fatalf("no host with node id %d", id)
	return nil
}

// CLIResult is one run of the blixard CLI.
type CLIResult struct {
	Stdout, Stderr string
	Code           int
	Start, End     time.Time
}

func (r CLIResult) String() string {
	return fmt.Sprintf("exit %d, stdout %q, stderr %q", r.Code, r.Stdout, r.Stderr)
}

// CLI runs this machine's blixard binary with --addr set to addrs. The CLI
// advertises the address of its interface towards the first node (the
// network's gateway), which the hosts can reach.
func CLI(timeout time.Duration, addrs []string, args ...string) CLIResult {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, env.bin, append([]string{"--addr", strings.Join(addrs, ",")}, args...)...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	r := CLIResult{Start: time.Now()}
	err := cmd.Run()
	r.End = time.Now()
	r.Stdout, r.Stderr = stdout.String(), stderr.String()
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee) && ee.ExitCode() >= 0:
		r.Code = ee.ExitCode()
	default:
		r.Code = -1
		r.Stderr += err.Error()
	}
	return r
}

// CLI runs the CLI against every host and fails the test unless it exits 0.
func (c *Cluster) CLI(args ...string) string {
	c.t.Helper()
	r := CLI(2*time.Minute, c.Addrs(), args...)
	if r.Code != 0 {
		c.t.Fatalf("blixard %s: %s", strings.Join(args, " "), r)
	}
	return r.Stdout
}

// VM is a VM as `vm status -o json` prints it.
type VM struct {
	Name     string `json:"name"`
	ID       uint64 `json:"id"`
	Desired  string `json:"desired"`
	Status   string `json:"status"`
	NodeID   uint64 `json:"node_id"`
	Vcpus    uint32 `json:"vcpus"`
	MemoryMB uint64 `json:"memory_mb"`
	IP       string `json:"ip"`
	Tap      string `json:"tap"`
	Restarts uint32 `json:"restarts"`
	Message  string `json:"message"`
}

// Status is `cluster status -o json`.
type Status struct {
	LeaderID     uint64 `json:"leader_id"`
	Term         uint64 `json:"term"`
	AppliedIndex uint64 `json:"applied_index"`
	Nodes        []struct {
		ID     uint64 `json:"id"`
		Status string `json:"status"`
		Voter  bool   `json:"voter"`
		VMs    uint32 `json:"vms"`
	} `json:"nodes"`
}

// status reads the cluster status through addrs; ok is false when no node answered.
func status(addrs []string, extra ...string) (Status, bool) {
	r := CLI(15*time.Second, addrs, append([]string{"cluster", "status", "-o", "json"}, extra...)...)
	var s Status
	if r.Code != 0 || json.Unmarshal([]byte(r.Stdout), &s) != nil {
		return s, false
	}
	return s, true
}

// waitNodes waits until n nodes are alive voters and a leader is known.
func (c *Cluster) waitNodes(timeout time.Duration, n int) Status {
	c.t.Helper()
	var s Status
	c.waitFor(timeout, fmt.Sprintf("%d alive voters", n), func() bool {
		var ok bool
		s, ok = status(c.Addrs())
		if !ok || s.LeaderID == 0 {
			return false
		}
		alive := 0
		for _, nd := range s.Nodes {
			if nd.Status == "alive" && nd.Voter {
				alive++
			}
		}
		return alive == n
	})
	return s
}

// VMStatus reads one VM (linearizable) through addrs.
func VMStatus(addrs []string, name string) (VM, error) {
	r := CLI(20*time.Second, addrs, "vm", "status", name, "-o", "json")
	var vm VM
	if r.Code != 0 {
		return vm, fmt.Errorf("vm status %s: %s", name, r)
	}
	if err := json.Unmarshal([]byte(r.Stdout), &vm); err != nil {
		return vm, fmt.Errorf("vm status %s: %v", name, err)
	}
	return vm, nil
}

// VMList lists every VM through addrs (extra: e.g. --stale).
func VMList(addrs []string, extra ...string) ([]VM, error) {
	r := CLI(60*time.Second, addrs, append([]string{"vm", "list", "-o", "json"}, extra...)...)
	if r.Code != 0 {
		return nil, fmt.Errorf("vm list: %s", r)
	}
	var vms []VM
	if err := json.Unmarshal([]byte(r.Stdout), &vms); err != nil {
		return nil, fmt.Errorf("vm list: %v", err)
	}
	return vms, nil
}

// waitFor polls cond every 200 ms until it holds or timeout passes.
func (c *Cluster) waitFor(timeout time.Duration, what string, cond func() bool) {
	c.t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			c.t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// CreateVM creates a running test-guest VM of 128 MiB (extra: more flags)
// and returns when the create is acknowledged.
func (c *Cluster) CreateVM(name string, extra ...string) VM {
	c.t.Helper()
	args := []string{"vm", "create", name, "--memory", "128",
		"--kernel", guestDir + "/vmlinux", "--initrd", guestDir + "/initrd.img", "-o", "json"}
	c.CLI(append(args, extra...)...)
	vm, err := VMStatus(c.Addrs(), name)
	if err != nil {
		c.t.Fatal(err)
	}
	return vm
}

// Console returns the serial console of VM name on host h ("" if none).
func (c *Cluster) Console(h *Host, name string) string {
	out, err := c.Exec(h, "cat", "/var/lib/blixard/vms/"+name+"/console.log")
	if err != nil {
		return ""
	}
	return out
}

// ready reports whether the console shows the guest's READY marker, and
// the guest uptime it printed.
func ready(console string) (bool, string) {
	i := strings.LastIndex(console, "BLIXARD-GUEST-READY")
	if i < 0 {
		return false, ""
	}
	rest := strings.Fields(console[i+len("BLIXARD-GUEST-READY"):])
	if len(rest) == 0 {
		return true, ""
	}
	return true, rest[0]
}

// Qemus lists the qemu processes running in h (ps is the ground truth).
func (c *Cluster) Qemus(h *Host) ([]QemuProc, error) {
	out, err := c.Exec(h, "ps", "-eo", "pid=,stat=,args=")
	if err != nil {
		return nil, fmt.Errorf("%s: ps: %v: %s", h.Name, err, out)
	}
	return parseQemus(out), nil
}

// phases polls each condition in its own goroutine (every 100 ms) and
// returns how long after start each first held; it fails the test when
// one does not hold within timeout.
func (c *Cluster) phases(start time.Time, timeout time.Duration, conds map[string]func() bool) map[string]time.Duration {
	c.t.Helper()
	var mu sync.Mutex
	at := map[string]time.Duration{}
	var wg sync.WaitGroup
	deadline := start.Add(timeout)
	for name, cond := range conds {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Now().Before(deadline) {
				if cond() {
					mu.Lock()
					at[name] = time.Since(start)
					mu.Unlock()
					return
				}
				time.Sleep(100 * time.Millisecond)
			}
		}()
	}
	wg.Wait()
	for name := range conds {
		if _, ok := at[name]; !ok {
			// Errorf, not Fatalf: callers may run on goroutines of their own
			// and still want to report what they saw.
			c.t.Errorf("timed out after %s waiting for %s", timeout, name)
		}
	}
	return at
}

// unitStart is when systemd started the main process of unit in h
// (ExecMainStartTimestamp, microseconds), or the zero time.
func (c *Cluster) unitStart(h *Host, unit string) time.Time {
	out, err := c.Exec(h, "systemctl", "show", "--timestamp=us+utc", "-p", "ExecMainStartTimestamp", "--value", unit)
	if err != nil {
		return time.Time{}
	}
	ts, err := time.Parse("Mon 2006-01-02 15:04:05.000000 MST", strings.TrimSpace(out))
	if err != nil {
		return time.Time{}
	}
	return ts
}

// leader returns the current leader's id as some node reports it.
func (c *Cluster) leader(addrs []string) uint64 {
	c.t.Helper()
	var id uint64
	c.waitFor(60*time.Second, "a leader", func() bool {
		s, ok := status(addrs)
		id = s.LeaderID
		return ok && id != 0
	})
	return id
}

// unitProps reads properties of a systemd unit in h.
func (c *Cluster) unitProps(h *Host, unit string, props ...string) map[string]string {
	c.t.Helper()
	args := []string{"systemctl", "show", unit}
	for _, p := range props {
		args = append(args, "-p", p)
	}
	out := c.mustExec(h, args...)
	m := map[string]string{}
	for _, line := range strings.Split(out, "\n") {
		if k, v, ok := strings.Cut(line, "="); ok {
			m[k] = v
		}
	}
	return m
}

func ms(d time.Duration) string { return d.Round(time.Millisecond).String() }
