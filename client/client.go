package client

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"sync"
	"time"

	"github.com/asynkron/protoactor-go/actor"
	"github.com/asynkron/protoactor-go/remote"
	"google.golang.org/protobuf/proto"

	"github.com/blixard/blixard/proto/blixardpb"
)

// APIActorName is the name under which every node registers its api actor.
const APIActorName = "api"

// Defaults of the options.
const (
	DefaultAttemptTimeout = 10 * time.Second
	DefaultRetryWindow    = 30 * time.Second
	probeTimeout          = time.Second
	// pingTimeout bounds the status probe of a node not yet known to
	// answer: a paused process's kernel still accepts TCP, so only an
	// answer from its api actor tells it is alive.
	pingTimeout = 2 * time.Second
)

// Option configures a Client.
type Option func(*options)

type options struct {
	bindAddr       string
	attemptTimeout time.Duration
	retryWindow    time.Duration
	stale          bool
	logger         *slog.Logger
	batches        int
	batchesSet     bool
	lingerGap      time.Duration
	lingerMax      time.Duration
}

// WithBindAddr sets the local host:port the client's remote listens on
// (and advertises); the port may be 0.
func WithBindAddr(addr string) Option { return func(o *options) { o.bindAddr = addr } }

// WithAttemptTimeout bounds how long one node may take to answer before the
// request is retried on the next address.
func WithAttemptTimeout(d time.Duration) Option { return func(o *options) { o.attemptTimeout = d } }

// WithRetryWindow bounds how long a request is retried (the earlier of ctx's
// deadline and this window ends the retries).
func WithRetryWindow(d time.Duration) Option { return func(o *options) { o.retryWindow = d } }

// WithStaleReads serves reads from the answering node's local state instead
// of linearizable reads.
func WithStaleReads(stale bool) Option { return func(o *options) { o.stale = stale } }

// WithLogger receives the client's (and protoactor's) logs; by default they
// are discarded.
func WithLogger(l *slog.Logger) Option { return func(o *options) { o.logger = l } }

// Client talks to the api actors of a cluster. It is safe for concurrent
// use. Close releases it.
type Client struct {
	opts   options
	addrs  []string
	system *actor.ActorSystem
	remote *remote.Remote

	mu        sync.Mutex
	preferred int
	healthy   map[string]bool
	batchers  map[string]*batcher
	closed    bool
}

// Dial returns a client for the nodes at addrs (host:port api addresses,
// tried in order starting with the first). It starts the local remote but
// does not contact any node: the first call does.
func Dial(ctx context.Context, addrs []string, opts ...Option) (*Client, error) {
	o := options{attemptTimeout: DefaultAttemptTimeout, retryWindow: DefaultRetryWindow,
		lingerGap: DefaultLingerGap, lingerMax: DefaultLingerMax}
	for _, opt := range opts {
		opt(&o)
	}
	if !o.batchesSet {
		o.batches = DefaultBatchesInFlight
	}
	if o.logger == nil {
		o.logger = slog.New(slog.DiscardHandler)
	}
	if len(addrs) == 0 {
		return nil, errors.New("no node address given")
	}
	norm := make([]string, 0, len(addrs))
	for _, a := range addrs {
		n, err := NormalizeAddr(a)
		if err != nil {
			return nil, err
		}
		norm = append(norm, n)
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	bind := o.bindAddr
	if bind == "" {
		bind = net.JoinHostPort(localHostFor(norm[0]), "0")
	}
	host, portStr, err := net.SplitHostPort(bind)
	if err != nil {
		return nil, fmt.Errorf("client bind address %q: %w", bind, err)
	}
	port, err := strconv.Atoi(portStr)
	if err != nil {
		return nil, fmt.Errorf("client bind address %q: bad port", bind)
	}
	logger := o.logger
	system := actor.NewActorSystem(actor.WithLoggerFactory(func(*actor.ActorSystem) *slog.Logger { return logger }))
	// protoactor's default endpoint queue (a million entries, 16 MiB
	// preallocated per node connected to) grows on demand from this size.
	cfg := remote.Configure(host, port, remote.WithEndpointWriterQueueSize(1024))
	// A node that is down must fail the attempt quickly instead of being
	// redialled for seconds inside protoactor.
	cfg.MaxRetryCount = 1
	r := remote.NewRemote(system, cfg)
	if err := startRemote(r); err != nil {
		system.Shutdown()
		return nil, fmt.Errorf("starting client remote on %s: %w", bind, err)
	}
	return &Client{
		opts:     o,
		addrs:    norm,
		system:   system,
		remote:   r,
		healthy:  make(map[string]bool),
		batchers: make(map[string]*batcher),
	}, nil
}

// startRemote converts protoactor's panic on a failed listen into an error.
func startRemote(r *remote.Remote) (err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("%v", p)
		}
	}()
	r.Start()
	return nil
}

