package consensus

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"unicode/utf8"

	"github.com/blixard/blixard/proto/blixardpb"
)

// Limits enforced on commands. They keep per-VM state small and bounded
// whatever a client sends.
const (
	MinVcpus      = 1
	MaxVcpus      = 64
	MinMemoryMB   = 64
	MaxMemoryMB   = 1 << 20 // 1 TiB
	MaxVolumes    = 16
	MaxVolumeMB   = 16 << 20 // 16 TiB
	MaxLabels     = 32
	MaxPathLen    = 1024
	MaxParams     = 64
	MaxParamsLen  = 4096 // all kernel params together
	MaxMessageLen = 1024 // longer ReportVmStatus messages are truncated
	MaxRequestID  = 128
	MaxAddrLen    = 255
	MaxRestarts   = 10000
	MaxWindowSec  = 7 * 24 * 3600
	MaxNodeVcpus  = 1 << 16
	MaxNodeMemMB  = 1 << 40
	maxLabelKey   = 63
	maxLabelValue = 255
)

// cmdErr is a typed command failure; it becomes Result.error.
type cmdErr struct {
	code blixardpb.Code
	msg  string
}

func errf(code blixardpb.Code, format string, args ...any) *cmdErr {
	return &cmdErr{code: code, msg: fmt.Sprintf(format, args...)}
}

func invalid(format string, args ...any) *cmdErr {
	return errf(blixardpb.Code_INVALID_ARGUMENT, format, args...)
}

const dnsLabelRule = "must be a DNS label (lowercase letters, digits and '-', 1-63 chars, starting and ending with a letter or digit)"

// isDNSLabel reports whether s matches ^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$.
func isDNSLabel(s string) bool {
	if len(s) == 0 || len(s) > 63 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'a' && c <= 'z', c >= '0' && c <= '9':
		case c == '-' && i != 0 && i != len(s)-1:
		default:
			return false
		}
	}
	return true
}

func checkVMName(name string) *cmdErr {
	if !isDNSLabel(name) {
		return invalid("invalid vm name %q: %s", name, dnsLabelRule)
	}
	return nil
}

// checkText rejects strings that would not survive the snapshot codec
// (invalid UTF-8) or that are unreasonably long.
func checkText(field, s string, max int) *cmdErr {
	if len(s) <= max && utf8.ValidString(s) {
		return nil
	}
	if len(s) > max {
		return invalid("%s is %d bytes long: must be at most %d", field, len(s), max)
	}
	if !utf8.ValidString(s) {
		return invalid("%s %q is not valid UTF-8", field, s)
	}
	return nil
}

func checkPath(field, s string) *cmdErr {
	if err := checkText(field, s, MaxPathLen); err != nil {
		return err
	}
	if strings.IndexByte(s, 0) >= 0 {
		return invalid("%s %q contains a NUL byte", field, s)
	}
	return nil
}

func checkLabels(what string, m map[string]string) ([]label, *cmdErr) {
	if len(m) > MaxLabels {
		return nil, invalid("%s has %d labels: at most %d allowed", what, len(m), MaxLabels)
	}
	if len(m) == 0 {
		return nil, nil
	}
	ls := make([]label, 0, len(m))
	for k, v := range m {
		ls = append(ls, label{k, v})
	}
	slices.SortFunc(ls, func(a, b label) int { return strings.Compare(a.key, b.key) })
	// Check in key order so the first error is the same on every replica.
	for _, l := range ls {
		if l.key == "" {
			return nil, invalid("%s label key is empty: keys must be 1-%d bytes", what, maxLabelKey)
		}
		if err := checkText(what+" label key", l.key, maxLabelKey); err != nil {
			return nil, err
		}
		if len(l.value) > maxLabelValue || !utf8.ValidString(l.value) {
			return nil, checkText(fmt.Sprintf("%s label %q", what, l.key), l.value, maxLabelValue)
		}
	}
	return ls, nil
}

