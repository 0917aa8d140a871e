// Package clusterranges is the one source of truth for the cluster's
// current address ranges while the server runs: its service ranges
// (networking.k8s.io/v1 ServiceCIDRs) and its cluster pod CIDRs
// (networking.duet.dev/v1alpha1 ClusterCIDRs). A Snapshot is the ranges at
// one moment and is never changed once published; a Source holds the
// current one, swapped atomically, and tells its subscribers of every
// change. The service registry, its allocators and repair loop, node IPAM
// and the kube-dns controller all read the ranges from it, so that a range
// applied with kubectl changes the cluster's families without a restart.
//
// The command-line ranges (--service-cluster-ip-range, --cluster-cidr)
// are Defaults: they seed the first Snapshot, before the objects are
// known, and the primary family's ranges stand in for its objects should
// those be missing: a cluster never loses its primary family.
package clusterranges

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"

	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/duet-net/duet/internal/netaddr"
)

// DefaultServiceCIDRName is the ServiceCIDR the server keeps for
// --service-cluster-ip-range, as Kubernetes names it.
const DefaultServiceCIDRName = "kubernetes"

// DefaultClusterCIDRName is the ClusterCIDR the server keeps for the
// --cluster-cidr range of family f: default-ipv4, default-ipv6.
func DefaultClusterCIDRName(f netaddr.Family) string {
	return "default-" + strings.ToLower(string(f))
}

// ServiceCIDR is a ServiceCIDR as the allocators use it.
type ServiceCIDR struct {
	Name  string
	CIDRs []netip.Prefix
	// Ready says new cluster IPs may come from it: its Ready condition is
	// not False and it is not being deleted. Addresses are given back to
	// ranges that are not ready too.
	Ready bool
}

// ClusterCIDR is a ClusterCIDR as node IPAM uses it.
type ClusterCIDR struct {
	Name         string
	CIDR         netip.Prefix
	NodeMaskSize int
	// Created orders ClusterCIDRs of one family: the oldest one counts.
	Created metav1.Time
	// Deleting ClusterCIDRs give no new node CIDRs: they are left out.
	Deleting bool
}

// Defaults are the command-line ranges.
type Defaults struct {
	// ServiceRanges are --service-cluster-ip-range, primary first.
	ServiceRanges []netip.Prefix
	// ClusterCIDRs are --cluster-cidr and its node mask sizes.
	ClusterCIDRs netaddr.ClusterCIDRs
}

// Snapshot is the cluster's ranges at one moment. Do not modify one.
type Snapshot struct {
	// Primary is the cluster's primary family: that of the first
	// --service-cluster-ip-range. It never changes.
	Primary netaddr.Family
	// Service is every ServiceCIDR: the default one first, then the
	// others oldest first, which is the order cluster IPs are drawn in.
	Service []ServiceCIDR
	// Cluster is one ClusterCIDR per family, primary first; ClusterCIDRs
	// being deleted are left out, so nothing new is taken from them.
	Cluster []ClusterCIDR
}

// Initial is the Snapshot of the command-line ranges alone: the default
// objects as the server creates them.
func Initial(d Defaults) *Snapshot {
	return Build(d, []*networkingv1.ServiceCIDR{defaultServiceCIDR(d)}, defaultClusterCIDRs(d))
}

func defaultServiceCIDR(d Defaults) *networkingv1.ServiceCIDR {
	obj := &networkingv1.ServiceCIDR{ObjectMeta: metav1.ObjectMeta{Name: DefaultServiceCIDRName}}
	for _, p := range d.ServiceRanges {
		obj.Spec.CIDRs = append(obj.Spec.CIDRs, p.String())
	}
	return obj
}

func defaultClusterCIDRs(d Defaults) []ClusterCIDR {
	var out []ClusterCIDR
	for i, p := range d.ClusterCIDRs.CIDRs {
		out = append(out, ClusterCIDR{Name: DefaultClusterCIDRName(netaddr.FamilyOf(p.Addr())), CIDR: p, NodeMaskSize: d.ClusterCIDRs.NodeMaskSizes[i]})
	}
	return out
}

