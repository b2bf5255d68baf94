package main

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"

	"github.com/blixard/blixard/client"
	"github.com/blixard/blixard/proto/blixardpb"
)

// vmJSON is a VM as `vm status` and `vm list` print it. The keys are part
// of the user contract (DESIGN.md §7): add keys, never rename.
type vmJSON struct {
	Name       string            `json:"name"`
	ID         uint64            `json:"id"`
	Tenant     string            `json:"tenant"`
	Desired    string            `json:"desired"`
	Status     string            `json:"status"`
	NodeID     uint64            `json:"node_id"`
	Vcpus      uint32            `json:"vcpus"`
	MemoryMB   uint64            `json:"memory_mb"`
	Hypervisor string            `json:"hypervisor"`
	IP         string            `json:"ip"`
	MAC        string            `json:"mac"`
	Tap        string            `json:"tap"`
	Restarts   uint32            `json:"restarts"`
	Message    string            `json:"message"`
	Generation uint64            `json:"generation"`
	Restart    string            `json:"restart"`
	Labels     map[string]string `json:"labels,omitempty"`
	// MigrateTo is the node a migration is handing the VM over to.
	MigrateTo uint64 `json:"migrate_to,omitempty"`
}

func toVMJSON(r *blixardpb.VmRecord) vmJSON {
	s := r.GetSpec()
	tenant := s.GetTenant()
	if tenant == "" {
		tenant = "default"
	}
	hv := s.GetHypervisor()
	if hv == "" {
		hv = "qemu"
	}
	restart := s.GetRestart().GetMode()
	if restart == "" {
		restart = "always"
	}
	return vmJSON{
		Name:       s.GetName(),
		ID:         r.GetId(),
		Tenant:     tenant,
		Desired:    client.DesiredName(r.GetDesired()),
		Status:     client.StatusName(r.GetStatus()),
		NodeID:     r.GetNodeId(),
		Vcpus:      s.GetVcpus(),
		MemoryMB:   s.GetMemoryMb(),
		Hypervisor: hv,
		IP:         r.GetIp(),
		MAC:        r.GetMac(),
		Tap:        r.GetTap(),
		Restarts:   r.GetRestarts(),
		Message:    r.GetMessage(),
		Generation: r.GetGeneration(),
		Restart:    restart,
		Labels:     s.GetLabels(),
		MigrateTo:  r.GetMigrateTo(),
	}
}

// nodeJSON is a node as `cluster status` and `node list` print it.
type nodeJSON struct {
	ID           uint64 `json:"id"`
	APIAddr      string `json:"api_addr"`
	RaftAddr     string `json:"raft_addr"`
	Status       string `json:"status"`
	Voter        bool   `json:"voter"`
	Vcpus        uint32 `json:"vcpus"`
	MemoryMB     uint64 `json:"memory_mb"`
	VcpusUsed    uint32 `json:"vcpus_used"`
	MemoryUsedMB uint64 `json:"memory_used_mb"`
	VMs          uint32 `json:"vms"`
	Leader       bool   `json:"leader"`
	Schedulable  bool   `json:"schedulable"`
	GossipAddr   string `json:"gossip_addr"`
	// Gossip is the answering node's gossip view of this node ("alive",
	// "suspect", "dead", "left"); empty when it runs without gossip.
	Gossip  string `json:"gossip"`
	Version string `json:"version"`
}

type clusterJSON struct {
	ClusterID    string     `json:"cluster_id"`
	LeaderID     uint64     `json:"leader_id"`
	Term         uint64     `json:"term"`
	AppliedIndex uint64     `json:"applied_index"`
	Nodes        []nodeJSON `json:"nodes"`
}

// nodeStatusName is "alive", "suspect", "down", "draining" or "left".
func nodeStatusName(s blixardpb.NodeStatus) string {
	if s == blixardpb.NodeStatus_NODE_STATUS_UNSPECIFIED {
		return "alive"
	}
	return strings.ToLower(strings.TrimPrefix(s.String(), "NODE_STATUS_"))
}

