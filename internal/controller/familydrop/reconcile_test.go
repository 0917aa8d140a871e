package familydrop

import (
	"context"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/client-go/tools/record"

	"github.com/duet-net/duet/internal/alloc"
)

func ipAddress(ip, ns, svc string) *networkingv1.IPAddress {
	return &networkingv1.IPAddress{
		ObjectMeta: metav1.ObjectMeta{Name: ip, UID: types.UID("uid-" + ip)},
		Spec:       networkingv1.IPAddressSpec{ParentRef: &networkingv1.ParentReference{Resource: "services", Namespace: ns, Name: svc}},
	}
}

func node(name string, cidrs ...string) *corev1.Node {
	n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: corev1.NodeSpec{PodCIDRs: cidrs}}
	if len(cidrs) > 0 {
		n.Spec.PodCIDR = cidrs[0]
	}
	return n
}

func memStore(t *testing.T, keys ...string) *alloc.MemStore {
	t.Helper()
	s := alloc.NewMemStore()
	for _, k := range keys {
		if err := s.Create(context.Background(), netip.MustParsePrefix(k)); err != nil {
			t.Fatal(err)
		}
	}
	return s
}

func keys(t *testing.T, s *alloc.MemStore) []string {
	t.Helper()
	var out []string
	for _, within := range []string{"0.0.0.0/0", "::/0"} {
		_ = s.List(context.Background(), netip.MustParsePrefix(within), func(k netip.Prefix) error {
			out = append(out, k.String())
			return nil
		})
	}
	return out
}

