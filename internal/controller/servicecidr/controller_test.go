package servicecidr

import (
	"context"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	networkingv1 "k8s.io/api/networking/v1"
	apimeta "k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/record"
)

var t0 = time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)

func cidr(name string, cidrs []string, mods ...func(*networkingv1.ServiceCIDR)) *networkingv1.ServiceCIDR {
	o := &networkingv1.ServiceCIDR{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: networkingv1.ServiceCIDRSpec{CIDRs: cidrs}}
	for _, m := range mods {
		m(o)
	}
	return o
}

func deleted(o *networkingv1.ServiceCIDR) {
	ts := metav1.NewTime(t0)
	o.DeletionTimestamp = &ts
	o.Finalizers = []string{Finalizer}
}

func record4(ip string) networkingv1.IPAddress {
	return networkingv1.IPAddress{ObjectMeta: metav1.ObjectMeta{Name: ip, Labels: map[string]string{labelManagedBy: managedBy}}}
}

type fixture struct {
	client  *fake.Clientset
	c       *Controller
	now     time.Time
	later   map[string]time.Duration
	records []networkingv1.IPAddress
}

func newFixture(t *testing.T, objs ...runtime.Object) *fixture {
	t.Helper()
	f := &fixture{client: fake.NewClientset(objs...), now: t0, later: map[string]time.Duration{}}
	factory := informers.NewSharedInformerFactory(f.client, 0)
	c, err := New(f.client, factory.Networking().V1().ServiceCIDRs(), func(context.Context) ([]networkingv1.IPAddress, error) {
		return f.records, nil
	}, record.NewFakeRecorder(10), Options{DeletionGrace: 5 * time.Second, Now: func() time.Time { return f.now }})
	if err != nil {
		t.Fatal(err)
	}
	c.later = func(key string, d time.Duration) { f.later[key] = d }
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	factory.Start(ctx.Done())
	cache.WaitForCacheSync(ctx.Done(), c.synced)
	f.c = c
	return f
}

func (f *fixture) get(t *testing.T, name string) *networkingv1.ServiceCIDR {
	t.Helper()
	o, err := f.client.NetworkingV1().ServiceCIDRs().Get(context.Background(), name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return o
}

func TestNewServiceCIDRGetsFinalizerAndReady(t *testing.T) {
	f := newFixture(t, cidr("extra", []string{"203.0.113.0/24"}))
	if err := f.c.sync(context.Background(), "extra"); err != nil {
		t.Fatal(err)
	}
	o := f.get(t, "extra")
	if !slices.Contains(o.Finalizers, Finalizer) {
		t.Errorf("finalizers %v lack %s", o.Finalizers, Finalizer)
	}
	if c := apimeta.FindStatusCondition(o.Status.Conditions, networkingv1.ServiceCIDRConditionReady); c == nil || c.Status != metav1.ConditionTrue {
		t.Errorf("Ready condition %+v, want True", c)
	}
}

func TestDeletion(t *testing.T) {
	tests := []struct {
		name    string
		objs    []runtime.Object
		records []networkingv1.IPAddress
		after   time.Duration // since the deletion
		// want
		released   bool
		terminates string // substring of the Ready=False message
		requeue    time.Duration
	}{
		{name: "an IP in use only there holds it back",
			objs:    []runtime.Object{cidr("extra", []string{"203.0.113.0/24"}, deleted), cidr("kubernetes", []string{"10.96.0.0/16"})},
			records: []networkingv1.IPAddress{record4("203.0.113.10"), record4("10.96.0.10")}, after: time.Minute,
			terminates: "There are still IPAddresses referencing the ServiceCIDR (203.0.113.10)", requeue: blockedRecheck},
		{name: "an IP another ServiceCIDR contains holds nothing back",
			objs:    []runtime.Object{cidr("extra", []string{"203.0.113.0/25"}, deleted), cidr("wide", []string{"203.0.113.0/24"})},
			records: []networkingv1.IPAddress{record4("203.0.113.10")}, after: time.Minute, released: true},
		{name: "an IP recorded by a user holds nothing back",
			objs:    []runtime.Object{cidr("extra", []string{"203.0.113.0/24"}, deleted)},
			records: []networkingv1.IPAddress{{ObjectMeta: metav1.ObjectMeta{Name: "203.0.113.10"}}}, after: time.Minute, released: true},
		{name: "a covering ServiceCIDR being deleted too covers nothing",
			objs:    []runtime.Object{cidr("extra", []string{"203.0.113.0/25"}, deleted), cidr("wide", []string{"203.0.113.0/24"}, deleted)},
			records: []networkingv1.IPAddress{record4("203.0.113.10")}, after: time.Minute,
			terminates: "203.0.113.10", requeue: blockedRecheck},
		{name: "nothing in use: released after the grace period",
			objs: []runtime.Object{cidr("extra", []string{"203.0.113.0/24", "2001:db8:cb00::/64"}, deleted)}, after: 6 * time.Second, released: true},
		{name: "nothing in use: kept within the grace period",
			objs: []runtime.Object{cidr("extra", []string{"203.0.113.0/24"}, deleted)}, after: 2 * time.Second, requeue: 3 * time.Second},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t, tt.objs...)
			f.records = tt.records
			f.now = t0.Add(tt.after)
			if err := f.c.sync(context.Background(), "extra"); err != nil {
				t.Fatal(err)
			}
			o := f.get(t, "extra")
			if got := !slices.Contains(o.Finalizers, Finalizer); got != tt.released {
				t.Errorf("finalizer removed = %v, want %v", got, tt.released)
			}
			c := apimeta.FindStatusCondition(o.Status.Conditions, networkingv1.ServiceCIDRConditionReady)
			if tt.terminates != "" {
				if c == nil || c.Status != metav1.ConditionFalse || c.Reason != ReasonTerminating || !strings.Contains(c.Message, tt.terminates) {
					t.Errorf("Ready condition %+v, want False/Terminating mentioning %q", c, tt.terminates)
				}
			}
			if f.later["extra"] != tt.requeue {
				t.Errorf("re-queued after %v, want %v", f.later["extra"], tt.requeue)
			}
		})
	}
}

