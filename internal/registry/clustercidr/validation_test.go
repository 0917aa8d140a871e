package clustercidr

import (
	"strings"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/validation/field"

	"github.com/duet-net/duet/internal/apis/networking/v1alpha1"
	"github.com/duet-net/duet/internal/netaddr"
)

func cc(name, cidr string, mask int32) *v1alpha1.ClusterCIDR {
	return &v1alpha1.ClusterCIDR{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: v1alpha1.ClusterCIDRSpec{CIDR: cidr, NodeMaskSize: mask}}
}

func errString(errs field.ErrorList) string {
	if len(errs) == 0 {
		return ""
	}
	return errs.ToAggregate().Error()
}

func TestValidate(t *testing.T) {
	dual := Options{DualStack: true, Primary: netaddr.IPv4}
	tests := []struct {
		name string
		obj  *v1alpha1.ClusterCIDR
		opts Options
		want string // a substring of the errors; "" for none
	}{
		{name: "an IPv6 range", obj: cc("v6", "fd00:10:244::/56", 64), opts: dual},
		{name: "an IPv4 range", obj: cc("v4", "10.244.0.0/16", 24), opts: dual},
		{name: "the node mask defaults by family", obj: cc("v6", "fd00:10:244::/56", 0), opts: dual},
		{name: "a node mask as wide as the range", obj: cc("v4", "10.244.0.0/24", 24), opts: dual},
		{name: "no cidr", obj: cc("x", "", 24), opts: dual, want: "spec.cidr: Required value"},
		{name: "not a CIDR", obj: cc("x", "10.244.0.0", 24), opts: dual, want: `spec.cidr: Invalid value: "10.244.0.0": invalid CIDR address`},
		{name: "host bits set", obj: cc("x", "fd00:10:244::1/56", 64), opts: dual, want: `spec.cidr: Invalid value: "fd00:10:244::1/56": invalid CIDR address "fd00:10:244::1/56": host bits are set; the network is fd00:10:244::/56`},
		{name: "node mask wider than the range", obj: cc("x", "fd00:10:244::/56", 48), opts: dual,
			want: "spec.nodeMaskSize: Invalid value: 48: must be between the range's prefix length 56 and 126 for IPv6"},
		{name: "node mask too long for IPv4", obj: cc("x", "10.244.0.0/16", 31), opts: dual,
			want: "spec.nodeMaskSize: Invalid value: 31: must be between the range's prefix length 16 and 30 for IPv4"},
		{name: "the other family with dual-stack off", obj: cc("x", "fd00:10:244::/56", 64), opts: Options{Primary: netaddr.IPv4},
			want: `spec.cidr: Invalid value: "fd00:10:244::/56": the cluster is IPv4-only and dual-stack is disabled`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			SetDefaults(tt.obj)
			got := errString(Validate(tt.obj, tt.opts))
			if (tt.want == "") != (got == "") || !strings.Contains(got, tt.want) {
				t.Errorf("got %q, want %q", got, tt.want)
			}
		})
	}
}

func TestSetDefaults(t *testing.T) {
	for cidr, want := range map[string]int32{"10.244.0.0/16": 24, "fd00:10:244::/56": 64} {
		c := cc("x", cidr, 0)
		SetDefaults(c)
		if c.Spec.NodeMaskSize != want {
			t.Errorf("%s: nodeMaskSize defaulted to %d, want %d", cidr, c.Spec.NodeMaskSize, want)
		}
	}
}

func TestValidateOnePerFamily(t *testing.T) {
	existing := []v1alpha1.ClusterCIDR{*cc("default-ipv4", "10.244.0.0/16", 24)}
	tests := []struct {
		name string
		obj  *v1alpha1.ClusterCIDR
		have []v1alpha1.ClusterCIDR
		want string
	}{
		{name: "the first of its family", obj: cc("v6", "fd00:10:244::/56", 64), have: existing},
		{name: "a second of a family names the first",
			obj:  cc("more", "10.245.0.0/16", 24),
			have: existing,
			want: `spec.cidr: Invalid value: "10.245.0.0/16": the cluster has a ClusterCIDR of family IPv4 already: default-ipv4 (10.244.0.0/16); a cluster has at most one per family`},
		{name: "itself does not count", obj: cc("default-ipv4", "10.244.0.0/16", 24), have: existing},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := errString(ValidateOnePerFamily(tt.obj, tt.have))
			if (tt.want == "") != (got == "") || !strings.Contains(got, tt.want) {
				t.Errorf("got %q, want %q", got, tt.want)
			}
		})
	}
}

func TestValidateUpdate(t *testing.T) {
	old := cc("v6", "fd00:10:244::/56", 64)
	tests := []struct {
		name string
		obj  *v1alpha1.ClusterCIDR
		want string
	}{
		{name: "labels only", obj: func() *v1alpha1.ClusterCIDR { c := old.DeepCopy(); c.Labels = map[string]string{"a": "b"}; return c }()},
		{name: "another range", obj: cc("v6", "fd00:20:244::/56", 64), want: `spec.cidr: Invalid value: "fd00:20:244::/56": field is immutable`},
		{name: "another node mask", obj: cc("v6", "fd00:10:244::/56", 80), want: "spec.nodeMaskSize: Invalid value: 80: field is immutable"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := errString(ValidateUpdate(tt.obj, old))
			if (tt.want == "") != (got == "") || !strings.Contains(got, tt.want) {
				t.Errorf("got %q, want %q", got, tt.want)
			}
		})
	}
}

func FuzzValidate(f *testing.F) {
	for _, s := range []string{"10.244.0.0/16", "fd00:10:244::/56", "::ffff:10.0.0.0/104", "10.0.0.1/8", "", "x/y"} {
		f.Add(s, int32(24))
	}
	f.Fuzz(func(t *testing.T, cidr string, mask int32) {
		c := cc("x", cidr, mask)
		SetDefaults(c)
		if len(Validate(c, Options{DualStack: true, Primary: netaddr.IPv4})) == 0 {
			p, err := netaddr.ParseCIDR(c.Spec.CIDR)
			if err != nil || int(c.Spec.NodeMaskSize) < p.Bits() || int(c.Spec.NodeMaskSize) > p.Addr().BitLen() {
				t.Fatalf("%q /%d accepted", cidr, c.Spec.NodeMaskSize)
			}
		}
	})
}
