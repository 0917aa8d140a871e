package clusterranges

import (
	"fmt"
	"net/netip"
	"slices"
	"testing"
	"time"

	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/duet-net/duet/internal/netaddr"
)

var (
	t0       = time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	v4Flags  = Defaults{ServiceRanges: pfx("10.96.0.0/16"), ClusterCIDRs: netaddr.ClusterCIDRs{CIDRs: pfx("10.244.0.0/16"), NodeMaskSizes: []int{24}}}
	v6Flags  = Defaults{ServiceRanges: pfx("fd00:10:96::/108"), ClusterCIDRs: netaddr.ClusterCIDRs{CIDRs: pfx("fd00:10:244::/56"), NodeMaskSizes: []int{64}}}
	dualFlag = Defaults{ServiceRanges: pfx("10.96.0.0/16", "fd00:10:96::/108"),
		ClusterCIDRs: netaddr.ClusterCIDRs{CIDRs: pfx("10.244.0.0/16", "fd00:10:244::/56"), NodeMaskSizes: []int{24, 64}}}
)

func pfx(s ...string) []netip.Prefix {
	var out []netip.Prefix
	for _, x := range s {
		out = append(out, netip.MustParsePrefix(x))
	}
	return out
}

type svcMod func(*networkingv1.ServiceCIDR)

func svcCIDR(name string, age int, cidrs []string, mods ...svcMod) *networkingv1.ServiceCIDR {
	o := &networkingv1.ServiceCIDR{
		ObjectMeta: metav1.ObjectMeta{Name: name, CreationTimestamp: metav1.NewTime(t0.Add(time.Duration(age) * time.Second))},
		Spec:       networkingv1.ServiceCIDRSpec{CIDRs: cidrs},
	}
	for _, m := range mods {
		m(o)
	}
	return o
}

func condition(status metav1.ConditionStatus) svcMod {
	return func(o *networkingv1.ServiceCIDR) {
		o.Status.Conditions = []metav1.Condition{{Type: networkingv1.ServiceCIDRConditionReady, Status: status}}
	}
}

func deleting(o *networkingv1.ServiceCIDR) {
	now := metav1.NewTime(t0)
	o.DeletionTimestamp = &now
}

func clusterCIDR(name string, age int, cidr string, mask int) ClusterCIDR {
	return ClusterCIDR{Name: name, CIDR: netip.MustParsePrefix(cidr), NodeMaskSize: mask, Created: metav1.NewTime(t0.Add(time.Duration(age) * time.Second))}
}

func describeService(s *Snapshot) string {
	var out string
	for _, sc := range s.Service {
		out += fmt.Sprintf("%s%v:%v ", sc.Name, sc.CIDRs, sc.Ready)
	}
	return out
}

