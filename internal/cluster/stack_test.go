package cluster

import (
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/duet-net/duet/internal/netaddr"
)

func TestResolveStack(t *testing.T) {
	dual := Options{ClusterCIDR: DefaultClusterCIDR, ServiceRange: DefaultServiceRange, LBPools: DefaultLBPools}
	with := func(f func(o *Options)) Options { o := dual; f(&o); return o }
	for _, tc := range []struct {
		name                  string
		o                     Options
		cidr, svc, pools, err string
		fams                  []netaddr.Family
	}{
		{name: "defaults are dual-stack", o: dual,
			cidr: DefaultClusterCIDR, svc: DefaultServiceRange, pools: DefaultLBPools, fams: []netaddr.Family{netaddr.IPv4, netaddr.IPv6}},
		{name: "IPv6 primary", o: with(func(o *Options) { o.IPv6Primary = true }),
			cidr: "fd00:10:244::/56,10.244.0.0/16", svc: "fd00:10:96::/108,10.96.0.0/16", pools: DefaultLBPools, fams: []netaddr.Family{netaddr.IPv6, netaddr.IPv4}},
		{name: "--single-stack ipv4 takes the IPv4 half", o: with(func(o *Options) { o.SingleStack = "ipv4" }),
			cidr: "10.244.0.0/16", svc: "10.96.0.0/16", pools: "192.0.2.0/24", fams: []netaddr.Family{netaddr.IPv4}},
		{name: "--single-stack IPv6, any case, takes the IPv6 half", o: with(func(o *Options) { o.SingleStack = "IPv6" }),
			cidr: "fd00:10:244::/56", svc: "fd00:10:96::/108", pools: "2001:db8:0:2::/112", fams: []netaddr.Family{netaddr.IPv6}},
		{name: "--single-stack with --ipv6-primary", o: with(func(o *Options) { o.SingleStack = "ipv6"; o.IPv6Primary = true }),
			cidr: "fd00:10:244::/56", svc: "fd00:10:96::/108", pools: "2001:db8:0:2::/112", fams: []netaddr.Family{netaddr.IPv6}},
		{name: "IPv6-only by ranges keeps the IPv6 default pool", o: with(func(o *Options) { o.ClusterCIDR = "fd00:10:244::/56"; o.ServiceRange = "fd00:10:96::/108" }),
			cidr: "fd00:10:244::/56", svc: "fd00:10:96::/108", pools: "2001:db8:0:2::/112", fams: []netaddr.Family{netaddr.IPv6}},
		{name: "IPv4-only without pools", o: with(func(o *Options) { o.ClusterCIDR = "10.1.0.0/16"; o.ServiceRange = "10.2.0.0/16"; o.LBPools = "" }),
			cidr: "10.1.0.0/16", svc: "10.2.0.0/16", fams: []netaddr.Family{netaddr.IPv4}},
		{name: "--single-stack on custom dual lists", o: with(func(o *Options) {
			o.SingleStack = "ipv6"
			o.ClusterCIDR, o.ServiceRange, o.LBPools = "10.1.0.0/16, fd00:1::/56", "10.2.0.0/16,fd00:2::/112", "198.18.0.0/24"
		}), cidr: "fd00:1::/56", svc: "fd00:2::/112", fams: []netaddr.Family{netaddr.IPv6}},

		{name: "bad --single-stack", o: with(func(o *Options) { o.SingleStack = "ipv5" }), err: `--single-stack: "ipv5" is not an IP family; want ipv4 or ipv6`},
		{name: "--single-stack dual", o: with(func(o *Options) { o.SingleStack = "dual" }), err: `--single-stack: "dual" is not an IP family`},
		{name: "--single-stack of a family --cluster-cidr lacks", o: with(func(o *Options) { o.SingleStack = "ipv6"; o.ClusterCIDR = "10.1.0.0/16" }),
			err: `--single-stack ipv6: --cluster-cidr "10.1.0.0/16" has no IPv6 CIDR`},
		{name: "--single-stack of a family the service range lacks", o: with(func(o *Options) { o.SingleStack = "ipv4"; o.ServiceRange = "fd00:2::/112" }),
			err: `--single-stack ipv4: --service-cluster-ip-range "fd00:2::/112" has no IPv4 CIDR`},
		{name: "families differ", o: with(func(o *Options) { o.ClusterCIDR = "fd00:10:244::/56" }),
			err: "--service-cluster-ip-range 10.96.0.0/16,fd00:10:96::/108 is dual-stack IPv4,IPv6 but --cluster-cidr fd00:10:244::/56 is IPv6-only"},
		{name: "primaries differ", o: with(func(o *Options) { o.ClusterCIDR = "fd00:10:244::/56,10.244.0.0/16" }),
			err: "is dual-stack IPv4,IPv6 but --cluster-cidr fd00:10:244::/56,10.244.0.0/16 is dual-stack IPv6,IPv4"},
		{name: "an explicit pool of a family the cluster lacks", o: with(func(o *Options) {
			o.ClusterCIDR, o.ServiceRange, o.LBPools = "10.1.0.0/16", "10.2.0.0/16", "192.0.2.0/25,2001:db8:0:2::/112"
		}), err: "--load-balancer-ip-pool: 2001:db8:0:2::/112 is IPv6, a family the cluster (--cluster-cidr 10.1.0.0/16) lacks"},
		{name: "no cluster CIDR", o: with(func(o *Options) { o.ClusterCIDR = "" }), err: "--cluster-cidr: no CIDR"},
		{name: "garbage cluster CIDR", o: with(func(o *Options) { o.ClusterCIDR = "foo" }), err: `"foo"`},
		{name: "garbage with --single-stack names the flag", o: with(func(o *Options) { o.SingleStack = "ipv4"; o.ServiceRange = "foo" }), err: "--service-cluster-ip-range: "},
		{name: "two IPv4 service ranges", o: with(func(o *Options) { o.ServiceRange = "10.1.0.0/16,10.2.0.0/16" }), err: "must be of different IP family"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, err := resolveStack(tc.o)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("error %v, want one containing %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if s.clusterCIDR != tc.cidr || s.serviceRange != tc.svc || s.lbPoolsFlag() != tc.pools || !slices.Equal(s.families, tc.fams) {
				t.Fatalf("got cluster CIDR %q, service range %q, pools %q, families %v; want %q, %q, %q, %v",
					s.clusterCIDR, s.serviceRange, s.lbPoolsFlag(), s.families, tc.cidr, tc.svc, tc.pools, tc.fams)
			}
		})
	}
}