// NormalizeAddr checks a host:port and rewrites "localhost" to 127.0.0.1,
// the address a node bound to loopback advertises.
func NormalizeAddr(a string) (string, error) {
	host, port, err := net.SplitHostPort(a)
	if err != nil {
		return "", fmt.Errorf("bad node address %q: want host:port", a)
	}
	if _, err := strconv.ParseUint(port, 10, 16); err != nil {
		return "", fmt.Errorf("bad node address %q: bad port", a)
	}
	if host == "" || host == "localhost" {
		host = "127.0.0.1"
	}
	return net.JoinHostPort(host, port), nil
}

// localHostFor returns the local IP that faces addr: 127.0.0.1 for loopback
// targets, otherwise the source address the kernel picks for a route to it.
func localHostFor(addr string) string {
	host, port, _ := net.SplitHostPort(addr)
	if ip := net.ParseIP(host); ip != nil && ip.IsLoopback() {
		return "127.0.0.1"
	}
	// A UDP "connect" sends nothing; it only asks for a route.
	c, err := net.Dial("udp", net.JoinHostPort(host, port))
	if err != nil {
		return "127.0.0.1"
	}
	defer c.Close()
	if ua, ok := c.LocalAddr().(*net.UDPAddr); ok {
		return ua.IP.String()
	}
	return "127.0.0.1"
}

// Addr is the address the client's remote advertises.
func (c *Client) Addr() string { return c.system.Address() }

// Close stops the client's remote and actor system. Calls in flight fail.
func (c *Client) Close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	c.closed = true
	c.mu.Unlock()
	closeRemote(c.system, c.remote, c.addrs)
	return nil
}

// closeRemote stops a remote without protoactor's graceful path, whose
// endpoint manager can panic (nil map) when a peer disconnects while it
// stops: the server is stopped first, then the outbound endpoints to peers
// are terminated through the still-running endpoint manager, which closes
// their connections.
func closeRemote(system *actor.ActorSystem, r *remote.Remote, peers []string) {
	r.Shutdown(false)
	for _, a := range peers {
		system.EventStream.Publish(&remote.EndpointTerminatedEvent{Address: a})
	}
	system.Shutdown()
}

// NewRequestID returns a random request id (16 random bytes, hex).
func NewRequestID() string {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(fmt.Sprintf("crypto/rand: %v", err))
	}
	return hex.EncodeToString(b[:])
}

// response is what every API response has.
type response interface {
	proto.Message
	GetError() *blixardpb.Error
}

// errTransport marks a failed attempt (no answer, no actor) that is retried
// on the next address.
type errTransport struct {
	addr string
	err  error
}

func (e *errTransport) Error() string { return fmt.Sprintf("%s: %v", e.addr, e.err) }
func (e *errTransport) Unwrap() error { return e.err }

