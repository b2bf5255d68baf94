package networktest

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"
	"unsafe"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/blixard/blixard/microvm/network"
)

// Netns is a named network namespace made for one test.
type Netns struct {
	name string
}

var seq atomic.Int64

// New creates a named network namespace (loopback up) and deletes it when
// the test ends. It skips the test, saying why, without root or without
// the ip and iptables commands (.ci installs iproute2 and iptables).
func New(t testing.TB) *Netns {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to create a network namespace, TAPs and iptables rules")
	}
	for _, tool := range []string{"ip", "iptables", "iptables-save"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not installed (apt packages iproute2, iptables)", tool)
		}
	}
	if _, err := os.Stat("/dev/net/tun"); err != nil {
		t.Skipf("no /dev/net/tun: %v", err)
	}
	n := &Netns{name: fmt.Sprintf("blxt%d-%d", os.Getpid(), seq.Add(1))}
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			errc <- err
			return
		}
		defer orig.Close()
		ns, err := netns.NewNamed(n.name) // the thread is now inside it
		if err != nil {
			errc <- fmt.Errorf("creating netns: %w", err)
			return
		}
		ns.Close()
		err = upLoopback()
		if rerr := netns.Set(orig); rerr == nil {
			runtime.UnlockOSThread()
		}
		errc <- err
	}()
	err := <-errc
	t.Cleanup(func() { netns.DeleteNamed(n.name) })
	if err != nil && strings.Contains(err.Error(), "creating netns") {
		t.Skipf("cannot create a network namespace here: %v", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func upLoopback() error {
	lo, err := netlink.LinkByName("lo")
	if err != nil {
		return err
	}
	return netlink.LinkSetUp(lo)
}

// Name is the namespace's name (for ip netns exec).
func (n *Netns) Name() string { return n.name }

// Do runs f on an OS thread that is inside the namespace. Sockets, links
// and child processes f creates belong to the namespace. Should switching
// the thread back fail, the thread is discarded.
func (n *Netns) Do(f func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			errc <- err
			return
		}
		defer orig.Close()
		target, err := netns.GetFromName(n.name)
		if err != nil {
			errc <- err
			return
		}
		defer target.Close()
		if err := netns.Set(target); err != nil {
			errc <- err
			return
		}
		err = f()
		if rerr := netns.Set(orig); rerr == nil {
			runtime.UnlockOSThread()
		}
		errc <- err
	}()
	return <-errc
}

// Exec runs argv inside the namespace and returns its standard output; it
// fails the test when the command fails.
func (n *Netns) Exec(t testing.TB, argv ...string) string {
	t.Helper()
	out, err := n.Output(argv...)
	if err != nil {
		t.Fatalf("ip netns exec %s %s: %v", n.name, strings.Join(argv, " "), err)
	}
	return out
}

// Output runs argv inside the namespace and returns its standard output.
func (n *Netns) Output(argv ...string) (string, error) {
	cmd := exec.Command("ip", append([]string{"netns", "exec", n.name}, argv...)...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return string(out), fmt.Errorf("%w: %s", err, strings.TrimSpace(stderr.String()))
	}
	return string(out), nil
}

// State is the namespace's links, addresses, routes and filter table as
// text, without counters or timestamps: two equal States mean equal
// network configuration.
func (n *Netns) State(t testing.TB) string {
	t.Helper()
	var b strings.Builder
	b.WriteString("# ip -d link\n")
	for _, l := range strings.Split(n.Exec(t, "ip", "-d", "-o", "link", "show"), "\n") {
		b.WriteString(l + "\n")
	}
	b.WriteString("# ip addr\n" + n.Exec(t, "ip", "-o", "addr", "show"))
	// Sorted: the kernel lists equal routes in the order they were added.
	routes := strings.Split(strings.TrimSpace(n.Exec(t, "ip", "route", "show", "table", "all")), "\n")
	slices.Sort(routes)
	b.WriteString("# ip route\n" + strings.Join(routes, "\n") + "\n")
	b.WriteString("# iptables-save\n")
	for _, l := range strings.Split(n.Exec(t, "iptables-save", "-t", "filter"), "\n") {
		if strings.HasPrefix(l, "#") {
			continue // timestamps
		}
		if strings.HasPrefix(l, ":") {
			// ":CHAIN POLICY [packets:bytes]"
			if i := strings.LastIndex(l, " ["); i > 0 {
				l = l[:i]
			}
		}
		b.WriteString(l + "\n")
	}
	return b.String()
}

