package endpointslice

import (
	"context"
	"fmt"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/client-go/tools/cache"
	"k8s.io/utils/ptr"

	"github.com/duet-net/duet/internal/controller/fakeapi"
)

const (
	ns          = "default"
	waitTimeout = 30 * time.Second
)

var (
	v4     = []v1.IPFamily{v1.IPv4Protocol}
	v6     = []v1.IPFamily{v1.IPv6Protocol}
	v4v6   = []v1.IPFamily{v1.IPv4Protocol, v1.IPv6Protocol}
	v6v4   = []v1.IPFamily{v1.IPv6Protocol, v1.IPv4Protocol}
	ipv4   = discovery.AddressTypeIPv4
	ipv6   = discovery.AddressTypeIPv6
	zoneZ1 = map[string]string{v1.LabelTopologyZone: "z1"}
)

// testOptions syncs at once and retries fast: tests wait for convergence
// by polling, so delays only slow them down.
func testOptions() Options {
	return Options{BatchPeriod: -1, RetryBaseDelay: 5 * time.Millisecond, RetryMaxDelay: 200 * time.Millisecond}
}

func node(name string, labels map[string]string) *v1.Node {
	return &v1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, UID: types.UID("node-" + name), Labels: labels}}
}

// service is fakeapi.Service in the test namespace.
func service(name string, families []v1.IPFamily, mutate ...func(*v1.Service)) *v1.Service {
	return fakeapi.Service(ns, name, families, mutate...)
}

// pod is fakeapi.Pod in the test namespace.
func pod(name, app, nodeName string, ready bool, httpPort int32, ips ...string) *v1.Pod {
	return fakeapi.Pod(ns, name, app, nodeName, ready, httpPort, ips...)
}

var terminating = fakeapi.Terminating

// cluster is a controller under test and the fake API it talks to.
type cluster struct {
	t       *testing.T
	ctx     context.Context
	client  *fake.Clientset
	factory informers.SharedInformerFactory
	ctrl    *Controller
}

// newCluster builds a controller over a fake API holding objs and starts
// its informers, but not the controller.
func newCluster(t *testing.T, opts Options, objs ...runtime.Object) *cluster {
	t.Helper()
	client := fake.NewClientset(objs...)
	fakeapi.ServeLikeAPIServer(client)
	factory := informers.NewSharedInformerFactory(client, 0)
	ctrl, err := New(client, factory.Core().V1().Pods(), factory.Core().V1().Services(), factory.Core().V1().Nodes(),
		factory.Discovery().V1().EndpointSlices(), opts)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	factory.Start(ctx.Done())
	t.Cleanup(func() {
		cancel()
		factory.Shutdown()
	})
	c := &cluster{t: t, ctx: ctx, client: client, factory: factory, ctrl: ctrl}
	c.waitFor("informers watching", func() (bool, string) {
		return fakeapi.Watching(client, "pods", "services", "nodes", "endpointslices"), fmt.Sprint(client.Actions())
	})
	return c
}

// start runs the controller until the test ends or the returned function
// is called; that function returns once Run has.
func (c *cluster) start(workers int) (stop func()) {
	stop = fakeapi.Background(c.ctx, func(ctx context.Context) { c.ctrl.Run(ctx, workers) })
	c.t.Cleanup(stop)
	return stop
}

// startedCluster is newCluster plus start with two workers.
func startedCluster(t *testing.T, opts Options, objs ...runtime.Object) *cluster {
	c := newCluster(t, opts, objs...)
	c.start(2)
	return c
}

func (c *cluster) slicesOf(svc string) []discovery.EndpointSlice {
	c.t.Helper()
	list, err := c.client.DiscoveryV1().EndpointSlices(ns).List(c.ctx, metav1.ListOptions{})
	if err != nil {
		c.t.Fatal(err)
	}
	var out []discovery.EndpointSlice
	for _, s := range list.Items {
		if s.Labels[discovery.LabelServiceName] == svc {
			out = append(out, s)
		}
	}
	return out
}

// endpoints summarizes a Service's slices as what a reader of them sees:
// per address type, one sorted line per endpoint with the slice's ports.
func endpoints(slices []discovery.EndpointSlice) map[discovery.AddressType][]string {
	out := map[discovery.AddressType][]string{}
	for _, s := range slices {
		var ports []string
		for _, p := range s.Ports {
			ports = append(ports, fmt.Sprintf("%s:%d", ptr.Deref(p.Name, ""), ptr.Deref(p.Port, 0)))
		}
		sort.Strings(ports)
		if _, ok := out[s.AddressType]; !ok {
			out[s.AddressType] = []string{}
		}
		for _, ep := range s.Endpoints {
			out[s.AddressType] = append(out[s.AddressType], line(ep, ports))
		}
	}
	for _, l := range out {
		sort.Strings(l)
	}
	return out
}

