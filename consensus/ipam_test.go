package consensus

import (
	"net/netip"
	"testing"
)

func TestMACFromIP(t *testing.T) {
	for ip, want := range map[string]string{
		"10.0.0.2":        "02:00:0a:00:00:02",
		"172.16.255.254":  "02:00:ac:10:ff:fe",
		"192.168.100.200": "02:00:c0:a8:64:c8",
	} {
		a, _ := parseIPv4(ip)
		if got := macFromIP(a); got != want {
			t.Errorf("macFromIP(%s) = %s, want %s", ip, got, want)
		}
	}
}

func TestTapName(t *testing.T) {
	for id, want := range map[uint64]string{1: "vm-1", 35: "vm-z", 36: "vm-10", 1295: "vm-zz"} {
		if got := tapName(id); got != want {
			t.Errorf("tapName(%d) = %s, want %s", id, got, want)
		}
	}
	// Every id below 36^12 fits IFNAMSIZ-1 = 15 bytes.
	if n := len(tapName(4738381338321616895)); n > 15 { // 36^12 - 1
		t.Errorf("tap name of 36^12-1 is %d bytes", n)
	}
}

// TestIPAMLowestFree allocates a whole /24, frees a scattered set and
// checks the addresses come back lowest first.
func TestIPAMLowestFree(t *testing.T) {
	var a ipam
	a.reset(netip.MustParsePrefix("10.0.0.0/24"))
	if a.capacity() != 253 {
		t.Fatalf("capacity = %d, want 253", a.capacity())
	}
	var got []uint32
	for {
		ip, ok := a.alloc()
		if !ok {
			break
		}
		got = append(got, ip)
	}
	if len(got) != 253 || ipString(got[0]) != "10.0.0.2" || ipString(got[252]) != "10.0.0.254" {
		t.Fatalf("allocated %d, first %s, last %s", len(got), ipString(got[0]), ipString(got[len(got)-1]))
	}
	for _, off := range []uint32{200, 63, 64, 2, 130} {
		a.release(a.base + off)
	}
	a.release(a.base + 1)   // the gateway was never allocated: ignored
	a.release(a.base + 255) // broadcast: ignored
	for _, want := range []string{"10.0.0.2", "10.0.0.63", "10.0.0.64", "10.0.0.130", "10.0.0.200"} {
		ip, ok := a.alloc()
		if !ok || ipString(ip) != want {
			t.Fatalf("alloc = %s %v, want %s", ipString(ip), ok, want)
		}
	}
	if _, ok := a.alloc(); ok {
		t.Fatal("allocated from a full subnet")
	}
	if err := a.claim(a.base + 1); err == nil {
		t.Error("claim of the gateway address accepted")
	}
	if err := a.claim(a.base + 5); err == nil {
		t.Error("claim of a used address accepted")
	}
}
