//lint:file-ignore SA1019 the controller under test writes core/v1 Endpoints.

package endpoints

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
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/leaderelection/resourcelock"
	"k8s.io/klog/v2"
	"k8s.io/utils/ptr"

	"github.com/duet-net/duet/internal/controller/fakeapi"
)

const (
	ns          = "default"
	waitTimeout = 30 * time.Second
)

var (
	v4   = []v1.IPFamily{v1.IPv4Protocol}
	v6   = []v1.IPFamily{v1.IPv6Protocol}
	v4v6 = []v1.IPFamily{v1.IPv4Protocol, v1.IPv6Protocol}
	v6v4 = []v1.IPFamily{v1.IPv6Protocol, v1.IPv4Protocol}
)

func testOptions() Options {
	return Options{BatchPeriod: -1, RetryBaseDelay: 5 * time.Millisecond, RetryMaxDelay: 200 * time.Millisecond}
}

// service is fakeapi.Service in the test namespace.
func service(name string, families []v1.IPFamily, mutate ...func(*v1.Service)) *v1.Service {
	return fakeapi.Service(ns, name, families, mutate...)
}

// pod returns a running Pod labelled app=<app> on node n1 with the given
// IPs, whose container port "http" is httpPort (none if 0).
func pod(name, app string, ready bool, httpPort int32, ips ...string) *v1.Pod {
	return fakeapi.Pod(ns, name, app, "n1", ready, httpPort, ips...)
}

var terminating = fakeapi.Terminating

// addr is a line of summary: "ready|notReady <ip> <pod> ports=<name:port,...>".
func addr(ready bool, ip, podName, ports string) string {
	state := "notReady"
	if ready {
		state = "ready"
	}
	return fmt.Sprintf("%s %s %s ports=%s", state, ip, podName, ports)
}

// summary is what a reader of Endpoints sees, one sorted line per address
// and port set; nil if there are no Endpoints.
func summary(ep *v1.Endpoints) []string {
	if ep == nil {
		return nil
	}
	out := []string{}
	for _, s := range ep.Subsets {
		var ports []string
		for _, p := range s.Ports {
			ports = append(ports, fmt.Sprintf("%s:%d", p.Name, p.Port))
		}
		sort.Strings(ports)
		add := func(ready bool, as []v1.EndpointAddress) {
			for _, a := range as {
				name := "-"
				if a.TargetRef != nil {
					name = a.TargetRef.Name
				}
				out = append(out, addr(ready, a.IP, name, strings.Join(ports, ",")))
			}
		}
		add(true, s.Addresses)
		add(false, s.NotReadyAddresses)
	}
	sort.Strings(out)
	return out
}

type cluster struct {
	t       *testing.T
	ctx     context.Context
	client  *fake.Clientset
	factory informers.SharedInformerFactory
	ctrl    *Controller
}

func newCluster(t *testing.T, opts Options, objs ...runtime.Object) *cluster {
	t.Helper()
	client := fake.NewClientset(objs...)
	fakeapi.ServeLikeAPIServer(client)
	factory := informers.NewSharedInformerFactory(client, 0)
	ctrl, err := New(client, factory.Core().V1().Pods(), factory.Core().V1().Services(), factory.Core().V1().Endpoints(), opts)
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
		return fakeapi.Watching(client, "pods", "services", "endpoints"), fmt.Sprint(client.Actions())
	})
	return c
}

func (c *cluster) start(workers int) (stop func()) {
	stop = fakeapi.Background(c.ctx, func(ctx context.Context) { c.ctrl.Run(ctx, workers) })
	c.t.Cleanup(stop)
	return stop
}

func startedCluster(t *testing.T, opts Options, objs ...runtime.Object) *cluster {
	c := newCluster(t, opts, objs...)
	c.start(2)
	return c
}

func (c *cluster) get(name string) *v1.Endpoints {
	c.t.Helper()
	ep, err := c.client.CoreV1().Endpoints(ns).Get(c.ctx, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil
	}
	if err != nil {
		c.t.Fatal(err)
	}
	return ep
}

func (c *cluster) waitFor(what string, cond func() (bool, string)) {
	c.t.Helper()
	if ok, last := fakeapi.Eventually(c.ctx, waitTimeout, cond); !ok {
		c.t.Fatalf("%s: not reached within %v: %s", what, waitTimeout, last)
	}
}