func line(ep discovery.Endpoint, ports []string) string {
	b := func(p *bool) string {
		if p == nil {
			return "?"
		}
		if *p {
			return "1"
		}
		return "0"
	}
	target := "-"
	if ep.TargetRef != nil {
		target = ep.TargetRef.Kind + "/" + ep.TargetRef.Name
	}
	return fmt.Sprintf("%s %s ready=%s serving=%s terminating=%s node=%s zone=%s ports=%s",
		strings.Join(ep.Addresses, ","), target, b(ep.Conditions.Ready), b(ep.Conditions.Serving), b(ep.Conditions.Terminating),
		ptr.Deref(ep.NodeName, "-"), ptr.Deref(ep.Zone, "-"), strings.Join(ports, ","))
}

// waitFor polls until cond holds, failing the test with what it last
// reported if it does not within waitTimeout.
func (c *cluster) waitFor(what string, cond func() (bool, string)) {
	c.t.Helper()
	if ok, last := fakeapi.Eventually(c.ctx, waitTimeout, cond); !ok {
		c.t.Fatalf("%s: not reached within %v: %s", what, waitTimeout, last)
	}
}

// waitEndpoints waits until a Service's slices hold exactly want.
func (c *cluster) waitEndpoints(svc string, want map[discovery.AddressType][]string) {
	c.t.Helper()
	c.waitFor("endpoints of Service "+svc, func() (bool, string) {
		got := endpoints(c.slicesOf(svc))
		d := cmp.Diff(want, got)
		return d == "", "(-want +got)\n" + d
	})
}

func (c *cluster) create(objs ...runtime.Object) {
	c.t.Helper()
	for _, o := range objs {
		var err error
		switch o := o.(type) {
		case *v1.Pod:
			_, err = c.client.CoreV1().Pods(o.Namespace).Create(c.ctx, o, metav1.CreateOptions{})
		case *v1.Service:
			_, err = c.client.CoreV1().Services(o.Namespace).Create(c.ctx, o, metav1.CreateOptions{})
		case *v1.Node:
			_, err = c.client.CoreV1().Nodes().Create(c.ctx, o, metav1.CreateOptions{})
		case *discovery.EndpointSlice:
			_, err = c.client.DiscoveryV1().EndpointSlices(o.Namespace).Create(c.ctx, o, metav1.CreateOptions{})
		default:
			c.t.Fatalf("cannot create %T", o)
		}
		if err != nil {
			c.t.Fatal(err)
		}
	}
}

// updateService applies mutate to the current Service, retrying on
// conflicts with the controller's own writes.
func (c *cluster) updateService(name string, mutate func(*v1.Service)) {
	c.t.Helper()
	for {
		s, err := c.client.CoreV1().Services(ns).Get(c.ctx, name, metav1.GetOptions{})
		if err != nil {
			c.t.Fatal(err)
		}
		mutate(s)
		_, err = c.client.CoreV1().Services(ns).Update(c.ctx, s, metav1.UpdateOptions{})
		if apierrors.IsConflict(err) {
			continue
		}
		if err != nil {
			c.t.Fatal(err)
		}
		return
	}
}

func (c *cluster) updatePod(name string, mutate func(*v1.Pod)) {
	c.t.Helper()
	if err := c.tryUpdatePod(name, mutate); err != nil {
		c.t.Fatal(err)
	}
}

func (c *cluster) tryUpdatePod(name string, mutate func(*v1.Pod)) error {
	return fakeapi.UpdatePodStatus(c.ctx, c.client, ns, name, mutate)
}

func ep(addr, podName string, ready, serving, terminating bool, nodeName, zone, ports string) string {
	b := func(v bool) string {
		if v {
			return "1"
		}
		return "0"
	}
	return fmt.Sprintf("%s Pod/%s ready=%s serving=%s terminating=%s node=%s zone=%s ports=%s",
		addr, podName, b(ready), b(serving), b(terminating), nodeName, zone, ports)
}

// readyEP is an endpoint of a ready Pod.
func readyEP(addr, podName, nodeName, zone, ports string) string {
	return ep(addr, podName, true, true, false, nodeName, zone, ports)
}

