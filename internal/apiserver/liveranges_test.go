package apiserver

import (
	"fmt"
	"net/netip"
	"slices"
	"testing"

	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/duet-net/duet/internal/clusterranges"
	"github.com/duet-net/duet/internal/netaddr"
)

func prefixes(s ...string) []netip.Prefix {
	var out []netip.Prefix
	for _, x := range s {
		out = append(out, netip.MustParsePrefix(x))
	}
	return out
}

func rec(svc, pods []netip.Prefix, flags *rangesRecord) rangesRecord {
	return rangesRecord{ServiceRanges: svc, ClusterCIDRs: pods, Flags: flags}
}

func describeRecord(r rangesRecord) string {
	s := fmt.Sprint(r.ServiceRanges, r.ClusterCIDRs)
	if r.Flags != nil {
		s += " flags " + describeRecord(*r.Flags)
	}
	return s
}

// The record follows the objects and keeps the flags of the last start
// beside them, so that a restart is checked against flags, not objects.
func TestRangesRecord(t *testing.T) {
	v4, v6 := prefixes("10.96.0.0/16"), prefixes("10.96.0.0/16", "fd00:96::/108")
	p4, p6 := prefixes("10.244.0.0/16"), prefixes("10.244.0.0/16", "fd00:244::/56")
	flags4 := rec(v4, p4, nil)
	defaults := clusterranges.Defaults{ServiceRanges: v4, ClusterCIDRs: netaddr.ClusterCIDRs{CIDRs: p4, NodeMaskSizes: []int{24}}}
	dual := clusterranges.Build(defaults,
		[]*networkingv1.ServiceCIDR{
			{ObjectMeta: metav1.ObjectMeta{Name: "kubernetes"}, Spec: networkingv1.ServiceCIDRSpec{CIDRs: []string{"10.96.0.0/16"}}},
			{ObjectMeta: metav1.ObjectMeta{Name: "v6"}, Spec: networkingv1.ServiceCIDRSpec{CIDRs: []string{"fd00:96::/108"}}},
		},
		[]clusterranges.ClusterCIDR{{Name: "default-ipv4", CIDR: p6[0], NodeMaskSize: 24}, {Name: "v6", CIDR: p6[1], NodeMaskSize: 64}})
	single := clusterranges.Initial(defaults)

	t.Run("liveRecord", func(t *testing.T) {
		for _, tc := range []struct {
			name string
			snap *clusterranges.Snapshot
			old  rangesRecord
			want string
		}{
			{"the flags' ranges: no flags kept", single, flags4, describeRecord(flags4)},
			{"a family applied live: the flags kept beside", dual, flags4, describeRecord(rec(v6, p6, &flags4))},
			{"kept in step again", dual, rec(v6, p6, &flags4), describeRecord(rec(v6, p6, &flags4))},
			{"back to the flags' ranges", single, rec(v6, p6, &flags4), describeRecord(flags4)},
		} {
			t.Run(tc.name, func(t *testing.T) {
				if got := describeRecord(liveRecord(tc.snap, tc.old)); got != tc.want {
					t.Errorf("got %s, want %s", got, tc.want)
				}
			})
		}
	})
	t.Run("a restart with the same flags after a live add is no change", func(t *testing.T) {
		old := rec(v6, p6, &flags4)
		if err := checkRangeChange(old.lastFlags(), flags4); err != nil {
			t.Errorf("refused: %v", err)
		}
		if got, want := describeRecord(old.restartedWith(flags4)), describeRecord(old); got != want {
			t.Errorf("restartedWith = %s, want %s", got, want)
		}
	})
	t.Run("a restart adding the family by flag after a live add", func(t *testing.T) {
		old := rec(v6, p6, &flags4)
		now := rec(v6, p6, nil)
		if err := checkRangeChange(old.lastFlags(), now); err != nil {
			t.Errorf("refused: %v", err)
		}
		if got, want := describeRecord(old.restartedWith(now)), describeRecord(now); got != want {
			t.Errorf("restartedWith = %s, want %s", got, want)
		}
	})
	t.Run("a record written before live ranges", func(t *testing.T) {
		if got, want := describeRecord(flags4.restartedWith(rec(v6, p6, nil))), describeRecord(rec(v6, p6, nil)); got != want {
			t.Errorf("restartedWith = %s, want %s", got, want)
		}
	})
	t.Run("removedFamilies", func(t *testing.T) {
		if got := removedFamilies(rec(v6, p6, &flags4), single); !slices.Equal(got, []netaddr.Family{netaddr.IPv6}) {
			t.Errorf("IPv6 gone: %v", got)
		}
		if got := removedFamilies(rec(v6, p6, &flags4), dual); len(got) != 0 {
			t.Errorf("nothing gone: %v", got)
		}
	})
}
