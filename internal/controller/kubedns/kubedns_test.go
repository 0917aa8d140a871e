package kubedns

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/duet-net/duet/internal/agent/clusterdns"
	"github.com/duet-net/duet/internal/controller/fakeapi"
)

var dualStack = []netip.Prefix{netip.MustParsePrefix("10.96.0.0/16"), netip.MustParsePrefix("fd00:10:96::/108")}

func TestServiceIP(t *testing.T) {
	for _, tc := range []struct {
		rng, want string // want "" for none
	}{
		{"10.96.0.0/16", "10.96.0.10"},
		{"fd00:10:96::/108", "fd00:10:96::a"},
		{"10.0.0.0/28", "10.0.0.10"},
		{"10.0.0.0/29", ""},          // 8 addresses: no 10th
		{"10.0.0.0/28", "10.0.0.10"}, // the broadcast is .15
		{"fd00::/125", ""},
		{"fd00::/124", "fd00::a"},
	} {
		got, ok := ServiceIP(netip.MustParsePrefix(tc.rng))
		if (tc.want == "") == ok || (ok && got.String() != tc.want) {
			t.Errorf("ServiceIP(%s) = %v, %v; want %q", tc.rng, got, ok, tc.want)
		}
	}
}

func TestService(t *testing.T) {
	for _, tc := range []struct {
		name     string
		ranges   []string
		policy   corev1.IPFamilyPolicy
		families []corev1.IPFamily
		ips      []string
	}{
		{"dual-stack, IPv4 primary", []string{"10.96.0.0/16", "fd00:10:96::/108"}, corev1.IPFamilyPolicyRequireDualStack,
			[]corev1.IPFamily{corev1.IPv4Protocol, corev1.IPv6Protocol}, []string{"10.96.0.10", "fd00:10:96::a"}},
		{"dual-stack, IPv6 primary", []string{"fd00:10:96::/108", "10.96.0.0/16"}, corev1.IPFamilyPolicyRequireDualStack,
			[]corev1.IPFamily{corev1.IPv6Protocol, corev1.IPv4Protocol}, []string{"fd00:10:96::a", "10.96.0.10"}},
		{"single-stack IPv6", []string{"fd00:10:96::/108"}, corev1.IPFamilyPolicySingleStack, []corev1.IPFamily{corev1.IPv6Protocol}, []string{"fd00:10:96::a"}},
		{"a range without a 10th address leaves the allocator to pick", []string{"10.96.0.0/29", "fd00:10:96::/108"}, corev1.IPFamilyPolicyRequireDualStack,
			[]corev1.IPFamily{corev1.IPv4Protocol, corev1.IPv6Protocol}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var ranges []netip.Prefix
			for _, r := range tc.ranges {
				ranges = append(ranges, netip.MustParsePrefix(r))
			}
			svc := Service(ranges)
			if *svc.Spec.IPFamilyPolicy != tc.policy || !slices.Equal(svc.Spec.IPFamilies, tc.families) || !slices.Equal(svc.Spec.ClusterIPs, tc.ips) {
				t.Errorf("policy %s, families %v, cluster IPs %v; want %s, %v, %v", *svc.Spec.IPFamilyPolicy, svc.Spec.IPFamilies, svc.Spec.ClusterIPs, tc.policy, tc.families, tc.ips)
			}
			if len(svc.Spec.Selector) != 0 || len(svc.Spec.Ports) != 2 || svc.Spec.Ports[0].Protocol != corev1.ProtocolUDP || svc.Spec.Ports[1].Name != "dns-tcp" {
				t.Errorf("ports %v, selector %v; want dns/53/UDP and dns-tcp/53/TCP, no selector", svc.Spec.Ports, svc.Spec.Selector)
			}
		})
	}
}