func TestSlicesPerFamily(t *testing.T) {
	objs := func() []runtime.Object {
		return []runtime.Object{
			node("n1", zoneZ1), node("n2", nil),
			pod("a", "web", "n1", true, 8080, "10.0.0.1", "fd00::1"),
			pod("b", "web", "n2", false, 8080, "fd00::2", "10.0.0.2"),
			pod("v4only", "web", "n1", true, 8080, "10.0.0.3"),
			pod("v6only", "web", "n2", true, 8080, "fd00::4"),
			pod("other", "db", "n1", true, 8080, "10.0.0.5", "fd00::5"),
		}
	}
	wantV4 := []string{
		readyEP("10.0.0.1", "a", "n1", "z1", "http:8080"),
		ep("10.0.0.2", "b", false, false, false, "n2", "-", "http:8080"),
		readyEP("10.0.0.3", "v4only", "n1", "z1", "http:8080"),
	}
	wantV6 := []string{
		readyEP("fd00::1", "a", "n1", "z1", "http:8080"),
		ep("fd00::2", "b", false, false, false, "n2", "-", "http:8080"),
		readyEP("fd00::4", "v6only", "n2", "-", "http:8080"),
	}
	for _, tc := range []struct {
		name     string
		families []v1.IPFamily
		want     map[discovery.AddressType][]string
	}{
		{"single-stack IPv4 Service gets IPv4 slices only, skipping Pods without an IPv4 address", v4, map[discovery.AddressType][]string{ipv4: wantV4}},
		{"single-stack IPv6 Service gets IPv6 slices only, skipping Pods without an IPv6 address", v6, map[discovery.AddressType][]string{ipv6: wantV6}},
		{"dual-stack IPv4-primary Service gets slices of both families", v4v6, map[discovery.AddressType][]string{ipv4: wantV4, ipv6: wantV6}},
		{"dual-stack IPv6-primary Service gets slices of both families", v6v4, map[discovery.AddressType][]string{ipv4: wantV4, ipv6: wantV6}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := startedCluster(t, testOptions(), append(objs(), service("web", tc.families))...)
			c.waitEndpoints("web", tc.want)
			for _, s := range c.slicesOf("web") {
				if got := s.Labels[discovery.LabelManagedBy]; got != ManagedBy {
					t.Errorf("slice %s is labelled managed-by %q, want %q", s.Name, got, ManagedBy)
				}
				if got := s.Labels["team"]; got != "net" {
					t.Errorf("slice %s does not carry the Service's labels: %v", s.Name, s.Labels)
				}
				if _, ok := s.Labels[v1.IsHeadlessService]; ok {
					t.Errorf("slice %s of a ClusterIP Service is labelled headless", s.Name)
				}
				ref := metav1.GetControllerOf(&s)
				if ref == nil || ref.Kind != "Service" || ref.Name != "web" || ref.UID != "svc-web" {
					t.Errorf("slice %s is controlled by %+v, want Service web", s.Name, ref)
				}
				if len(s.Ports) != 1 || ptr.Deref(s.Ports[0].Protocol, "") != v1.ProtocolTCP {
					t.Errorf("slice %s has ports %+v, want one TCP port", s.Name, s.Ports)
				}
			}
		})
	}
}

func TestNamedTargetPortResolvedPerPod(t *testing.T) {
	c := startedCluster(t, testOptions(),
		node("n1", nil),
		service("web", v4v6),
		pod("p8080", "web", "n1", true, 8080, "10.0.0.1", "fd00::1"),
		pod("p9090", "web", "n1", true, 9090, "10.0.0.2", "fd00::2"),
		pod("also8080", "web", "n1", true, 8080, "10.0.0.3", "fd00::3"),
		// A Pod without the named port still backs the Service, as in
		// Kubernetes: in a slice of its own with no ports.
		pod("noport", "web", "n1", true, 0, "10.0.0.4", "fd00::4"),
	)
	c.waitEndpoints("web", map[discovery.AddressType][]string{
		ipv4: {
			readyEP("10.0.0.1", "p8080", "n1", "-", "http:8080"),
			readyEP("10.0.0.2", "p9090", "n1", "-", "http:9090"),
			readyEP("10.0.0.3", "also8080", "n1", "-", "http:8080"),
			readyEP("10.0.0.4", "noport", "n1", "-", ""),
		},
		ipv6: {
			readyEP("fd00::1", "p8080", "n1", "-", "http:8080"),
			readyEP("fd00::2", "p9090", "n1", "-", "http:9090"),
			readyEP("fd00::3", "also8080", "n1", "-", "http:8080"),
			readyEP("fd00::4", "noport", "n1", "-", ""),
		},
	})
	if n := len(c.slicesOf("web")); n != 6 {
		t.Errorf("got %d slices, want 6: one per family and distinct port set", n)
	}
}

func TestEndpointConditions(t *testing.T) {
	succeeded := pod("p", "web", "n1", false, 8080, "10.0.0.1")
	succeeded.Status.Phase = v1.PodSucceeded
	for _, tc := range []struct {
		name            string
		pod             *v1.Pod
		publishNotReady bool
		want            []string
	}{
		{"a ready Pod is ready and serving", pod("p", "web", "n1", true, 8080, "10.0.0.1"), false,
			[]string{ep("10.0.0.1", "p", true, true, false, "n1", "-", "http:8080")}},
		{"a Pod that is not ready is listed neither ready nor serving", pod("p", "web", "n1", false, 8080, "10.0.0.1"), false,
			[]string{ep("10.0.0.1", "p", false, false, false, "n1", "-", "http:8080")}},
		{"a terminating ready Pod is serving and terminating but not ready", terminating(pod("p", "web", "n1", true, 8080, "10.0.0.1")), false,
			[]string{ep("10.0.0.1", "p", false, true, true, "n1", "-", "http:8080")}},
		{"a terminating Pod that is not ready is only terminating", terminating(pod("p", "web", "n1", false, 8080, "10.0.0.1")), false,
			[]string{ep("10.0.0.1", "p", false, false, true, "n1", "-", "http:8080")}},
		{"publishNotReadyAddresses makes a Pod that is not ready ready", pod("p", "web", "n1", false, 8080, "10.0.0.1"), true,
			[]string{ep("10.0.0.1", "p", true, false, false, "n1", "-", "http:8080")}},
		{"publishNotReadyAddresses makes a terminating Pod ready", terminating(pod("p", "web", "n1", true, 8080, "10.0.0.1")), true,
			[]string{ep("10.0.0.1", "p", true, true, true, "n1", "-", "http:8080")}},
		{"a Pod that has finished is not an endpoint", succeeded, false, []string{}},
		{"a Pod without an IP is not an endpoint", pod("p", "web", "n1", true, 8080), false, []string{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			svc := service("web", v4, func(s *v1.Service) { s.Spec.PublishNotReadyAddresses = tc.publishNotReady })
			c := startedCluster(t, testOptions(), node("n1", nil), svc, tc.pod)
			c.waitEndpoints("web", map[discovery.AddressType][]string{ipv4: tc.want})
		})
	}
}

