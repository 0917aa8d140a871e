package integration

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/util/retry"
)

// registerNode registers a node as an agent would: Ready, allocatable cpu
// (2), memory (4Gi) and pods (110), its hostname label plus labels.
func registerNode(t testing.TB, client kubernetes.Interface, name string, labels map[string]string) {
	t.Helper()
	ctx := ctxT(t)
	node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{corev1.LabelHostname: name}}}
	for k, v := range labels {
		node.Labels[k] = v
	}
	_, err := client.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{})
	fatalIf(t, err)
	// Controllers (node IPAM) may write the new node first.
	err = retry.RetryOnConflict(retry.DefaultRetry, func() error {
		node, err := client.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		now := metav1.Now()
		node.Status.Conditions = []corev1.NodeCondition{{Type: corev1.NodeReady, Status: corev1.ConditionTrue, Reason: "TestAgentReady", LastHeartbeatTime: now, LastTransitionTime: now}}
		node.Status.Allocatable = corev1.ResourceList{
			corev1.ResourceCPU: resource.MustParse("2"), corev1.ResourceMemory: resource.MustParse("4Gi"), corev1.ResourcePods: resource.MustParse("110"),
		}
		node.Status.Capacity = node.Status.Allocatable
		_, err = client.CoreV1().Nodes().UpdateStatus(ctx, node, metav1.UpdateOptions{})
		return err
	})
	fatalIf(t, err)
}

// fakeAgent registers a node as an agent would (Ready, allocatable cpu,
// memory and pods, its hostname label plus labels) and renews its Lease
// every second until stop is called or the test ends.
type fakeAgent struct {
	stop func()
}

func startFakeAgent(t testing.TB, client kubernetes.Interface, name string, labels map[string]string) *fakeAgent {
	t.Helper()
	ctx := ctxT(t)
	registerNode(t, client, name, labels)
	renew := func(ctx context.Context) {
		leases := client.CoordinationV1().Leases(corev1.NamespaceNodeLease)
		now := metav1.NewMicroTime(time.Now())
		l, err := leases.Get(ctx, name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			_, _ = leases.Create(ctx, &coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: corev1.NamespaceNodeLease},
				Spec: coordinationv1.LeaseSpec{HolderIdentity: &name, RenewTime: &now}}, metav1.CreateOptions{})
			return
		}
		if err == nil {
			l.Spec.RenewTime = &now
			_, _ = leases.Update(ctx, l, metav1.UpdateOptions{})
		}
	}
	renew(ctx)
	hbCtx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		wait.UntilWithContext(hbCtx, renew, time.Second)
	}()
	a := &fakeAgent{stop: func() { cancel(); <-done }}
	t.Cleanup(a.stop)
	return a
}

func podScheduledCondition(p *corev1.Pod) *corev1.PodCondition {
	for i := range p.Status.Conditions {
		if p.Status.Conditions[i].Type == corev1.PodScheduled {
			return &p.Status.Conditions[i]
		}
	}
	return nil
}

