package consensus

import (
	"testing"

	"github.com/blixard/blixard/proto/blixardpb"
)

// The exported checks give exactly the message apply gives, so an edge
// that refuses early says the same thing the state machine would.
func TestChecksMatchApply(t *testing.T) {
	for _, tc := range []struct{ name, tenant string }{
		{"Bad_Name", ""}, {"-web", ""}, {"web", "Tenant!"}, {"", ""},
	} {
		s := NewState()
		res, _ := s.Apply(1, &blixardpb.Command{Op: &blixardpb.Command_CreateVm{CreateVm: &blixardpb.CreateVm{
			Spec: &blixardpb.VmSpec{Name: tc.name, Tenant: tc.tenant, Vcpus: 1, MemoryMb: 128},
		}}})
		want := res.GetError().GetMessage()
		err := CheckVMName(tc.name)
		if err == nil {
			err = CheckTenant(tc.tenant)
		}
		if err == nil || err.Error() != want {
			t.Errorf("name %q tenant %q: check says %v, apply says %q", tc.name, tc.tenant, err, want)
		}
	}
	if CheckVMName("web-1") != nil || CheckTenant("") != nil || CheckTenant("blue") != nil {
		t.Error("valid name or tenant refused")
	}
	if got := NodeStatusName(blixardpb.NodeStatus_NODE_STATUS_DRAINING); got != "draining" {
		t.Errorf("NodeStatusName(draining) = %q", got)
	}
}