// call sends req to the api actors, failing over as described in the
// package doc, and returns the first response that is not UNAVAILABLE.
// extra lengthens the attempt timeout (long polls).
func (c *Client) call(ctx context.Context, req proto.Message, extra time.Duration) (response, error) {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil, &Error{Code: blixardpb.Code_UNAVAILABLE, Message: "client closed"}
	}
	start := c.preferred
	c.mu.Unlock()
	if err := c.checkEncodable(req); err != nil {
		return nil, err
	}

	if c.opts.retryWindow > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, c.opts.retryWindow+extra)
		defer cancel()
	}
	n := len(c.addrs)
	backoff := 100 * time.Millisecond
	var lastErr error
	// Each address not known to answer gets one status probe per call, on
	// its first attempt; later attempts skip it, so a slow but live
	// cluster (every probe too late) is still served.
	var few [8]bool // by address index; no allocation for up to 8 addresses
	pinged := few[:]
	if n > len(few) {
		pinged = make([]bool, n)
	}
	for attempt := 0; ; attempt++ {
		if attempt > 0 && attempt%n == 0 {
			t := time.NewTimer(backoff)
			select {
			case <-ctx.Done():
				t.Stop()
				return nil, c.giveUp(ctx, lastErr)
			case <-t.C:
			}
			backoff = min(2*backoff, 2*time.Second)
		}
		if ctx.Err() != nil {
			return nil, c.giveUp(ctx, lastErr)
		}
		i := (start + attempt) % n
		addr := c.addrs[i]
		// Whether the end of the retry window cuts this attempt short.
		dl, hasDL := ctx.Deadline()
		lastChance := hasDL && time.Until(dl) < c.opts.attemptTimeout+extra
		ping := !pinged[i]
		pinged[i] = true
		res, err := c.attempt(ctx, addr, req, extra, ping)
		if err != nil {
			c.setHealthy(addr, false)
			var answered *Error
			if !lastChance || !errors.As(lastErr, &answered) {
				// Else a node's earlier answer ("no quorum: ...") says
				// more than an attempt the window cut short.
				lastErr = err
			}
			c.opts.logger.Debug("api attempt failed", "addr", addr, "err", err)
			continue
		}
		c.setHealthy(addr, true)
		if res.GetError().GetCode() == blixardpb.Code_UNAVAILABLE {
			lastErr = fromProto(res.GetError())
			continue
		}
		c.mu.Lock()
		c.preferred = i
		c.mu.Unlock()
		return res, nil
	}
}

func (c *Client) giveUp(ctx context.Context, lastErr error) error {
	var e *Error
	if errors.As(lastErr, &e) {
		return e
	}
	if lastErr != nil {
		return &Error{Code: blixardpb.Code_UNAVAILABLE, Message: fmt.Sprintf("no node answered: %v", lastErr)}
	}
	return &Error{Code: blixardpb.Code_DEADLINE_EXCEEDED, Message: ctx.Err().Error()}
}

func (c *Client) setHealthy(addr string, ok bool) {
	c.mu.Lock()
	c.healthy[addr] = ok
	c.mu.Unlock()
}

// attempt sends req to one node and waits for its answer. A node not
// known to answer is probed first: a TCP dial (a refused connection fails
// over at once) and, when ping is set, a stale cluster-status request
// that must be answered within pingTimeout (a paused or wedged node fails
// over after that instead of the full attempt timeout).
func (c *Client) attempt(ctx context.Context, addr string, req proto.Message, extra time.Duration, ping bool) (response, error) {
	c.mu.Lock()
	known := c.healthy[addr]
	c.mu.Unlock()
	if !known {
		d := net.Dialer{Timeout: probeTimeout}
		conn, err := d.DialContext(ctx, "tcp", addr)
		if err != nil {
			return nil, &errTransport{addr: addr, err: err}
		}
		conn.Close()
		if ping {
			// Any answer, even an error, shows the api actor runs.
			if _, err := c.send(ctx, addr, &blixardpb.ClusterStatusRequest{Stale: true}, pingTimeout); err != nil {
				var te *errTransport
				if errors.As(err, &te) {
					err = te.err
				}
				return nil, &errTransport{addr: addr, err: fmt.Errorf("status probe: %w", err)}
			}
		}
	}
	return c.send(ctx, addr, req, c.opts.attemptTimeout+extra)
}

