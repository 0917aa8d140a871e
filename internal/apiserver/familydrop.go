package apiserver

import (
	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/record"
	"k8s.io/klog/v2"

	"github.com/duet-net/duet/internal/alloc"
	"github.com/duet-net/duet/internal/controller/familydrop"
	"github.com/duet-net/duet/internal/etcdstore"
	"github.com/duet-net/duet/internal/netaddr"
)

// lbIPsPrefix is where load balancer IPAM keeps its records.
const lbIPsPrefix = "/duet/allocations/lbips/"

// podFamilies are the families of --cluster-cidr, primary first.
func podFamilies(cfg *Config) []netaddr.Family {
	var out []netaddr.Family
	for _, p := range cfg.ClusterCIDRs.CIDRs {
		out = append(out, netaddr.FamilyOf(p.Addr()))
	}
	return out
}

// familyDrop is the reconciler that takes a family this server's ranges
// lack out of the cluster's objects and records (see familydrop). It does
// nothing on a cluster whose objects already have only its families, so
// every leadership term runs it. nodeCIDRs is node IPAM's store.
func (s *Server) familyDrop(client kubernetes.Interface, nodeCIDRs alloc.Store, recorder record.EventRecorder) *familydrop.Reconciler {
	keep := familydrop.Families{}
	for _, r := range s.cfg.ServiceRanges {
		keep.Services = append(keep.Services, corev1.IPFamily(netaddr.FamilyOf(r.Addr())))
	}
	for _, f := range podFamilies(s.cfg) {
		keep.Pods = append(keep.Pods, corev1.IPFamily(f))
	}
	r := &familydrop.Reconciler{Client: client, Keep: keep, NodeCIDRs: nodeCIDRs, Recorder: recorder}
	// The load balancer IP records are looked at whatever the pools:
	// a pool of the dropped family may have left the flags already.
	if lb, err := etcdstore.New(s.etcdClient, lbIPsPrefix); err == nil {
		r.LBIPs = lb
	} else {
		klog.ErrorS(err, "load balancer IP records of a dropped family are kept")
	}
	return r
}