func indexOf(list []string, s string) int {
	for i, x := range list {
		if x == s {
			return i
		}
	}
	return -1
}

// validateSpec checks a VmSpec and returns it normalised (defaults filled
// in). It looks at nothing but the spec; placement checks come later.
func validateSpec(in *blixardpb.VmSpec) (name, tenant string, sp vmSpec, err *cmdErr) {
	if in == nil {
		return "", "", sp, invalid("missing vm spec")
	}
	name = in.GetName()
	if err := checkVMName(name); err != nil {
		return "", "", sp, err
	}
	tenant = in.GetTenant()
	if tenant == "" {
		tenant = DefaultTenant
	} else if !isDNSLabel(tenant) {
		return "", "", sp, invalid("invalid tenant %q: %s", tenant, dnsLabelRule)
	}
	switch h := in.GetHypervisor(); h {
	case "":
		sp.hypervisor = 0
	default:
		i := indexOf(hypervisors, h)
		if i < 0 {
			return "", "", sp, invalid("unknown hypervisor %q: must be qemu, cloud-hypervisor or firecracker", h)
		}
		sp.hypervisor = uint8(i)
	}
	sp.vcpus = in.GetVcpus()
	if sp.vcpus < MinVcpus || sp.vcpus > MaxVcpus {
		return "", "", sp, invalid("vcpus %d out of range: must be %d-%d", sp.vcpus, MinVcpus, MaxVcpus)
	}
	sp.memoryMB = in.GetMemoryMb()
	if sp.memoryMB < MinMemoryMB || sp.memoryMB > MaxMemoryMB {
		return "", "", sp, invalid("memory_mb %d out of range: must be %d-%d", sp.memoryMB, MinMemoryMB, MaxMemoryMB)
	}
	sp.kernel, sp.initrd, sp.flake = in.GetKernel(), in.GetInitrd(), in.GetFlake()
	for _, f := range []struct{ field, val string }{{"kernel", sp.kernel}, {"initrd", sp.initrd}, {"flake", sp.flake}} {
		if err := checkPath(f.field, f.val); err != nil {
			return "", "", sp, err
		}
	}
	for _, f := range []struct{ field, val string }{{"kernel", sp.kernel}, {"initrd", sp.initrd}} {
		if f.val != "" && f.val[0] != '/' {
			return "", "", sp, invalid("%s path %q is relative: must be absolute (it is opened on the node that runs the vm)", f.field, f.val)
		}
	}
	if sp.flake != "" && (sp.kernel != "" || sp.initrd != "") {
		return "", "", sp, invalid("flake and kernel/initrd are exclusive: give either a flake or a kernel (and initrd)")
	}
	if sp.initrd != "" && sp.kernel == "" {
		return "", "", sp, invalid("initrd %q given without a kernel: an initrd needs a kernel", sp.initrd)
	}
	params := in.GetKernelParams()
	if len(params) > MaxParams {
		return "", "", sp, invalid("%d kernel_params: at most %d allowed", len(params), MaxParams)
	}
	total := 0
	for _, p := range params {
		total += len(p) + 1
		if err := checkPath("kernel param", p); err != nil {
			return "", "", sp, err
		}
	}
	if total > MaxParamsLen {
		return "", "", sp, invalid("kernel_params are %d bytes long: must be at most %d", total, MaxParamsLen)
	}
	if len(params) > 0 {
		sp.kernelParams = slices.Clone(params)
	}
	vols := in.GetVolumes()
	if len(vols) > MaxVolumes {
		return "", "", sp, invalid("%d volumes: at most %d allowed", len(vols), MaxVolumes)
	}
	for i, v := range vols {
		if v == nil {
			return "", "", sp, invalid("volume %d is empty", i)
		}
		if !isDNSLabel(v.GetName()) {
			return "", "", sp, invalid("invalid volume name %q: %s", v.GetName(), dnsLabelRule)
		}
		for _, prev := range sp.volumes {
			if prev.name == v.GetName() {
				return "", "", sp, invalid("duplicate volume name %q: volume names must be unique within a vm", v.GetName())
			}
		}
		if err := checkPath("image", v.GetImage()); err != nil {
			err.msg = fmt.Sprintf("volume %q ", v.GetName()) + err.msg
			return "", "", sp, err
		}
		if err := checkPath("mount_point", v.GetMountPoint()); err != nil {
			err.msg = fmt.Sprintf("volume %q ", v.GetName()) + err.msg
			return "", "", sp, err
		}
		if mp := v.GetMountPoint(); mp != "" && !strings.HasPrefix(mp, "/") {
			return "", "", sp, invalid("volume %q mount_point %q: must be an absolute path", v.GetName(), mp)
		}
		if v.GetSizeMb() > MaxVolumeMB {
			return "", "", sp, invalid("volume %q size_mb %d out of range: must be at most %d", v.GetName(), v.GetSizeMb(), MaxVolumeMB)
		}
		if v.GetImage() == "" && v.GetSizeMb() == 0 {
			return "", "", sp, invalid("volume %q has neither an image nor a size_mb: give an image path or a size_mb of 1-%d", v.GetName(), MaxVolumeMB)
		}
		sp.volumes = append(sp.volumes, volume{
			name:       v.GetName(),
			image:      v.GetImage(),
			mountPoint: v.GetMountPoint(),
			sizeMB:     v.GetSizeMb(),
			readOnly:   v.GetReadOnly(),
		})
	}
	rp := in.GetRestart()
	switch m := rp.GetMode(); m {
	case "":
		sp.restartMode = 0
	default:
		i := indexOf(restartModes, m)
		if i < 0 {
			return "", "", sp, invalid("unknown restart mode %q: must be always, on-failure or never", m)
		}
		sp.restartMode = uint8(i)
	}
	sp.maxRestarts = rp.GetMaxRestarts()
	if sp.maxRestarts == 0 {
		sp.maxRestarts = DefaultMaxRestarts
	} else if sp.maxRestarts > MaxRestarts {
		return "", "", sp, invalid("max_restarts %d out of range: must be 0 (default %d) to %d", sp.maxRestarts, DefaultMaxRestarts, MaxRestarts)
	}
	sp.windowSeconds = rp.GetWindowSeconds()
	if sp.windowSeconds == 0 {
		sp.windowSeconds = DefaultRestartWindow
	} else if sp.windowSeconds > MaxWindowSec {
		return "", "", sp, invalid("window_seconds %d out of range: must be 0 (default %d) to %d", sp.windowSeconds, DefaultRestartWindow, MaxWindowSec)
	}
	sp.pin = in.GetNodeId()
	labels, err := checkLabels("vm", in.GetLabels())
	if err != nil {
		return "", "", sp, err
	}
	sp.labels = labels
	return name, tenant, sp, nil
}