// applied marks o as made from --service-cluster-ip-range flag (and
// --cluster-cidr cluster), as the server leaves it.
func applied(o *networkingv1.ServiceCIDR, flag []string) *networkingv1.ServiceCIDR {
	o.Annotations = map[string]string{FromFlagAnnotation: strings.Join(flag, ","), ClusterFromFlagAnnotation: "10.244.0.0/16"}
	return o
}

func TestEnsureDefault(t *testing.T) {
	v4, v6 := netip.MustParsePrefix("10.96.0.0/16"), netip.MustParsePrefix("fd00:10:96::/108")
	s4, s6 := v4.String(), v6.String()
	tests := []struct {
		name  string
		objs  []runtime.Object
		flags []netip.Prefix
		want  []string
	}{
		{name: "created when absent", flags: []netip.Prefix{v4, v6}, want: []string{s4, s6}},
		{name: "a family the flag added is appended", objs: []runtime.Object{applied(cidr("kubernetes", []string{s4}), []string{s4})},
			flags: []netip.Prefix{v4, v6}, want: []string{s4, s6}},
		{name: "a family the flag added is appended (made before the annotation)", objs: []runtime.Object{cidr("kubernetes", []string{s4})},
			flags: []netip.Prefix{v4, v6}, want: []string{s4, s6}},
		{name: "a changed range is left as it is", objs: []runtime.Object{applied(cidr("kubernetes", []string{"10.97.0.0/16"}), []string{"10.97.0.0/16"})},
			flags: []netip.Prefix{v4, v6}, want: []string{"10.97.0.0/16"}},
		{name: "a family the flag dropped goes", objs: []runtime.Object{applied(cidr("kubernetes", []string{s4, s6}), []string{s4, s6})},
			flags: []netip.Prefix{v4}, want: []string{s4}},
		{name: "a family a user appended stays", objs: []runtime.Object{applied(cidr("kubernetes", []string{s4, s6}), []string{s4})},
			flags: []netip.Prefix{v4}, want: []string{s4, s6}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			client := fake.NewClientset(tt.objs...)
			cluster := []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16"), netip.MustParsePrefix("fd00:10:244::/56")}
			if err := EnsureDefault(context.Background(), client, tt.flags, cluster); err != nil {
				t.Fatal(err)
			}
			o, err := client.NetworkingV1().ServiceCIDRs().Get(context.Background(), "kubernetes", metav1.GetOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(o.Spec.CIDRs, tt.want) {
				t.Errorf("cidrs %v, want %v", o.Spec.CIDRs, tt.want)
			}
			// The flags applied are recorded for the next start.
			got, first, err := Applied(context.Background(), client)
			if err != nil || first || !slices.Equal(got, cluster) || o.Annotations[FromFlagAnnotation] != strings.Join(prefixStrings(tt.flags), ",") {
				t.Errorf("recorded flags %v (first %v, %v) and %q; want %v and the flag's", got, first, err, o.Annotations[FromFlagAnnotation], cluster)
			}
		})
	}
	if _, first, err := Applied(context.Background(), fake.NewClientset()); err != nil || !first {
		t.Errorf("Applied without a default ServiceCIDR: first %v, %v; want true", first, err)
	}
}
