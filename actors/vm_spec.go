package actors

import (
	"github.com/blixard/blixard/microvm"
	"github.com/blixard/blixard/proto/blixardpb"
)

// specOf converts a VM record into the driver's Spec. gateway is the
// guest's default gateway (the node agent's configuration).
func specOf(rec *blixardpb.VmRecord, gateway string) microvm.Spec {
	s := rec.GetSpec()
	spec := microvm.Spec{
		Name:         s.GetName(),
		ID:           rec.GetId(),
		Generation:   rec.GetGeneration(),
		Tenant:       s.GetTenant(),
		Hypervisor:   s.GetHypervisor(),
		Vcpus:        s.GetVcpus(),
		MemoryMB:     s.GetMemoryMb(),
		Kernel:       s.GetKernel(),
		Initrd:       s.GetInitrd(),
		Flake:        s.GetFlake(),
		KernelParams: append([]string(nil), s.GetKernelParams()...),
		IP:           rec.GetIp(),
		MAC:          rec.GetMac(),
		TAP:          rec.GetTap(),
		Gateway:      gateway,
	}
	if spec.Tenant == "" {
		spec.Tenant = "default"
	}
	if spec.Hypervisor == "" {
		spec.Hypervisor = "qemu"
	}
	for _, v := range s.GetVolumes() {
		spec.Volumes = append(spec.Volumes, microvm.Volume{
			Name:       v.GetName(),
			Image:      v.GetImage(),
			SizeMB:     v.GetSizeMb(),
			MountPoint: v.GetMountPoint(),
			ReadOnly:   v.GetReadOnly(),
		})
	}
	if len(s.GetLabels()) > 0 {
		spec.Labels = make(map[string]string, len(s.GetLabels()))
		for k, v := range s.GetLabels() {
			spec.Labels[k] = v
		}
	}
	return spec
}