// A pass over a cluster that a killed server left half way (one Service
// downgraded whose status still shows its IPv6 ingress, one Node trimmed
// whose record is still there) finishes the job; a second pass writes
// nothing; what only the user can settle (a Service of IPv6 first, a Node
// with an IPv6 pod CIDR only) is reported, kept, and finished once it is
// settled.
func TestSyncConvergesFromAHalfDoneState(t *testing.T) {
	prefer, require, single := corev1.IPFamilyPolicyPreferDualStack, corev1.IPFamilyPolicyRequireDualStack, corev1.IPFamilyPolicySingleStack
	objs := []runtime.Object{
		service("default", "web", policy(prefer), families(v4, v6), ips("10.96.0.5", "fd00:96::5"), selector, lb("192.0.2.1", "2001:db8:2::1")),
		service("default", "half", policy(single), families(v4), ips("10.96.0.6"), selector, lb("192.0.2.2", "2001:db8:2::2")),
		service("default", "v6first", policy(prefer), families(v6, v4), ips("fd00:96::7", "10.96.0.7"), selector),
		service("kube-system", "kube-dns", policy(require), families(v4, v6), ips("10.96.0.10", "fd00:96::a")),
		service("default", "headless", policy(require), families(v4, v6), ips("None")),
		service("default", "classed", policy(single), families(v4), ips("10.96.0.8"), selector, lb("192.0.2.8", "2001:db8:9::8"), func(s *corev1.Service) {
			s.Spec.LoadBalancerClass = new("example.com/lb")
		}),
		ipAddress("10.96.0.5", "default", "web"), ipAddress("fd00:96::5", "default", "web"),
		ipAddress("fd00:96::6", "default", "half"),
		ipAddress("fd00:96::7", "default", "v6first"),
		ipAddress("fd00:96::a", "kube-system", "kube-dns"),
		ipAddress("fd00:96::99", "default", "gone"),
		node("n1", "10.244.1.0/24", "fd00:244:1::/64"),
		node("n2", "10.244.2.0/24"),
		node("n3", "fd00:244:3::/64"),
	}
	client := fake.NewClientset(objs...)
	lbRecs := memStore(t, "192.0.2.1/32", "2001:db8:2::1/128", "192.0.2.2/32", "2001:db8:2::2/128")
	nodeRecs := memStore(t, "10.244.1.0/24", "fd00:244:1::/64", "10.244.2.0/24", "fd00:244:2::/64", "fd00:244:3::/64")
	rec := record.NewFakeRecorder(100)
	r := &Reconciler{Client: client, Keep: Families{Services: only4, Pods: only4}, NodeCIDRs: nodeRecs, LBIPs: lbRecs, Recorder: rec}
	ctx := context.Background()

	res, err := r.Sync(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if res.ServicesDowngraded != 2 || res.IngressesTrimmed != 2 || res.NodesTrimmed != 1 ||
		res.IPAddressesDeleted != 4 || res.LBRecordsDeleted != 2 || res.NodeCIDRRecordsDeleted != 2 {
		t.Errorf("first pass: %+v", res)
	}
	assertLeft(t, res, "Service default/v6first", "IPAddress fd00:96::7", "Node n3", "node CIDR record fd00:244:3::/64")

	for _, name := range []string{"default/web", "kube-system/kube-dns"} {
		ns, n, _ := strings.Cut(name, "/")
		s, err := client.CoreV1().Services(ns).Get(ctx, n, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if *s.Spec.IPFamilyPolicy != single || !slices.Equal(s.Spec.IPFamilies, only4) || len(s.Spec.ClusterIPs) != 1 {
			t.Errorf("%s: %s %v %v, want SingleStack IPv4", name, *s.Spec.IPFamilyPolicy, s.Spec.IPFamilies, s.Spec.ClusterIPs)
		}
	}
	for _, name := range []string{"web", "half"} {
		s, err := client.CoreV1().Services("default").Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if in := s.Status.LoadBalancer.Ingress; len(in) != 1 || !netip.MustParseAddr(in[0].IP).Is4() {
			t.Errorf("%s: ingress %v, want its IPv4 one only", name, in)
		}
	}
	c, _ := client.CoreV1().Services("default").Get(ctx, "classed", metav1.GetOptions{})
	if len(c.Status.LoadBalancer.Ingress) != 2 {
		t.Errorf("the status of another load balancer was changed: %v", c.Status.LoadBalancer.Ingress)
	}
	h, _ := client.CoreV1().Services("default").Get(ctx, "headless", metav1.GetOptions{})
	if !slices.Equal(h.Spec.IPFamilies, both) {
		t.Errorf("headless Service without selector changed: %v", h.Spec.IPFamilies)
	}
	v, _ := client.CoreV1().Services("default").Get(ctx, "v6first", metav1.GetOptions{})
	if len(v.Spec.ClusterIPs) != 2 {
		t.Errorf("a Service of IPv6 first was changed: %v", v.Spec.ClusterIPs)
	}
	addrs, _ := client.NetworkingV1().IPAddresses().List(ctx, metav1.ListOptions{})
	var names []string
	for _, a := range addrs.Items {
		names = append(names, a.Name)
	}
	slices.Sort(names)
	if !slices.Equal(names, []string{"10.96.0.5", "fd00:96::7"}) {
		t.Errorf("IPAddresses left: %v, want 10.96.0.5 and the held fd00:96::7", names)
	}
	if got := keys(t, lbRecs); !slices.Equal(got, []string{"192.0.2.1/32", "192.0.2.2/32"}) {
		t.Errorf("LB records left: %v", got)
	}
	if got := keys(t, nodeRecs); !slices.Equal(got, []string{"10.244.1.0/24", "10.244.2.0/24", "fd00:244:3::/64"}) {
		t.Errorf("node CIDR records left: %v", got)
	}
	n1, _ := client.CoreV1().Nodes().Get(ctx, "n1", metav1.GetOptions{})
	if !slices.Equal(n1.Spec.PodCIDRs, []string{"10.244.1.0/24"}) || n1.Spec.PodCIDR != "10.244.1.0/24" {
		t.Errorf("n1: podCIDRs %v podCIDR %s", n1.Spec.PodCIDRs, n1.Spec.PodCIDR)
	}
	if len(rec.Events) != 3 {
		t.Errorf("%d events, want one per Service downgraded and Node trimmed", len(rec.Events))
	}

	res, err = r.Sync(ctx)
	if err != nil || res.Changed() {
		t.Fatalf("second pass: %+v, %v; want nothing written", res, err)
	}
	assertLeft(t, res, "Service default/v6first", "IPAddress fd00:96::7", "Node n3", "node CIDR record fd00:244:3::/64")

	// The user settles the rest: the Service deleted, node IPAM gives n3 an
	// IPv4 CIDR.
	if err := client.CoreV1().Services("default").Delete(ctx, "v6first", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	n3 := node("n3", "fd00:244:3::/64", "10.244.3.0/24")
	if _, err := client.CoreV1().Nodes().Update(ctx, n3, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	res, err = r.Sync(ctx)
	if err != nil || len(res.Left) != 0 || res.IPAddressesDeleted != 1 || res.NodesTrimmed != 1 || res.NodeCIDRRecordsDeleted != 1 {
		t.Fatalf("third pass: %+v, %v", res, err)
	}
	n3, _ = client.CoreV1().Nodes().Get(ctx, "n3", metav1.GetOptions{})
	if !slices.Equal(n3.Spec.PodCIDRs, []string{"10.244.3.0/24"}) || n3.Spec.PodCIDR != "10.244.3.0/24" {
		t.Errorf("n3: podCIDRs %v podCIDR %s", n3.Spec.PodCIDRs, n3.Spec.PodCIDR)
	}

	// Run returns once a pass converges.
	done := make(chan struct{})
	go func() { r.Run(ctx); close(done) }()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("Run did not return on a converged cluster")
	}
}

func assertLeft(t *testing.T, res Result, want ...string) {
	t.Helper()
	if len(res.Left) != len(want) {
		t.Errorf("left %q, want %d entries starting %q", res.Left, len(want), want)
		return
	}
	for _, w := range want {
		if !slices.ContainsFunc(res.Left, func(s string) bool { return strings.HasPrefix(s, w) }) {
			t.Errorf("left %q lacks %q", res.Left, w)
		}
	}
}

// Keeping only the service family, or only the pod family, touches only
// that side; keeping both does nothing at all.
func TestSyncTouchesOnlyTheDroppedSide(t *testing.T) {
	prefer := corev1.IPFamilyPolicyPreferDualStack
	objs := func() []runtime.Object {
		return []runtime.Object{
			service("default", "web", policy(prefer), families(v4, v6), ips("10.96.0.5", "fd00:96::5"), selector),
			ipAddress("fd00:96::5", "default", "web"),
			node("n1", "10.244.1.0/24", "fd00:244:1::/64"),
		}
	}
	ctx := context.Background()
	for _, tc := range []struct {
		name          string
		keep          Families
		svcs, nodes   int
		nodeRecordsGo int
	}{
		{"services only", Families{Services: only4, Pods: both}, 1, 0, 0},
		{"pods only", Families{Services: both, Pods: only4}, 0, 1, 1},
		{"nothing", Families{Services: both, Pods: both}, 0, 0, 0},
		{"no pod CIDRs at all", Families{Services: both}, 0, 0, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			client := fake.NewClientset(objs()...)
			nodeRecs := memStore(t, "10.244.1.0/24", "fd00:244:1::/64")
			r := &Reconciler{Client: client, Keep: tc.keep, NodeCIDRs: nodeRecs}
			res, err := r.Sync(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if res.ServicesDowngraded != tc.svcs || res.NodesTrimmed != tc.nodes || res.NodeCIDRRecordsDeleted != tc.nodeRecordsGo {
				t.Errorf("%+v", res)
			}
			if tc.svcs == 0 && len(client.Actions()) > 0 && tc.keep.DroppedServiceFamilies() == nil {
				for _, a := range client.Actions() {
					if a.GetResource().Resource == "services" || a.GetResource().Resource == "ipaddresses" {
						t.Errorf("touched %s keeping every service family", a.GetResource().Resource)
					}
				}
			}
		})
	}
}
