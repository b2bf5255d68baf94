package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/blixard/blixard/actors"
)

// metricsServer is the node's optional HTTP endpoint (--metrics-addr):
// Prometheus metrics on /metrics and Go's profiler on /debug/pprof/. It
// binds before the node starts, so a bad address fails the run at once.
type metricsServer struct {
	srv *http.Server
	reg *prometheus.Registry
	log *slog.Logger

	proposeSeconds  *prometheus.HistogramVec
	proposeCommands prometheus.Histogram
	proposeFailures prometheus.Counter
}

func listenMetrics(addr string, log *slog.Logger) (*metricsServer, error) {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("metrics address: %w", err)
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	m := &metricsServer{
		srv: &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second},
		reg: reg,
		log: log,
		proposeSeconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "blixard_raft_propose_seconds",
			Help:    "Time from proposing on this node to the applied results (one Raft round and the apply), for proposals that committed; kind is single or batch.",
			Buckets: prometheus.ExponentialBuckets(0.0001, 2, 17), // 0.1 ms to 6.6 s
		}, []string{"kind"}),
		proposeCommands: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "blixard_raft_propose_commands",
			Help:    "Commands per proposal made on this node (a batch entry carries several).",
			Buckets: prometheus.ExponentialBuckets(1, 2, 11), // 1 to 1024
		}),
		proposeFailures: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "blixard_raft_propose_failures_total",
			Help: "Proposals made on this node that failed (no quorum, timeout, closing); their outcome may be unknown.",
		}),
	}
	reg.MustRegister(m.proposeSeconds, m.proposeCommands, m.proposeFailures)
	go func() {
		if err := m.srv.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("metrics server", "err", err)
		}
	}()
	log.Info("metrics and pprof", "addr", l.Addr().String())
	return m, nil
}

// watchNode adds the node's own gauges: Raft leadership and applied index,
// and the VMs the local driver runs.
func (m *metricsServer) watchNode(nodeID uint64, node *actors.Node, driver actors.Driver) {
	r := node.Replica()
	m.reg.MustRegister(
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "blixard_raft_applied_index",
			Help: "Index of the last Raft entry applied by this node.",
		}, func() float64 { return float64(r.AppliedIndex()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "blixard_raft_is_leader",
			Help: "1 when this node is the Raft leader, else 0.",
		}, func() float64 {
			if leader, _, ok := r.LeaderID(); ok && leader == nodeID {
				return 1
			}
			return 0
		}),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "blixard_local_vms_running",
			Help: "VM processes running on this host, as the local driver lists them (-1 when it cannot list).",
		}, func() float64 {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			defer cancel()
			list, err := driver.List(ctx)
			if err != nil {
				return -1
			}
			n := 0
			for _, in := range list {
				if in.Running {
					n++
				}
			}
			return float64(n)
		}),
	)
}

// onProposed is consensus.ReplicaConfig.OnProposed.
func (m *metricsServer) onProposed(commands int, elapsed time.Duration, err error) {
	if err != nil {
		m.proposeFailures.Inc()
		return
	}
	kind := "single"
	if commands > 1 {
		kind = "batch"
	}
	m.proposeSeconds.WithLabelValues(kind).Observe(elapsed.Seconds())
	m.proposeCommands.Observe(float64(commands))
}

func (m *metricsServer) Close() {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := m.srv.Shutdown(ctx); err != nil {
		m.log.Warn("metrics server shutdown", "err", err)
	}
}