func toNodeJSON(n *blixardpb.NodeInfo) nodeJSON {
	r := n.GetNode()
	return nodeJSON{
		ID:           r.GetId(),
		APIAddr:      r.GetApiAddr(),
		RaftAddr:     r.GetRaftAddr(),
		Status:       nodeStatusName(r.GetStatus()),
		Voter:        n.GetVoter(),
		Vcpus:        r.GetVcpus(),
		MemoryMB:     r.GetMemoryMb(),
		VcpusUsed:    n.GetVcpusUsed(),
		MemoryUsedMB: n.GetMemoryUsedMb(),
		VMs:          n.GetVms(),
		Leader:       n.GetLeader(),
		Schedulable:  r.GetSchedulable(),
		GossipAddr:   r.GetGossipAddr(),
		Gossip:       n.GetGossipStatus(),
		Version:      r.GetVersion(),
	}
}

func toClusterJSON(s *blixardpb.ClusterStatusResponse) clusterJSON {
	out := clusterJSON{
		ClusterID:    s.GetClusterId(),
		LeaderID:     s.GetLeaderId(),
		Term:         s.GetTerm(),
		AppliedIndex: s.GetAppliedIndex(),
		Nodes:        []nodeJSON{},
	}
	for _, n := range s.GetNodes() {
		out.Nodes = append(out.Nodes, toNodeJSON(n))
	}
	return out
}

func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func nodeCol(id uint64) string {
	if id == 0 {
		return "-"
	}
	return fmt.Sprint(id)
}

// nodeCol is the VM's node, and where a migration is moving it ("1->2").
func (v vmJSON) nodeCol() string {
	if v.MigrateTo != 0 {
		return fmt.Sprintf("%s->%d", nodeCol(v.NodeID), v.MigrateTo)
	}
	return nodeCol(v.NodeID)
}

func writeVMTable(w io.Writer, vms []*blixardpb.VmRecord) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tSTATUS\tDESIRED\tNODE\tVCPUS\tMEMORY\tIP\tRESTARTS\tTENANT")
	for _, r := range vms {
		v := toVMJSON(r)
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%dM\t%s\t%d\t%s\n",
			v.Name, v.Status, v.Desired, v.nodeCol(), v.Vcpus, v.MemoryMB, dash(v.IP), v.Restarts, v.Tenant)
	}
	return tw.Flush()
}

func writeVMDetail(w io.Writer, r *blixardpb.VmRecord) error {
	v := toVMJSON(r)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	rows := [][2]string{
		{"Name", v.Name},
		{"ID", fmt.Sprint(v.ID)},
		{"Tenant", v.Tenant},
		{"Desired", v.Desired},
		{"Status", v.Status},
		{"Node", v.nodeCol()},
		{"Vcpus", fmt.Sprint(v.Vcpus)},
		{"Memory", fmt.Sprintf("%d MiB", v.MemoryMB)},
		{"Hypervisor", v.Hypervisor},
		{"Restart", v.Restart},
		{"IP", dash(v.IP)},
		{"MAC", dash(v.MAC)},
		{"TAP", dash(v.Tap)},
		{"Restarts", fmt.Sprint(v.Restarts)},
		{"Message", dash(v.Message)},
	}
	for _, row := range rows {
		fmt.Fprintf(tw, "%s:\t%s\n", row[0], row[1])
	}
	return tw.Flush()
}

func writeNodeTable(w io.Writer, nodes []*blixardpb.NodeInfo) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tSTATUS\tGOSSIP\tSCHEDULABLE\tVOTER\tLEADER\tVCPUS\tMEMORY\tVMS\tAPI\tRAFT")
	for _, ni := range nodes {
		n := toNodeJSON(ni)
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\t%d/%d\t%d/%dM\t%d\t%s\t%s\n",
			n.ID, n.Status, dash(n.Gossip), yesNo(n.Schedulable), yesNo(n.Voter), yesNo(n.Leader),
			n.VcpusUsed, n.Vcpus, n.MemoryUsedMB, n.MemoryMB, n.VMs, dash(n.APIAddr), dash(n.RaftAddr))
	}
	return tw.Flush()
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

func writeClusterStatus(w io.Writer, s *blixardpb.ClusterStatusResponse) error {
	leader := "none"
	if s.GetLeaderId() != 0 {
		leader = fmt.Sprint(s.GetLeaderId())
	}
	fmt.Fprintf(w, "Cluster:  %s\nLeader:   %s (term %d)\nApplied:  %d\n\n", dash(s.GetClusterId()), leader, s.GetTerm(), s.GetAppliedIndex())
	return writeNodeTable(w, s.GetNodes())
}

func nodeInfo(r *blixardpb.NodeRecord) *blixardpb.NodeInfo { return &blixardpb.NodeInfo{Node: r} }