func TestBuild(t *testing.T) {
	tests := []struct {
		name     string
		defaults Defaults
		services []*networkingv1.ServiceCIDR
		clusters []ClusterCIDR
		// what the Snapshot must say
		service        string
		serviceRanges  []netip.Prefix
		clusterCIDRs   []netip.Prefix
		nodeMasks      []int
		families       []netaddr.Family
		serviceFamiles []netaddr.Family
	}{
		{
			name: "the flags alone", defaults: v4Flags,
			services: []*networkingv1.ServiceCIDR{svcCIDR("kubernetes", 0, []string{"10.96.0.0/16"})},
			clusters: []ClusterCIDR{clusterCIDR("default-ipv4", 0, "10.244.0.0/16", 24)},
			service:  "kubernetes[10.96.0.0/16]:true ", serviceRanges: pfx("10.96.0.0/16"),
			clusterCIDRs: pfx("10.244.0.0/16"), nodeMasks: []int{24},
			families: []netaddr.Family{netaddr.IPv4}, serviceFamiles: []netaddr.Family{netaddr.IPv4},
		},
		{
			name: "an IPv6 ServiceCIDR and ClusterCIDR applied to an IPv4 cluster", defaults: v4Flags,
			services: []*networkingv1.ServiceCIDR{
				svcCIDR("v6", 10, []string{"fd00:10:96::/108"}),
				svcCIDR("kubernetes", 0, []string{"10.96.0.0/16"}, condition(metav1.ConditionTrue)),
			},
			clusters: []ClusterCIDR{clusterCIDR("v6", 10, "fd00:10:244::/56", 64), clusterCIDR("default-ipv4", 0, "10.244.0.0/16", 24)},
			service:  "kubernetes[10.96.0.0/16]:true v6[fd00:10:96::/108]:true ", serviceRanges: pfx("10.96.0.0/16", "fd00:10:96::/108"),
			clusterCIDRs: pfx("10.244.0.0/16", "fd00:10:244::/56"), nodeMasks: []int{24, 64},
			families:       []netaddr.Family{netaddr.IPv4, netaddr.IPv6},
			serviceFamiles: []netaddr.Family{netaddr.IPv4, netaddr.IPv6},
		},
		{
			name: "IPv6 primary: the primary family stays first", defaults: v6Flags,
			services: []*networkingv1.ServiceCIDR{svcCIDR("kubernetes", 0, []string{"fd00:10:96::/108"}), svcCIDR("v4", 1, []string{"10.96.0.0/16"})},
			clusters: []ClusterCIDR{clusterCIDR("v4", 1, "10.244.0.0/16", 24), clusterCIDR("default-ipv6", 0, "fd00:10:244::/56", 64)},
			service:  "kubernetes[fd00:10:96::/108]:true v4[10.96.0.0/16]:true ", serviceRanges: pfx("fd00:10:96::/108", "10.96.0.0/16"),
			clusterCIDRs: pfx("fd00:10:244::/56", "10.244.0.0/16"), nodeMasks: []int{64, 24},
			families:       []netaddr.Family{netaddr.IPv6, netaddr.IPv4},
			serviceFamiles: []netaddr.Family{netaddr.IPv6, netaddr.IPv4},
		},
		{
			name: "extra ranges of the primary family come after the default, oldest first", defaults: v4Flags,
			services: []*networkingv1.ServiceCIDR{
				svcCIDR("young", 20, []string{"203.0.113.0/24"}),
				svcCIDR("old", 5, []string{"198.51.100.0/24"}),
				svcCIDR("kubernetes", 30, []string{"10.96.0.0/16"}),
			},
			service:       "kubernetes[10.96.0.0/16]:true old[198.51.100.0/24]:true young[203.0.113.0/24]:true ",
			serviceRanges: pfx("10.96.0.0/16"), clusterCIDRs: pfx("10.244.0.0/16"), nodeMasks: []int{24},
			families: []netaddr.Family{netaddr.IPv4}, serviceFamiles: []netaddr.Family{netaddr.IPv4},
		},
		{
			name: "a ServiceCIDR being deleted or not Ready takes back but gives nothing, and adds no family", defaults: v4Flags,
			services: []*networkingv1.ServiceCIDR{
				svcCIDR("kubernetes", 0, []string{"10.96.0.0/16"}),
				svcCIDR("going", 1, []string{"fd00:10:96::/108"}, deleting),
				svcCIDR("failed", 2, []string{"fd00:20:96::/108"}, condition(metav1.ConditionFalse)),
			},
			service:       "kubernetes[10.96.0.0/16]:true going[fd00:10:96::/108]:false failed[fd00:20:96::/108]:false ",
			serviceRanges: pfx("10.96.0.0/16"), clusterCIDRs: pfx("10.244.0.0/16"), nodeMasks: []int{24},
			families: []netaddr.Family{netaddr.IPv4}, serviceFamiles: []netaddr.Family{netaddr.IPv4},
		},
		{
			name: "the default ServiceCIDR not created yet: the flag's primary range stands in", defaults: v4Flags,
			services:      []*networkingv1.ServiceCIDR{svcCIDR("v6", 0, []string{"fd00:10:96::/108"})},
			service:       "kubernetes[10.96.0.0/16]:true v6[fd00:10:96::/108]:true ",
			serviceRanges: pfx("10.96.0.0/16", "fd00:10:96::/108"), clusterCIDRs: pfx("10.244.0.0/16"), nodeMasks: []int{24},
			families:       []netaddr.Family{netaddr.IPv4, netaddr.IPv6},
			serviceFamiles: []netaddr.Family{netaddr.IPv4, netaddr.IPv6},
		},
		{
			name: "a dual-stack default ServiceCIDR", defaults: dualFlag,
			services:      []*networkingv1.ServiceCIDR{svcCIDR("kubernetes", 0, []string{"10.96.0.0/16", "fd00:10:96::/108"})},
			clusters:      []ClusterCIDR{clusterCIDR("default-ipv6", 0, "fd00:10:244::/56", 64), clusterCIDR("default-ipv4", 0, "10.244.0.0/16", 24)},
			service:       "kubernetes[10.96.0.0/16 fd00:10:96::/108]:true ",
			serviceRanges: pfx("10.96.0.0/16", "fd00:10:96::/108"), clusterCIDRs: pfx("10.244.0.0/16", "fd00:10:244::/56"), nodeMasks: []int{24, 64},
			families:       []netaddr.Family{netaddr.IPv4, netaddr.IPv6},
			serviceFamiles: []netaddr.Family{netaddr.IPv4, netaddr.IPv6},
		},
		{
			name: "two ClusterCIDRs of one family: the oldest counts", defaults: v4Flags,
			services: []*networkingv1.ServiceCIDR{svcCIDR("kubernetes", 0, []string{"10.96.0.0/16"})},
			clusters: []ClusterCIDR{clusterCIDR("late", 9, "fd00:99::/56", 64), clusterCIDR("early", 3, "fd00:10:244::/56", 64), clusterCIDR("default-ipv4", 0, "10.244.0.0/16", 24)},
			service:  "kubernetes[10.96.0.0/16]:true ", serviceRanges: pfx("10.96.0.0/16"),
			clusterCIDRs: pfx("10.244.0.0/16", "fd00:10:244::/56"), nodeMasks: []int{24, 64},
			families: []netaddr.Family{netaddr.IPv4, netaddr.IPv6}, serviceFamiles: []netaddr.Family{netaddr.IPv4},
		},
		{
			name: "a ClusterCIDR being deleted gives nothing; without the primary one the flag's stands in", defaults: v4Flags,
			services: []*networkingv1.ServiceCIDR{svcCIDR("kubernetes", 0, []string{"10.96.0.0/16"})},
			clusters: []ClusterCIDR{func() ClusterCIDR { c := clusterCIDR("v6", 1, "fd00:10:244::/56", 64); c.Deleting = true; return c }()},
			service:  "kubernetes[10.96.0.0/16]:true ", serviceRanges: pfx("10.96.0.0/16"),
			clusterCIDRs: pfx("10.244.0.0/16"), nodeMasks: []int{24},
			families: []netaddr.Family{netaddr.IPv4}, serviceFamiles: []netaddr.Family{netaddr.IPv4},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := Build(tt.defaults, tt.services, tt.clusters)
			if got := describeService(s); got != tt.service {
				t.Errorf("Service = %q, want %q", got, tt.service)
			}
			if got := s.ServiceRanges(); !slices.Equal(got, tt.serviceRanges) {
				t.Errorf("ServiceRanges = %v, want %v", got, tt.serviceRanges)
			}
			cc := s.ClusterCIDRs()
			if !slices.Equal(cc.CIDRs, tt.clusterCIDRs) || !slices.Equal(cc.NodeMaskSizes, tt.nodeMasks) {
				t.Errorf("ClusterCIDRs = %v %v, want %v %v", cc.CIDRs, cc.NodeMaskSizes, tt.clusterCIDRs, tt.nodeMasks)
			}
			if got := s.Families(); !slices.Equal(got, tt.families) {
				t.Errorf("Families = %v, want %v", got, tt.families)
			}
			if got := s.ServiceFamilies(); !slices.Equal(got, tt.serviceFamiles) {
				t.Errorf("ServiceFamilies = %v, want %v", got, tt.serviceFamiles)
			}
		})
	}
}