// waitEndpoints waits until the Endpoints named name summarize to want
// (nil: until there are none).
func (c *cluster) waitEndpoints(name string, want []string) *v1.Endpoints {
	c.t.Helper()
	var ep *v1.Endpoints
	c.waitFor("Endpoints "+name, func() (bool, string) {
		ep = c.get(name)
		d := cmp.Diff(want, summary(ep))
		return d == "", "(-want +got)\n" + d
	})
	return ep
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

func TestPrimaryFamilyOnly(t *testing.T) {
	objs := func() []runtime.Object {
		return []runtime.Object{
			pod("a", "web", true, 8080, "10.0.0.1", "fd00::1"),
			pod("b", "web", false, 8080, "fd00::2", "10.0.0.2"),
			pod("v4only", "web", true, 8080, "10.0.0.3"),
			pod("v6only", "web", true, 8080, "fd00::4"),
			pod("other", "db", true, 8080, "10.0.0.5", "fd00::5"),
		}
	}
	want4 := []string{addr(true, "10.0.0.1", "a", "http:8080"), addr(false, "10.0.0.2", "b", "http:8080"), addr(true, "10.0.0.3", "v4only", "http:8080")}
	want6 := []string{addr(true, "fd00::1", "a", "http:8080"), addr(false, "fd00::2", "b", "http:8080"), addr(true, "fd00::4", "v6only", "http:8080")}
	sort.Strings(want4)
	sort.Strings(want6)
	for _, tc := range []struct {
		name     string
		families []v1.IPFamily
		want     []string
	}{
		{"single-stack IPv4: IPv4 addresses, Pods without one left out", v4, want4},
		{"single-stack IPv6: IPv6 addresses, Pods without one left out", v6, want6},
		{"dual-stack IPv4-primary: IPv4 addresses only", v4v6, want4},
		{"dual-stack IPv6-primary: IPv6 addresses only", v6v4, want6},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := startedCluster(t, testOptions(), append(objs(), service("web", tc.families))...)
			ep := c.waitEndpoints("web", tc.want)
			if ep.Labels["team"] != "net" {
				t.Errorf("Endpoints labels %v lack the Service's", ep.Labels)
			}
			if _, ok := ep.Labels[v1.IsHeadlessService]; ok {
				t.Errorf("Endpoints of a ClusterIP Service are labelled headless")
			}
			if _, ok := ep.Annotations[v1.EndpointsOverCapacity]; ok {
				t.Errorf("Endpoints under capacity are annotated %s", v1.EndpointsOverCapacity)
			}
			for _, s := range ep.Subsets {
				for _, a := range s.Addresses {
					if ptr.Deref(a.NodeName, "") != "n1" || a.TargetRef == nil || a.TargetRef.Kind != "Pod" || a.TargetRef.UID == "" {
						t.Errorf("address %s: nodeName %v, targetRef %+v; want n1 and the Pod", a.IP, a.NodeName, a.TargetRef)
					}
				}
			}
		})
	}
}

func TestReadiness(t *testing.T) {
	succeeded := pod("p", "web", false, 8080, "10.0.0.1")
	succeeded.Status.Phase = v1.PodSucceeded
	for _, tc := range []struct {
		name            string
		pod             *v1.Pod
		publishNotReady bool
		want            []string
	}{
		{"a ready Pod is an address", pod("p", "web", true, 8080, "10.0.0.1"), false, []string{addr(true, "10.0.0.1", "p", "http:8080")}},
		{"a Pod that is not ready is a not-ready address", pod("p", "web", false, 8080, "10.0.0.1"), false, []string{addr(false, "10.0.0.1", "p", "http:8080")}},
		{"a terminating Pod is left out", terminating(pod("p", "web", true, 8080, "10.0.0.1")), false, []string{}},
		{"publishNotReadyAddresses makes a Pod that is not ready an address", pod("p", "web", false, 8080, "10.0.0.1"), true, []string{addr(true, "10.0.0.1", "p", "http:8080")}},
		{"publishNotReadyAddresses keeps a terminating Pod", terminating(pod("p", "web", false, 8080, "10.0.0.1")), true, []string{addr(true, "10.0.0.1", "p", "http:8080")}},
		{"a Pod that has finished is left out", succeeded, false, []string{}},
		{"a Pod without an IP is left out", pod("p", "web", true, 8080), false, []string{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			svc := service("web", v4v6, func(s *v1.Service) { s.Spec.PublishNotReadyAddresses = tc.publishNotReady })
			c := startedCluster(t, testOptions(), svc, tc.pod)
			c.waitEndpoints("web", tc.want)
		})
	}
}

