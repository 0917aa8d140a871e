package clustercidr

import (
	"context"
	"net/netip"
	"strings"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/duet-net/duet/internal/apis/networking/v1alpha1"
	"github.com/duet-net/duet/internal/netaddr"
)

var t0 = time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)

func cc(name, cidr string, age int) *v1alpha1.ClusterCIDR {
	return &v1alpha1.ClusterCIDR{
		ObjectMeta: metav1.ObjectMeta{Name: name, CreationTimestamp: metav1.NewTime(t0.Add(time.Duration(age) * time.Second))},
		Spec:       v1alpha1.ClusterCIDRSpec{CIDR: cidr, NodeMaskSize: 64},
	}
}

func TestCondition(t *testing.T) {
	v4 := cc("default-ipv4", "10.244.0.0/16", 0)
	v6 := cc("v6", "fd00:10:244::/56", 5)
	late := cc("late", "fd00:99::/56", 9)
	going := cc("going", "fd00:10:244::/56", 1)
	ts := metav1.NewTime(t0)
	going.DeletionTimestamp = &ts
	tests := []struct {
		name   string
		obj    *v1alpha1.ClusterCIDR
		all    []*v1alpha1.ClusterCIDR
		status metav1.ConditionStatus
		reason string
		msg    string
	}{
		{name: "the only one of its family", obj: v6, all: []*v1alpha1.ClusterCIDR{v4, v6}, status: metav1.ConditionTrue, reason: "Ready"},
		{name: "a younger one of a family", obj: late, all: []*v1alpha1.ClusterCIDR{v4, v6, late}, status: metav1.ConditionFalse, reason: v1alpha1.ReasonDuplicate,
			msg: "The cluster has an older ClusterCIDR of family IPv6, v6 (fd00:10:244::/56)"},
		{name: "the older one", obj: v6, all: []*v1alpha1.ClusterCIDR{v4, v6, late}, status: metav1.ConditionTrue, reason: "Ready"},
		{name: "one being deleted", obj: going, all: []*v1alpha1.ClusterCIDR{v4, going, v6}, status: metav1.ConditionFalse, reason: v1alpha1.ReasonTerminating},
		{name: "an older one being deleted does not count", obj: v6, all: []*v1alpha1.ClusterCIDR{v4, going, v6}, status: metav1.ConditionTrue, reason: "Ready"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := Condition(tt.obj, tt.all)
			if c.Status != tt.status || c.Reason != tt.reason || !strings.Contains(c.Message, tt.msg) {
				t.Errorf("got %s/%s %q, want %s/%s %q", c.Status, c.Reason, c.Message, tt.status, tt.reason, tt.msg)
			}
		})
	}
}

// fakeAPI keeps ClusterCIDRs in a map.
type fakeAPI struct {
	objs map[string]*v1alpha1.ClusterCIDR
}

func (f *fakeAPI) Get(_ context.Context, name string, _ metav1.GetOptions) (*v1alpha1.ClusterCIDR, error) {
	if o, ok := f.objs[name]; ok {
		return o.DeepCopy(), nil
	}
	return nil, apierrors.NewNotFound(v1alpha1.Resource("clustercidrs"), name)
}

func (f *fakeAPI) List(context.Context, metav1.ListOptions) (*v1alpha1.ClusterCIDRList, error) {
	l := &v1alpha1.ClusterCIDRList{}
	for _, o := range f.objs {
		l.Items = append(l.Items, *o.DeepCopy())
	}
	return l, nil
}

func (f *fakeAPI) Create(_ context.Context, obj *v1alpha1.ClusterCIDR, _ metav1.CreateOptions) (*v1alpha1.ClusterCIDR, error) {
	if _, ok := f.objs[obj.Name]; ok {
		return nil, apierrors.NewAlreadyExists(v1alpha1.Resource("clustercidrs"), obj.Name)
	}
	f.objs[obj.Name] = obj.DeepCopy()
	return obj, nil
}

func (f *fakeAPI) UpdateStatus(_ context.Context, obj *v1alpha1.ClusterCIDR, _ metav1.UpdateOptions) (*v1alpha1.ClusterCIDR, error) {
	f.objs[obj.Name] = obj.DeepCopy()
	return obj, nil
}

func (f *fakeAPI) Delete(_ context.Context, name string, _ metav1.DeleteOptions) error {
	if f.objs[name] == nil {
		return apierrors.NewNotFound(v1alpha1.Resource("clustercidrs"), name)
	}
	delete(f.objs, name)
	return nil
}

// fromFlag is a ClusterCIDR the server made from --cluster-cidr.
func fromFlag(o *v1alpha1.ClusterCIDR) *v1alpha1.ClusterCIDR {
	o.Labels = map[string]string{FromFlagLabel: "true"}
	return o
}

