package integration

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"sort"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
)

// shape is a cluster's --service-cluster-ip-range (and feature gates).
type shape struct {
	name    string
	ranges  []netip.Prefix // primary first
	extra   []string       // further server flags
	gateOff bool           // IPv6DualStack=false: only the first range serves
	kubectl bool           // also drive this shape with kubectl
}

const (
	v4Range = "10.96.0.0/16"
	v6Range = "fd00:10:96::/108"
)

func mustPrefixes(s string) []netip.Prefix {
	var out []netip.Prefix
	for _, c := range strings.Split(s, ",") {
		out = append(out, netip.MustParsePrefix(c))
	}
	return out
}

// shapes are the four cluster shapes of the issue, plus a single-stack
// cluster with the dual-stack gate off, which must behave like "v4".
var shapes = []shape{
	{name: "v4", ranges: mustPrefixes(v4Range), kubectl: true},
	{name: "v6", ranges: mustPrefixes(v6Range)},
	{name: "v4+v6", ranges: mustPrefixes(v4Range + "," + v6Range), kubectl: true},
	{name: "v6+v4", ranges: mustPrefixes(v6Range + "," + v4Range), kubectl: true},
	{name: "v4-IPv6DualStack=false", ranges: mustPrefixes(v4Range), extra: []string{"--feature-gates", "IPv6DualStack=false"}, gateOff: true},
}

func (sh shape) flag() string {
	s := make([]string, len(sh.ranges))
	for i, p := range sh.ranges {
		s[i] = p.String()
	}
	return strings.Join(s, ",")
}

func familyOf(a netip.Addr) corev1.IPFamily {
	if a.Is4() {
		return corev1.IPv4Protocol
	}
	return corev1.IPv6Protocol
}

func otherFamily(f corev1.IPFamily) corev1.IPFamily {
	if f == corev1.IPv4Protocol {
		return corev1.IPv6Protocol
	}
	return corev1.IPv4Protocol
}

func (sh shape) primary() corev1.IPFamily { return familyOf(sh.ranges[0].Addr()) }
func (sh shape) dual() bool               { return len(sh.ranges) == 2 && !sh.gateOff }

// other is the secondary family of a dual-stack cluster, or the family a
// single-stack cluster lacks.
func (sh shape) other() corev1.IPFamily { return otherFamily(sh.primary()) }

// families the cluster serves, primary first.
func (sh shape) families() []corev1.IPFamily {
	if sh.dual() {
		return []corev1.IPFamily{sh.primary(), sh.other()}
	}
	return []corev1.IPFamily{sh.primary()}
}

func (sh shape) has(f corev1.IPFamily) bool { return slices.Contains(sh.families(), f) }

// rangeOf is the service range of family f; for a family the cluster lacks
// it is the range that family would have.
func rangeOf(f corev1.IPFamily) netip.Prefix {
	if f == corev1.IPv4Protocol {
		return netip.MustParsePrefix(v4Range)
	}
	return netip.MustParsePrefix(v6Range)
}

func addrAt(p netip.Prefix, n int) netip.Addr {
	a := p.Addr()
	for range n {
		a = a.Next()
	}
	return a
}

// static is the n-th address of family f's range: small n are in the
// static (user-chosen) band.
func static(f corev1.IPFamily, n int) string { return addrAt(rangeOf(f), n).String() }

// outside is an address of family f outside its service range.
func outside(f corev1.IPFamily) string {
	if f == corev1.IPv4Protocol {
		return "10.97.0.10"
	}
	return "fd00:10:97::10"
}

var serviceGVR = schema.GroupVersionResource{Version: "v1", Resource: "services"}

// allocationCheck describes what checkAllocations expects.
type allocationCheck struct {
	ranges []netip.Prefix
	// noOrphans: every IPAddress must belong to a Service holding its IP
	// (after a crash this holds only once the repair loop has run).
	noOrphans bool
	// services, when positive, is the number of Services expected.
	services int
}