// validateNode checks an UpsertNode record.
func validateNode(in *blixardpb.NodeRecord) ([]label, *cmdErr) {
	if in == nil {
		return nil, invalid("missing node record")
	}
	if in.GetId() == 0 {
		return nil, invalid("node id 0 is invalid: must be 1 or more")
	}
	for _, f := range []struct{ field, val string }{
		{"api_addr", in.GetApiAddr()}, {"raft_addr", in.GetRaftAddr()},
		{"gossip_addr", in.GetGossipAddr()}, {"version", in.GetVersion()},
	} {
		if err := checkText(f.field, f.val, MaxAddrLen); err != nil {
			return nil, err
		}
	}
	if in.GetVcpus() > MaxNodeVcpus {
		return nil, invalid("node vcpus %d out of range: must be 0-%d", in.GetVcpus(), MaxNodeVcpus)
	}
	if in.GetMemoryMb() > MaxNodeMemMB {
		return nil, invalid("node memory_mb %d out of range: must be 0-%d", in.GetMemoryMb(), uint64(MaxNodeMemMB))
	}
	if st := in.GetStatus(); st != blixardpb.NodeStatus_NODE_STATUS_UNSPECIFIED {
		if err := checkNodeStatus(st); err != nil {
			return nil, err
		}
	}
	return checkLabels("node", in.GetLabels())
}

