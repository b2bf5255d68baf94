package consensus

import (
	"fmt"
	"math/bits"
	"net/netip"
)

// ipam hands out VM addresses from the cluster subnet: always the lowest
// free one, so every replica picks the same address.
//
// Reserved in every subnet: the network address (offset 0), the first host
// address (offset 1, the host-side gateway of the routed network model:
// each host answers for it on every VM TAP, microvm.nix style) and the
// broadcast address (the last one). A /24 thus has 253 VM addresses,
// .2 to .254.
type ipam struct {
	base  uint32 // network address
	size  uint64 // addresses in the subnet, including the reserved ones
	bits  []uint64
	used  int
	first uint64 // no free offset below this one
}

// minOffset is the first offset handed to VMs (0 is the network, 1 the
// gateway).
const minOffset = 2

func (a *ipam) reset(p netip.Prefix) {
	b := p.Masked().Addr().As4()
	*a = ipam{
		base:  uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3]),
		size:  1 << (32 - p.Bits()),
		first: minOffset,
	}
}

// capacity is the number of addresses VMs can get.
func (a *ipam) capacity() int {
	if a.size < 4 {
		return 0
	}
	return int(a.size - 3)
}

func (a *ipam) full() bool { return a.used >= a.capacity() }

// lastOffset is the highest offset handed to VMs (size-1 is broadcast).
func (a *ipam) lastOffset() uint64 { return a.size - 2 }

func (a *ipam) isSet(off uint64) bool {
	w := off / 64
	return w < uint64(len(a.bits)) && a.bits[w]&(1<<(off%64)) != 0
}

func (a *ipam) set(off uint64) {
	w := off / 64
	for uint64(len(a.bits)) <= w {
		a.bits = append(a.bits, 0)
	}
	a.bits[w] |= 1 << (off % 64)
	a.used++
}

// next returns the lowest free address without taking it.
func (a *ipam) next() (uint32, bool) {
	if a.full() {
		return 0, false
	}
	off := a.first
	for w := off / 64; ; w++ {
		if w >= uint64(len(a.bits)) {
			if off < w*64 {
				off = w * 64
			}
			break
		}
		word := a.bits[w]
		if w == off/64 {
			word |= (1 << (off % 64)) - 1 // ignore offsets below off
		}
		if word != ^uint64(0) {
			off = w*64 + uint64(bits.TrailingZeros64(^word))
			break
		}
	}
	if off > a.lastOffset() {
		return 0, false // unreachable while used < capacity; kept as a guard
	}
	return a.base + uint32(off), true
}

// alloc takes the lowest free address.
func (a *ipam) alloc() (uint32, bool) {
	ip, ok := a.next()
	if !ok {
		return 0, false
	}
	off := uint64(ip - a.base)
	a.set(off)
	a.first = off + 1
	return ip, true
}

// claim marks ip as used (snapshot restore).
func (a *ipam) claim(ip uint32) error {
	off := uint64(ip - a.base)
	if ip < a.base || off < minOffset || off > a.lastOffset() {
		return fmt.Errorf("address %s is not a VM address of subnet %s", ipString(ip), a.prefixString())
	}
	if a.isSet(off) {
		return fmt.Errorf("address %s is assigned twice", ipString(ip))
	}
	a.set(off)
	return nil
}

// release frees ip.
func (a *ipam) release(ip uint32) {
	off := uint64(ip - a.base)
	if ip < a.base || off >= a.size || !a.isSet(off) {
		return
	}
	a.bits[off/64] &^= 1 << (off % 64)
	a.used--
	if off < a.first {
		a.first = off
	}
}

func (a *ipam) prefixString() string {
	return fmt.Sprintf("%s/%d", ipString(a.base), 32-bits.Len64(a.size-1))
}

func ipString(ip uint32) string {
	return netip.AddrFrom4([4]byte{byte(ip >> 24), byte(ip >> 16), byte(ip >> 8), byte(ip)}).String()
}

// macFromIP derives a VM's MAC address from its IPv4 address: the locally
// administered prefix 02:00 followed by the four octets, so the MAC is
// unique whenever the address is.
func macFromIP(ip uint32) string {
	var b [17]byte
	return string(appendMAC(b[:0], ip))
}

// appendMAC appends macFromIP(ip) to b.
func appendMAC(b []byte, ip uint32) []byte {
	const hex = "0123456789abcdef"
	b = append(b, "02:00"...)
	for i := 0; i < 4; i++ {
		o := byte(ip >> (24 - 8*i))
		b = append(b, ':', hex[o>>4], hex[o&15])
	}
	return b
}

func parseIPv4(s string) (uint32, bool) {
	a, err := netip.ParseAddr(s)
	if err != nil || !a.Is4() {
		return 0, false
	}
	b := a.As4()
	return uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3]), true
}