func node(name string, ready, dns bool, ips ...string) *corev1.Node {
	n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, Annotations: map[string]string{clusterdns.NodeAnnotation: fmt.Sprint(dns)}}}
	status := corev1.ConditionFalse
	if ready {
		status = corev1.ConditionTrue
	}
	n.Status.Conditions = []corev1.NodeCondition{{Type: corev1.NodeReady, Status: status}}
	for _, ip := range ips {
		n.Status.Addresses = append(n.Status.Addresses, corev1.NodeAddress{Type: corev1.NodeInternalIP, Address: ip})
	}
	n.Status.Addresses = append(n.Status.Addresses, corev1.NodeAddress{Type: corev1.NodeHostName, Address: name})
	return n
}

// endpointsOf is "family: node=ip ..." for each slice, by name.
func endpointsOf(ss []*discoveryv1.EndpointSlice) string {
	slices.SortFunc(ss, func(a, b *discoveryv1.EndpointSlice) int { return strings.Compare(a.Name, b.Name) })
	var out []string
	for _, s := range ss {
		var eps []string
		for _, e := range s.Endpoints {
			eps = append(eps, *e.NodeName+"="+e.Addresses[0])
		}
		out = append(out, s.Name+": "+strings.Join(eps, " "))
	}
	return strings.Join(out, "; ")
}

func TestDesiredSlices(t *testing.T) {
	svc := Service(dualStack)
	svc.UID = "u"
	nodes := []*corev1.Node{
		node("n2", true, true, "203.0.113.12", "2001:db8:0:1::12"),
		node("n1", true, true, "2001:db8:0:1::11", "203.0.113.11"), // IPv6 first: the family decides
		node("notready", false, true, "203.0.113.13", "2001:db8:0:1::13"),
		node("nodns", true, false, "203.0.113.14", "2001:db8:0:1::14"),
		node("v4only", true, true, "203.0.113.15"),
	}
	gone := node("deleting", true, true, "203.0.113.16")
	gone.DeletionTimestamp = &metav1.Time{Time: time.Now()}
	nodes = append(nodes, gone)
	got := desiredSlices(svc, nodes)
	want := "kube-dns-ipv4: n1=203.0.113.11 n2=203.0.113.12 v4only=203.0.113.15; kube-dns-ipv6: n1=2001:db8:0:1::11 n2=2001:db8:0:1::12"
	if s := endpointsOf(got); s != want {
		t.Errorf("slices %s\nwant %s", s, want)
	}
	for _, s := range got {
		if len(s.Ports) != 2 || *s.Ports[0].Port != 53 || *s.Ports[0].Protocol != corev1.ProtocolUDP || *s.Ports[1].Name != "dns-tcp" {
			t.Errorf("%s ports %v, want dns/53/UDP and dns-tcp/53/TCP", s.Name, s.Ports)
		}
		if s.Labels[discoveryv1.LabelManagedBy] != ManagedBy || s.OwnerReferences[0].UID != "u" {
			t.Errorf("%s: labels %v, owners %v", s.Name, s.Labels, s.OwnerReferences)
		}
		for k, v := range s.Labels {
			if errs := validation.IsValidLabelValue(v); len(errs) > 0 {
				t.Errorf("%s: label %s=%q is invalid: %v", s.Name, k, v, errs)
			}
		}
	}
	// A port the agents do not listen on is not published.
	svc.Spec.Ports = append(svc.Spec.Ports, corev1.ServicePort{Name: "metrics", Port: 9153, TargetPort: intstr.FromInt32(9153), Protocol: corev1.ProtocolTCP})
	if got := desiredSlices(svc, nodes); len(got[0].Ports) != 2 {
		t.Errorf("ports %v: the metrics port was published", got[0].Ports)
	}
}