func checkNodeStatus(st blixardpb.NodeStatus) *cmdErr {
	switch st {
	case blixardpb.NodeStatus_NODE_STATUS_ALIVE, blixardpb.NodeStatus_NODE_STATUS_SUSPECT,
		blixardpb.NodeStatus_NODE_STATUS_DOWN, blixardpb.NodeStatus_NODE_STATUS_DRAINING,
		blixardpb.NodeStatus_NODE_STATUS_LEFT:
		return nil
	}
	return invalid("invalid node status %s: must be alive, suspect, down, draining or left", nodeStatusName(st))
}

func nodeStatusName(st blixardpb.NodeStatus) string {
	switch st {
	case blixardpb.NodeStatus_NODE_STATUS_ALIVE:
		return "alive"
	case blixardpb.NodeStatus_NODE_STATUS_SUSPECT:
		return "suspect"
	case blixardpb.NodeStatus_NODE_STATUS_DOWN:
		return "down"
	case blixardpb.NodeStatus_NODE_STATUS_DRAINING:
		return "draining"
	case blixardpb.NodeStatus_NODE_STATUS_LEFT:
		return "left"
	case blixardpb.NodeStatus_NODE_STATUS_UNSPECIFIED:
		return "unspecified"
	}
	return fmt.Sprintf("%d", int32(st))
}

func vmStatusName(st blixardpb.VmStatus) string {
	switch st {
	case blixardpb.VmStatus_VM_STATUS_PENDING:
		return "pending"
	case blixardpb.VmStatus_VM_STATUS_STARTING:
		return "starting"
	case blixardpb.VmStatus_VM_STATUS_RUNNING:
		return "running"
	case blixardpb.VmStatus_VM_STATUS_STOPPING:
		return "stopping"
	case blixardpb.VmStatus_VM_STATUS_STOPPED:
		return "stopped"
	case blixardpb.VmStatus_VM_STATUS_FAILED:
		return "failed"
	case blixardpb.VmStatus_VM_STATUS_LOST:
		return "lost"
	case blixardpb.VmStatus_VM_STATUS_UNSPECIFIED:
		return "unspecified"
	}
	return fmt.Sprintf("%d", int32(st))
}

// validateConfig checks an InitCluster configuration and returns it with
// defaults filled in.
func validateConfig(in *blixardpb.ClusterConfig) (config, *cmdErr) {
	c := defaultConfig()
	c.initialised = true
	if in == nil {
		return c, nil
	}
	if err := checkText("cluster_id", in.GetClusterId(), 64); err != nil {
		return c, err
	}
	c.clusterID = in.GetClusterId()
	if sub := in.GetSubnet(); sub != "" {
		p, err := netip.ParsePrefix(sub)
		if err != nil || !p.Addr().Is4() {
			return c, invalid("invalid subnet %q: must be an IPv4 CIDR such as %s", sub, DefaultSubnet)
		}
		if p.Bits() < 8 || p.Bits() > 30 {
			return c, invalid("subnet %s has prefix length /%d: must be /8 to /30", p, p.Bits())
		}
		if p.Masked() != p {
			return c, invalid("subnet %s has host bits set: use its network address %s", p, p.Masked())
		}
		c.subnet = p
	}
	switch pl := in.GetPlacement(); pl {
	case "", "spread":
		c.placement = placeSpread
	case "binpack":
		c.placement = placeBinpack
	default:
		return c, invalid("unknown placement %q: must be spread or binpack", pl)
	}
	return c, nil
}
