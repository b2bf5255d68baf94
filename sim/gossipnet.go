package sim

import (
	"bytes"
	"fmt"
	"net"
	"strconv"
	"sync"
	"time"

	"github.com/hashicorp/memberlist"
)

// gossipNet carries memberlist traffic between the run's nodes over the
// simulated Network: packets (probes, gossip) go through the fault model;
// streams (push-pull, fallback probes) are in-memory pipes that can only
// be opened while both directions are up and neither end is paused.
type gossipNet struct {
	net *Network

	mu     sync.Mutex
	byAddr map[string]uint64
	live   map[string]*gossipTransport
}

func newGossipNet(n *Network, addrs map[uint64]string) *gossipNet {
	g := &gossipNet{net: n, byAddr: map[string]uint64{}, live: map[string]*gossipTransport{}}
	for id, a := range addrs {
		g.byAddr[a] = id
	}
	return g
}

// transport returns a new transport for node id at addr (one per start of
// the node's gossip member).
func (g *gossipNet) transport(id uint64, addr string) (*gossipTransport, error) {
	h, p, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, err
	}
	port, err := strconv.Atoi(p)
	if err != nil {
		return nil, err
	}
	t := &gossipTransport{
		gn: g, id: id, addr: addr, ip: net.ParseIP(h), port: port,
		from:    &net.TCPAddr{IP: net.ParseIP(h), Port: port},
		packets: make(chan *memberlist.Packet, 256),
		streams: make(chan net.Conn, 16),
	}
	g.mu.Lock()
	g.live[addr] = t
	g.mu.Unlock()
	return t, nil
}

func (g *gossipNet) lookup(addr string) *gossipTransport {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.live[addr]
}

type gossipTransport struct {
	gn      *gossipNet
	id      uint64
	addr    string
	ip      net.IP
	port    int
	from    net.Addr
	packets chan *memberlist.Packet
	streams chan net.Conn

	mu     sync.Mutex
	closed bool
}

var _ memberlist.NodeAwareTransport = (*gossipTransport)(nil)

func (t *gossipTransport) FinalAdvertiseAddr(string, int) (net.IP, int, error) {
	return t.ip, t.port, nil
}

func (t *gossipTransport) WriteTo(b []byte, addr string) (time.Time, error) {
	return t.WriteToAddress(b, memberlist.Address{Addr: addr})
}

func (t *gossipTransport) WriteToAddress(b []byte, a memberlist.Address) (time.Time, error) {
	now := time.Now()
	to, ok := t.gn.byAddr[a.Addr]
	if !ok {
		return now, fmt.Errorf("sim gossip: unknown address %s", a.Addr)
	}
	buf := bytes.Clone(b)
	from := t.from
	t.gn.net.send(t.id, to, func() {
		if dst := t.gn.lookup(a.Addr); dst != nil {
			dst.ingest(&memberlist.Packet{Buf: buf, From: from, Timestamp: time.Now()})
		}
	})
	return now, nil
}

// ingest queues a packet unless the transport is shut down or its queue
// is full (a full socket buffer drops too).
func (t *gossipTransport) ingest(p *memberlist.Packet) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return
	}
	select {
	case t.packets <- p:
	default:
	}
}

func (t *gossipTransport) PacketCh() <-chan *memberlist.Packet { return t.packets }
func (t *gossipTransport) StreamCh() <-chan net.Conn           { return t.streams }

func (t *gossipTransport) DialTimeout(addr string, timeout time.Duration) (net.Conn, error) {
	return t.DialAddressTimeout(memberlist.Address{Addr: addr}, timeout)
}

func (t *gossipTransport) DialAddressTimeout(a memberlist.Address, timeout time.Duration) (net.Conn, error) {
	to, ok := t.gn.byAddr[a.Addr]
	if !ok {
		return nil, fmt.Errorf("sim gossip: unknown address %s", a.Addr)
	}
	dst := t.gn.lookup(a.Addr)
	if dst == nil || !t.gn.net.Reachable(t.id, to) {
		return nil, fmt.Errorf("dial %s: %w", a.Addr, errUnreachable)
	}
	local, remote := net.Pipe()
	dst.mu.Lock()
	defer dst.mu.Unlock()
	if dst.closed {
		local.Close()
		remote.Close()
		return nil, fmt.Errorf("dial %s: connection refused", a.Addr)
	}
	select {
	case dst.streams <- remote:
	default:
		local.Close()
		remote.Close()
		return nil, fmt.Errorf("dial %s: backlog full", a.Addr)
	}
	return local, nil
}

// Shutdown stops taking packets and connections.
func (t *gossipTransport) Shutdown() error {
	t.gn.mu.Lock()
	if t.gn.live[t.addr] == t {
		delete(t.gn.live, t.addr)
	}
	t.gn.mu.Unlock()
	t.mu.Lock()
	t.closed = true
	t.mu.Unlock()
	// Connections nobody accepted any more.
	for {
		select {
		case c := <-t.streams:
			c.Close()
		default:
			return nil
		}
	}
}