// DropCount is the number of packets the DROP rules of chain have dropped.
func (n *Netns) DropCount(t testing.TB, chain string) int {
	t.Helper()
	total := 0
	for _, l := range strings.Split(n.Exec(t, "iptables", "-w", "-t", "filter", "-v", "-S", chain), "\n") {
		f := strings.Fields(l)
		if len(f) < 2 || f[0] != "-A" || f[len(f)-1] != "DROP" {
			continue
		}
		for i := range f {
			if f[i] == "-c" && i+1 < len(f) {
				c, _ := strconv.Atoi(f[i+1])
				total += c
			}
		}
	}
	return total
}

// WaitDrops waits until chain has dropped more than before packets.
func (n *Netns) WaitDrops(t testing.TB, chain string, before int, timeout time.Duration) int {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		c := n.DropCount(t, chain)
		if c > before {
			return c
		}
		if time.Now().After(deadline) {
			t.Fatalf("chain %s dropped nothing new within %s (still %d)", chain, timeout, c)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Network is a network.Host whose every call runs inside NS: the
// driver-facing Setup and Teardown of a test.
type Network struct {
	NS   *Netns
	Host *network.Host
}

// Setup runs Host.Setup inside NS.
func (w Network) Setup(ctx context.Context, vm network.VM) error {
	return w.NS.Do(func() error { return w.host().Setup(ctx, vm) })
}

// Teardown runs Host.Teardown inside NS.
func (w Network) Teardown(ctx context.Context, vm network.VM) error {
	return w.NS.Do(func() error { return w.host().Teardown(ctx, vm) })
}

func (w Network) host() *network.Host {
	if w.Host == nil {
		return &network.Host{}
	}
	return w.Host
}

// SendUDP sends payload from the namespace's host stack to dst:port.
func (n *Netns) SendUDP(dst string, port int, payload []byte) error {
	return n.Do(func() error {
		c, err := net.Dial("udp4", net.JoinHostPort(dst, strconv.Itoa(port)))
		if err != nil {
			return err
		}
		defer c.Close()
		_, err = c.Write(payload)
		return err
	})
}

// Endpoint plays a VM on a TAP made by network.Setup: it holds the TAP
// open as the hypervisor would, answers ARP for its address, and queues
// the IPv4 packets it receives.
type Endpoint struct {
	IP  net.IP
	MAC net.HardwareAddr
	// GatewayMAC is the TAP's (host side) MAC: where a VM sends frames.
	GatewayMAC net.HardwareAddr

	f    *os.File
	pkts chan Packet
}

// Packet is a received IPv4 packet, decoded as far as tests need.
type Packet struct {
	Src, Dst         net.IP
	Proto            uint8
	SrcPort, DstPort uint16
	TCPFlags         uint8
	Payload          []byte
}

// TCP flag bits.
const (
	TCPSyn = 0x02
	TCPRst = 0x04
	TCPAck = 0x10
)

func (p Packet) String() string {
	return fmt.Sprintf("%s:%d -> %s:%d proto %d flags %#x %q", p.Src, p.SrcPort, p.Dst, p.DstPort, p.Proto, p.TCPFlags, p.Payload)
}

// vnetHdrLen is sizeof(struct virtio_net_hdr): the TAPs carry vnet_hdr.
const vnetHdrLen = 10

// Attach opens vm's TAP inside n (after network.Setup made it) and starts
// serving it; it is closed when the test ends.
func (n *Netns) Attach(t testing.TB, vm network.VM) *Endpoint {
	t.Helper()
	e := &Endpoint{IP: net.ParseIP(vm.IP).To4(), pkts: make(chan Packet, 256)}
	var err error
	if e.MAC, err = net.ParseMAC(vm.MAC); err != nil {
		t.Fatal(err)
	}
	err = n.Do(func() error {
		link, err := netlink.LinkByName(vm.TAP)
		if err != nil {
			return err
		}
		e.GatewayMAC = link.Attrs().HardwareAddr
		flags := uint16(unix.IFF_TAP | unix.IFF_NO_PI | unix.IFF_VNET_HDR)
		if tt, ok := link.(*netlink.Tuntap); ok && tt.Flags&netlink.TUNTAP_MULTI_QUEUE != 0 {
			flags |= unix.IFF_MULTI_QUEUE
		}
		fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC, 0)
		if err != nil {
			return err
		}
		var req [unix.IFNAMSIZ + 64]byte
		copy(req[:unix.IFNAMSIZ-1], vm.TAP)
		binary.NativeEndian.PutUint16(req[unix.IFNAMSIZ:], flags)
		if _, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.TUNSETIFF, uintptr(unsafe.Pointer(&req[0]))); errno != 0 {
			unix.Close(fd)
			return fmt.Errorf("attaching to %s: %w", vm.TAP, errno)
		}
		if err := unix.SetNonblock(fd, true); err != nil {
			unix.Close(fd)
			return err
		}
		e.f = os.NewFile(uintptr(fd), "/dev/net/tun")
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.f.Close() })
	go e.serve()
	return e
}

