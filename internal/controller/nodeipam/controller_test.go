package nodeipam

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes/fake"
	clienttesting "k8s.io/client-go/testing"
	"k8s.io/client-go/tools/record"

	"github.com/duet-net/duet/internal/alloc"
	broadcast "github.com/duet-net/duet/internal/controller/events"
	"github.com/duet-net/duet/internal/netaddr"
)

const waitTimeout = 20 * time.Second

// events is a record.EventRecorder that keeps every event, safe for
// concurrent use and never blocking (record.FakeRecorder blocks a worker
// once its channel is full).
type events struct {
	mu   sync.Mutex
	list []string // "Node/<name> <type> <reason> <message>"
}

var _ record.EventRecorder = (*events)(nil)

func (e *events) Event(obj runtime.Object, typ, reason, msg string) {
	name := "?"
	if n, ok := obj.(*v1.Node); ok {
		name = n.Name
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	e.list = append(e.list, fmt.Sprintf("Node/%s %s %s %s", name, typ, reason, msg))
}

func (e *events) Eventf(obj runtime.Object, typ, reason, format string, args ...any) {
	e.Event(obj, typ, reason, fmt.Sprintf(format, args...))
}

func (e *events) AnnotatedEventf(obj runtime.Object, _ map[string]string, typ, reason, format string, args ...any) {
	e.Eventf(obj, typ, reason, format, args...)
}

// find returns the first event for node with the type and reason.
func (e *events) find(node, typ, reason string) (string, bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	prefix := fmt.Sprintf("Node/%s %s %s ", node, typ, reason)
	for _, s := range e.list {
		if strings.HasPrefix(s, prefix) {
			return s, true
		}
	}
	return "", false
}

// cluster is a controller under test with everything it talks to.
type cluster struct {
	t      *testing.T
	client *fake.Clientset
	store  *alloc.MemStore
	allocs []*alloc.NodeCIDRs
	events *events
	ctrl   *Controller
	// startInformers starts the informers, at the first run: reactors a
	// test prepends before then race with nothing.
	startInformers func()

	cancel context.CancelFunc
	done   chan struct{}
}

func node(name string, podCIDRs ...string) *v1.Node {
	n := &v1.Node{ObjectMeta: metav1.ObjectMeta{Name: name}}
	if len(podCIDRs) > 0 {
		n.Spec.PodCIDRs = podCIDRs
		n.Spec.PodCIDR = podCIDRs[0]
	}
	return n
}

// newCluster builds a controller for --cluster-cidr=clusterCIDR with the
// given node masks over store (a fresh one if nil), seeded with nodes. It
// does not start it.
func newCluster(t *testing.T, clusterCIDR string, masks netaddr.NodeMaskFlags, store *alloc.MemStore, opts Options, nodes ...*v1.Node) *cluster {
	t.Helper()
	cidrs, err := netaddr.ParseClusterCIDRs(clusterCIDR, masks)
	if err != nil {
		t.Fatal(err)
	}
	if store == nil {
		store = alloc.NewMemStore()
	}
	objs := make([]runtime.Object, len(nodes))
	for i, n := range nodes {
		objs[i] = n
	}
	c := &cluster{t: t, client: fake.NewClientset(objs...), store: store, events: &events{}}
	for i, p := range cidrs.CIDRs {
		a, err := alloc.NewNodeCIDRs(p, cidrs.NodeMaskSizes[i], store)
		if err != nil {
			t.Fatal(err)
		}
		c.allocs = append(c.allocs, a)
	}
	factory := informers.NewSharedInformerFactory(c.client, 0)
	c.ctrl, err = New(c.client, factory.Core().V1().Nodes(), cidrs, c.allocs, store, c.events, opts)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	c.startInformers = func() { factory.Start(ctx.Done()) }
	t.Cleanup(func() {
		cancel()
		factory.Shutdown()
	})
	return c
}

// run starts the controller; it is stopped when the test ends.
func (c *cluster) run() {
	c.startInformers()
	ctx, cancel := context.WithCancel(context.Background())
	c.cancel, c.done = cancel, make(chan struct{})
	go func() {
		defer close(c.done)
		c.ctrl.Run(ctx, 2)
	}()
	c.t.Cleanup(c.stop)
}

func (c *cluster) stop() {
	if c.cancel == nil {
		return
	}
	c.cancel()
	select {
	case <-c.done:
	case <-time.After(waitTimeout):
		c.t.Fatal("Run did not return after its context was cancelled")
	}
	c.cancel = nil
}

// waitFor polls cond until it holds, failing the test with what after the
// deadline.
func (c *cluster) waitFor(what string, cond func() bool) {
	c.t.Helper()
	err := wait.PollUntilContextTimeout(context.Background(), 5*time.Millisecond, waitTimeout, true, func(context.Context) (bool, error) {
		return cond(), nil
	})
	if err != nil {
		c.t.Fatalf("timed out waiting until %s", what)
	}
}

func (c *cluster) get(name string) *v1.Node {
	c.t.Helper()
	n, err := c.client.CoreV1().Nodes().Get(context.Background(), name, metav1.GetOptions{})
	if err != nil {
		c.t.Fatal(err)
	}
	return n
}

func (c *cluster) create(n *v1.Node) {
	c.t.Helper()
	if _, err := c.client.CoreV1().Nodes().Create(context.Background(), n, metav1.CreateOptions{}); err != nil {
		c.t.Fatal(err)
	}
}

func (c *cluster) delete(name string) {
	c.t.Helper()
	if err := c.client.CoreV1().Nodes().Delete(context.Background(), name, metav1.DeleteOptions{}); err != nil {
		c.t.Fatal(err)
	}
}

// waitAssigned waits until the Node has one pod CIDR per cluster CIDR and
// returns them.
func (c *cluster) waitAssigned(name string) []string {
	c.t.Helper()
	var got []string
	c.waitFor("Node "+name+" has a pod CIDR per cluster CIDR", func() bool {
		got = c.get(name).Spec.PodCIDRs
		return len(got) == len(c.allocs)
	})
	return got
}

func (c *cluster) waitEvent(node, typ, reason string) string {
	c.t.Helper()
	var msg string
	c.waitFor(fmt.Sprintf("a %s event %s is recorded for Node %s", typ, reason, node), func() bool {
		var ok bool
		msg, ok = c.events.find(node, typ, reason)
		return ok
	})
	return msg
}

// quiet runs f while no reconcile or sweep is changing allocations, so
// that f sees no allocation half made.
func (c *cluster) quiet(f func()) {
	c.ctrl.mu.Lock()
	defer c.ctrl.mu.Unlock()
	f()
}

// records is what the store holds, sorted.
func (c *cluster) records() []string {
	var out []string
	for _, a := range c.allocs {
		_ = c.store.List(context.Background(), a.CIDR(), func(k netip.Prefix) error {
			out = append(out, k.String())
			return nil
		})
	}
	slices.Sort(out)
	return out
}

// onNodes is every pod CIDR on every Node, sorted, failing on duplicates.
func (c *cluster) onNodes() []string {
	c.t.Helper()
	list, err := c.client.CoreV1().Nodes().List(context.Background(), metav1.ListOptions{})
	if err != nil {
		c.t.Fatal(err)
	}
	var out []string
	owner := map[string]string{}
	for _, n := range list.Items {
		for _, p := range n.Spec.PodCIDRs {
			if o, dup := owner[p]; dup {
				c.t.Errorf("pod CIDR %s is on both %s and %s", p, o, n.Name)
			}
			owner[p] = n.Name
			out = append(out, p)
		}
	}
	slices.Sort(out)
	return out
}

// checkPodCIDRs checks a Node's pod CIDRs against the cluster CIDRs:
// one per entry in configured order, of the node mask, podCIDR first.
func (c *cluster) checkPodCIDRs(n *v1.Node) {
	c.t.Helper()
	if len(n.Spec.PodCIDRs) != len(c.allocs) {
		c.t.Fatalf("Node %s has pod CIDRs %v, want one per cluster CIDR", n.Name, n.Spec.PodCIDRs)
	}
	if n.Spec.PodCIDR != n.Spec.PodCIDRs[0] {
		c.t.Errorf("Node %s has podCIDR %q, want podCIDRs[0] = %q", n.Name, n.Spec.PodCIDR, n.Spec.PodCIDRs[0])
	}
	for i, s := range n.Spec.PodCIDRs {
		p := netip.MustParsePrefix(s)
		a := c.allocs[i]
		if p.Bits() != a.NodeMask() || !a.CIDR().Contains(p.Addr()) {
			c.t.Errorf("Node %s podCIDRs[%d] = %s, want a /%d from %s", n.Name, i, p, a.NodeMask(), a.CIDR())
		}
	}
}

func TestAssignsOnePodCIDRPerClusterCIDRInConfiguredOrder(t *testing.T) {
	for _, tc := range []struct {
		name, clusterCIDR string
		masks             netaddr.NodeMaskFlags
	}{
		{"IPv4 primary dual-stack", "10.244.0.0/16,fd00::/48", netaddr.NodeMaskFlags{}},
		{"IPv6 primary dual-stack", "fd00::/48,10.244.0.0/16", netaddr.NodeMaskFlags{}},
		{"IPv4 single-stack", "10.244.0.0/16", netaddr.NodeMaskFlags{}},
		{"IPv6 single-stack with /120 nodes", "fd00::/104", netaddr.NodeMaskFlags{IPv6: 120, IPv6Set: true}},
		{"IPv6 /32 with /64 nodes, beyond Kubernetes' 16-bit cap", "fd00::/32,10.0.0.0/8", netaddr.NodeMaskFlags{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := newCluster(t, tc.clusterCIDR, tc.masks, nil, Options{}, node("a"), node("b"), node("c"))
			c.run()
			c.create(node("d")) // one created while running
			for _, name := range []string{"a", "b", "c", "d"} {
				c.waitAssigned(name)
				c.checkPodCIDRs(c.get(name))
			}
			if got, want := c.records(), c.onNodes(); !slices.Equal(got, want) {
				t.Errorf("store records %v, want exactly the pod CIDRs on Nodes %v", got, want)
			}
			for _, a := range c.allocs {
				if a.Used() != 4 {
					t.Errorf("allocator of %s has %d node CIDRs in use, want 4", a.CIDR(), a.Used())
				}
			}
		})
	}
}

func TestFirstNodeGetsTheFirstCIDRs(t *testing.T) {
	c := newCluster(t, "fd00::/48,10.244.0.0/16", netaddr.NodeMaskFlags{}, nil, Options{}, node("a"))
	c.run()
	if got, want := c.waitAssigned("a"), []string{"fd00::/64", "10.244.0.0/24"}; !slices.Equal(got, want) {
		t.Errorf("first Node got %v, want %v", got, want)
	}
	if got := c.get("a").Spec.PodCIDR; got != "fd00::/64" {
		t.Errorf("podCIDR = %q, want the primary family's fd00::/64", got)
	}
}

func TestRestartRecoversFromNodesAndStore(t *testing.T) {
	ctx := context.Background()
	store := alloc.NewMemStore()
	for _, k := range []string{
		"10.244.0.0/24", "fd00::/64", // node a's, recorded
		"10.244.1.0/24", "fd00:0:0:1::/64", // orphans: allocated, then the server died before writing a Node
		"10.244.9.0/24", // orphan of a Node deleted while no controller ran
	} {
		if err := store.Create(ctx, netip.MustParsePrefix(k)); err != nil {
			t.Fatal(err)
		}
	}
	single := node("e")
	single.Spec.PodCIDR = "10.244.7.0/24" // written by a single-stack client: podCIDRs empty
	c := newCluster(t, "10.244.0.0/16,fd00::/48", netaddr.NodeMaskFlags{}, store, Options{},
		node("a", "10.244.0.0/24", "fd00::/64"),
		node("b", "10.244.2.0/24", "fd00:0:0:2::/64"), // on the Node, but the store lost its records
		node("c"),
		single,
	)
	c.run()
	c.waitAssigned("c")
	c.waitAssigned("e")

	for name, want := range map[string][]string{
		"a": {"10.244.0.0/24", "fd00::/64"},
		"b": {"10.244.2.0/24", "fd00:0:0:2::/64"},
	} {
		if got := c.get(name).Spec.PodCIDRs; !slices.Equal(got, want) {
			t.Errorf("Node %s pod CIDRs changed to %v, want %v kept", name, got, want)
		}
	}
	e := c.get("e")
	c.checkPodCIDRs(e)
	if e.Spec.PodCIDRs[0] != "10.244.7.0/24" {
		t.Errorf("Node with only podCIDR 10.244.7.0/24 got podCIDRs %v, want it kept first", e.Spec.PodCIDRs)
	}
	c.checkPodCIDRs(c.get("c"))
	if got, want := c.records(), c.onNodes(); !slices.Equal(got, want) {
		t.Errorf("store records %v, want exactly the pod CIDRs on Nodes %v (orphans released, lost records restored)", got, want)
	}
	for _, a := range c.allocs {
		if a.Used() != 4 {
			t.Errorf("allocator of %s has %d in use after recovery, want 4", a.CIDR(), a.Used())
		}
	}
	if c.allocs[0].Has(netip.MustParsePrefix("10.244.9.0/24")) {
		t.Error("orphan 10.244.9.0/24 still taken")
	}
}

func TestDeletedNodeReleasesItsCIDRs(t *testing.T) {
	c := newCluster(t, "10.244.0.0/16,fd00::/48", netaddr.NodeMaskFlags{}, nil, Options{}, node("a"), node("b"))
	c.run()
	gone := c.waitAssigned("a")
	c.waitAssigned("b")
	c.delete("a")
	c.waitFor("Node a's pod CIDRs are released", func() bool {
		for i, s := range gone {
			if c.allocs[i].Has(netip.MustParsePrefix(s)) {
				return false
			}
		}
		return true
	})
	if got, want := c.records(), c.onNodes(); !slices.Equal(got, want) {
		t.Errorf("store records %v, want only Node b's %v", got, want)
	}
}

// The cluster CIDR holds two node CIDRs; a third Node waits with an event
// and gets the first Node's CIDRs when it is deleted. The retry backoff is
// an hour, so only the wake-up on release can assign them in time.
func TestExhaustedNodeWaitsAndGetsReleasedCIDRs(t *testing.T) {
	ctx := context.Background()
	c := newCluster(t, "10.244.0.0/23,fd00::/48", netaddr.NodeMaskFlags{}, nil,
		Options{RetryBaseDelay: time.Hour, RetryMaxDelay: time.Hour}, node("a"), node("b"))
	// Events go through the real broadcaster to the API, as in the server.
	b := broadcast.Start(ctx, c.client)
	t.Cleanup(b.Shutdown)
	c.ctrl.recorder = b.Recorder(v1.EventSource{Component: ControllerName})
	c.run()
	aCIDRs := c.waitAssigned("a")
	c.waitAssigned("b")

	c.create(node("c"))
	var ev v1.Event
	c.waitFor("a Warning CIDRNotAvailable event for Node c is written", func() bool {
		list, err := c.client.CoreV1().Events(metav1.NamespaceAll).List(ctx, metav1.ListOptions{})
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range list.Items {
			if e.InvolvedObject.Kind == "Node" && e.InvolvedObject.Name == "c" && e.Reason == ReasonCIDRNotAvailable {
				ev = e
				return true
			}
		}
		return false
	})
	if ev.Type != v1.EventTypeWarning || ev.Source.Component != ControllerName || !strings.Contains(ev.Message, "10.244.0.0/23") {
		t.Errorf("event = type %s, source %q, message %q; want a Warning from %s naming the full cluster CIDR", ev.Type, ev.Source.Component, ev.Message, ControllerName)
	}
	if got := c.get("c").Spec.PodCIDRs; len(got) != 0 {
		t.Fatalf("Node c got %v from an exhausted cluster CIDR", got)
	}
	c.quiet(func() {
		if used := c.allocs[1].Used(); used != 2 {
			t.Errorf("IPv6 allocator has %d in use while Node c waits, want 2: nothing half-assigned", used)
		}
	})

	c.delete("a")
	got := c.waitAssigned("c")
	if got[0] != aCIDRs[0] {
		t.Errorf("Node c got %s, want the released %s", got[0], aCIDRs[0])
	}
	c.checkPodCIDRs(c.get("c"))
	if recs, want := c.records(), c.onNodes(); !slices.Equal(recs, want) {
		t.Errorf("store records %v, want %v", recs, want)
	}
}

func TestSecondFamilyExhaustedLeavesNothingHalfApplied(t *testing.T) {
	c := newCluster(t, "10.244.0.0/16,fd00::/63", netaddr.NodeMaskFlags{}, nil, Options{}, node("a"), node("b"))
	c.run()
	c.waitAssigned("a")
	bCIDRs := c.waitAssigned("b")

	c.create(node("c"))
	msg := c.waitEvent("c", v1.EventTypeWarning, ReasonCIDRNotAvailable)
	if !strings.Contains(msg, "fd00::/63") {
		t.Errorf("event %q does not name the exhausted cluster CIDR fd00::/63", msg)
	}
	if got := c.get("c").Spec.PodCIDRs; len(got) != 0 {
		t.Errorf("Node c got %v with its IPv6 family exhausted, want nothing", got)
	}
	c.quiet(func() {
		if used := c.allocs[0].Used(); used != 2 {
			t.Errorf("IPv4 allocator has %d in use, want 2: Node c's IPv4 CIDR must be given back", used)
		}
		if got, want := c.records(), c.onNodes(); !slices.Equal(got, want) {
			t.Errorf("store records %v, want only the assigned %v", got, want)
		}
	})

	c.delete("b")
	got := c.waitAssigned("c")
	c.checkPodCIDRs(c.get("c"))
	if got[1] != bCIDRs[1] {
		t.Errorf("Node c got IPv6 %s, want the released %s", got[1], bCIDRs[1])
	}
}

func TestExistingPodCIDRsAreKept(t *testing.T) {
	c := newCluster(t, "10.244.0.0/16,fd00::/48", netaddr.NodeMaskFlags{}, nil, Options{},
		node("v4only", "10.244.5.0/24"),
		node("v6only", "fd00:0:0:9::/64"),
		node("outside", "192.168.0.0/24"),
		node("garbage", "not-a-cidr"),
		node("twice", "10.244.6.0/24", "10.244.7.0/24"),
		node("wide", "10.244.16.0/23"), // covers two /24 node CIDRs
	)
	c.run()

	for name, want := range map[string]func(got []string) bool{
		"v4only": func(g []string) bool { return len(g) == 2 && g[0] == "10.244.5.0/24" },
		"v6only": func(g []string) bool {
			return len(g) == 2 && g[0] == "fd00:0:0:9::/64" && strings.HasPrefix(g[1], "10.244.")
		},
		"outside": func(g []string) bool {
			return len(g) == 2 && g[0] == "192.168.0.0/24" && strings.HasPrefix(g[1], "fd00:")
		},
		"wide": func(g []string) bool { return len(g) == 2 && g[0] == "10.244.16.0/23" },
	} {
		c.waitFor("Node "+name+" gets its missing family", func() bool { return want(c.get(name).Spec.PodCIDRs) })
		if n := c.get(name); n.Spec.PodCIDR != n.Spec.PodCIDRs[0] {
			t.Errorf("Node %s podCIDR %q != podCIDRs[0] %q", name, n.Spec.PodCIDR, n.Spec.PodCIDRs[0])
		}
	}
	c.waitEvent("outside", v1.EventTypeWarning, ReasonPodCIDRNotInClusterCIDR)
	c.waitEvent("garbage", v1.EventTypeWarning, ReasonInvalidPodCIDR)
	c.waitEvent("twice", v1.EventTypeWarning, ReasonInvalidPodCIDR)
	for name, want := range map[string][]string{"garbage": {"not-a-cidr"}, "twice": {"10.244.6.0/24", "10.244.7.0/24"}} {
		if got := c.get(name).Spec.PodCIDRs; !slices.Equal(got, want) {
			t.Errorf("Node %s pod CIDRs %v changed, want %v left alone", name, got, want)
		}
	}
	for _, s := range []string{"10.244.5.0/24", "fd00:0:0:9::/64", "10.244.6.0/24", "10.244.7.0/24", "10.244.16.0/24", "10.244.17.0/24"} {
		p := netip.MustParsePrefix(s)
		if !c.allocs[c.ctrl.familyIndex(netaddr.FamilyOf(p.Addr()))].Has(p) {
			t.Errorf("%s is on a Node but free in the allocator", s)
		}
	}

	c.delete("wide")
	c.waitFor("both node CIDRs under Node wide's /23 are released", func() bool {
		return !c.allocs[0].Has(netip.MustParsePrefix("10.244.16.0/24")) && !c.allocs[0].Has(netip.MustParsePrefix("10.244.17.0/24"))
	})
}

func TestOverlappingNodesAreReportedAndKeepTheCIDR(t *testing.T) {
	c := newCluster(t, "10.244.0.0/16", netaddr.NodeMaskFlags{}, nil, Options{},
		node("a", "10.244.3.0/24"), node("b", "10.244.3.0/24"))
	c.run()
	c.waitFor("a PodCIDRConflict event is recorded", func() bool {
		_, a := c.events.find("a", v1.EventTypeWarning, ReasonPodCIDRConflict)
		_, b := c.events.find("b", v1.EventTypeWarning, ReasonPodCIDRConflict)
		return a || b
	})
	p := netip.MustParsePrefix("10.244.3.0/24")
	c.delete("a")
	c.create(node("c"))
	got := c.waitAssigned("c")
	if got[0] == p.String() {
		t.Errorf("Node c got %s while Node b still has it", p)
	}
	if !c.allocs[0].Has(p) {
		t.Errorf("%s released when one of its two Nodes was deleted", p)
	}
}

// A conflict event names each Node's own pod CIDR, whatever its size, and
// the other Node: a /16 and a /25 that overlap are reported as such, not as
// the /24 node CIDR where they meet.
func TestConflictEventsNameTheNodesRealCIDRs(t *testing.T) {
	c := newCluster(t, "10.244.0.0/16", netaddr.NodeMaskFlags{}, nil, Options{},
		node("wide", "10.244.0.0/16"), node("narrow", "10.244.3.0/25"))
	c.run()
	for _, tc := range []struct{ node, want string }{
		{"wide", "pod CIDR 10.244.0.0/16 of Node wide overlaps pod CIDR 10.244.3.0/25 of Node narrow"},
		{"narrow", "pod CIDR 10.244.3.0/25 of Node narrow overlaps pod CIDR 10.244.0.0/16 of Node wide"},
	} {
		msg := c.waitEvent(tc.node, v1.EventTypeWarning, ReasonPodCIDRConflict)
		if !strings.Contains(msg, tc.want) {
			t.Errorf("conflict event on Node %s: %q, want it to say %q", tc.node, msg, tc.want)
		}
	}
}

// An update that conflicts, or fails without saying whether it was
// applied, is retried with the same CIDRs, never with new ones.
func TestFailedUpdatesRetryTheSameCIDRs(t *testing.T) {
	c := newCluster(t, "10.244.0.0/16,fd00::/48", netaddr.NodeMaskFlags{}, nil, Options{RetryBaseDelay: time.Millisecond})
	var mu sync.Mutex
	failures := []error{
		apierrors.NewConflict(schema.GroupResource{Resource: "nodes"}, "a", errors.New("the object has been modified")),
		apierrors.NewInternalError(errors.New("etcd timed out")),
	}
	c.client.PrependReactor("update", "nodes", func(clienttesting.Action) (bool, runtime.Object, error) {
		mu.Lock()
		defer mu.Unlock()
		if len(failures) == 0 {
			return false, nil, nil
		}
		err := failures[0]
		failures = failures[1:]
		return true, nil, err
	})
	c.run()
	c.create(node("a"))
	if got, want := c.waitAssigned("a"), []string{"10.244.0.0/24", "fd00::/64"}; !slices.Equal(got, want) {
		t.Errorf("Node a got %v after failed updates, want the first CIDRs %v", got, want)
	}
	c.waitEvent("a", v1.EventTypeWarning, ReasonCIDRAssignmentFailed)
	for _, a := range c.allocs {
		if a.Used() != 1 {
			t.Errorf("allocator of %s has %d in use, want 1: retries must reuse the CIDR", a.CIDR(), a.Used())
		}
	}
}

// With a sweep every millisecond racing many assignments, no assignment
// is ever released under a Node: every record stays, none is duplicated.
func TestSweepNeverReleasesAnAssignmentInFlight(t *testing.T) {
	c := newCluster(t, "10.244.0.0/16,fd00::/48", netaddr.NodeMaskFlags{}, nil, Options{SweepInterval: time.Millisecond})
	c.run()
	const n = 40
	for i := range n {
		c.create(node(fmt.Sprintf("n%02d", i)))
	}
	for i := range n {
		c.waitAssigned(fmt.Sprintf("n%02d", i))
	}
	onNodes := c.onNodes()
	if len(onNodes) != 2*n {
		t.Fatalf("%d pod CIDRs on Nodes, want %d", len(onNodes), 2*n)
	}
	if got := c.records(); !slices.Equal(got, onNodes) {
		t.Errorf("store records %v differ from pod CIDRs on Nodes %v", got, onNodes)
	}
	for _, a := range c.allocs {
		if a.Used() != n {
			t.Errorf("allocator of %s has %d in use, want %d", a.CIDR(), a.Used(), n)
		}
	}
}

// Leadership lost and regained: Run stops on cancel, and a new Run starts
// from the store and the Nodes.
func TestRunAgainAfterStop(t *testing.T) {
	c := newCluster(t, "10.244.0.0/16,fd00::/48", netaddr.NodeMaskFlags{}, nil, Options{}, node("a"))
	c.run()
	c.waitAssigned("a")
	c.stop()

	c.create(node("b")) // created while no leader runs
	c.delete("a")       // deleted while no leader runs
	c.run()
	c.waitAssigned("b")
	c.checkPodCIDRs(c.get("b"))
	c.waitFor("Node a's records are released", func() bool { return c.store.Len() == 2 })
	if got, want := c.records(), c.onNodes(); !slices.Equal(got, want) {
		t.Errorf("store records %v, want %v", got, want)
	}
}

func TestNewRefusesMismatchedAllocators(t *testing.T) {
	client := fake.NewClientset()
	nodes := informers.NewSharedInformerFactory(client, 0).Core().V1().Nodes()
	cidrs, _ := netaddr.ParseClusterCIDRs("10.244.0.0/16,fd00::/48", netaddr.NodeMaskFlags{})
	v4, _ := alloc.NewNodeCIDRs(netip.MustParsePrefix("10.244.0.0/16"), 24, nil)
	v6, _ := alloc.NewNodeCIDRs(netip.MustParsePrefix("fd00::/48"), 64, nil)
	v4wrongMask, _ := alloc.NewNodeCIDRs(netip.MustParsePrefix("10.244.0.0/16"), 25, nil)
	for name, allocators := range map[string][]*alloc.NodeCIDRs{
		"too few":       {v4},
		"wrong order":   {v6, v4},
		"wrong mask":    {v4wrongMask, v6},
		"nil allocator": {v4, nil},
	} {
		if _, err := New(client, nodes, cidrs, allocators, nil, &events{}, Options{}); err == nil {
			t.Errorf("%s: New accepted", name)
		}
	}
	if _, err := New(client, nodes, netaddr.ClusterCIDRs{}, nil, nil, &events{}, Options{}); err == nil {
		t.Error("New accepted no cluster CIDRs")
	}
	if _, err := New(client, nodes, cidrs, []*alloc.NodeCIDRs{v4, v6}, nil, &events{}, Options{}); err != nil {
		t.Errorf("New refused matching allocators: %v", err)
	}
}

func TestNodeSlots(t *testing.T) {
	a, _ := alloc.NewNodeCIDRs(netip.MustParsePrefix("10.244.0.0/16"), 24, nil)
	for _, tc := range []struct {
		p    string
		want []string
	}{
		{"10.244.3.0/24", []string{"10.244.3.0/24"}},
		{"10.244.3.128/25", []string{"10.244.3.0/24"}},
		{"10.244.3.7/24", []string{"10.244.3.0/24"}},
		{"10.244.4.0/23", []string{"10.244.4.0/24", "10.244.5.0/24"}},
	} {
		got, err := nodeSlots(a, netip.MustParsePrefix(tc.p))
		var s []string
		for _, p := range got {
			s = append(s, p.String())
		}
		if err != nil || !slices.Equal(s, tc.want) {
			t.Errorf("nodeSlots(%s) = %v, %v; want %v", tc.p, s, err, tc.want)
		}
	}
	if got, err := nodeSlots(a, netip.MustParsePrefix("10.0.0.0/8")); err != nil || len(got) != 256 {
		t.Errorf("a prefix covering the cluster CIDR gives %d node CIDRs, %v; want all 256", len(got), err)
	}
	b, _ := alloc.NewNodeCIDRs(netip.MustParsePrefix("fd00::/32"), 64, nil)
	if _, err := nodeSlots(b, netip.MustParsePrefix("fd00::/40")); err == nil {
		t.Error("a /40 of /64 node CIDRs (2^24) was not refused")
	}
}

// A record on a Node that the informer's cache has not shown yet (written
// by the previous leader just before it stopped, say) is not an orphan:
// the sweep confirms with a live read of the Nodes.
func TestSweepKeepsCIDRsOnNodesTheCacheHasNotShown(t *testing.T) {
	ctx := context.Background()
	store := alloc.NewMemStore()
	for _, k := range []string{"10.244.4.0/24", "10.244.5.0/24"} {
		_ = store.Create(ctx, netip.MustParsePrefix(k))
	}
	client := fake.NewClientset(node("x", "10.244.4.0/24"))
	cidrs, _ := netaddr.ParseClusterCIDRs("10.244.0.0/16", netaddr.NodeMaskFlags{})
	a, _ := alloc.NewNodeCIDRs(cidrs.CIDRs[0], 24, store)
	// The informer is never started: its cache stays empty.
	nodes := informers.NewSharedInformerFactory(client, 0).Core().V1().Nodes()
	c, err := New(client, nodes, cidrs, []*alloc.NodeCIDRs{a}, store, &events{}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	if err := c.sweep(ctx); err != nil {
		t.Fatal(err)
	}
	if !a.Has(netip.MustParsePrefix("10.244.4.0/24")) || store.Len() != 1 {
		t.Errorf("after the sweep 10.244.4.0/24 taken = %v and %d records; want Node x's kept and only the orphan 10.244.5.0/24 released",
			a.Has(netip.MustParsePrefix("10.244.4.0/24")), store.Len())
	}
	if a.Has(netip.MustParsePrefix("10.244.5.0/24")) {
		t.Error("orphan 10.244.5.0/24 still taken")
	}
}