// TestSchedulingAntiAffinityAndUnschedulable is what upstream's dual-stack
// tests ask of the scheduler: replicas with required anti-affinity on
// kubernetes.io/hostname land one per node; one replica more than nodes
// is Unschedulable with Kubernetes' message and a FailedScheduling event,
// and is bound, PodScheduled=True, as soon as a node joins.
func TestSchedulingAntiAffinityAndUnschedulable(t *testing.T) {
	t.Parallel()
	srv := StartServer(t, ServerOptions{ServiceRanges: v4Range})
	ctx := ctxT(t)
	for _, n := range []string{"sched-a", "sched-b"} {
		startFakeAgent(t, srv.Client, n, nil)
	}
	pods := srv.Client.CoreV1().Pods("default")
	for i := range 3 {
		_, err := pods.Create(ctx, &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("server-%d", i), Labels: map[string]string{"test": "dualstack-test-server"}},
			Spec: corev1.PodSpec{
				Containers: []corev1.Container{{Name: "c", Image: "agnhost"}},
				Affinity: &corev1.Affinity{PodAntiAffinity: &corev1.PodAntiAffinity{RequiredDuringSchedulingIgnoredDuringExecution: []corev1.PodAffinityTerm{{
					LabelSelector: &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{Key: "test", Operator: metav1.LabelSelectorOpIn, Values: []string{"dualstack-test-server"}}}},
					TopologyKey:   corev1.LabelHostname,
				}}}},
			},
		}, metav1.CreateOptions{})
		fatalIf(t, err)
	}
	const msg = "0/2 nodes are available: 2 node(s) didn't match pod anti-affinity rules."
	var pending string
	eventually(t, controllerWait, "two pods on different nodes, the third Unschedulable", func() error {
		list, err := pods.List(ctx, metav1.ListOptions{})
		if err != nil {
			return err
		}
		used := map[string]string{}
		pending = ""
		for _, p := range list.Items {
			if p.Spec.NodeName == "" {
				pending = p.Name
				if c := podScheduledCondition(&p); c == nil || c.Status != corev1.ConditionFalse || c.Reason != corev1.PodReasonUnschedulable || c.Message != msg {
					return fmt.Errorf("pending %s: PodScheduled %+v, want False, Unschedulable, %q", p.Name, c, msg)
				}
				continue
			}
			if other, dup := used[p.Spec.NodeName]; dup {
				t.Fatalf("%s and %s both on %s despite required anti-affinity", p.Name, other, p.Spec.NodeName)
			}
			used[p.Spec.NodeName] = p.Name
		}
		if len(used) != 2 || pending == "" {
			return fmt.Errorf("bound %v, pending %q", used, pending)
		}
		return nil
	})
	eventually(t, controllerWait, "a FailedScheduling event for "+pending, func() error {
		evs, err := srv.Client.CoreV1().Events("default").List(ctx, metav1.ListOptions{FieldSelector: "involvedObject.name=" + pending + ",reason=FailedScheduling"})
		if err != nil {
			return err
		}
		for _, e := range evs.Items {
			if e.Type == corev1.EventTypeWarning && e.Message == msg {
				return nil
			}
		}
		return fmt.Errorf("events %+v", evs.Items)
	})
	// Every pod got the default tolerations at creation.
	p, err := pods.Get(ctx, pending, metav1.GetOptions{})
	fatalIf(t, err)
	tolerated := map[string]int64{}
	for _, tol := range p.Spec.Tolerations {
		if tol.Effect == corev1.TaintEffectNoExecute && tol.TolerationSeconds != nil {
			tolerated[tol.Key] = *tol.TolerationSeconds
		}
	}
	if tolerated[corev1.TaintNodeNotReady] != 300 || tolerated[corev1.TaintNodeUnreachable] != 300 {
		t.Errorf("tolerations %+v, want the default 300s of not-ready and unreachable", p.Spec.Tolerations)
	}

	startFakeAgent(t, srv.Client, "sched-c", nil)
	eventually(t, controllerWait, pending+" bound to the new node", func() error {
		p, err := pods.Get(ctx, pending, metav1.GetOptions{})
		if err != nil {
			return err
		}
		if p.Spec.NodeName != "sched-c" {
			return fmt.Errorf("nodeName %q", p.Spec.NodeName)
		}
		if c := podScheduledCondition(p); c == nil || c.Status != corev1.ConditionTrue || c.Reason != "" {
			return fmt.Errorf("bound, but PodScheduled %+v", c)
		}
		return nil
	})
}

// TestSchedulingResourcesAndNodeAffinity: requests count against
// allocatable, nodeSelector and required node affinity pick the nodes, and
// spec.nodeName bypasses all of it.
func TestSchedulingResourcesAndNodeAffinity(t *testing.T) {
	t.Parallel()
	srv := StartServer(t, ServerOptions{ServiceRanges: v4Range})
	ctx := ctxT(t)
	startFakeAgent(t, srv.Client, "res-a", map[string]string{"disk": "ssd"})
	startFakeAgent(t, srv.Client, "res-b", map[string]string{"disk": "hdd"})
	pods := srv.Client.CoreV1().Pods("default")
	mk := func(name string, cpu string, mutate func(*corev1.Pod)) {
		p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: corev1.PodSpec{Containers: []corev1.Container{{
			Name: "c", Image: "x", Resources: corev1.ResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse(cpu)}},
		}}}}
		if mutate != nil {
			mutate(p)
		}
		_, err := pods.Create(ctx, p, metav1.CreateOptions{})
		fatalIf(t, err)
	}
	mk("ssd-big", "1500m", func(p *corev1.Pod) { p.Spec.NodeSelector = map[string]string{"disk": "ssd"} })
	mk("ssd-too", "1", func(p *corev1.Pod) {
		p.Spec.Affinity = &corev1.Affinity{NodeAffinity: &corev1.NodeAffinity{RequiredDuringSchedulingIgnoredDuringExecution: &corev1.NodeSelector{
			NodeSelectorTerms: []corev1.NodeSelectorTerm{{MatchExpressions: []corev1.NodeSelectorRequirement{{Key: "disk", Operator: corev1.NodeSelectorOpIn, Values: []string{"ssd"}}}}},
		}}}
	})
	mk("manual", "100m", func(p *corev1.Pod) { p.Spec.NodeName = "res-a" })
	eventually(t, controllerWait, "ssd-big on res-a, ssd-too waiting for cpu, manual where it was put", func() error {
		big, err := pods.Get(ctx, "ssd-big", metav1.GetOptions{})
		if err != nil {
			return err
		}
		too, err := pods.Get(ctx, "ssd-too", metav1.GetOptions{})
		if err != nil {
			return err
		}
		if big.Spec.NodeName != "res-a" && too.Spec.NodeName != "res-a" {
			return fmt.Errorf("neither ssd pod is on res-a yet")
		}
		waiting := big
		if big.Spec.NodeName == "res-a" {
			waiting = too
		}
		c := podScheduledCondition(waiting)
		if waiting.Spec.NodeName != "" || c == nil || !strings.Contains(c.Message, "1 Insufficient cpu") || !strings.Contains(c.Message, "1 node(s) didn't match Pod's node affinity/selector") {
			return fmt.Errorf("%s: node %q, PodScheduled %+v", waiting.Name, waiting.Spec.NodeName, c)
		}
		return nil
	})
	if m, err := pods.Get(ctx, "manual", metav1.GetOptions{}); err != nil || m.Spec.NodeName != "res-a" {
		t.Fatalf("manual pod: %v, %v", m, err)
	}
}