// checkAllocations lists every Service and IPAddress and checks the
// invariants of the issue: no cluster IP held by two Services, every one in
// a configured range and recorded by an IPAddress named by the IP whose
// parentRef names the Service, and (noOrphans) no IPAddress that no Service
// holds. It also checks that every Service reads back with the 1.16
// spec.ipFamily equal to ipFamilies[0]. default/kubernetes is left out of
// the record check: TestKubernetesService checks its record on its own.
func checkAllocations(ctx context.Context, client kubernetes.Interface, dyn dynamic.Interface, c allocationCheck) error {
	svcs, err := client.CoreV1().Services("").List(ctx, metav1.ListOptions{})
	if err != nil {
		return fmt.Errorf("listing Services: %w", err)
	}
	ips, err := client.NetworkingV1().IPAddresses().List(ctx, metav1.ListOptions{})
	if err != nil {
		return fmt.Errorf("listing IPAddresses: %w", err)
	}
	var errs []error
	add := func(format string, args ...any) {
		if len(errs) < 20 {
			errs = append(errs, fmt.Errorf(format, args...))
		}
	}
	if c.services > 0 && len(svcs.Items) != c.services {
		add("%d Services, want %d", len(svcs.Items), c.services)
	}
	records := map[string]*struct {
		ns, name string
	}{}
	for i := range ips.Items {
		ip := &ips.Items[i]
		ref := ip.Spec.ParentRef
		if ref == nil {
			add("IPAddress %s has no parentRef", ip.Name)
			continue
		}
		if ref.Group != "" || ref.Resource != "services" {
			add("IPAddress %s: parentRef %s/%s, want the core services resource", ip.Name, ref.Group, ref.Resource)
		}
		records[ip.Name] = &struct{ ns, name string }{ref.Namespace, ref.Name}
	}
	owner := map[string]string{}
	for _, svc := range svcs.Items {
		key := svc.Namespace + "/" + svc.Name
		for _, s := range svc.Spec.ClusterIPs {
			if s == "" || s == corev1.ClusterIPNone {
				continue
			}
			a, err := netip.ParseAddr(s)
			if err != nil {
				add("Service %s: cluster IP %q does not parse", key, s)
				continue
			}
			if prev, dup := owner[a.String()]; dup {
				add("cluster IP %s held by both %s and %s", a, prev, key)
			}
			owner[a.String()] = key
			if !slices.ContainsFunc(c.ranges, func(p netip.Prefix) bool { return p.Contains(a) }) {
				add("Service %s: cluster IP %s in no configured range %v", key, a, c.ranges)
			}
			if key == "default/kubernetes" {
				continue
			}
			r, ok := records[a.String()]
			switch {
			case !ok:
				add("Service %s: cluster IP %s has no IPAddress object", key, a)
			case r.ns != svc.Namespace || r.name != svc.Name:
				add("Service %s: IPAddress %s names %s/%s", key, a, r.ns, r.name)
			}
		}
		if svc.Spec.ClusterIP != "" && (len(svc.Spec.ClusterIPs) == 0 || svc.Spec.ClusterIPs[0] != svc.Spec.ClusterIP) {
			add("Service %s: clusterIP %q is not clusterIPs[0] of %v", key, svc.Spec.ClusterIP, svc.Spec.ClusterIPs)
		}
	}
	if c.noOrphans {
		for name, r := range records {
			if got, ok := owner[name]; !ok || got != r.ns+"/"+r.name {
				add("IPAddress %s names %s/%s, which does not hold it (held by %q)", name, r.ns, r.name, got)
			}
		}
	}
	if dyn != nil {
		list, err := dyn.Resource(serviceGVR).Namespace("").List(ctx, metav1.ListOptions{})
		if err != nil {
			add("listing Services (dynamic): %v", err)
		} else {
			for _, u := range list.Items {
				if err := legacyAgrees(&u); err != nil {
					add("Service %s/%s: %v", u.GetNamespace(), u.GetName(), err)
				}
			}
		}
	}
	return errors.Join(errs...)
}

// legacyAgrees checks that the 1.16 spec.ipFamily of a Service as served
// equals spec.ipFamilies[0], and that both are absent for ExternalName.
func legacyAgrees(u *unstructured.Unstructured) error {
	fam, hasFam, _ := unstructured.NestedString(u.Object, "spec", "ipFamily")
	fams, _, _ := unstructured.NestedStringSlice(u.Object, "spec", "ipFamilies")
	typ, _, _ := unstructured.NestedString(u.Object, "spec", "type")
	if typ == string(corev1.ServiceTypeExternalName) {
		if hasFam || len(fams) > 0 {
			return fmt.Errorf("ExternalName Service has ipFamily %q, ipFamilies %v", fam, fams)
		}
		return nil
	}
	if len(fams) == 0 {
		return fmt.Errorf("no spec.ipFamilies")
	}
	if !hasFam || fam != fams[0] {
		return fmt.Errorf("spec.ipFamily %q (set: %v), want ipFamilies[0] %q", fam, hasFam, fams[0])
	}
	return nil
}

// ipRecords returns the names of all IPAddress objects, sorted.
func ipRecords(ctx context.Context, client kubernetes.Interface) ([]string, error) {
	list, err := client.NetworkingV1().IPAddresses().List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, err
	}
	var names []string
	for _, ip := range list.Items {
		names = append(names, ip.Name)
	}
	sort.Strings(names)
	return names, nil
}

// newService is a ClusterIP Service selecting app=name on port 80.
func newService(name string, mutate ...func(*corev1.Service)) *corev1.Service {
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: corev1.ServiceSpec{
			Selector: map[string]string{"app": name},
			Ports:    []corev1.ServicePort{{Name: "http", Port: 80}},
		},
	}
	for _, m := range mutate {
		m(svc)
	}
	return svc
}

func policy(p corev1.IPFamilyPolicy) func(*corev1.Service) {
	return func(s *corev1.Service) { s.Spec.IPFamilyPolicy = &p }
}

func families(f ...corev1.IPFamily) func(*corev1.Service) {
	return func(s *corev1.Service) { s.Spec.IPFamilies = f }
}

func clusterIPs(ips ...string) func(*corev1.Service) {
	return func(s *corev1.Service) {
		s.Spec.ClusterIP = ips[0]
		if len(ips) > 1 {
			s.Spec.ClusterIPs = ips
		}
	}
}

func noSelector(s *corev1.Service) { s.Spec.Selector = nil }

func externalName(s *corev1.Service) {
	s.Spec.Type = corev1.ServiceTypeExternalName
	s.Spec.ExternalName = "db.example.com"
	s.Spec.Selector = nil
}

func fatalIf(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