// The controller creates kube-dns when it is missing and keeps its
// slices to the nodes that serve DNS; a selector hands it to the user.
func TestController(t *testing.T) {
	ctx := context.Background()
	client := fake.NewClientset(
		node("n1", true, true, "203.0.113.11", "2001:db8:0:1::11"),
		node("n2", true, false, "203.0.113.12", "2001:db8:0:1::12"),
	)
	fakeapi.ServeLikeAPIServer(client)
	factory := informers.NewSharedInformerFactory(client, 0)
	c := New(client, factory.Core().V1().Nodes(), factory.Core().V1().Services(), factory.Discovery().V1().EndpointSlices(), dualStack)
	c.retryBase = 10 * time.Millisecond
	stop := fakeapi.Background(ctx, func(ctx context.Context) {
		factory.Start(ctx.Done())
		c.Run(ctx)
		factory.Shutdown()
	})
	t.Cleanup(stop)
	if ok, _ := fakeapi.Eventually(ctx, 5*time.Second, func() (bool, string) {
		return fakeapi.Watching(client, "nodes", "services", "endpointslices"), ""
	}); !ok {
		t.Fatal("informers not watching")
	}
	slicesNow := func() string {
		list, err := client.DiscoveryV1().EndpointSlices(Namespace).List(ctx, metav1.ListOptions{})
		if err != nil {
			return err.Error()
		}
		var ss []*discoveryv1.EndpointSlice
		for i := range list.Items {
			ss = append(ss, &list.Items[i])
		}
		return endpointsOf(ss)
	}
	expect := func(what, want string) {
		t.Helper()
		if ok, last := fakeapi.Eventually(ctx, 5*time.Second, func() (bool, string) { s := slicesNow(); return s == want, s }); !ok {
			t.Fatalf("%s: slices %q, want %q", what, last, want)
		}
	}
	expect("kube-dns created with n1 behind it", "kube-dns-ipv4: n1=203.0.113.11; kube-dns-ipv6: n1=2001:db8:0:1::11")
	svc, err := client.CoreV1().Services(Namespace).Get(ctx, Name, metav1.GetOptions{})
	if err != nil || !slices.Equal(svc.Spec.ClusterIPs, []string{"10.96.0.10", "fd00:10:96::a"}) {
		t.Fatalf("kube-dns %v, %v; want it created with 10.96.0.10 and fd00:10:96::a", svc, err)
	}

	// n2's agent starts serving DNS; n1 goes NotReady.
	n2 := node("n2", true, true, "203.0.113.12", "2001:db8:0:1::12")
	if _, err := client.CoreV1().Nodes().Update(ctx, n2, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	expect("n2 serves DNS", "kube-dns-ipv4: n1=203.0.113.11 n2=203.0.113.12; kube-dns-ipv6: n1=2001:db8:0:1::11 n2=2001:db8:0:1::12")
	n1 := node("n1", false, true, "203.0.113.11", "2001:db8:0:1::11")
	if _, err := client.CoreV1().Nodes().Update(ctx, n1, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	expect("n1 NotReady", "kube-dns-ipv4: n2=203.0.113.12; kube-dns-ipv6: n2=2001:db8:0:1::12")

	// A slice deleted by hand comes back.
	if err := client.DiscoveryV1().EndpointSlices(Namespace).Delete(ctx, "kube-dns-ipv6", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	expect("the IPv6 slice put back", "kube-dns-ipv4: n2=203.0.113.12; kube-dns-ipv6: n2=2001:db8:0:1::12")

	// A selector: the user runs DNS pods; Duet's slices go.
	svc, _ = client.CoreV1().Services(Namespace).Get(ctx, Name, metav1.GetOptions{})
	svc.Spec.Selector = map[string]string{"k8s-app": "kube-dns"}
	if _, err := client.CoreV1().Services(Namespace).Update(ctx, svc, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	expect("a selector set", "")

	// Deleted, it is created again.
	if err := client.CoreV1().Services(Namespace).Delete(ctx, Name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	expect("kube-dns recreated", "kube-dns-ipv4: n2=203.0.113.12; kube-dns-ipv6: n2=2001:db8:0:1::12")
}

func TestAddedFamilies(t *testing.T) {
	v4 := netip.MustParsePrefix("10.96.0.0/16")
	v6 := netip.MustParsePrefix("fd00:10:96::/108")
	single := Service([]netip.Prefix{v4})
	single.Spec.ClusterIPs = []string{"10.96.0.10"}
	t.Run("a single-stack kube-dns gains the appended family", func(t *testing.T) {
		got := addedFamilies(single, []netip.Prefix{v4, v6})
		if got == nil {
			t.Fatal("no change")
		}
		if p := got.Spec.IPFamilyPolicy; p == nil || *p != corev1.IPFamilyPolicyRequireDualStack {
			t.Errorf("policy %v, want RequireDualStack", p)
		}
		if !slices.Equal(got.Spec.IPFamilies, []corev1.IPFamily{corev1.IPv4Protocol, corev1.IPv6Protocol}) || !slices.Equal(got.Spec.ClusterIPs, []string{"10.96.0.10", "fd00:10:96::a"}) {
			t.Errorf("ipFamilies %v clusterIPs %v", got.Spec.IPFamilies, got.Spec.ClusterIPs)
		}
		if len(single.Spec.ClusterIPs) != 1 {
			t.Errorf("the Service given was changed: %v", single.Spec.ClusterIPs)
		}
	})
	selected := single.DeepCopy()
	selected.Spec.Selector = map[string]string{"k8s-app": "coredns"}
	for _, tc := range []struct {
		name   string
		svc    *corev1.Service
		ranges []netip.Prefix
	}{
		{"same families", single, []netip.Prefix{v4}},
		{"already dual-stack", Service([]netip.Prefix{v4, v6}), []netip.Prefix{v4, v6}},
		{"a user's kube-dns with a selector", selected, []netip.Prefix{v4, v6}},
		{"another primary family", single, []netip.Prefix{v6, v4}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := addedFamilies(tc.svc, tc.ranges); got != nil {
				t.Errorf("changed to ipFamilies %v clusterIPs %v", got.Spec.IPFamilies, got.Spec.ClusterIPs)
			}
		})
	}
}

// A ServiceCIDR of a second family applied while the controller runs:
// kube-dns gains the family and a slice of it, nothing restarted.
func TestControllerGainsAFamilyLive(t *testing.T) {
	ctx := context.Background()
	client := fake.NewClientset(node("n1", true, true, "203.0.113.11", "2001:db8:0:1::11"))
	fakeapi.ServeLikeAPIServer(client)
	factory := informers.NewSharedInformerFactory(client, 0)
	c := New(client, factory.Core().V1().Nodes(), factory.Core().V1().Services(), factory.Discovery().V1().EndpointSlices(), dualStack[:1])
	c.retryBase = 10 * time.Millisecond
	stop := fakeapi.Background(ctx, func(ctx context.Context) {
		factory.Start(ctx.Done())
		c.Run(ctx)
		factory.Shutdown()
	})
	t.Cleanup(stop)
	state := func() string {
		svc, err := client.CoreV1().Services(Namespace).Get(ctx, Name, metav1.GetOptions{})
		if err != nil {
			return err.Error()
		}
		list, _ := client.DiscoveryV1().EndpointSlices(Namespace).List(ctx, metav1.ListOptions{})
		var ss []*discoveryv1.EndpointSlice
		for i := range list.Items {
			ss = append(ss, &list.Items[i])
		}
		return fmt.Sprintf("%v %s", svc.Spec.ClusterIPs, endpointsOf(ss))
	}
	expect := func(what, want string) {
		t.Helper()
		if ok, last := fakeapi.Eventually(ctx, 5*time.Second, func() (bool, string) { s := state(); return s == want, s }); !ok {
			t.Fatalf("%s: %q, want %q", what, last, want)
		}
	}
	expect("IPv4 only", "[10.96.0.10] kube-dns-ipv4: n1=203.0.113.11")
	c.SetRanges(dualStack)
	expect("IPv6 added", "[10.96.0.10 fd00:10:96::a] kube-dns-ipv4: n1=203.0.113.11; kube-dns-ipv6: n1=2001:db8:0:1::11")
}