func TestNamedTargetPortResolvedPerPod(t *testing.T) {
	c := startedCluster(t, testOptions(), service("web", v4v6),
		pod("p8080", "web", true, 8080, "10.0.0.1", "fd00::1"),
		pod("p9090", "web", false, 9090, "10.0.0.2", "fd00::2"),
		pod("also8080", "web", true, 8080, "10.0.0.3", "fd00::3"),
		pod("noport", "web", true, 0, "10.0.0.4", "fd00::4"),
	)
	ep := c.waitEndpoints("web", []string{
		addr(false, "10.0.0.2", "p9090", "http:9090"),
		addr(true, "10.0.0.1", "p8080", "http:8080"),
		addr(true, "10.0.0.3", "also8080", "http:8080"),
	})
	if len(ep.Subsets) != 2 {
		t.Errorf("got %d subsets, want one per resolved port number: %+v", len(ep.Subsets), ep.Subsets)
	}
}

func TestHeadlessService(t *testing.T) {
	svc := service("db", v6v4, func(s *v1.Service) {
		s.Spec.ClusterIP = v1.ClusterIPNone
		s.Spec.Ports = nil
	})
	c := startedCluster(t, testOptions(), svc, pod("a", "db", true, 5432, "10.0.0.1", "fd00::1"))
	ep := c.waitEndpoints("db", []string{addr(true, "fd00::1", "a", "")})
	if _, ok := ep.Labels[v1.IsHeadlessService]; !ok {
		t.Errorf("Endpoints of a headless Service lack the %s label: %v", v1.IsHeadlessService, ep.Labels)
	}
}

