package service

import (
	"context"
	"net/netip"
	"slices"
	"sort"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/validation/field"

	"github.com/duet-net/duet/internal/alloc"
	"github.com/duet-net/duet/internal/apis/core"
	"github.com/duet-net/duet/internal/netaddr"
)

var ctx = context.Background()

var (
	v4Range = netip.MustParsePrefix("10.96.0.0/16")
	v6Range = netip.MustParsePrefix("fd00:96::/108")
)

// The four cluster shapes every family rule is checked on. The IPv4-only
// cluster has the IPv6DualStack gate off, the IPv6-only one has it on:
// both are single-stack.
type shape struct {
	name string
	cfg  Config
}

var shapes = []shape{
	{"IPv4", Config{Ranges: []netip.Prefix{v4Range}}},
	{"IPv6", Config{Ranges: []netip.Prefix{v6Range}, DualStack: true}},
	{"IPv4,IPv6", Config{Ranges: []netip.Prefix{v4Range, v6Range}, DualStack: true}},
	{"IPv6,IPv4", Config{Ranges: []netip.Prefix{v6Range, v4Range}, DualStack: true}},
}

func shapeByName(t testing.TB, name string) Config {
	t.Helper()
	for _, s := range shapes {
		if s.name == name {
			return s.cfg
		}
	}
	t.Fatalf("no cluster shape %q", name)
	return Config{}
}

// newAllocators builds real, store-less ServiceRanges for cfg.
func newAllocators(t testing.TB, cfg Config) (*Allocators, map[netaddr.Family]*alloc.ServiceRange) {
	t.Helper()
	return newAllocatorsWithStore(t, cfg, nil)
}

func newAllocatorsWithStore(t testing.TB, cfg Config, store alloc.Store) (*Allocators, map[netaddr.Family]*alloc.ServiceRange) {
	t.Helper()
	ranges := map[netaddr.Family]*alloc.ServiceRange{}
	for i, p := range cfg.Ranges {
		if i > 0 && !cfg.DualStack {
			break
		}
		r, err := alloc.NewServiceRange(p, alloc.ServiceRangeOptions{Primary: i == 0, Store: store})
		if err != nil {
			t.Fatal(err)
		}
		ranges[r.Family()] = r
	}
	a, err := NewAllocators(cfg, ranges)
	if err != nil {
		t.Fatal(err)
	}
	return a, ranges
}

// newService is a defaulted ClusterIP Service ns/web selecting app=web on
// port 80, changed by mods before defaulting.
func newService(mods ...func(*core.Service)) *core.Service {
	svc := &core.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "web"},
	}
	svc.Spec.Selector = map[string]string{"app": "web"}
	svc.Spec.Ports = []corev1.ServicePort{{Port: 80}}
	for _, m := range mods {
		m(svc)
	}
	SetDefaults(svc)
	return svc
}

func named(ns, name string) func(*core.Service) {
	return func(s *core.Service) { s.Namespace, s.Name = ns, name }
}

func policy(p corev1.IPFamilyPolicy) func(*core.Service) {
	return func(s *core.Service) { s.Spec.IPFamilyPolicy = &p }
}

func families(f ...corev1.IPFamily) func(*core.Service) {
	return func(s *core.Service) { s.Spec.IPFamilies = f }
}

// clusterIPs sets both fields, as a GA client does.
func clusterIPs(ips ...string) func(*core.Service) {
	return func(s *core.Service) { s.Spec.ClusterIP, s.Spec.ClusterIPs = ips[0], ips }
}

// clusterIP sets the singular field only, as a 1.16 client does.
func clusterIP(ip string) func(*core.Service) {
	return func(s *core.Service) { s.Spec.ClusterIP = ip }
}

func ipFamily(f corev1.IPFamily) func(*core.Service) {
	return func(s *core.Service) { s.Spec.IPFamily = &f }
}

func headless(s *core.Service) { s.Spec.ClusterIP = corev1.ClusterIPNone }

