package benchsuite

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/blixard/blixard/client"
	"github.com/blixard/blixard/proto/blixardpb"
)

// Ports freeAddrs hands out: below Linux's ephemeral range (32768 and
// up), so an outgoing connection (a client, a Raft or gossip peer) cannot
// be given one between the check and the listen of the process it is
// for; the harness's earlier choice, a port the kernel picked, could be.
const (
	portLow  = 20000
	portHigh = 32000
)

// freeAddrs returns n loopback addresses whose ports (TCP and UDP: gossip
// uses both) were free a moment ago, from a random start in
// [portLow, portHigh).
func freeAddrs(n int) ([]string, error) {
	var held []io.Closer
	defer func() {
		for _, c := range held {
			c.Close()
		}
	}()
	var addrs []string
	start := rand.IntN(portHigh - portLow)
	for i := 0; i < portHigh-portLow && len(addrs) < n; i++ {
		addr := fmt.Sprintf("127.0.0.1:%d", portLow+(start+i)%(portHigh-portLow))
		l, err := net.Listen("tcp", addr)
		if err != nil {
			continue
		}
		u, err := net.ListenPacket("udp", addr)
		if err != nil {
			l.Close()
			continue
		}
		held = append(held, l, u)
		addrs = append(addrs, addr)
	}
	if len(addrs) < n {
		return nil, fmt.Errorf("only %d free loopback ports in [%d, %d), need %d", len(addrs), portLow, portHigh, n)
	}
	return addrs, nil
}

// proc is a child process whose output goes to a log file.
type proc struct {
	cmd     *exec.Cmd
	logPath string
	done    chan struct{}
}

func startProc(logPath string, name string, args ...string) (*proc, error) {
	f, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(name, args...)
	// blixard processes write CPU profiles next to their log on SIGUSR1.
	cmd.Env = append(os.Environ(), ProfileDirEnv+"="+filepath.Dir(logPath))
	cmd.Stdout, cmd.Stderr = f, f
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		f.Close()
		return nil, fmt.Errorf("starting %s: %w", name, err)
	}
	p := &proc{cmd: cmd, logPath: logPath, done: make(chan struct{})}
	go func() {
		cmd.Wait()
		f.Close()
		close(p.done)
	}()
	return p, nil
}

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// kill sends SIGKILL and waits for the process to be reaped.
func (p *proc) kill() {
	p.cmd.Process.Signal(syscall.SIGKILL)
	<-p.done
}

// stop sends SIGTERM, then SIGKILL after grace.
func (p *proc) stop(grace time.Duration) {
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(grace):
		p.kill()
	}
}

// logTail is the last n bytes of the process's log.
func (p *proc) logTail(n int) string {
	b, _ := os.ReadFile(p.logPath)
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return string(b)
}

// node is one `blixard run` process of a benchmark cluster.
type node struct {
	id                      uint64
	api, raft, gossip, data string
	p                       *proc
}

// fakeCluster is a cluster of `blixard run --driver fake` processes on
// loopback.
type fakeCluster struct {
	e       *env
	dir     string
	nodes   []*node
	initial string
	extra   []string
	clients map[string]*client.Client
}

// startFakeCluster starts n nodes with the fake driver, room for a few
// hundred VMs in flight each, and waits until every node is alive and a
// leader is known.
func startFakeCluster(ctx context.Context, e *env, name string, n int, extra ...string) (*fakeCluster, error) {
	dir, err := os.MkdirTemp(e.work, name+"-")
	if err != nil {
		return nil, err
	}
	addrs, err := freeAddrs(3 * n)
	if err != nil {
		return nil, err
	}
	c := &fakeCluster{e: e, dir: dir, extra: extra}
	var initial []string
	for i := 0; i < n; i++ {
		nd := &node{id: uint64(i + 1), api: addrs[3*i], raft: addrs[3*i+1], gossip: addrs[3*i+2],
			data: filepath.Join(dir, fmt.Sprintf("node%d", i+1))}
		c.nodes = append(c.nodes, nd)
		initial = append(initial, fmt.Sprintf("%d=%s", nd.id, nd.raft))
	}
	c.initial = strings.Join(initial, ",")
	for _, nd := range c.nodes {
		if err := c.start(nd); err != nil {
			c.stop()
			return nil, err
		}
	}
	if err := c.waitHealthy(ctx, 60*time.Second); err != nil {
		c.stop()
		return nil, err
	}
	return c, nil
}

