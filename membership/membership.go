package membership

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/memberlist"
)

// Defaults of Config: LAN timings tightened for blixard's failover budget.
// A member that stops answering is suspected after a failed probe (one
// ProbeInterval plus ProbeTimeout) and declared dead SuspicionMult probe
// intervals later (scaled by log10 of the cluster size, at least 1) —
// about 2–3 s on a small cluster.
const (
	DefaultProbeInterval  = 500 * time.Millisecond
	DefaultProbeTimeout   = 250 * time.Millisecond
	DefaultSuspicionMult  = 3
	DefaultGossipInterval = 100 * time.Millisecond
	DefaultPushPull       = 15 * time.Second
)

// State is a member's state in the gossip view.
type State int

const (
	StateAlive State = iota
	StateSuspect
	StateDead
	StateLeft
)

func (s State) String() string {
	switch s {
	case StateAlive:
		return "alive"
	case StateSuspect:
		return "suspect"
	case StateDead:
		return "dead"
	case StateLeft:
		return "left"
	}
	return "unknown"
}

// Member is one node in the gossip view.
type Member struct {
	Meta
	// Addr is the gossip address the member is reached at.
	Addr  string
	State State
	// Since is when this process saw the member enter State.
	Since time.Time
}

// Config configures Start. Zero durations take the defaults above.
type Config struct {
	Meta Meta
	// BindAddr is the gossip host:port (TCP and UDP); AdvertiseAddr,
	// when set, is the address announced instead. A wildcard bind host
	// (0.0.0.0 or empty) announces the host's first private address.
	BindAddr      string
	AdvertiseAddr string
	// Key is the shared encryption key (16, 24 or 32 bytes); nil gossips
	// in clear. Every member must use the same key.
	Key []byte

	ProbeInterval  time.Duration
	ProbeTimeout   time.Duration
	SuspicionMult  int
	GossipInterval time.Duration
	PushPull       time.Duration

	// OnChange is called, without blocking, after every change of the
	// view (join, update, dead, left). It runs on memberlist's goroutines:
	// it must return at once (signal a channel).
	OnChange func()
	// OnMessage receives user messages sent to this node (SendTo). Same
	// rules as OnChange; msg must be copied to be retained.
	OnMessage func(msg []byte)
	Logger    *slog.Logger
	// Now is the clock of Member.Since (default time.Now).
	Now func() time.Time
	// Transport, when set, replaces memberlist's UDP/TCP transport (the
	// simulator passes an in-process one that injects faults); BindAddr
	// must then be an IP:port that transport answers for.
	Transport memberlist.NodeAwareTransport
}

// Gossip is a running member of the cluster's gossip pool.
type Gossip struct {
	cfg  Config
	log  *slog.Logger
	list *memberlist.Memberlist

	replies chan JoinReply

	mu       sync.Mutex
	meta     []byte
	members  map[string]*Member
	conflict error
}

// ErrNodeIDInUse means another live process announces this node id.
var ErrNodeIDInUse = errors.New("node id already used by a live member")

// Start starts the gossip member on cfg.BindAddr; it joins nobody (Join).
func Start(cfg Config) (*Gossip, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	meta, err := cfg.Meta.Encode()
	if err != nil {
		return nil, err
	}
	host, port, err := splitHostPort(cfg.BindAddr)
	if err != nil {
		return nil, fmt.Errorf("gossip address %q: %w", cfg.BindAddr, err)
	}
	g := &Gossip{cfg: cfg, log: cfg.Logger.With("lib", "memberlist"), meta: meta, members: map[string]*Member{}, replies: make(chan JoinReply, 1)}

	mc := memberlist.DefaultLANConfig()
	mc.Name = NodeName(cfg.Meta.NodeID)
	mc.BindAddr, mc.BindPort = host, port
	// A wildcard bind lets memberlist advertise the host's private address.
	if ip := net.ParseIP(host); ip == nil || !ip.IsUnspecified() {
		mc.AdvertiseAddr = host
	}
	mc.AdvertisePort = port
	if cfg.AdvertiseAddr != "" {
		ah, ap, err := splitHostPort(cfg.AdvertiseAddr)
		if err != nil {
			return nil, fmt.Errorf("gossip advertise address %q: %w", cfg.AdvertiseAddr, err)
		}
		mc.AdvertiseAddr, mc.AdvertisePort = ah, ap
	}
	mc.ProbeInterval = orDefault(cfg.ProbeInterval, DefaultProbeInterval)
	mc.ProbeTimeout = orDefault(cfg.ProbeTimeout, DefaultProbeTimeout)
	mc.GossipInterval = orDefault(cfg.GossipInterval, DefaultGossipInterval)
	mc.PushPullInterval = orDefault(cfg.PushPull, DefaultPushPull)
	mc.SuspicionMult = DefaultSuspicionMult
	if cfg.SuspicionMult > 0 {
		mc.SuspicionMult = cfg.SuspicionMult
	}
	// A node restarted elsewhere may take its name back once it is dead.
	mc.DeadNodeReclaimTime = 2 * mc.ProbeInterval
	mc.SecretKey = cfg.Key
	if cfg.Transport != nil {
		mc.Transport = cfg.Transport
	}
	mc.Delegate = (*delegate)(g)
	mc.Events = (*events)(g)
	mc.Conflict = (*conflicts)(g)
	mc.Logger = log.New(&logWriter{log: g.log}, "", 0)
	list, err := memberlist.Create(mc)
	if err != nil {
		return nil, fmt.Errorf("starting gossip on %s: %w", cfg.BindAddr, err)
	}
	g.list = list
	return g, nil
}

