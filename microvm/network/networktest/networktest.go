// Package networktest runs microvm/network inside a throwaway network
// namespace, and plays a VM on a TAP from the test process: an Endpoint
// answers ARP for its address and sends and receives raw frames, so tests
// can check forwarding, anti-spoofing and tenant isolation without booting
// a guest.
//
// Everything a test does through this package stays inside the namespace
// it created; the namespace is deleted when the test ends.
//
// Who may import it: tests of microvm/... packages and cmd/.
package networktest