func TestEndpointsPerSliceCapped(t *testing.T) {
	for _, tc := range []struct {
		name       string
		max        int32
		pods       int
		wantSlices int
	}{
		{"250 Pods fill 3 slices of at most 100 by default", 0, 250, 3},
		{"the cap is an option", 40, 100, 3},
		{"exactly the cap fits one slice", 0, 100, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			objs := []runtime.Object{node("n1", nil), service("web", v4v6)}
			var want4, want6 []string
			for i := range tc.pods {
				a4, a6 := fmt.Sprintf("10.0.%d.%d", i/200, i%200+1), fmt.Sprintf("fd00::%x", i+1)
				name := fmt.Sprintf("p%03d", i)
				objs = append(objs, pod(name, "web", "n1", true, 8080, a4, a6))
				want4 = append(want4, readyEP(a4, name, "n1", "-", "http:8080"))
				want6 = append(want6, readyEP(a6, name, "n1", "-", "http:8080"))
			}
			sort.Strings(want4)
			sort.Strings(want6)
			opts := testOptions()
			opts.MaxEndpointsPerSlice = tc.max
			c := startedCluster(t, opts, objs...)
			c.waitEndpoints("web", map[discovery.AddressType][]string{ipv4: want4, ipv6: want6})
			limit := int(tc.max)
			if limit == 0 {
				limit = DefaultMaxEndpointsPerSlice
			}
			perFamily := map[discovery.AddressType]int{}
			for _, s := range c.slicesOf("web") {
				perFamily[s.AddressType]++
				if len(s.Endpoints) > limit {
					t.Errorf("slice %s holds %d endpoints, more than %d", s.Name, len(s.Endpoints), limit)
				}
			}
			if perFamily[ipv4] != tc.wantSlices || perFamily[ipv6] != tc.wantSlices {
				t.Errorf("slices per family = %v, want %d each", perFamily, tc.wantSlices)
			}
		})
	}
}

