package nodelifecycle

import (
	"context"
	"fmt"
	"testing"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes/fake"
	clocktesting "k8s.io/utils/clock/testing"

	"github.com/duet-net/duet/internal/controller/fakeapi"
)

type harness struct {
	t       *testing.T
	ctx     context.Context
	client  *fake.Clientset
	clock   *clocktesting.FakeClock
	c       *Controller
	factory informers.SharedInformerFactory
}

// start runs the controller, ticker and all.
func start(t *testing.T, objs ...*corev1.Node) *harness {
	h := prepare(t, objs...)
	go h.c.Run(h.ctx)
	// The monitor's ticker exists once Run has synced the caches.
	if err := wait.PollUntilContextTimeout(h.ctx, time.Millisecond, 10*time.Second, true, func(context.Context) (bool, error) {
		return h.clock.HasWaiters(), nil
	}); err != nil {
		t.Fatal("the controller never started its monitor")
	}
	return h
}

// prepare builds the controller and starts its informers, without running
// it: tests call sync themselves, and know it is done when it returns.
func prepare(t *testing.T, objs ...*corev1.Node) *harness {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	h := &harness{t: t, ctx: ctx, client: fake.NewClientset(), clock: clocktesting.NewFakeClock(time.Unix(10000, 0))}
	for _, n := range objs {
		if _, err := h.client.CoreV1().Nodes().Create(ctx, n, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	factory := informers.NewSharedInformerFactory(h.client, 0)
	c, err := New(h.client, factory.Core().V1().Nodes(), factory.Coordination().V1().Leases(), factory.Core().V1().Pods(), Options{Clock: h.clock})
	if err != nil {
		t.Fatal(err)
	}
	factory.Start(ctx.Done())
	factory.WaitForCacheSync(ctx.Done())
	h.c, h.factory = c, factory
	h.eventually("informers watching", func() error {
		if !fakeapi.Watching(h.client, "nodes", "leases", "pods") {
			return fmt.Errorf("not yet")
		}
		return nil
	})
	return h
}

// sync runs the controller's sync of node once its caches show the API's
// current node and lease.
func (h *harness) sync(name string) {
	h.t.Helper()
	h.eventually("caches caught up with "+name, func() error {
		n := h.node(name)
		cached, err := h.c.nodes.Get(name)
		if err != nil || !equality.Semantic.DeepEqual(cached.Spec, n.Spec) || !equality.Semantic.DeepEqual(cached.Status, n.Status) {
			return fmt.Errorf("node %s not cached yet", name)
		}
		l, err := h.client.CoordinationV1().Leases(corev1.NamespaceNodeLease).Get(h.ctx, name, metav1.GetOptions{})
		if err != nil {
			return nil // no lease
		}
		cl, err := h.c.leases.Leases(corev1.NamespaceNodeLease).Get(name)
		if err != nil || !equality.Semantic.DeepEqual(cl.Spec, l.Spec) {
			return fmt.Errorf("lease %s not cached yet", name)
		}
		return nil
	})
	if err := h.c.sync(h.ctx, name); err != nil {
		h.t.Fatalf("sync %s: %v", name, err)
	}
}

// heartbeat renews node's lease at the fake clock's time.
func (h *harness) heartbeat(node string) {
	h.t.Helper()
	now := metav1.NewMicroTime(h.clock.Now())
	leases := h.client.CoordinationV1().Leases(corev1.NamespaceNodeLease)
	l, err := leases.Get(h.ctx, node, metav1.GetOptions{})
	if err != nil {
		_, err = leases.Create(h.ctx, &coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{Name: node, Namespace: corev1.NamespaceNodeLease},
			Spec: coordinationv1.LeaseSpec{RenewTime: &now}}, metav1.CreateOptions{})
	} else {
		l.Spec.RenewTime = &now
		_, err = leases.Update(h.ctx, l, metav1.UpdateOptions{})
	}
	if err != nil {
		h.t.Fatal(err)
	}
}

func (h *harness) node(name string) *corev1.Node {
	h.t.Helper()
	n, err := h.client.CoreV1().Nodes().Get(h.ctx, name, metav1.GetOptions{})
	if err != nil {
		h.t.Fatal(err)
	}
	return n
}

// eventually polls check (the controller acts on its own goroutines).
func (h *harness) eventually(what string, check func() error) {
	h.t.Helper()
	var last error
	if err := wait.PollUntilContextTimeout(h.ctx, 2*time.Millisecond, 10*time.Second, true, func(context.Context) (bool, error) {
		last = check()
		return last == nil, nil
	}); err != nil {
		h.t.Fatalf("%s: %v", what, last)
	}
}

// tick moves the fake clock by a monitor period (firing a running
// controller's ticker).
func (h *harness) tick() {
	h.clock.Step(DefaultMonitorPeriod)
}

func readyNode(name string, heartbeat time.Time) *corev1.Node {
	return &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name}, Status: corev1.NodeStatus{Conditions: []corev1.NodeCondition{
		{Type: corev1.NodeReady, Status: corev1.ConditionTrue, LastHeartbeatTime: metav1.NewTime(heartbeat)},
	}}}
}

func taintKeys(n *corev1.Node) map[string]bool {
	out := map[string]bool{}
	for _, t := range n.Spec.Taints {
		out[t.Key+":"+string(t.Effect)] = true
	}
	return out
}