// start (re)starts nd's process on its data dir.
func (c *fakeCluster) start(nd *node) error {
	args := []string{"run",
		"--node-id", fmt.Sprint(nd.id),
		"--data-dir", nd.data,
		"--api-addr", nd.api,
		"--raft-addr", nd.raft,
		"--gossip-addr", nd.gossip,
		"--initial-cluster", c.initial,
		"--driver", "fake",
		"--vcpus", "512",
		"--memory-mb", "262144",
		"--subnet", "10.0.0.0/16",
		"--log-format", "json",
	}
	args = append(args, c.extra...)
	p, err := startProc(filepath.Join(c.dir, fmt.Sprintf("node%d.log", nd.id)), c.e.cfg.Bin, args...)
	if err != nil {
		return err
	}
	nd.p = p
	return nil
}

// stop stops every running node.
func (c *fakeCluster) stop() {
	for _, cl := range c.clients {
		cl.Close()
	}
	c.clients = nil
	for _, nd := range c.nodes {
		if nd.p != nil && !nd.p.exited() {
			nd.p.stop(10 * time.Second)
		}
	}
}

func (c *fakeCluster) apis(except ...*node) []string {
	var out []string
	for _, nd := range c.nodes {
		skip := false
		for _, x := range except {
			skip = skip || x == nd
		}
		if !skip {
			out = append(out, nd.api)
		}
	}
	return out
}

func (c *fakeCluster) byID(id uint64) *node {
	for _, nd := range c.nodes {
		if nd.id == id {
			return nd
		}
	}
	return nil
}

// dial returns a client of the given nodes (all when none given).
func dial(ctx context.Context, addrs []string) (*client.Client, error) {
	return client.Dial(ctx, addrs, client.WithLogger(slog.New(slog.NewTextHandler(io.Discard, nil))))
}

// client returns a client of the node at addr alone (kept for reuse).
func (c *fakeCluster) client(ctx context.Context, addr string) (*client.Client, error) {
	if cl := c.clients[addr]; cl != nil {
		return cl, nil
	}
	cl, err := dial(ctx, []string{addr})
	if err != nil {
		return nil, err
	}
	if c.clients == nil {
		c.clients = map[string]*client.Client{}
	}
	c.clients[addr] = cl
	return cl, nil
}

// status is the cluster status as node addr sees it.
func (c *fakeCluster) status(ctx context.Context, addr string) (*blixardpb.ClusterStatusResponse, error) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	cl, err := c.client(ctx, addr)
	if err != nil {
		return nil, err
	}
	return cl.ClusterStatus(ctx)
}

// waitHealthy waits until every running node reports a leader and every
// node of the cluster alive, in the node records and in its gossip view.
// A node the leader's gossip has never seen is set down only after twice
// --down-grace (docs/failover.md), so a kill before gossip converged
// would measure that start-up case instead of a steady cluster's.
func (c *fakeCluster) waitHealthy(ctx context.Context, d time.Duration) error {
	return poll(ctx, d, "every node alive with a leader", func() (bool, error) {
		for _, nd := range c.nodes {
			if nd.p.exited() {
				return false, fmt.Errorf("node %d exited: %s", nd.id, nd.p.logTail(2048))
			}
		}
		for _, nd := range c.nodes {
			st, err := c.status(ctx, nd.api)
			if err != nil || st.GetLeaderId() == 0 || len(st.GetNodes()) != len(c.nodes) {
				return false, nil
			}
			for _, n := range st.GetNodes() {
				if n.GetNode().GetStatus() != blixardpb.NodeStatus_NODE_STATUS_ALIVE || n.GetGossipStatus() != "alive" {
					return false, nil
				}
			}
		}
		return true, nil
	})
}

// leader returns the node the cluster reports as leader.
func (c *fakeCluster) leader(ctx context.Context) (*node, error) {
	var ld *node
	err := poll(ctx, 30*time.Second, "a leader", func() (bool, error) {
		for _, nd := range c.nodes {
			if nd.p.exited() {
				continue
			}
			st, err := c.status(ctx, nd.api)
			if err == nil && st.GetLeaderId() != 0 {
				ld = c.byID(st.GetLeaderId())
				return ld != nil && !ld.p.exited(), nil
			}
		}
		return false, nil
	})
	return ld, err
}

// poll calls cond every 20 ms until it returns true or an error, d
// passes or ctx ends.
func poll(ctx context.Context, d time.Duration, what string, cond func() (bool, error)) error {
	deadline := time.Now().Add(d)
	for {
		ok, err := cond()
		if err != nil {
			return err
		}
		if ok {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("timed out after %s waiting for %s", d, what)
		}
		select {
		case <-ctx.Done():
			return errors.Join(ctx.Err(), fmt.Errorf("waiting for %s", what))
		case <-time.After(20 * time.Millisecond):
		}
	}
}