// Close lets go of the TAP.
func (e *Endpoint) Close() error { return e.f.Close() }

func (e *Endpoint) serve() {
	buf := make([]byte, 65536)
	for {
		n, err := e.f.Read(buf)
		if err != nil {
			return
		}
		if n < vnetHdrLen+14 {
			continue
		}
		fr := buf[vnetHdrLen:n]
		switch binary.BigEndian.Uint16(fr[12:14]) {
		case 0x0806:
			e.answerARP(fr)
		case 0x0800:
			if p, ok := decode(fr[14:]); ok {
				select {
				case e.pkts <- p:
				default:
				}
			}
		}
	}
}

func (e *Endpoint) answerARP(fr []byte) {
	a := fr[14:]
	if len(a) < 28 || binary.BigEndian.Uint16(a[6:8]) != 1 || !net.IP(a[24:28]).Equal(e.IP) {
		return
	}
	reply := make([]byte, 28)
	copy(reply, a[:6])                        // htype, ptype, hlen, plen
	binary.BigEndian.PutUint16(reply[6:8], 2) // reply
	copy(reply[8:14], e.MAC)                  // sender hw
	copy(reply[14:18], e.IP)                  // sender ip
	copy(reply[18:28], a[8:18])               // target = the asker
	e.Send(Frame(a[8:14], e.MAC, 0x0806, reply))
}

// Send writes an Ethernet frame into the TAP, as the guest would.
func (e *Endpoint) Send(frame []byte) error {
	_, err := e.f.Write(append(make([]byte, vnetHdrLen), frame...))
	return err
}

// SendIP sends an IPv4 packet to the gateway from srcMAC.
func (e *Endpoint) SendIP(srcMAC net.HardwareAddr, packet []byte) error {
	return e.Send(Frame(e.GatewayMAC, srcMAC, 0x0800, packet))
}

// Next returns the next IPv4 packet received, or an error after timeout.
func (e *Endpoint) Next(timeout time.Duration) (Packet, error) {
	select {
	case p := <-e.pkts:
		return p, nil
	case <-time.After(timeout):
		return Packet{}, errors.New("no packet within " + timeout.String())
	}
}

// Expect returns the first packet for which match is true, skipping
// others, or an error after timeout.
func (e *Endpoint) Expect(timeout time.Duration, match func(Packet) bool) (Packet, error) {
	deadline := time.Now().Add(timeout)
	for {
		p, err := e.Next(time.Until(deadline))
		if err != nil {
			return p, err
		}
		if match(p) {
			return p, nil
		}
	}
}

// Frame builds an Ethernet frame.
func Frame(dst, src net.HardwareAddr, ethertype uint16, payload []byte) []byte {
	f := make([]byte, 14, 14+len(payload))
	copy(f[0:6], dst)
	copy(f[6:12], src)
	binary.BigEndian.PutUint16(f[12:14], ethertype)
	return append(f, payload...)
}