func noSelector(s *core.Service) { s.Spec.Selector = nil }

func typ(t corev1.ServiceType) func(*core.Service) {
	return func(s *core.Service) { s.Spec.Type = t }
}

func externalName(s *core.Service) {
	s.Spec.Type = corev1.ServiceTypeExternalName
	s.Spec.ExternalName = "db.example.com"
}

const (
	v4   = corev1.IPv4Protocol
	v6   = corev1.IPv6Protocol
	v4v6 = "IPv4,IPv6"
	v6v4 = "IPv6,IPv4"

	single  = corev1.IPFamilyPolicySingleStack
	prefer  = corev1.IPFamilyPolicyPreferDualStack
	require = corev1.IPFamilyPolicyRequireDualStack
)

// famString renders ipFamilies as "IPv4,IPv6".
func famString(fams []corev1.IPFamily) string {
	s := make([]string, len(fams))
	for i, f := range fams {
		s[i] = string(f)
	}
	return strings.Join(s, ",")
}

func errStrings(errs field.ErrorList) []string {
	out := make([]string, len(errs))
	for i, e := range errs {
		out[i] = e.Error()
	}
	sort.Strings(out)
	return out
}

// checkErrs compares errors as the client reads them, in any order.
func checkErrs(t *testing.T, errs field.ErrorList, want []string) {
	t.Helper()
	got := errStrings(errs)
	want = slices.Clone(want)
	sort.Strings(want)
	if !slices.Equal(got, want) {
		t.Errorf("errors:\n  got  %q\n  want %q", got, want)
	}
}

// checkAllocated checks that a Service has one address per family, in
// order, each from its range and held there.
func checkAllocated(t *testing.T, svc *core.Service, ranges map[netaddr.Family]*alloc.ServiceRange) {
	t.Helper()
	spec := &svc.Spec
	if len(spec.ClusterIPs) != len(spec.IPFamilies) {
		t.Fatalf("clusterIPs %q for ipFamilies %q", spec.ClusterIPs, spec.IPFamilies)
	}
	if len(spec.ClusterIPs) > 0 && spec.ClusterIP != spec.ClusterIPs[0] {
		t.Errorf("clusterIP %q, clusterIPs %q", spec.ClusterIP, spec.ClusterIPs)
	}
	for i, s := range spec.ClusterIPs {
		ip := netip.MustParseAddr(s)
		r := ranges[netaddr.Family(spec.IPFamilies[i])]
		if r == nil || !r.CIDR().Contains(ip) {
			t.Errorf("clusterIPs[%d] = %s is not in the %s range", i, ip, spec.IPFamilies[i])
			continue
		}
		if !r.Has(ip) {
			t.Errorf("clusterIPs[%d] = %s is not held by its range", i, ip)
		}
	}
}

// checkLegacyIPFamily checks that spec.ipFamily reads as ipFamilies[0].
func checkLegacyIPFamily(t *testing.T, svc *core.Service) {
	t.Helper()
	got := "<nil>"
	if svc.Spec.IPFamily != nil {
		got = string(*svc.Spec.IPFamily)
	}
	want := "<nil>"
	if len(svc.Spec.IPFamilies) > 0 {
		want = string(svc.Spec.IPFamilies[0])
	}
	if got != want {
		t.Errorf("spec.ipFamily = %s, want %s (ipFamilies %q)", got, want, svc.Spec.IPFamilies)
	}
}

func policyString(svc *core.Service) string {
	if svc.Spec.IPFamilyPolicy == nil {
		return ""
	}
	return string(*svc.Spec.IPFamilyPolicy)
}

// used is the number of addresses taken in each range.
func used(ranges map[netaddr.Family]*alloc.ServiceRange) map[netaddr.Family]uint64 {
	out := map[netaddr.Family]uint64{}
	for f, r := range ranges {
		out[f] = r.Used()
	}
	return out
}