// Build makes the Snapshot of the objects as they are. Objects that do
// not parse are skipped (validation makes them impossible). ServiceCIDRs
// are ready unless their Ready condition is False or they are being
// deleted, as Kubernetes' allocator takes them. Of several ClusterCIDRs of
// one family (two creates that raced past the registry's check), the
// oldest counts. Without a ready service range or a ClusterCIDR of the
// primary family, the command-line one stands in.
func Build(d Defaults, services []*networkingv1.ServiceCIDR, clusters []ClusterCIDR) *Snapshot {
	s := &Snapshot{Primary: netaddr.IPv4}
	if len(d.ServiceRanges) > 0 {
		s.Primary = netaddr.FamilyOf(d.ServiceRanges[0].Addr())
	}
	services = slices.Clone(services)
	slices.SortStableFunc(services, func(a, b *networkingv1.ServiceCIDR) int {
		if ad, bd := a.Name == DefaultServiceCIDRName, b.Name == DefaultServiceCIDRName; ad != bd {
			if ad {
				return -1
			}
			return 1
		}
		if c := a.CreationTimestamp.Compare(b.CreationTimestamp.Time); c != 0 {
			return c
		}
		return strings.Compare(a.Name, b.Name)
	})
	primaryReady := false
	for _, obj := range services {
		sc := ServiceCIDR{Name: obj.Name, Ready: ready(obj)}
		for _, c := range obj.Spec.CIDRs {
			p, err := netaddr.ParseCIDR(c)
			if err != nil {
				continue
			}
			sc.CIDRs = append(sc.CIDRs, p)
			if sc.Ready && netaddr.FamilyOf(p.Addr()) == s.Primary {
				primaryReady = true
			}
		}
		if len(sc.CIDRs) > 0 {
			s.Service = append(s.Service, sc)
		}
	}
	if !primaryReady && len(d.ServiceRanges) > 0 {
		s.Service = append([]ServiceCIDR{{Name: DefaultServiceCIDRName, CIDRs: d.ServiceRanges[:1], Ready: true}}, s.Service...)
	}

	clusterPrimary := s.Primary
	if len(d.ClusterCIDRs.CIDRs) > 0 {
		clusterPrimary = netaddr.FamilyOf(d.ClusterCIDRs.CIDRs[0].Addr())
	}
	clusters = slices.Clone(clusters)
	slices.SortStableFunc(clusters, func(a, b ClusterCIDR) int {
		if c := a.Created.Compare(b.Created.Time); c != 0 {
			return c
		}
		return strings.Compare(a.Name, b.Name)
	})
	byFamily := map[netaddr.Family]ClusterCIDR{}
	for _, c := range clusters {
		if !c.CIDR.IsValid() || c.Deleting {
			continue
		}
		f := netaddr.FamilyOf(c.CIDR.Addr())
		if _, ok := byFamily[f]; !ok {
			byFamily[f] = c
		}
	}
	if _, ok := byFamily[clusterPrimary]; !ok {
		for _, c := range defaultClusterCIDRs(d) {
			if netaddr.FamilyOf(c.CIDR.Addr()) == clusterPrimary {
				byFamily[clusterPrimary] = c
			}
		}
	}
	for _, f := range []netaddr.Family{clusterPrimary, clusterPrimary.Other()} {
		if c, ok := byFamily[f]; ok {
			s.Cluster = append(s.Cluster, c)
		}
	}
	return s
}

// ready reports whether new cluster IPs may come from a ServiceCIDR.
func ready(obj *networkingv1.ServiceCIDR) bool {
	if obj.DeletionTimestamp != nil {
		return false
	}
	for _, c := range obj.Status.Conditions {
		if c.Type == networkingv1.ServiceCIDRConditionReady {
			return c.Status != metav1.ConditionFalse
		}
	}
	return true
}

// ServiceFamilies are the families of the ready service ranges, primary
// first: the families Services may have.
func (s *Snapshot) ServiceFamilies() []netaddr.Family {
	var out []netaddr.Family
	for _, r := range s.ServiceRanges() {
		out = append(out, netaddr.FamilyOf(r.Addr()))
	}
	return out
}

// ServiceRanges are, per family with a ready range, the first one (the
// default ServiceCIDR's when it has one), primary first: the family's
// range for kube-dns and the cluster's record.
func (s *Snapshot) ServiceRanges() []netip.Prefix {
	var out []netip.Prefix
	for _, f := range []netaddr.Family{s.Primary, s.Primary.Other()} {
	search:
		for _, sc := range s.Service {
			if !sc.Ready {
				continue
			}
			for _, p := range sc.CIDRs {
				if netaddr.FamilyOf(p.Addr()) == f {
					out = append(out, p)
					break search
				}
			}
		}
	}
	return out
}

// ClusterCIDRs are the cluster pod CIDRs, primary first, as node IPAM
// takes them.
func (s *Snapshot) ClusterCIDRs() netaddr.ClusterCIDRs {
	var out netaddr.ClusterCIDRs
	for _, c := range s.Cluster {
		out.CIDRs = append(out.CIDRs, c.CIDR)
		out.NodeMaskSizes = append(out.NodeMaskSizes, c.NodeMaskSize)
	}
	return out
}

// Families are the cluster's families, primary first: those of its
// service ranges and of its cluster CIDRs.
func (s *Snapshot) Families() []netaddr.Family {
	have := map[netaddr.Family]bool{}
	for _, f := range s.ServiceFamilies() {
		have[f] = true
	}
	for _, c := range s.Cluster {
		have[netaddr.FamilyOf(c.CIDR.Addr())] = true
	}
	var out []netaddr.Family
	for _, f := range []netaddr.Family{s.Primary, s.Primary.Other()} {
		if have[f] {
			out = append(out, f)
		}
	}
	return out
}

// Equal reports whether two Snapshots hold the same ranges.
func (s *Snapshot) Equal(o *Snapshot) bool {
	if s == nil || o == nil {
		return s == o
	}
	return s.Primary == o.Primary &&
		slices.EqualFunc(s.Service, o.Service, func(a, b ServiceCIDR) bool {
			return a.Name == b.Name && a.Ready == b.Ready && slices.Equal(a.CIDRs, b.CIDRs)
		}) &&
		slices.EqualFunc(s.Cluster, o.Cluster, func(a, b ClusterCIDR) bool {
			return a.Name == b.Name && a.CIDR == b.CIDR && a.NodeMaskSize == b.NodeMaskSize
		})
}

// String describes the ranges for logs.
func (s *Snapshot) String() string {
	var b strings.Builder
	b.WriteString("service:")
	for _, sc := range s.Service {
		fmt.Fprintf(&b, " %s=%v", sc.Name, sc.CIDRs)
		if !sc.Ready {
			b.WriteString("(not ready)")
		}
	}
	b.WriteString(" cluster:")
	for _, c := range s.Cluster {
		fmt.Fprintf(&b, " %s=%s(nodes /%d)", c.Name, c.CIDR, c.NodeMaskSize)
	}
	return b.String()
}