func TestLeaseKeepsANodeReadyAndItsAbsenceTaintsIt(t *testing.T) {
	h := prepare(t, readyNode("alive", time.Unix(10000, 0)), readyNode("silent", time.Unix(10000, 0)))
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: "default", UID: "u1"}, Spec: corev1.PodSpec{NodeName: "silent"},
		Status: corev1.PodStatus{Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}}}}
	if _, err := h.client.CoreV1().Pods("default").Create(h.ctx, pod, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	both := func() {
		h.heartbeat("alive")
		h.sync("alive")
		h.sync("silent")
	}
	both() // first sight at 10000s
	// 50s of heartbeats from "alive" only: within the grace period
	// (50s) both are fine.
	for range 10 {
		h.tick()
		both()
	}
	for _, name := range []string{"alive", "silent"} {
		if n := h.node(name); len(n.Spec.Taints) != 0 || condition(n, corev1.NodeReady).Status != corev1.ConditionTrue {
			t.Fatalf("%s tainted or not Ready within the grace period: %+v", name, n.Spec.Taints)
		}
	}
	// Past 50s, "silent" is Unknown and unreachable; "alive" is not.
	h.clock.Step(time.Second)
	both()
	n := h.node("silent")
	ready := condition(n, corev1.NodeReady)
	keys := taintKeys(n)
	if ready.Status != corev1.ConditionUnknown || ready.Reason != ReasonStatusUnknown ||
		!keys[corev1.TaintNodeUnreachable+":NoSchedule"] || !keys[corev1.TaintNodeUnreachable+":NoExecute"] || len(keys) != 2 {
		t.Fatalf("51s without a heartbeat: Ready %+v, taints %v; want Unknown (%s) and the two unreachable taints", ready, n.Spec.Taints, ReasonStatusUnknown)
	}
	for _, tt := range n.Spec.Taints {
		if tt.Effect == corev1.TaintEffectNoExecute && (tt.TimeAdded == nil || !tt.TimeAdded.Time.Equal(h.clock.Now().Truncate(time.Second))) {
			t.Errorf("NoExecute taint added at %v, want %v", tt.TimeAdded, h.clock.Now())
		}
	}
	p, err := h.client.CoreV1().Pods("default").Get(h.ctx, "web", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if c := p.Status.Conditions; len(c) != 1 || c[0].Type != corev1.PodReady || c[0].Status != corev1.ConditionFalse {
		t.Errorf("pod on the unreachable node: conditions %+v, want Ready=False", c)
	}
	if n := h.node("alive"); len(n.Spec.Taints) != 0 {
		t.Fatalf("alive was tainted: %+v", n.Spec.Taints)
	}
	// A lease renewed again is a heartbeat: the agent is back and posts Ready.
	h.heartbeat("silent")
	n = h.node("silent")
	c := condition(n, corev1.NodeReady)
	c.Status, c.Reason, c.LastHeartbeatTime = corev1.ConditionTrue, "DuetAgentReady", metav1.NewTime(h.clock.Now())
	if _, err := h.client.CoreV1().Nodes().UpdateStatus(h.ctx, n, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	h.sync("silent")
	if n := h.node("silent"); len(n.Spec.Taints) != 0 {
		t.Errorf("Ready again, still tainted: %v", n.Spec.Taints)
	}
}

func TestTaintsFollowARunningController(t *testing.T) {
	h := start(t, readyNode("silent", time.Unix(10000, 0)))
	h.eventually("node first seen", func() error {
		h.c.mu.Lock()
		defer h.c.mu.Unlock()
		if h.c.health["silent"] == nil {
			return fmt.Errorf("not yet")
		}
		return nil
	})
	for range 11 {
		h.tick()
	}
	h.eventually("silent is unreachable after 55s without heartbeats", func() error {
		if keys := taintKeys(h.node("silent")); !keys[corev1.TaintNodeUnreachable+":NoExecute"] {
			return fmt.Errorf("taints %v", keys)
		}
		return nil
	})
}

func TestNodeThatNeverReportsGetsTheStartupGracePeriod(t *testing.T) {
	created := metav1.NewTime(time.Unix(10000, 0))
	h := prepare(t, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "bare", CreationTimestamp: created}})
	h.clock.Step(55 * time.Second) // past the grace period, not the startup one
	h.sync("bare")
	if n := h.node("bare"); len(n.Spec.Taints) != 0 || len(n.Status.Conditions) != 0 {
		t.Fatalf("bare node changed within its startup grace period: %+v", n)
	}
	h.clock.Step(6 * time.Second)
	h.sync("bare")
	n := h.node("bare")
	ready := condition(n, corev1.NodeReady)
	if ready == nil || ready.Status != corev1.ConditionUnknown || ready.Reason != ReasonStatusNeverUpdated || len(n.Spec.Taints) != 2 {
		t.Fatalf("61s after creation without a status: Ready %+v, taints %v; want Unknown (%s), unreachable", ready, n.Spec.Taints, ReasonStatusNeverUpdated)
	}
}

func TestNotReadyAndCordonedNodesAreTaintedAtOnce(t *testing.T) {
	notReady := readyNode("sick", time.Unix(10000, 0))
	notReady.Status.Conditions[0].Status = corev1.ConditionFalse
	cordoned := readyNode("cordoned", time.Unix(10000, 0))
	cordoned.Spec.Unschedulable = true
	h := start(t, notReady, cordoned)
	h.eventually("not-ready and unschedulable taints without waiting for a grace period", func() error {
		sick, c := taintKeys(h.node("sick")), taintKeys(h.node("cordoned"))
		if len(sick) != 2 || !sick[corev1.TaintNodeNotReady+":NoExecute"] || !sick[corev1.TaintNodeNotReady+":NoSchedule"] {
			return fmt.Errorf("sick taints %v", sick)
		}
		if len(c) != 1 || !c[corev1.TaintNodeUnschedulable+":NoSchedule"] {
			return fmt.Errorf("cordoned taints %v", c)
		}
		return nil
	})
}