func TestPodChangesUpdateSlices(t *testing.T) {
	c := startedCluster(t, testOptions(),
		node("n1", nil), service("web", v4v6),
		pod("a", "web", "n1", true, 8080, "10.0.0.1", "fd00::1"),
		pod("b", "web", "n1", true, 8080, "10.0.0.2", "fd00::2"),
	)
	both := func(eps ...[2]string) map[discovery.AddressType][]string {
		out := map[discovery.AddressType][]string{ipv4: {}, ipv6: {}}
		for _, e := range eps {
			out[ipv4] = append(out[ipv4], e[0])
			out[ipv6] = append(out[ipv6], e[1])
		}
		return out
	}
	a := [2]string{readyEP("10.0.0.1", "a", "n1", "-", "http:8080"), readyEP("fd00::1", "a", "n1", "-", "http:8080")}
	b := [2]string{readyEP("10.0.0.2", "b", "n1", "-", "http:8080"), readyEP("fd00::2", "b", "n1", "-", "http:8080")}
	c.waitEndpoints("web", both(a, b))

	if err := c.client.CoreV1().Pods(ns).Delete(c.ctx, "a", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	c.waitEndpoints("web", both(b))

	c.updatePod("b", func(p *v1.Pod) { fakeapi.SetReady(p, false) })
	bNotReady := [2]string{ep("10.0.0.2", "b", false, false, false, "n1", "-", "http:8080"), ep("fd00::2", "b", false, false, false, "n1", "-", "http:8080")}
	c.waitEndpoints("web", both(bNotReady))

	c.create(pod("c", "web", "n1", true, 8080, "10.0.0.3", "fd00::3"))
	cEP := [2]string{readyEP("10.0.0.3", "c", "n1", "-", "http:8080"), readyEP("fd00::3", "c", "n1", "-", "http:8080")}
	c.waitEndpoints("web", both(bNotReady, cEP))

	// Relabelling a Pod away from the selector takes it out.
	c.updatePod("b", func(p *v1.Pod) { p.Labels = map[string]string{"app": "elsewhere"} })
	c.waitEndpoints("web", both(cEP))

	// The last Pod gone leaves one empty slice per family, as in
	// Kubernetes, so that readers can tell "no endpoints" from "not synced".
	if err := c.client.CoreV1().Pods(ns).Delete(c.ctx, "c", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	c.waitEndpoints("web", both())
}

func TestFamilyChanges(t *testing.T) {
	c := startedCluster(t, testOptions(),
		node("n1", nil), service("web", v4),
		pod("a", "web", "n1", true, 8080, "10.0.0.1", "fd00::1"),
	)
	a4, a6 := readyEP("10.0.0.1", "a", "n1", "-", "http:8080"), readyEP("fd00::1", "a", "n1", "-", "http:8080")
	c.waitEndpoints("web", map[discovery.AddressType][]string{ipv4: {a4}})

	c.updateService("web", func(s *v1.Service) { s.Spec.IPFamilies = v4v6 })
	c.waitEndpoints("web", map[discovery.AddressType][]string{ipv4: {a4}, ipv6: {a6}})

	c.updateService("web", func(s *v1.Service) { s.Spec.IPFamilies = v4 })
	c.waitEndpoints("web", map[discovery.AddressType][]string{ipv4: {a4}})

	// Not a change the API allows, but the controller follows whatever
	// families a Service names.
	c.updateService("web", func(s *v1.Service) { s.Spec.IPFamilies = v6 })
	c.waitEndpoints("web", map[discovery.AddressType][]string{ipv6: {a6}})
}

func TestHeadlessServiceGetsSlices(t *testing.T) {
	svc := service("db", v4v6, func(s *v1.Service) {
		s.Spec.ClusterIP = v1.ClusterIPNone
		s.Spec.Ports = nil
	})
	c := startedCluster(t, testOptions(), node("n1", nil), svc, pod("a", "db", "n1", true, 5432, "10.0.0.1", "fd00::1"))
	c.waitEndpoints("db", map[discovery.AddressType][]string{
		ipv4: {readyEP("10.0.0.1", "a", "n1", "-", "")},
		ipv6: {readyEP("fd00::1", "a", "n1", "-", "")},
	})
	for _, s := range c.slicesOf("db") {
		if _, ok := s.Labels[v1.IsHeadlessService]; !ok {
			t.Errorf("slice %s of a headless Service lacks the %s label: %v", s.Name, v1.IsHeadlessService, s.Labels)
		}
	}
}

// TestServicesThatGetNoSlices drives one sync directly, so that "nothing
// happened" needs no waiting.
func TestServicesThatGetNoSlices(t *testing.T) {
	userSlice := &discovery.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{Name: "ext-1", Namespace: ns, UID: "user",
			Labels: map[string]string{discovery.LabelServiceName: "ext"}},
		AddressType: ipv4,
		Endpoints:   []discovery.Endpoint{{Addresses: []string{"192.0.2.1"}}},
	}
	ourSlice := &discovery.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{Name: "ext-ours", Namespace: ns, UID: "ours",
			Labels: map[string]string{discovery.LabelServiceName: "ext", discovery.LabelManagedBy: ManagedBy}},
		AddressType: ipv4,
	}
	for _, tc := range []struct {
		name        string
		svc         *v1.Service
		wantDeleted []string
	}{
		{"a Service without selector keeps the slices its owner wrote", service("ext", v4, func(s *v1.Service) { s.Spec.Selector = nil }), nil},
		// The slices name the Service as their owner: the garbage
		// collector deletes them.
		{"a deleted Service's slices are left to the garbage collector", nil, nil},
		{"an ExternalName Service has none, and loses those it had as another type", service("ext", nil, func(s *v1.Service) {
			s.Spec.Type = v1.ServiceTypeExternalName
			s.Spec.ExternalName = "example.com"
			s.Spec.ClusterIP = ""
		}), []string{"ext-ours"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			objs := []runtime.Object{node("n1", nil), userSlice.DeepCopy(), ourSlice.DeepCopy(), pod("a", "ext", "n1", true, 8080, "10.0.0.1")}
			if tc.svc != nil {
				objs = append(objs, tc.svc)
			}
			c := newCluster(t, testOptions(), objs...)
			if !cache.WaitForCacheSync(c.ctx.Done(), c.ctrl.loop.HasSynced) {
				t.Fatal("caches did not sync")
			}
			c.client.ClearActions()
			if err := c.ctrl.syncService(c.ctx, testRunState(t, c.ctrl), ns+"/ext"); err != nil {
				t.Fatal(err)
			}
			var deleted []string
			for _, a := range c.client.Actions() {
				if a.GetResource().Resource != "endpointslices" {
					continue
				}
				if d, ok := a.(interface{ GetName() string }); ok && a.GetVerb() == "delete" {
					deleted = append(deleted, d.GetName())
					continue
				}
				t.Errorf("unexpected %s of endpointslices", a.GetVerb())
			}
			if !slices.Equal(deleted, tc.wantDeleted) {
				t.Errorf("deleted slices %v, want %v", deleted, tc.wantDeleted)
			}
		})
	}
}

