package familydrop

import (
	"fmt"
	"reflect"
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

var (
	v4, v6 = corev1.IPv4Protocol, corev1.IPv6Protocol
	both   = []corev1.IPFamily{v4, v6}
	only4  = []corev1.IPFamily{v4}
)

type svcOpt func(*corev1.Service)

func policy(p corev1.IPFamilyPolicy) svcOpt {
	return func(s *corev1.Service) { s.Spec.IPFamilyPolicy = &p }
}

func families(f ...corev1.IPFamily) svcOpt {
	return func(s *corev1.Service) { s.Spec.IPFamilies = f }
}

func ips(ips ...string) svcOpt {
	return func(s *corev1.Service) {
		s.Spec.ClusterIPs = ips
		if len(ips) > 0 {
			s.Spec.ClusterIP = ips[0]
		}
	}
}

func selector(s *corev1.Service) { s.Spec.Selector = map[string]string{"app": s.Name} }

func lb(ingress ...string) svcOpt {
	return func(s *corev1.Service) {
		s.Spec.Type = corev1.ServiceTypeLoadBalancer
		for _, ip := range ingress {
			s.Status.LoadBalancer.Ingress = append(s.Status.LoadBalancer.Ingress, corev1.LoadBalancerIngress{IP: ip})
		}
	}
}

func service(ns, name string, opts ...svcOpt) *corev1.Service {
	s := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}, Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeClusterIP}}
	for _, o := range opts {
		o(s)
	}
	return s
}

func TestBlocking(t *testing.T) {
	require, prefer, single := corev1.IPFamilyPolicyRequireDualStack, corev1.IPFamilyPolicyPreferDualStack, corev1.IPFamilyPolicySingleStack
	for _, tc := range []struct {
		name string
		svc  *corev1.Service
		keep []corev1.IPFamily
		want string
	}{
		{"RequireDualStack on a cluster dropping IPv6", service("a", "s", policy(require), families(v4, v6), selector), only4, ReasonRequireDualStack},
		{"RequireDualStack with IPv6 first", service("a", "s", policy(require), families(v6, v4), selector), only4, ReasonPrimaryDropped},
		{"RequireDualStack on a cluster keeping both", service("a", "s", policy(require), families(v4, v6), selector), both, ""},
		{"PreferDualStack is downgraded", service("a", "s", policy(prefer), families(v4, v6), selector), only4, ""},
		{"PreferDualStack with IPv6 first", service("a", "s", policy(prefer), families(v6, v4), selector), only4, ReasonPrimaryDropped},
		{"SingleStack of the kept family", service("a", "s", policy(single), families(v4), selector), only4, ""},
		{"SingleStack of the dropped family", service("a", "s", policy(single), families(v6), selector), only4, ReasonPrimaryDropped},
		{"SingleStack IPv4 on a cluster keeping IPv6", service("a", "s", policy(single), families(v4), selector), []corev1.IPFamily{v6}, ReasonPrimaryDropped},
		{"Duet's kube-dns", service("kube-system", "kube-dns", policy(require), families(v4, v6)), only4, ""},
		{"kube-dns a user took over with a selector", service("kube-system", "kube-dns", policy(require), families(v4, v6), selector), only4, ReasonRequireDualStack},
		{"a kube-dns elsewhere is a user's", service("dns", "kube-dns", policy(require), families(v4, v6)), only4, ReasonRequireDualStack},
		{"headless without selector: any family", service("a", "s", policy(require), families(v6, v4), ips("None")), only4, ""},
		{"headless with selector", service("a", "s", policy(require), families(v4, v6), ips("None"), selector), only4, ReasonRequireDualStack},
		{"ExternalName", service("a", "s", func(s *corev1.Service) { s.Spec.Type = corev1.ServiceTypeExternalName }), only4, ""},
		{"no families given (never stored so)", service("a", "s", policy(require), selector), only4, ReasonRequireDualStack},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := Blocking(tc.svc, tc.keep); got != tc.want {
				t.Errorf("Blocking = %q, want %q", got, tc.want)
			}
		})
	}
}

func TestRefusalErrorNamesFiveServicesPerReasonAndCountsTheRest(t *testing.T) {
	if err := RefusalError("--f", "x", nil); err != nil {
		t.Fatalf("no blockers: %v", err)
	}
	var svcs []*corev1.Service
	require := corev1.IPFamilyPolicyRequireDualStack
	for i := range 8 {
		svcs = append(svcs, service(fmt.Sprintf("ns%d", 7-i), "r", policy(require), families(v4, v6), selector))
	}
	svcs = append(svcs, service("z", "v6", families(v6), selector), service("a", "ok", families(v4, v6), selector))
	bl := Blockers(svcs, only4)
	if len(bl) != 9 {
		t.Fatalf("%d blockers, want 9: %v", len(bl), bl)
	}
	msg := RefusalError("--service-cluster-ip-range", "the IPv6 range fd00::/108", bl).Error()
	for _, want := range []string{
		"--service-cluster-ip-range: cannot drop the IPv6 range fd00::/108: 9 Service(s) need that family",
		"spec.ipFamilyPolicy is RequireDualStack for ns0/r, ns1/r, ns2/r, ns3/r, ns4/r and 3 more",
		"spec.ipFamilies[0] is the dropped family for z/v6.",
		"set spec.ipFamilyPolicy to PreferDualStack",
	} {
		if !strings.Contains(msg, want) {
			t.Errorf("message lacks %q:\n%s", want, msg)
		}
	}
	if strings.Contains(msg, "a/ok") || strings.Contains(msg, "ns5/r") {
		t.Errorf("message names a Service it should not:\n%s", msg)
	}
}