func TestEnsureDefaults(t *testing.T) {
	v4, v6 := netip.MustParsePrefix("10.244.0.0/16"), netip.MustParsePrefix("fd00:10:244::/56")
	dual := netaddr.ClusterCIDRs{CIDRs: []netip.Prefix{v4, v6}, NodeMaskSizes: []int{24, 64}}
	v4only := netaddr.ClusterCIDRs{CIDRs: dual.CIDRs[:1], NodeMaskSizes: dual.NodeMaskSizes[:1]}
	tests := []struct {
		name    string
		flags   netaddr.ClusterCIDRs
		applied []netip.Prefix // the flag at the last start
		first   bool
		have    []*v1alpha1.ClusterCIDR
		want    map[string]string // name -> cidr afterwards
	}{
		{name: "first start: both created", flags: dual, first: true,
			want: map[string]string{"default-ipv4": "10.244.0.0/16", "default-ipv6": "fd00:10:244::/56"}},
		{name: "first start: an IPv6 one applied before the flag named the family is kept", flags: dual, first: true,
			have: []*v1alpha1.ClusterCIDR{cc("mine", "fd00:77::/56", 0)},
			want: map[string]string{"default-ipv4": "10.244.0.0/16", "mine": "fd00:77::/56"}},
		{name: "first start: an existing default is left as it is", flags: dual, first: true,
			have: []*v1alpha1.ClusterCIDR{cc("default-ipv4", "10.245.0.0/16", 0)},
			want: map[string]string{"default-ipv4": "10.245.0.0/16", "default-ipv6": "fd00:10:244::/56"}},
		{name: "the flag gained IPv6: created", flags: dual, applied: []netip.Prefix{v4},
			have: []*v1alpha1.ClusterCIDR{fromFlag(cc("default-ipv4", "10.244.0.0/16", 0))},
			want: map[string]string{"default-ipv4": "10.244.0.0/16", "default-ipv6": "fd00:10:244::/56"}},
		{name: "the flag dropped IPv6: the server's IPv6 one goes", flags: v4only, applied: []netip.Prefix{v4, v6},
			have: []*v1alpha1.ClusterCIDR{fromFlag(cc("default-ipv4", "10.244.0.0/16", 0)), fromFlag(cc("default-ipv6", "fd00:10:244::/56", 0))},
			want: map[string]string{"default-ipv4": "10.244.0.0/16"}},
		{name: "the flag dropped IPv6: one a user applied stays, even named default-ipv6", flags: v4only, applied: []netip.Prefix{v4, v6},
			have: []*v1alpha1.ClusterCIDR{fromFlag(cc("default-ipv4", "10.244.0.0/16", 0)), cc("default-ipv6", "fd00:10:244::/56", 0)},
			want: map[string]string{"default-ipv4": "10.244.0.0/16", "default-ipv6": "fd00:10:244::/56"}},
		{name: "the same flag: a default deleted with kubectl stays deleted", flags: dual, applied: []netip.Prefix{v4, v6},
			have: []*v1alpha1.ClusterCIDR{fromFlag(cc("default-ipv4", "10.244.0.0/16", 0))},
			want: map[string]string{"default-ipv4": "10.244.0.0/16"}},
		{name: "the same IPv4-only flag: an IPv6 one applied live stays", flags: v4only, applied: []netip.Prefix{v4},
			have: []*v1alpha1.ClusterCIDR{fromFlag(cc("default-ipv4", "10.244.0.0/16", 0)), cc("ipv6", "fd00:10:244::/56", 0)},
			want: map[string]string{"default-ipv4": "10.244.0.0/16", "ipv6": "fd00:10:244::/56"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			api := &fakeAPI{objs: map[string]*v1alpha1.ClusterCIDR{}}
			had := map[string]bool{}
			for _, o := range tt.have {
				api.objs[o.Name] = o
				had[o.Name] = true
			}
			if err := EnsureDefaults(context.Background(), api, tt.flags, tt.applied, tt.first); err != nil {
				t.Fatal(err)
			}
			if len(api.objs) != len(tt.want) {
				t.Errorf("%d ClusterCIDRs, want %d", len(api.objs), len(tt.want))
			}
			for name, cidr := range tt.want {
				if o := api.objs[name]; o == nil || o.Spec.CIDR != cidr {
					t.Errorf("%s: %+v, want cidr %s", name, o, cidr)
				}
			}
			for name, o := range api.objs {
				if !had[name] && o.Labels[FromFlagLabel] != "true" {
					t.Errorf("%s, made by EnsureDefaults, lacks the %s label", name, FromFlagLabel)
				}
			}
		})
	}
}