func orDefault(d, def time.Duration) time.Duration {
	if d > 0 {
		return d
	}
	return def
}

func splitHostPort(addr string) (string, int, error) {
	h, p, err := net.SplitHostPort(addr)
	if err != nil {
		return "", 0, err
	}
	port, err := strconv.Atoi(p)
	if err != nil {
		return "", 0, fmt.Errorf("bad port %q", p)
	}
	if h == "" {
		h = "0.0.0.0"
	}
	if net.ParseIP(h) == nil {
		// memberlist takes IP addresses only.
		ips, err := net.LookupIP(h)
		if err != nil || len(ips) == 0 {
			return "", 0, fmt.Errorf("resolving %q: %v", h, err)
		}
		h = ips[0].String()
		for _, ip := range ips {
			if ip.To4() != nil {
				h = ip.String()
				break
			}
		}
	}
	return h, port, nil
}

// Join contacts the members at addrs (gossip host:port) and merges their
// view. It succeeds when at least one answered. It returns
// ErrNodeIDInUse when a live member already announces this node id from
// another address.
func (g *Gossip) Join(addrs []string) (int, error) {
	n, err := g.list.Join(addrs)
	if cerr := g.Conflict(); cerr != nil {
		return n, cerr
	}
	if err != nil && n == 0 {
		return 0, fmt.Errorf("joining gossip through %s: %w", strings.Join(addrs, ","), err)
	}
	return n, nil
}

// Conflict returns the first node-id conflict seen: another live member
// announcing this node's id (ErrNodeIDInUse, wrapped with its address).
func (g *Gossip) Conflict() error {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.conflict
}

// Members returns the view, sorted by node id: every member seen, with
// its state (dead and left members stay listed).
func (g *Gossip) Members() []Member {
	g.mu.Lock()
	out := make([]Member, 0, len(g.members))
	for _, m := range g.members {
		out = append(out, *m)
	}
	g.mu.Unlock()
	// memberlist knows suspects; events do not say.
	suspect := map[string]bool{}
	for _, n := range g.list.Members() {
		if n.State == memberlist.StateSuspect {
			suspect[n.Name] = true
		}
	}
	for i := range out {
		if out[i].State == StateAlive && suspect[NodeName(out[i].NodeID)] {
			out[i].State = StateSuspect
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].NodeID < out[j].NodeID })
	return out
}

// SetMeta announces new metadata (for example Joining cleared).
func (g *Gossip) SetMeta(m Meta) error {
	b, err := m.Encode()
	if err != nil {
		return err
	}
	g.mu.Lock()
	g.meta = b
	g.mu.Unlock()
	return g.list.UpdateNode(5 * time.Second)
}

// SendTo sends msg reliably (TCP) to the member with node id id.
func (g *Gossip) SendTo(id uint64, msg []byte) error {
	name := NodeName(id)
	for _, n := range g.list.Members() {
		if n.Name == name {
			return g.list.SendReliable(n, msg)
		}
	}
	return fmt.Errorf("node %d is not a live gossip member", id)
}

// Leave announces that this node leaves (metadata with Leaving, then
// memberlist's leave message), waiting up to timeout for each to spread;
// Shutdown must follow.
func (g *Gossip) Leave(timeout time.Duration) error {
	m := g.cfg.Meta
	g.mu.Lock()
	if cur, err := DecodeMeta(g.meta); err == nil {
		m = cur
	}
	g.mu.Unlock()
	m.Leaving = true
	if err := g.SetMeta(m); err != nil {
		g.log.Warn("announcing leave", "err", err)
	}
	return g.list.Leave(timeout)
}

// Shutdown stops gossiping at once (others will declare this node dead
// unless it left first).
func (g *Gossip) Shutdown() error { return g.list.Shutdown() }

// LocalAddr is the gossip address this member announces.
func (g *Gossip) LocalAddr() string {
	n := g.list.LocalNode()
	return net.JoinHostPort(n.Addr.String(), strconv.Itoa(int(n.Port)))
}