func TestInitialIsTheFlags(t *testing.T) {
	s := Initial(dualFlag)
	if got := describeService(s); got != "kubernetes[10.96.0.0/16 fd00:10:96::/108]:true " {
		t.Errorf("Service = %q", got)
	}
	if got := s.ClusterCIDRs(); !slices.Equal(got.CIDRs, dualFlag.ClusterCIDRs.CIDRs) || s.Cluster[1].Name != "default-ipv6" {
		t.Errorf("Cluster = %v", s.Cluster)
	}
}

func TestSourcePublishesChangesOnly(t *testing.T) {
	src := NewSource(Initial(v4Flags))
	var seen []string
	cancel := src.Subscribe(func(s *Snapshot) { seen = append(seen, fmt.Sprint(s.Families())) })
	if src.Publish(Initial(v4Flags)) {
		t.Error("publishing the same ranges reported a change")
	}
	dual := Build(v4Flags, []*networkingv1.ServiceCIDR{svcCIDR("kubernetes", 0, []string{"10.96.0.0/16"}), svcCIDR("v6", 1, []string{"fd00::/108"})}, nil)
	if !src.Publish(dual) || src.Load() != dual {
		t.Error("a new range was not published")
	}
	cancel()
	src.Publish(Initial(v4Flags))
	if want := []string{"[IPv4 IPv6]"}; !slices.Equal(seen, want) {
		t.Errorf("subscriber saw %v, want %v", seen, want)
	}
}
