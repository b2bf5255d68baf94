package benchsuite

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// etcdCluster is three etcd members on loopback, started by the harness.
type etcdCluster struct {
	procs   []*proc
	clients []string // client URLs, by member
}

func startEtcd(ctx context.Context, bin, dir string) (*etcdCluster, error) {
	addrs, err := freeAddrs(6)
	if err != nil {
		return nil, err
	}
	var initial []string
	for i := 0; i < 3; i++ {
		initial = append(initial, fmt.Sprintf("m%d=http://%s", i+1, addrs[2*i+1]))
	}
	c := &etcdCluster{}
	for i := 0; i < 3; i++ {
		name := fmt.Sprintf("m%d", i+1)
		cu, pu := "http://"+addrs[2*i], "http://"+addrs[2*i+1]
		if err := os.MkdirAll(dir, 0o750); err != nil {
			return nil, err
		}
		p, err := startProc(filepath.Join(dir, name+".log"), bin,
			"--name", name,
			"--data-dir", filepath.Join(dir, name),
			"--listen-client-urls", cu, "--advertise-client-urls", cu,
			"--listen-peer-urls", pu, "--initial-advertise-peer-urls", pu,
			"--initial-cluster", strings.Join(initial, ","),
			"--initial-cluster-state", "new", "--initial-cluster-token", "blixard-bench",
			"--logger", "zap", "--log-level", "error")
		if err != nil {
			c.stop()
			return nil, err
		}
		c.procs = append(c.procs, p)
		c.clients = append(c.clients, cu)
	}
	return c, nil
}

func (c *etcdCluster) stop() {
	for _, p := range c.procs {
		if !p.exited() {
			p.stop(10 * time.Second)
		}
	}
}

// leaderEndpoint waits for the members to elect a leader and returns its
// client URL.
func (c *etcdCluster) leaderEndpoint(ctx context.Context) (string, error) {
	cli, err := clientv3.New(clientv3.Config{Endpoints: c.clients, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		return "", err
	}
	defer cli.Close()
	var leader string
	err = poll(ctx, 60*time.Second, "an etcd leader", func() (bool, error) {
		for i, p := range c.procs {
			if p.exited() {
				return false, fmt.Errorf("etcd member %d exited: %s", i+1, oneLine(p.logTail(1024)))
			}
		}
		for _, ep := range c.clients {
			sctx, cancel := context.WithTimeout(ctx, time.Second)
			st, err := cli.Status(sctx, ep)
			cancel()
			if err == nil && st.Leader != 0 && st.Leader == st.Header.MemberId {
				leader = ep
				return true, nil
			}
		}
		return false, nil
	})
	return leader, err
}

// commitEtcd runs the put load against a fresh 3-member etcd cluster, or
// explains why it cannot.
func commitEtcd(ctx context.Context, e *env, levels []int, d time.Duration) ([]LoadResult, string, error) {
	bin, err := exec.LookPath("etcd")
	if err != nil {
		return nil, "etcd: not measured, no `etcd` on PATH (Debian: apt-get install etcd-server; `make bench` installs it).", nil
	}
	version := "etcd"
	if out, err := exec.Command(bin, "--version").Output(); err == nil {
		version = strings.SplitN(strings.TrimSpace(string(out)), "\n", 2)[0]
	}
	e.log("commit: starting 3 etcd members (%s)", version)
	c, err := startEtcd(ctx, bin, filepath.Join(e.work, "etcd"))
	if err != nil {
		return nil, "", err
	}
	defer c.stop()
	ep, err := c.leaderEndpoint(ctx)
	if err != nil {
		return nil, "", err
	}
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{ep}, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		return nil, "", err
	}
	defer cli.Close()
	var pids []int
	for _, p := range c.procs {
		pids = append(pids, p.cmd.Process.Pid)
	}
	var out []LoadResult
	for _, n := range levels {
		m, c0 := startCPU(pids...), selfCPU()
		res := RunLoad(ctx, n, d, func(ctx context.Context, w, i int) error {
			_, err := cli.Put(ctx, fmt.Sprintf("/bench/%d/%d", w, i), string(commitPayload(w, i)))
			return err
		})
		res.setCPU(m.used(), selfCPU()-c0)
		e.log("commit: etcd %d: %.0f ops/s p50 %s p99 %s errors %d", n, res.OpsPerSec, fmtMs(res.P50Ms), fmtMs(res.P99Ms), res.Errors)
		out = append(out, res)
	}
	return out, "etcd: " + version + " (Debian etcd-server), default settings apart from loopback URLs.", nil
}