// TestTaintEvictionTiming (with a 2s --node-monitor-grace-period): a node
// whose Lease stops being renewed is tainted unreachable (NoSchedule and
// NoExecute) and Unknown; its pods are evicted when their toleration of
// the taint runs out, counted from the taint's timeAdded, and not before;
// a pod with the default 300s toleration stays for the test's duration.
func TestTaintEvictionTiming(t *testing.T) {
	t.Parallel()
	srv := StartServer(t, ServerOptions{ServiceRanges: v4Range, Extra: []string{"--node-monitor-grace-period=2s"}})
	ctx := ctxT(t)
	agent := startFakeAgent(t, srv.Client, "doomed", nil)
	pods := srv.Client.CoreV1().Pods("default")
	tolerate := func(secs int64) []corev1.Toleration {
		return []corev1.Toleration{{Key: corev1.TaintNodeUnreachable, Operator: corev1.TolerationOpExists, Effect: corev1.TaintEffectNoExecute, TolerationSeconds: &secs}}
	}
	for name, tols := range map[string][]corev1.Toleration{"at-once": tolerate(0), "after-8s": tolerate(8), "default": nil} {
		_, err := pods.Create(ctx, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name},
			Spec: corev1.PodSpec{NodeName: "doomed", Tolerations: tols, Containers: []corev1.Container{{Name: "c", Image: "x"}}}}, metav1.CreateOptions{})
		fatalIf(t, err)
	}
	agent.stop()
	var tainted time.Time
	eventually(t, controllerWait, "the silent node Unknown and tainted unreachable", func() error {
		n, err := srv.Client.CoreV1().Nodes().Get(ctx, "doomed", metav1.GetOptions{})
		if err != nil {
			return err
		}
		effects := map[corev1.TaintEffect]bool{}
		for _, tt := range n.Spec.Taints {
			if tt.Key == corev1.TaintNodeUnreachable {
				effects[tt.Effect] = true
				if tt.Effect == corev1.TaintEffectNoExecute && tt.TimeAdded != nil {
					tainted = tt.TimeAdded.Time
				}
			}
		}
		ready := corev1.ConditionTrue
		for _, c := range n.Status.Conditions {
			if c.Type == corev1.NodeReady {
				ready = c.Status
			}
		}
		if !effects[corev1.TaintEffectNoSchedule] || !effects[corev1.TaintEffectNoExecute] || tainted.IsZero() || ready != corev1.ConditionUnknown {
			return fmt.Errorf("Ready %s, taints %+v", ready, n.Spec.Taints)
		}
		return nil
	})
	evicted := func(name string) (time.Time, bool) {
		p, err := pods.Get(ctx, name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			t.Fatalf("pod %s is gone: a pod on a node that stopped reporting must stay Terminating", name)
		}
		fatalIf(t, err)
		if p.DeletionTimestamp == nil {
			return time.Time{}, false
		}
		for _, c := range p.Status.Conditions {
			if c.Type == corev1.DisruptionTarget && c.Status == corev1.ConditionTrue && c.Reason == "DeletionByTaintManager" {
				return c.LastTransitionTime.Time, true
			}
		}
		t.Fatalf("%s deleted without the DisruptionTarget condition: %+v", name, p.Status.Conditions)
		return time.Time{}, false
	}
	eventually(t, controllerWait, "the pod tolerating 0s evicted", func() error {
		if _, ok := evicted("at-once"); !ok {
			return fmt.Errorf("not yet")
		}
		return nil
	})
	var at time.Time
	eventually(t, controllerWait, "the pod tolerating 8s evicted", func() error {
		var ok bool
		if at, ok = evicted("after-8s"); !ok {
			return fmt.Errorf("not yet")
		}
		return nil
	})
	// timeAdded and the condition's time both have whole seconds.
	if d := at.Sub(tainted); d < 7*time.Second || d > 20*time.Second {
		t.Errorf("evicted %s after the taint (added %s, evicted %s), want 8s", d, tainted, at)
	}
	if _, ok := evicted("default"); ok {
		t.Errorf("the pod with the default 300s toleration was evicted after %s", time.Since(tainted))
	}
}