// TestStartReconcilesWhatChangedWhileStopped covers a new leader: slices
// that no longer match their Pods, Pods and Services added meanwhile, and
// a controller that is stopped and run again.
func TestStartReconcilesWhatChangedWhileStopped(t *testing.T) {
	outdated := &discovery.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{Name: "web-old", Namespace: ns, UID: "outdated",
			Labels:          map[string]string{discovery.LabelServiceName: "web", discovery.LabelManagedBy: ManagedBy},
			OwnerReferences: []metav1.OwnerReference{{APIVersion: "v1", Kind: "Service", Name: "web", UID: "svc-web", Controller: ptr.To(true)}}},
		AddressType: ipv4,
		Endpoints:   []discovery.Endpoint{{Addresses: []string{"10.0.9.8"}, TargetRef: &v1.ObjectReference{Kind: "Pod", Namespace: ns, Name: "long-gone"}}},
	}
	c := newCluster(t, testOptions(), node("n1", nil), service("web", v4), outdated,
		pod("a", "web", "n1", true, 8080, "10.0.0.1"))
	stop := c.start(1)
	a := readyEP("10.0.0.1", "a", "n1", "-", "http:8080")
	c.waitEndpoints("web", map[discovery.AddressType][]string{ipv4: {a}})

	// While no controller runs, a Pod and a Service are added.
	stop()
	c.create(pod("b", "web", "n1", true, 8080, "10.0.0.2"), service("new", v4), pod("x", "new", "n1", true, 8080, "10.0.0.3"))
	c.start(1)
	c.waitEndpoints("web", map[discovery.AddressType][]string{ipv4: {a, readyEP("10.0.0.2", "b", "n1", "-", "http:8080")}})
	c.waitEndpoints("new", map[discovery.AddressType][]string{ipv4: {readyEP("10.0.0.3", "x", "n1", "-", "http:8080")}})
}

func TestSliceDeletedBySomeoneElseIsWrittenAgain(t *testing.T) {
	c := startedCluster(t, testOptions(), node("n1", nil), service("web", v4v6), pod("a", "web", "n1", true, 8080, "10.0.0.1", "fd00::1"))
	want := map[discovery.AddressType][]string{
		ipv4: {readyEP("10.0.0.1", "a", "n1", "-", "http:8080")},
		ipv6: {readyEP("fd00::1", "a", "n1", "-", "http:8080")},
	}
	c.waitEndpoints("web", want)
	for _, s := range c.slicesOf("web") {
		if s.AddressType == ipv6 {
			if err := c.client.DiscoveryV1().EndpointSlices(ns).Delete(c.ctx, s.Name, metav1.DeleteOptions{}); err != nil {
				t.Fatal(err)
			}
		}
	}
	c.waitEndpoints("web", want)

	// An edit by someone else is undone too.
	for _, s := range c.slicesOf("web") {
		if s.AddressType == ipv4 {
			s.Endpoints = append(s.Endpoints, discovery.Endpoint{Addresses: []string{"10.9.9.9"}})
			if _, err := c.client.DiscoveryV1().EndpointSlices(ns).Update(c.ctx, &s, metav1.UpdateOptions{}); err != nil {
				t.Fatal(err)
			}
		}
	}
	c.waitEndpoints("web", want)
}

func TestPodOnNodeNotYetKnown(t *testing.T) {
	c := startedCluster(t, testOptions(), service("web", v4), pod("a", "web", "late", true, 8080, "10.0.0.1"))
	c.waitEndpoints("web", map[discovery.AddressType][]string{ipv4: {}})
	c.create(node("late", zoneZ1))
	c.waitEndpoints("web", map[discovery.AddressType][]string{ipv4: {readyEP("10.0.0.1", "a", "late", "z1", "http:8080")}})
}

// TestConcurrentPodChurn flips readiness, deletes and recreates Pods from
// several goroutines while four workers sync, and checks that the slices
// end up exactly right: every Pod once per family, with its last state.
func TestConcurrentPodChurn(t *testing.T) {
	const pods = 60
	objs := []runtime.Object{node("n1", nil), node("n2", zoneZ1), service("web", v4v6)}
	addrs := func(i int) (string, string) { return fmt.Sprintf("10.1.0.%d", i+1), fmt.Sprintf("fd00:1::%x", i+1) }
	nodeOf := func(i int) string { return []string{"n1", "n2"}[i%2] }
	for i := range pods {
		a4, a6 := addrs(i)
		objs = append(objs, pod(fmt.Sprintf("p%02d", i), "web", nodeOf(i), true, 8080, a4, a6))
	}
	c := newCluster(t, testOptions(), objs...)
	c.start(4)

	final, err := fakeapi.ChurnPods(c.ctx, c.client, ns, pods, 42, func(i int, ready bool) *v1.Pod {
		a4, a6 := addrs(i)
		return pod(fmt.Sprintf("p%02d", i), "web", nodeOf(i), ready, 8080, a4, a6)
	})
	if err != nil {
		t.Error(err)
	}

	want := map[discovery.AddressType][]string{ipv4: {}, ipv6: {}}
	for i, f := range final {
		if !f.Exists {
			continue
		}
		a4, a6 := addrs(i)
		name := fmt.Sprintf("p%02d", i)
		zone := "-"
		if nodeOf(i) == "n2" {
			zone = "z1"
		}
		want[ipv4] = append(want[ipv4], ep(a4, name, f.Ready, f.Ready, false, nodeOf(i), zone, "http:8080"))
		want[ipv6] = append(want[ipv6], ep(a6, name, f.Ready, f.Ready, false, nodeOf(i), zone, "http:8080"))
	}
	sort.Strings(want[ipv4])
	sort.Strings(want[ipv6])
	c.waitEndpoints("web", want)
}

