package consensus

import (
	"errors"

	"github.com/blixard/blixard/proto/blixardpb"
)

// CheckVMName returns the error apply gives a malformed VM name (nil for
// a valid one), so edges such as the api can refuse it before it costs a
// log entry, with the same message.
func CheckVMName(name string) error {
	if e := checkVMName(name); e != nil {
		return errors.New(e.msg)
	}
	return nil
}

// CheckTenant is CheckVMName for tenants; the empty tenant means
// DefaultTenant and is valid.
func CheckTenant(tenant string) error {
	if tenant != "" && !isDNSLabel(tenant) {
		return errors.New(invalid("invalid tenant %q: %s", tenant, dnsLabelRule).msg)
	}
	return nil
}

// NodeStatusName is the lower-case word of a node status as users see it
// ("alive", "suspect", "down", "draining", "left").
func NodeStatusName(st blixardpb.NodeStatus) string { return nodeStatusName(st) }