func (g *Gossip) update(n *memberlist.Node, st State) {
	if n.Name == NodeName(g.cfg.Meta.NodeID) {
		return
	}
	meta, err := DecodeMeta(n.Meta)
	if err != nil {
		g.log.Warn("ignoring gossip member with bad metadata", "member", n.Name, "err", err)
		return
	}
	g.mu.Lock()
	cur := g.members[n.Name]
	if cur == nil || cur.State != st {
		cur = &Member{Since: g.cfg.Now()}
		g.members[n.Name] = cur
	}
	cur.Meta, cur.Addr, cur.State = meta, n.Address(), st
	g.mu.Unlock()
	if g.cfg.OnChange != nil {
		g.cfg.OnChange()
	}
}

type events Gossip

func (e *events) NotifyJoin(n *memberlist.Node)   { (*Gossip)(e).update(n, StateAlive) }
func (e *events) NotifyUpdate(n *memberlist.Node) { (*Gossip)(e).update(n, StateAlive) }
func (e *events) NotifyLeave(n *memberlist.Node) {
	st := StateDead
	if m, err := DecodeMeta(n.Meta); err == nil && m.Leaving {
		st = StateLeft
	}
	(*Gossip)(e).update(n, st)
}

type conflicts Gossip

func (c *conflicts) NotifyConflict(existing, other *memberlist.Node) {
	g := (*Gossip)(c)
	if existing.Name != NodeName(g.cfg.Meta.NodeID) {
		return
	}
	g.mu.Lock()
	if g.conflict == nil {
		g.conflict = fmt.Errorf("%w: node %d is already announced by %s (this node is %s); pick another --node-id",
			ErrNodeIDInUse, g.cfg.Meta.NodeID, other.Address(), existing.Address())
	}
	g.mu.Unlock()
	g.log.Error("node id conflict", "node", g.cfg.Meta.NodeID, "other", other.Address())
}

type delegate Gossip

func (d *delegate) NodeMeta(limit int) []byte {
	d.mu.Lock()
	defer d.mu.Unlock()
	return bytes.Clone(d.meta)
}

func (d *delegate) NotifyMsg(b []byte) {
	if r, err := DecodeJoinReply(b); err == nil && r.NodeID == d.cfg.Meta.NodeID {
		select {
		case d.replies <- r:
		default: // one pending reply is enough; the leader repeats it
		}
	}
	if d.cfg.OnMessage != nil {
		d.cfg.OnMessage(b)
	}
}
func (d *delegate) GetBroadcasts(overhead, limit int) [][]byte { return nil }
func (d *delegate) LocalState(join bool) []byte                { return nil }
func (d *delegate) MergeRemoteState(buf []byte, join bool)     {}

// logWriter turns memberlist's "[LEVEL] memberlist: ..." lines into slog
// records.
type logWriter struct{ log *slog.Logger }

func (w *logWriter) Write(p []byte) (int, error) {
	line := strings.TrimSpace(string(p))
	level := slog.LevelDebug
	for prefix, l := range map[string]slog.Level{"[ERR]": slog.LevelError, "[WARN]": slog.LevelWarn, "[INFO]": slog.LevelInfo} {
		if strings.HasPrefix(line, prefix) {
			level = l
		}
	}
	// Failed probes and refused connections are the normal signs of a
	// member that died; memberlist reports them as errors.
	if level == slog.LevelError && (strings.Contains(line, "Failed to send") || strings.Contains(line, "connection refused")) {
		level = slog.LevelWarn
	}
	w.log.Log(nil, level, line)
	return len(p), nil
}

var _ io.Writer = (*logWriter)(nil)

// JoinReply is what the Raft leader tells a joining node through SendTo.
type JoinReply struct {
	NodeID uint64 `json:"node_id"`
	// Role is "voter" or "non-voting" once the node was added.
	Role string `json:"role,omitempty"`
	// Error says why the node cannot join (its id was removed, ...).
	Error string `json:"error,omitempty"`
}

// Encode returns the wire form of r.
func (r JoinReply) Encode() []byte {
	b, _ := json.Marshal(r)
	return b
}

// AwaitJoinReply waits for the Raft leader's answer to this node's join
// (its metadata must announce Joining). A reply with Error is returned as
// an error.
func (g *Gossip) AwaitJoinReply(ctx context.Context) (JoinReply, error) {
	select {
	case r := <-g.replies:
		if r.Error != "" {
			return r, errors.New(r.Error)
		}
		return r, nil
	case <-ctx.Done():
		return JoinReply{}, ctx.Err()
	}
}

// DecodeJoinReply parses a JoinReply.
func DecodeJoinReply(b []byte) (JoinReply, error) {
	var r JoinReply
	err := json.Unmarshal(b, &r)
	return r, err
}

// LoadKey reads a gossip encryption key file: 16, 24 or 32 raw bytes, or
// their base64 or hex encoding (surrounding whitespace ignored).
func LoadKey(path string) ([]byte, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("gossip key: %w", err)
	}
	k, err := ParseKey(b)
	if err != nil {
		return nil, fmt.Errorf("gossip key %s: %w", path, err)
	}
	return k, nil
}