func TestOptionsValidated(t *testing.T) {
	client := fake.NewClientset()
	f := informers.NewSharedInformerFactory(client, 0)
	for _, max := range []int32{-1, MaxEndpointsPerSliceLimit + 1} {
		_, err := New(client, f.Core().V1().Pods(), f.Core().V1().Services(), f.Core().V1().Nodes(), f.Discovery().V1().EndpointSlices(),
			Options{MaxEndpointsPerSlice: max})
		if err == nil || !strings.Contains(err.Error(), "between 1 and 1000") {
			t.Errorf("MaxEndpointsPerSlice %d: err = %v, want one naming the valid range", max, err)
		}
	}
}

// TestSyncWaitsForItsOwnWrites drives syncs over an EndpointSlice cache
// the test fills by hand, so that it lags behind the controller's writes
// for as long as the test wants: a sync must then wait rather than write
// from the stale view (which would duplicate endpoints or fight with the
// slices just written).
func TestSyncWaitsForItsOwnWrites(t *testing.T) {
	client := fake.NewClientset(node("n1", nil), service("web", v4), pod("a", "web", "n1", true, 8080, "10.0.0.1"))
	fakeapi.ServeLikeAPIServer(client)
	live := informers.NewSharedInformerFactory(client, 0)
	held := informers.NewSharedInformerFactory(client, 0) // never started
	sliceInformer := held.Discovery().V1().EndpointSlices()
	ctrl, err := New(client, live.Core().V1().Pods(), live.Core().V1().Services(), live.Core().V1().Nodes(), sliceInformer, testOptions())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	live.Start(ctx.Done())
	defer func() {
		cancel()
		live.Shutdown()
	}()
	live.WaitForCacheSync(ctx.Done())
	c := &cluster{t: t, ctx: ctx, client: client}
	cached := sliceInformer.Informer().GetIndexer()
	catchUp := func() {
		t.Helper()
		for _, s := range c.slicesOf("web") {
			if err := cached.Update(&s); err != nil {
				t.Fatal(err)
			}
		}
	}
	r := testRunState(t, ctrl)
	syncWeb := func() error { return ctrl.syncService(ctx, r, ns+"/web") }
	writes := func() int {
		n := fakeapi.Writes(client, "endpointslices")
		client.ClearActions()
		return n
	}
	addPod := func(p *v1.Pod) {
		t.Helper()
		c.create(p)
		c.waitFor("pod "+p.Name+" in the cache", func() (bool, string) {
			_, err := ctrl.pods.Pods(ns).Get(p.Name)
			return err == nil, fmt.Sprint(err)
		})
	}

	if err := syncWeb(); err != nil {
		t.Fatal(err)
	}
	if n := writes(); n != 1 {
		t.Fatalf("first sync made %d writes, want 1 create", n)
	}
	// The cache does not show the created slice yet: creating another
	// would duplicate the endpoint.
	if err := syncWeb(); err != errStaleCache {
		t.Fatalf("sync before the cache shows the created slice: err = %v, want errStaleCache", err)
	}
	catchUp()
	addPod(pod("b", "web", "n1", true, 8080, "10.0.0.2"))
	if err := syncWeb(); err != nil {
		t.Fatal(err)
	}
	if n := writes(); n != 1 {
		t.Fatalf("sync after a new Pod made %d writes, want 1 update", n)
	}
	// The cache still holds the slice as it was before the update; the
	// server keeps no generations, so only its resourceVersion tells.
	addPod(pod("c", "web", "n1", true, 8080, "10.0.0.3"))
	if err := syncWeb(); err != errStaleCache {
		t.Fatalf("sync before the cache shows the updated slice: err = %v, want errStaleCache", err)
	}
	if n := writes(); n != 0 {
		t.Fatalf("a sync on a stale cache made %d writes", n)
	}
	catchUp()
	if err := syncWeb(); err != nil {
		t.Fatal(err)
	}
	c.waitEndpoints("web", map[discovery.AddressType][]string{ipv4: {
		readyEP("10.0.0.1", "a", "n1", "-", "http:8080"),
		readyEP("10.0.0.2", "b", "n1", "-", "http:8080"),
		readyEP("10.0.0.3", "c", "n1", "-", "http:8080"),
	}})
	if n := len(c.slicesOf("web")); n != 1 {
		t.Errorf("got %d slices, want 1", n)
	}
}