// send sends req to addr's api actor and waits up to timeout (and ctx)
// for its answer.
func (c *Client) send(ctx context.Context, addr string, req proto.Message, timeout time.Duration) (response, error) {
	if dl, ok := ctx.Deadline(); ok {
		if left := time.Until(dl); left < timeout {
			timeout = left
		}
	}
	if timeout <= 0 {
		return nil, &errTransport{addr: addr, err: context.DeadlineExceeded}
	}
	if c.opts.batches > 0 && isVMWrite(req) {
		return c.batcherFor(addr).do(ctx, req, timeout)
	}
	type result struct {
		res response
		err error
	}
	done := make(chan result, 1)
	go func() {
		res, err := c.request(actor.NewPID(addr, APIActorName), req, timeout)
		done <- result{res, err}
	}()
	select {
	case r := <-done:
		return r.res, r.err
	case <-ctx.Done():
		return nil, &errTransport{addr: addr, err: ctx.Err()}
	}
}

// do runs call and type-checks the response.
func do[T response](ctx context.Context, c *Client, req proto.Message, extra time.Duration) (T, error) {
	var zero T
	res, err := c.call(ctx, req, extra)
	if err != nil {
		return zero, err
	}
	t, ok := res.(T)
	if !ok {
		return zero, &Error{Code: blixardpb.Code_INTERNAL, Message: fmt.Sprintf("unexpected reply %T to %T", res, req)}
	}
	if err := fromProto(t.GetError()); err != nil {
		return zero, err
	}
	return t, nil
}

// CreateVM creates a VM from spec; it is started unless noStart.
func (c *Client) CreateVM(ctx context.Context, spec *blixardpb.VmSpec, noStart bool) (*blixardpb.VmRecord, error) {
	r, err := do[*blixardpb.VmResponse](ctx, c, &blixardpb.CreateVmRequest{RequestId: NewRequestID(), Spec: spec, NoStart: noStart}, 0)
	return r.GetVm(), err
}

// StartVM sets the VM's desired state to running.
func (c *Client) StartVM(ctx context.Context, name string) (*blixardpb.VmRecord, error) {
	r, err := do[*blixardpb.VmResponse](ctx, c, &blixardpb.StartVmRequest{RequestId: NewRequestID(), Name: name}, 0)
	return r.GetVm(), err
}

// StopVM sets the VM's desired state to stopped.
func (c *Client) StopVM(ctx context.Context, name string) (*blixardpb.VmRecord, error) {
	r, err := do[*blixardpb.VmResponse](ctx, c, &blixardpb.StopVmRequest{RequestId: NewRequestID(), Name: name}, 0)
	return r.GetVm(), err
}

// DeleteVM removes the VM; its node stops it and cleans up. The returned
// record is the last one.
func (c *Client) DeleteVM(ctx context.Context, name string) (*blixardpb.VmRecord, error) {
	r, err := do[*blixardpb.VmResponse](ctx, c, &blixardpb.DeleteVmRequest{RequestId: NewRequestID(), Name: name}, 0)
	return r.GetVm(), err
}

// MigrateVM moves the VM to target (0: any other node).
func (c *Client) MigrateVM(ctx context.Context, name string, target uint64) (*blixardpb.VmRecord, error) {
	r, err := do[*blixardpb.VmResponse](ctx, c, &blixardpb.MigrateVmRequest{RequestId: NewRequestID(), Name: name, TargetNodeId: target}, 0)
	return r.GetVm(), err
}