func TestNodeIPs(t *testing.T) {
	n := Node{IPv4: netip.MustParseAddr("203.0.113.11"), IPv6: netip.MustParseAddr("2001:db8:0:1::11")}
	for _, tc := range []struct {
		fams []netaddr.Family
		want []netip.Addr
	}{
		{nil, []netip.Addr{n.IPv4, n.IPv6}},
		{[]netaddr.Family{netaddr.IPv6, netaddr.IPv4}, []netip.Addr{n.IPv6, n.IPv4}},
		{[]netaddr.Family{netaddr.IPv6}, []netip.Addr{n.IPv6}},
		{[]netaddr.Family{netaddr.IPv4}, []netip.Addr{n.IPv4}},
	} {
		if got := n.IPs(tc.fams); !slices.Equal(got, tc.want) {
			t.Errorf("IPs(%v) = %v, want %v", tc.fams, got, tc.want)
		}
	}
}

// FuzzResolveStack checks that any flag values give either an error or a
// consistent stack: the same families in both lists, pools of those only.
func FuzzResolveStack(f *testing.F) {
	f.Add(DefaultClusterCIDR, DefaultServiceRange, DefaultLBPools, "", false)
	f.Add("fd00::/56", "fd00:1::/112", "2001:db8::/120", "ipv6", true)
	f.Add("10.0.0.0/8,fd00::/56", "10.1.0.0/16", "", "ipv4", false)
	f.Fuzz(func(t *testing.T, cidr, svc, pools, single string, v6 bool) {
		s, err := resolveStack(Options{ClusterCIDR: cidr, ServiceRange: svc, LBPools: pools, SingleStack: single, IPv6Primary: v6})
		if err != nil {
			return
		}
		ranges, err := netaddr.ParseServiceClusterIPRange(s.serviceRange)
		if err != nil {
			t.Fatalf("accepted service range %q the server refuses: %v", s.serviceRange, err)
		}
		cidrs, err := netaddr.ParseClusterCIDRs(s.clusterCIDR, netaddr.NodeMaskFlags{})
		if err != nil {
			t.Fatalf("accepted cluster CIDR %q the server refuses: %v", s.clusterCIDR, err)
		}
		if !slices.Equal(familiesOf(ranges), s.families) || !slices.Equal(cidrs.Families(), s.families) {
			t.Fatalf("families %v, service ranges %v, cluster CIDRs %v", s.families, ranges, cidrs.CIDRs)
		}
		if fam, _ := ParseSingleStack(single); fam != "" && !slices.Equal(s.families, []netaddr.Family{fam}) {
			t.Fatalf("--single-stack %s gave families %v", single, s.families)
		}
		for _, p := range s.lbPools {
			if !slices.Contains(s.families, netaddr.FamilyOf(p.Addr())) {
				t.Fatalf("pool %s of a family the cluster lacks", p)
			}
		}
	})
}