func TestDowngraded(t *testing.T) {
	require, prefer := corev1.IPFamilyPolicyRequireDualStack, corev1.IPFamilyPolicyPreferDualStack
	for _, tc := range []struct {
		name     string
		svc      *corev1.Service
		keep     []corev1.IPFamily
		wantFams []corev1.IPFamily // nil: no change
		wantIPs  []string
	}{
		{"PreferDualStack keeps its IPv4 address", service("a", "s", policy(prefer), families(v4, v6), ips("10.96.0.5", "fd00::5")), only4, only4, []string{"10.96.0.5"}},
		{"RequireDualStack too", service("a", "s", policy(require), families(v4, v6), ips("10.96.0.5", "fd00::5")), only4, only4, []string{"10.96.0.5"}},
		{"IPv6-primary cluster dropping IPv4", service("a", "s", policy(prefer), families(v6, v4), ips("fd00::5", "10.96.0.5")), []corev1.IPFamily{v6}, []corev1.IPFamily{v6}, []string{"fd00::5"}},
		{"headless with selector", service("a", "s", policy(prefer), families(v4, v6), ips("None"), selector), only4, only4, []string{"None"}},
		{"headless without selector", service("a", "s", policy(require), families(v4, v6), ips("None")), only4, nil, nil},
		{"already single", service("a", "s", families(v4), ips("10.96.0.5")), only4, nil, nil},
		{"first family dropped", service("a", "s", policy(prefer), families(v6, v4), ips("fd00::5", "10.96.0.5")), only4, nil, nil},
		{"both kept", service("a", "s", policy(prefer), families(v4, v6), ips("10.96.0.5", "fd00::5")), both, nil, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := tc.svc.DeepCopy()
			got := Downgraded(tc.svc, tc.keep)
			if !equalService(tc.svc, before) {
				t.Fatal("Downgraded changed its argument")
			}
			if tc.wantFams == nil {
				if got != nil {
					t.Fatalf("changed to %v %v, want no change", got.Spec.IPFamilies, got.Spec.ClusterIPs)
				}
				return
			}
			if got == nil {
				t.Fatal("no change")
			}
			if *got.Spec.IPFamilyPolicy != corev1.IPFamilyPolicySingleStack || !slices.Equal(got.Spec.IPFamilies, tc.wantFams) ||
				!slices.Equal(got.Spec.ClusterIPs, tc.wantIPs) || got.Spec.ClusterIP != tc.wantIPs[0] {
				t.Errorf("got %s %v %v (clusterIP %s), want SingleStack %v %v", *got.Spec.IPFamilyPolicy, got.Spec.IPFamilies, got.Spec.ClusterIPs, got.Spec.ClusterIP, tc.wantFams, tc.wantIPs)
			}
			if again := Downgraded(got, tc.keep); again != nil {
				t.Errorf("not idempotent: %v", again.Spec)
			}
		})
	}
}

func equalService(a, b *corev1.Service) bool {
	return reflect.DeepEqual(a, b)
}

func TestTrimmedIngressAndPodCIDRs(t *testing.T) {
	drop6 := []corev1.IPFamily{v6}
	in := []corev1.LoadBalancerIngress{{IP: "192.0.2.1"}, {IP: "2001:db8::1"}, {Hostname: "lb.example"}}
	got, changed := TrimmedIngress(in, drop6)
	if !changed || len(got) != 2 || got[0].IP != "192.0.2.1" || got[1].Hostname != "lb.example" {
		t.Errorf("TrimmedIngress = %v, %v", got, changed)
	}
	if got, changed := TrimmedIngress(got, drop6); changed || len(got) != 2 {
		t.Errorf("again: %v, %v", got, changed)
	}
	if got, changed := TrimmedIngress([]corev1.LoadBalancerIngress{{IP: "2001:db8::1"}}, drop6); !changed || got != nil {
		t.Errorf("only IPv6: %v, %v", got, changed)
	}

	for _, tc := range []struct {
		in, want []string
		drop     []corev1.IPFamily
		changed  bool
	}{
		{[]string{"10.244.1.0/24", "fd00:10:244:1::/64"}, []string{"10.244.1.0/24"}, drop6, true},
		{[]string{"fd00:10:244:1::/64", "10.244.1.0/24"}, []string{"fd00:10:244:1::/64"}, []corev1.IPFamily{v4}, true},
		{[]string{"10.244.1.0/24"}, []string{"10.244.1.0/24"}, drop6, false},
		{[]string{"fd00:10:244:1::/64"}, []string{}, drop6, true},
		{[]string{"bogus", "fd00::/64"}, []string{"bogus"}, drop6, true},
	} {
		got, changed := TrimmedPodCIDRs(tc.in, tc.drop)
		if !slices.Equal(got, tc.want) || changed != tc.changed {
			t.Errorf("TrimmedPodCIDRs(%v, drop %v) = %v, %v; want %v, %v", tc.in, tc.drop, got, changed, tc.want, tc.changed)
		}
	}
}

func TestFamilies(t *testing.T) {
	f := Families{Services: only4, Pods: both}
	if got := f.DroppedServiceFamilies(); !slices.Equal(got, []corev1.IPFamily{v6}) {
		t.Errorf("dropped service families %v", got)
	}
	if got := f.DroppedPodFamilies(); got != nil {
		t.Errorf("dropped pod families %v", got)
	}
	if got := (Families{}).DroppedPodFamilies(); got != nil {
		t.Errorf("no pod CIDRs drops %v", got)
	}
}