// GetVM returns the VM's record.
func (c *Client) GetVM(ctx context.Context, name string) (*blixardpb.VmRecord, error) {
	r, err := do[*blixardpb.VmResponse](ctx, c, &blixardpb.GetVmRequest{Name: name, Stale: c.opts.stale}, 0)
	return r.GetVm(), err
}

// ListVMs returns every VM, sorted by name.
func (c *Client) ListVMs(ctx context.Context) ([]*blixardpb.VmRecord, error) {
	r, err := do[*blixardpb.ListVmsResponse](ctx, c, &blixardpb.ListVmsRequest{Stale: c.opts.stale}, 0)
	return r.GetVms(), err
}

// WatchVM long-polls: it returns the VM's record as soon as it differs from
// last (nil: at once) in generation, status, desired state, node or
// restarts, or after timeout with the unchanged record. A deleted VM yields
// ErrNotFound.
func (c *Client) WatchVM(ctx context.Context, name string, last *blixardpb.VmRecord, timeout time.Duration) (*blixardpb.VmRecord, error) {
	req := &blixardpb.WatchVmRequest{Name: name, TimeoutMs: uint32(timeout / time.Millisecond)}
	if last != nil {
		req.Generation = last.GetGeneration()
		req.Status = last.GetStatus()
		req.Desired = last.GetDesired()
		req.NodeId = last.GetNodeId()
		req.Restarts = last.GetRestarts()
	}
	r, err := do[*blixardpb.VmResponse](ctx, c, req, timeout)
	return r.GetVm(), err
}

// Logs reads the VM's console log from the node it is placed on. With
// offset >= 0 it returns the bytes from offset on (follow mode); with
// offset < 0 the last lines lines (0: all). next is the offset for the
// next follow call.
func (c *Client) Logs(ctx context.Context, name string, offset int64, lines int) (data []byte, next int64, err error) {
	req := &blixardpb.VmLogsRequest{Name: name}
	if offset >= 0 {
		req.Offset = offset
		req.FromOffset = true
	} else if lines > 0 {
		req.Lines = uint32(lines)
	}
	r, err := do[*blixardpb.VmLogsResponse](ctx, c, req, 0)
	return r.GetData(), r.GetNextOffset(), err
}

// ClusterStatus returns the cluster's identity, Raft leader and nodes.
func (c *Client) ClusterStatus(ctx context.Context) (*blixardpb.ClusterStatusResponse, error) {
	return do[*blixardpb.ClusterStatusResponse](ctx, c, &blixardpb.ClusterStatusRequest{Stale: c.opts.stale}, 0)
}

// ListNodes returns every node with its usage, sorted by id.
func (c *Client) ListNodes(ctx context.Context) ([]*blixardpb.NodeInfo, error) {
	r, err := do[*blixardpb.ListNodesResponse](ctx, c, &blixardpb.ListNodesRequest{Stale: c.opts.stale}, 0)
	return r.GetNodes(), err
}

// SetNodeSchedulable marks a node as (not) accepting new VMs.
func (c *Client) SetNodeSchedulable(ctx context.Context, id uint64, schedulable bool) (*blixardpb.NodeRecord, error) {
	r, err := do[*blixardpb.NodeResponse](ctx, c, &blixardpb.SetNodeSchedulableRequest{RequestId: NewRequestID(), NodeId: id, Schedulable: schedulable}, 0)
	return r.GetNode(), err
}

// LeaveCluster asks node id to leave the cluster for good (any node takes
// the request and forwards it): the node stops its VMs, which the cluster
// re-places, removes its record and Raft replica, and exits. A retry after
// a lost reply finds the node gone and fails with ErrNotFound.
func (c *Client) LeaveCluster(ctx context.Context, id uint64) (*blixardpb.NodeRecord, error) {
	r, err := do[*blixardpb.NodeResponse](ctx, c, &blixardpb.LeaveClusterRequest{NodeId: id}, 2*time.Minute)
	return r.GetNode(), err
}