func TestOverCapacityTruncated(t *testing.T) {
	objs := []runtime.Object{service("web", v4)}
	for i := range MaxCapacity + 5 {
		objs = append(objs, pod(fmt.Sprintf("p%04d", i), "web", true, 8080, fmt.Sprintf("10.0.%d.%d", i/250, i%250+1)))
	}
	c := startedCluster(t, testOptions(), objs...)
	count := func(ep *v1.Endpoints) int {
		n := 0
		for _, s := range ep.Subsets {
			n += len(s.Addresses) + len(s.NotReadyAddresses)
		}
		return n
	}
	c.waitFor("Endpoints truncated to capacity", func() (bool, string) {
		ep := c.get("web")
		if ep == nil {
			return false, "no Endpoints"
		}
		n, a := count(ep), ep.Annotations[v1.EndpointsOverCapacity]
		return n == MaxCapacity && a == "truncated", fmt.Sprintf("%d addresses, %s=%q", n, v1.EndpointsOverCapacity, a)
	})
	// Truncated Endpoints are what the controller wants, not a difference
	// to write again on every sync.
	c.waitFor("the cache to show the truncated Endpoints", func() (bool, string) {
		ep, err := c.ctrl.endpoints.Endpoints(ns).Get("web")
		return err == nil && ep.Annotations[v1.EndpointsOverCapacity] == "truncated", fmt.Sprint(err)
	})
	c.client.ClearActions()
	if err := c.ctrl.syncService(c.ctx, testRunState(t, c.ctrl), ns+"/web"); err != nil {
		t.Fatal(err)
	}
	for _, a := range c.client.Actions() {
		if a.GetResource().Resource == "endpoints" && a.GetVerb() != "list" && a.GetVerb() != "watch" {
			t.Errorf("a sync of unchanged truncated Endpoints made a %s", a.GetVerb())
		}
	}

	for i := range 6 {
		if err := c.client.CoreV1().Pods(ns).Delete(c.ctx, fmt.Sprintf("p%04d", i), metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	c.waitFor("Endpoints back under capacity", func() (bool, string) {
		ep := c.get("web")
		n, a := count(ep), ep.Annotations[v1.EndpointsOverCapacity]
		_, annotated := ep.Annotations[v1.EndpointsOverCapacity]
		return n == MaxCapacity-1 && !annotated, fmt.Sprintf("%d addresses, %s=%q", n, v1.EndpointsOverCapacity, a)
	})
}

func TestTruncate(t *testing.T) {
	addrs := func(prefix string, n int) []v1.EndpointAddress {
		out := make([]v1.EndpointAddress, n)
		for i := range out {
			out[i] = v1.EndpointAddress{IP: fmt.Sprintf("%s%d", prefix, i)}
		}
		return out
	}
	type counts struct{ ready, notReady int }
	for _, tc := range []struct {
		name  string
		in    []counts
		want  []counts
		wantT bool
	}{
		{"at capacity nothing is cut", []counts{{600, 0}, {0, 400}}, []counts{{600, 0}, {0, 400}}, false},
		{"not-ready addresses go first", []counts{{600, 300}, {200, 100}}, []counts{{600, 150}, {200, 50}}, true},
		{"too many ready ones are cut in proportion and every not-ready one goes", []counts{{1500, 10}, {500, 0}}, []counts{{750, 0}, {250, 0}}, true},
		{"a subset left empty is dropped", []counts{{1200, 0}, {0, 5}}, []counts{{1000, 0}}, true},
		{"rounding up never exceeds capacity", []counts{{334, 0}, {334, 0}, {334, 0}, {0, 1}}, []counts{{334, 0}, {334, 0}, {332, 0}}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var subsets []v1.EndpointSubset
			for i, c := range tc.in {
				subsets = append(subsets, v1.EndpointSubset{Addresses: addrs(fmt.Sprintf("r%d-", i), c.ready), NotReadyAddresses: addrs(fmt.Sprintf("n%d-", i), c.notReady)})
			}
			out, cut := truncate(subsets)
			var got []counts
			for _, s := range out {
				got = append(got, counts{len(s.Addresses), len(s.NotReadyAddresses)})
			}
			if cut != tc.wantT || !slices.Equal(got, tc.want) {
				t.Errorf("truncate = %v, %v; want %v, %v", got, cut, tc.want, tc.wantT)
			}
		})
	}
}

func TestPodChangesUpdateEndpoints(t *testing.T) {
	c := startedCluster(t, testOptions(), service("web", v4v6),
		pod("a", "web", true, 8080, "10.0.0.1", "fd00::1"),
		pod("b", "web", true, 8080, "10.0.0.2", "fd00::2"))
	c.waitEndpoints("web", []string{addr(true, "10.0.0.1", "a", "http:8080"), addr(true, "10.0.0.2", "b", "http:8080")})

	if err := c.client.CoreV1().Pods(ns).Delete(c.ctx, "a", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	c.waitEndpoints("web", []string{addr(true, "10.0.0.2", "b", "http:8080")})

	c.updatePod("b", func(p *v1.Pod) { fakeapi.SetReady(p, false) })
	c.waitEndpoints("web", []string{addr(false, "10.0.0.2", "b", "http:8080")})

	c.updatePod("b", func(p *v1.Pod) { p.Labels = map[string]string{"app": "elsewhere"} })
	c.waitEndpoints("web", []string{})
}

func TestServiceDeletionDeletesEndpoints(t *testing.T) {
	c := startedCluster(t, testOptions(), service("web", v4), pod("a", "web", true, 8080, "10.0.0.1"))
	c.waitEndpoints("web", []string{addr(true, "10.0.0.1", "a", "http:8080")})
	if err := c.client.CoreV1().Services(ns).Delete(c.ctx, "web", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	c.waitEndpoints("web", nil)
}

func TestServicesWithoutSelectorUntouched(t *testing.T) {
	userEndpoints := &v1.Endpoints{
		ObjectMeta: metav1.ObjectMeta{Name: "ext", Namespace: ns, UID: "user"},
		Subsets:    []v1.EndpointSubset{{Addresses: []v1.EndpointAddress{{IP: "192.0.2.1"}}}},
	}
	for _, tc := range []struct {
		name string
		svc  *v1.Service
	}{
		{"a Service without selector", service("ext", v4, func(s *v1.Service) { s.Spec.Selector = nil })},
		{"an ExternalName Service", service("ext", nil, func(s *v1.Service) {
			s.Spec.Type = v1.ServiceTypeExternalName
			s.Spec.ExternalName = "example.com"
			s.Spec.ClusterIP = ""
		})},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := newCluster(t, testOptions(), tc.svc, userEndpoints.DeepCopy(), pod("a", "ext", true, 8080, "10.0.0.1"))
			if !cache.WaitForCacheSync(c.ctx.Done(), c.ctrl.loop.HasSynced) {
				t.Fatal("caches did not sync")
			}
			c.client.ClearActions()
			if err := c.ctrl.syncService(c.ctx, testRunState(t, c.ctrl), ns+"/ext"); err != nil {
				t.Fatal(err)
			}
			for _, a := range c.client.Actions() {
				t.Errorf("unexpected %s of %s", a.GetVerb(), a.GetResource().Resource)
			}
		})
	}
}

// TestStartReconcilesWhatChangedWhileStopped covers a new leader:
// Endpoints left by a Service deleted meanwhile go (but not a leader
// election lock), outdated ones are rewritten, and a stopped controller
// can run again.
func TestStartReconcilesWhatChangedWhileStopped(t *testing.T) {
	orphan := &v1.Endpoints{ObjectMeta: metav1.ObjectMeta{Name: "gone", Namespace: ns, UID: "orphan"},
		Subsets: []v1.EndpointSubset{{Addresses: []v1.EndpointAddress{{IP: "10.0.9.9"}}}}}
	lock := &v1.Endpoints{ObjectMeta: metav1.ObjectMeta{Name: "lock", Namespace: ns, UID: "lock",
		Annotations: map[string]string{resourcelock.LeaderElectionRecordAnnotationKey: "{}"}}}
	outdated := &v1.Endpoints{ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: ns, UID: "outdated", ResourceVersion: "7"},
		Subsets: []v1.EndpointSubset{{Addresses: []v1.EndpointAddress{{IP: "10.0.9.8"}}}}}
	c := newCluster(t, testOptions(), service("web", v4), orphan, lock, outdated, pod("a", "web", true, 8080, "10.0.0.1"))
	stop := c.start(1)
	c.waitEndpoints("web", []string{addr(true, "10.0.0.1", "a", "http:8080")})
	c.waitEndpoints("gone", nil)

	stop()
	if _, err := c.client.CoreV1().Pods(ns).Create(c.ctx, pod("b", "web", true, 8080, "10.0.0.2"), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.client.CoreV1().Services(ns).Create(c.ctx, service("new", v4), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := c.client.CoreV1().Services(ns).Delete(c.ctx, "web", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	c.start(1)
	c.waitEndpoints("web", nil)
	c.waitEndpoints("new", []string{})
	if c.get("lock") == nil {
		t.Error("the leader election lock was deleted as an orphan")
	}
}

func TestEndpointsChangedBySomeoneElseAreRestored(t *testing.T) {
	c := startedCluster(t, testOptions(), service("web", v4), pod("a", "web", true, 8080, "10.0.0.1"))
	want := []string{addr(true, "10.0.0.1", "a", "http:8080")}
	ep := c.waitEndpoints("web", want)

	ep.Subsets = append(ep.Subsets, v1.EndpointSubset{Addresses: []v1.EndpointAddress{{IP: "10.9.9.9"}}})
	if _, err := c.client.CoreV1().Endpoints(ns).Update(c.ctx, ep, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	c.waitEndpoints("web", want)

	if err := c.client.CoreV1().Endpoints(ns).Delete(c.ctx, "web", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	c.waitEndpoints("web", want)
}

// TestSyncWaitsForItsOwnWrites drives syncs over an Endpoints cache the
// test fills by hand, so that it lags behind the controller's update.
func TestSyncWaitsForItsOwnWrites(t *testing.T) {
	client := fake.NewClientset(service("web", v4), pod("a", "web", true, 8080, "10.0.0.1"))
	fakeapi.ServeLikeAPIServer(client)
	live := informers.NewSharedInformerFactory(client, 0)
	held := informers.NewSharedInformerFactory(client, 0) // never started
	epInformer := held.Core().V1().Endpoints()
	ctrl, err := New(client, live.Core().V1().Pods(), live.Core().V1().Services(), epInformer, testOptions())
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
	catchUp := func() {
		t.Helper()
		if err := epInformer.Informer().GetIndexer().Update(c.get("web")); err != nil {
			t.Fatal(err)
		}
	}
	addPod := func(p *v1.Pod) {
		t.Helper()
		if _, err := client.CoreV1().Pods(ns).Create(ctx, p, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		c.waitFor("pod "+p.Name+" in the cache", func() (bool, string) {
			_, err := ctrl.pods.Pods(ns).Get(p.Name)
			return err == nil, fmt.Sprint(err)
		})
	}
	r := testRunState(t, ctrl)
	syncWeb := func() error { return ctrl.syncService(ctx, r, ns+"/web") }

	if err := syncWeb(); err != nil {
		t.Fatal(err)
	}
	catchUp()
	addPod(pod("b", "web", true, 8080, "10.0.0.2"))
	if err := syncWeb(); err != nil {
		t.Fatal(err)
	}
	addPod(pod("c", "web", true, 8080, "10.0.0.3"))
	client.ClearActions()
	if err := syncWeb(); err != errStaleCache {
		t.Fatalf("sync before the cache shows the updated Endpoints: err = %v, want errStaleCache", err)
	}
	if n := len(client.Actions()); n != 0 {
		t.Fatalf("a sync on a stale cache made %d API calls", n)
	}
	catchUp()
	if err := syncWeb(); err != nil {
		t.Fatal(err)
	}
	c.waitEndpoints("web", []string{addr(true, "10.0.0.1", "a", "http:8080"), addr(true, "10.0.0.2", "b", "http:8080"), addr(true, "10.0.0.3", "c", "http:8080")})
}

// TestConcurrentPodChurn changes Pods from several goroutines while four
// workers sync, and checks the Endpoints end up exactly right.
func TestConcurrentPodChurn(t *testing.T) {
	const pods = 60
	objs := []runtime.Object{service("web", v6v4)}
	addrs := func(i int) (string, string) { return fmt.Sprintf("10.1.0.%d", i+1), fmt.Sprintf("fd00:1::%x", i+1) }
	for i := range pods {
		a4, a6 := addrs(i)
		objs = append(objs, pod(fmt.Sprintf("p%02d", i), "web", true, 8080, a6, a4))
	}
	c := newCluster(t, testOptions(), objs...)
	c.start(4)

	final, err := fakeapi.ChurnPods(c.ctx, c.client, ns, pods, 7, func(i int, ready bool) *v1.Pod {
		a4, a6 := addrs(i)
		return pod(fmt.Sprintf("p%02d", i), "web", ready, 8080, a4, a6)
	})
	if err != nil {
		t.Error(err)
	}

	want := []string{}
	for i, f := range final {
		if f.Exists {
			_, a6 := addrs(i)
			want = append(want, addr(f.Ready, a6, fmt.Sprintf("p%02d", i), "http:8080"))
		}
	}
	sort.Strings(want)
	c.waitEndpoints("web", want)
}

func TestDesiredSubsetsCanonical(t *testing.T) {
	svc := service("web", v4)
	pods := []*v1.Pod{
		pod("z", "web", true, 8080, "10.0.0.10"),
		pod("y", "web", true, 8080, "10.0.0.9"),
		pod("x", "web", false, 8080, "10.0.0.2"),
	}
	a := desiredSubsets(klog.Background(), svc, pods)
	b := desiredSubsets(klog.Background(), svc, []*v1.Pod{pods[2], pods[0], pods[1]})
	if !cmp.Equal(a, b) {
		t.Fatalf("subsets depend on the order of the Pods:\n%s", cmp.Diff(a, b))
	}
	if got := []string{a[0].Addresses[0].IP, a[0].Addresses[1].IP}; !cmp.Equal(got, []string{"10.0.0.9", "10.0.0.10"}) {
		t.Errorf("addresses in order %v, want numeric order", got)
	}
}

// TestBurstIsBatched checks that Pod changes within the batch period cost
// the Service one write, not one per Pod.
func TestBurstIsBatched(t *testing.T) {
	opts := testOptions()
	// Long enough for 30 creates on a loaded machine under -race: the
	// test counts writes per batch, and a period the creates outlast
	// splits them over more batches.
	opts.BatchPeriod = 2 * time.Second
	c := startedCluster(t, opts, service("web", v4), pod("p00", "web", true, 8080, "10.0.0.100"))
	c.waitEndpoints("web", []string{addr(true, "10.0.0.100", "p00", "http:8080")})
	c.client.ClearActions()
	want := []string{addr(true, "10.0.0.100", "p00", "http:8080")}
	for i := 1; i <= 30; i++ {
		ip, name := fmt.Sprintf("10.0.0.%d", i), fmt.Sprintf("p%02d", i)
		if _, err := c.client.CoreV1().Pods(ns).Create(c.ctx, pod(name, "web", true, 8080, ip), metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		want = append(want, addr(true, ip, name, "http:8080"))
	}
	sort.Strings(want)
	c.waitEndpoints("web", want)
	if writes := fakeapi.Writes(c.client, "endpoints"); writes > 3 {
		t.Errorf("30 new Pods within the batch period cost %d Endpoints writes, want at most 3", writes)
	}
}

// testRunState is the state of a Run for tests that drive syncs directly.
func testRunState(t *testing.T, c *Controller) *runState {
	r := c.newRunState()
	t.Cleanup(r.Queue.ShutDown)
	return r
}