// TestDeletionSeenBeforeCreateReturns covers a slice deleted so soon
// after the controller created it that the informer shows the deletion
// before the create call has returned and the tracker has recorded the
// slice: the tracker must still learn of the deletion, or it would wait
// for that slice forever.
func TestDeletionSeenBeforeCreateReturns(t *testing.T) {
	c := newCluster(t, testOptions(), node("n1", nil), service("web", v4), pod("a", "web", "n1", true, 8080, "10.0.0.1"))
	r := testRunState(t, c.ctrl)
	c.ctrl.loop.Activate(r) // event handlers act, but no worker runs
	if err := c.ctrl.syncService(c.ctx, r, ns+"/web"); err != nil {
		t.Fatal(err)
	}
	created := c.slicesOf("web")
	if len(created) != 1 {
		t.Fatalf("got %d slices, want 1", len(created))
	}
	s := &created[0]
	// Replay the race: the tracker does not know the slice yet when its
	// deletion arrives, and records it only afterwards.
	r.tracker.HandleDeletion(s)
	if err := c.client.DiscoveryV1().EndpointSlices(ns).Delete(c.ctx, s.Name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	c.waitFor("the deletion seen", func() (bool, string) {
		r.untrackedMu.Lock()
		defer r.untrackedMu.Unlock()
		return len(r.untracked[ns+"/web"]) == 1, fmt.Sprint(r.untracked)
	})
	r.tracker.Update(s)

	if err := c.ctrl.syncService(c.ctx, r, ns+"/web"); err != nil {
		t.Fatalf("sync after the deletion: %v", err)
	}
	c.waitEndpoints("web", map[discovery.AddressType][]string{ipv4: {readyEP("10.0.0.1", "a", "n1", "-", "http:8080")}})
}

// TestStuckCacheFallsBackToLiveList covers a tracker waiting for a slice
// the informer will never show: after a few failed syncs the controller
// reads the slices from the API server instead.
func TestStuckCacheFallsBackToLiveList(t *testing.T) {
	c := newCluster(t, testOptions(), node("n1", nil), service("web", v4), pod("a", "web", "n1", true, 8080, "10.0.0.1"))
	r := testRunState(t, c.ctrl)
	key := ns + "/web"
	r.tracker.Update(&discovery.EndpointSlice{ObjectMeta: metav1.ObjectMeta{Name: "web-ghost", Namespace: ns, UID: "ghost",
		Labels: map[string]string{discovery.LabelServiceName: "web", discovery.LabelManagedBy: ManagedBy}}})
	for i := range liveListAfter {
		if err := c.ctrl.syncService(c.ctx, r, key); err != errStaleCache {
			t.Fatalf("sync %d while the tracker waits for a slice: err = %v, want errStaleCache", i, err)
		}
		r.Queue.AddRateLimited(key) // as the worker does after a failed sync
	}
	if err := c.ctrl.syncService(c.ctx, r, key); err != nil {
		t.Fatalf("sync after %d failures: %v", liveListAfter, err)
	}
	c.waitEndpoints("web", map[discovery.AddressType][]string{ipv4: {readyEP("10.0.0.1", "a", "n1", "-", "http:8080")}})
}

// TestBurstIsBatched checks that Pod changes within the batch period cost
// the Service one write, not one per Pod.
func TestBurstIsBatched(t *testing.T) {
	opts := testOptions()
	// Long enough for 30 creates on a loaded machine under -race (see the
	// endpoints controller's test of the same name).
	opts.BatchPeriod = 2 * time.Second
	c := startedCluster(t, opts, node("n1", nil), service("web", v4), pod("p00", "web", "n1", true, 8080, "10.0.0.100"))
	c.waitEndpoints("web", map[discovery.AddressType][]string{ipv4: {readyEP("10.0.0.100", "p00", "n1", "-", "http:8080")}})
	c.client.ClearActions()
	want := []string{readyEP("10.0.0.100", "p00", "n1", "-", "http:8080")}
	for i := 1; i <= 30; i++ {
		ip, name := fmt.Sprintf("10.0.0.%d", i), fmt.Sprintf("p%02d", i)
		c.create(pod(name, "web", "n1", true, 8080, ip))
		want = append(want, readyEP(ip, name, "n1", "-", "http:8080"))
	}
	sort.Strings(want)
	c.waitEndpoints("web", map[discovery.AddressType][]string{ipv4: want})
	if writes := fakeapi.Writes(c.client, "endpointslices"); writes > 3 {
		t.Errorf("30 new Pods within the batch period cost %d EndpointSlice writes, want at most 3", writes)
	}
}

// testRunState is the state of a Run for tests that drive syncs directly.
func testRunState(t *testing.T, c *Controller) *runState {
	r := c.newRunState()
	t.Cleanup(r.Queue.ShutDown)
	return r
}
