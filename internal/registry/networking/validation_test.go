package networking

import (
	"strings"
	"testing"

	networkingv1 "k8s.io/api/networking/v1"
	"k8s.io/apimachinery/pkg/util/validation/field"

	"github.com/duet-net/duet/internal/netaddr"
)

func cidrObj(cidrs ...string) *networkingv1.ServiceCIDR {
	return &networkingv1.ServiceCIDR{Spec: networkingv1.ServiceCIDRSpec{CIDRs: cidrs}}
}

func joined(errs field.ErrorList) string {
	if len(errs) == 0 {
		return ""
	}
	return errs.ToAggregate().Error()
}

func TestValidateServiceCIDR(t *testing.T) {
	dual := Options{DualStack: true, Primary: netaddr.IPv4}
	tests := []struct {
		name  string
		obj   *networkingv1.ServiceCIDR
		opts  Options
		wants []string // substrings of the error, "" for none
	}{
		{name: "one IPv4 CIDR", obj: cidrObj("203.0.113.0/24"), opts: dual},
		{name: "one of each family", obj: cidrObj("10.97.0.0/16", "fd00:97::/108"), opts: dual},
		{name: "an IPv6 /64", obj: cidrObj("2001:db8:cb00::/64"), opts: dual},
		{name: "none", obj: cidrObj(), opts: dual, wants: []string{"spec.cidrs: Required value: at least one CIDR required"}},
		{name: "three", obj: cidrObj("10.0.0.0/24", "fd00::/108", "10.1.0.0/24"), opts: dual, wants: []string{"spec.cidrs: Invalid value", "may only hold up to 2 values"}},
		{name: "two of one family", obj: cidrObj("10.0.0.0/24", "10.1.0.0/24"), opts: dual,
			wants: []string{"spec.cidrs: Invalid value", "may specify no more than one IP for each IP family"}},
		{name: "host bits set", obj: cidrObj("10.0.0.1/24"), opts: dual, wants: []string{`spec.cidrs[0]: Invalid value: "10.0.0.1/24"`, "host bits are set; the network is 10.0.0.0/24"}},
		{name: "not a CIDR", obj: cidrObj("fd00::/108", "banana"), opts: dual, wants: []string{`spec.cidrs[1]: Invalid value: "banana"`}},
		{name: "too small", obj: cidrObj("10.0.0.0/30"), opts: dual, wants: []string{`spec.cidrs[0]`, "must be at least 8 IP addresses"}},
		{name: "IPv6 larger than a /64", obj: cidrObj("fd00::/48"), opts: dual, wants: []string{`spec.cidrs[0]`, "the mask must be >= 64"}},
		{name: "the other family with dual-stack off", obj: cidrObj("fd00::/108"), opts: Options{Primary: netaddr.IPv4},
			wants: []string{`spec.cidrs[0]: Invalid value: "fd00::/108": the cluster is IPv4-only and dual-stack is disabled`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := joined(ValidateServiceCIDR(tt.obj, tt.opts))
			if len(tt.wants) == 0 && got != "" {
				t.Fatalf("unexpected errors: %s", got)
			}
			for _, w := range tt.wants {
				if !strings.Contains(got, w) {
					t.Errorf("errors %q lack %q", got, w)
				}
			}
		})
	}
}

func TestValidateServiceCIDRUpdate(t *testing.T) {
	opts := Options{DualStack: true, Primary: netaddr.IPv4}
	tests := []struct {
		name     string
		old, new *networkingv1.ServiceCIDR
		want     string
	}{
		{name: "unchanged", old: cidrObj("10.96.0.0/16"), new: cidrObj("10.96.0.0/16")},
		{name: "the other family appended", old: cidrObj("10.96.0.0/16"), new: cidrObj("10.96.0.0/16", "fd00:96::/108")},
		{name: "changed", old: cidrObj("10.96.0.0/16"), new: cidrObj("10.97.0.0/16"), want: `spec.cidrs[0]: Invalid value: "10.97.0.0/16": field is immutable`},
		{name: "the first changed while appending", old: cidrObj("10.96.0.0/16"), new: cidrObj("10.97.0.0/16", "fd00:96::/108"), want: `spec.cidrs[0]: Invalid value: "10.97.0.0/16": field is immutable`},
		{name: "the same family appended", old: cidrObj("10.96.0.0/16"), new: cidrObj("10.96.0.0/16", "10.97.0.0/16"), want: "may specify no more than one IP for each IP family"},
		{name: "a family dropped", old: cidrObj("10.96.0.0/16", "fd00:96::/108"), new: cidrObj("10.96.0.0/16"), want: `spec.cidrs: Invalid value: ["10.96.0.0/16"]: field is immutable`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := joined(ValidateServiceCIDRUpdate(tt.new, tt.old, opts))
			if (tt.want == "") != (got == "") || !strings.Contains(got, tt.want) {
				t.Errorf("got %q, want %q", got, tt.want)
			}
		})
	}
}