// UDP builds an IPv4 UDP packet.
func UDP(src, dst net.IP, sport, dport uint16, payload []byte) []byte {
	u := make([]byte, 8, 8+len(payload))
	binary.BigEndian.PutUint16(u[0:], sport)
	binary.BigEndian.PutUint16(u[2:], dport)
	binary.BigEndian.PutUint16(u[4:], uint16(8+len(payload)))
	u = append(u, payload...)
	binary.BigEndian.PutUint16(u[6:], transportSum(src, dst, 17, u))
	return ipv4(src, dst, 17, u)
}

// TCP builds an IPv4 TCP segment with flags and no payload (a SYN probes a
// port: a SYN-ACK answers an open one).
func TCP(src, dst net.IP, sport, dport uint16, seq uint32, flags uint8) []byte {
	s := make([]byte, 20)
	binary.BigEndian.PutUint16(s[0:], sport)
	binary.BigEndian.PutUint16(s[2:], dport)
	binary.BigEndian.PutUint32(s[4:], seq)
	s[12] = 5 << 4
	s[13] = flags
	binary.BigEndian.PutUint16(s[14:], 65535)
	binary.BigEndian.PutUint16(s[16:], transportSum(src, dst, 6, s))
	return ipv4(src, dst, 6, s)
}

func ipv4(src, dst net.IP, proto uint8, payload []byte) []byte {
	h := make([]byte, 20, 20+len(payload))
	h[0] = 0x45
	binary.BigEndian.PutUint16(h[2:], uint16(20+len(payload)))
	h[6] = 0x40 // don't fragment
	h[8] = 64
	h[9] = proto
	copy(h[12:16], src.To4())
	copy(h[16:20], dst.To4())
	binary.BigEndian.PutUint16(h[10:], checksum(h, 0))
	return append(h, payload...)
}

func transportSum(src, dst net.IP, proto uint8, seg []byte) uint16 {
	var sum uint32
	for _, ip := range [][]byte{src.To4(), dst.To4()} {
		sum += uint32(binary.BigEndian.Uint16(ip[0:])) + uint32(binary.BigEndian.Uint16(ip[2:]))
	}
	sum += uint32(proto) + uint32(len(seg))
	return checksum(seg, sum)
}

func checksum(b []byte, sum uint32) uint16 {
	for i := 0; i+1 < len(b); i += 2 {
		sum += uint32(binary.BigEndian.Uint16(b[i:]))
	}
	if len(b)%2 == 1 {
		sum += uint32(b[len(b)-1]) << 8
	}
	for sum>>16 != 0 {
		sum = sum&0xffff + sum>>16
	}
	return ^uint16(sum)
}

func decode(b []byte) (Packet, bool) {
	if len(b) < 20 || b[0]>>4 != 4 {
		return Packet{}, false
	}
	hl := int(b[0]&0x0f) * 4
	total := int(binary.BigEndian.Uint16(b[2:4]))
	if hl < 20 || total < hl || total > len(b) {
		return Packet{}, false
	}
	p := Packet{Src: net.IP(append([]byte(nil), b[12:16]...)), Dst: net.IP(append([]byte(nil), b[16:20]...)), Proto: b[9]}
	seg := b[hl:total]
	switch p.Proto {
	case 17:
		if len(seg) >= 8 {
			p.SrcPort, p.DstPort = binary.BigEndian.Uint16(seg[0:]), binary.BigEndian.Uint16(seg[2:])
			p.Payload = append([]byte(nil), seg[8:]...)
		}
	case 6:
		if len(seg) >= 20 {
			p.SrcPort, p.DstPort = binary.BigEndian.Uint16(seg[0:]), binary.BigEndian.Uint16(seg[2:])
			p.TCPFlags = seg[13]
			off := int(seg[12]>>4) * 4
			if off <= len(seg) {
				p.Payload = append([]byte(nil), seg[off:]...)
			}
		}
	}
	return p, true
}
