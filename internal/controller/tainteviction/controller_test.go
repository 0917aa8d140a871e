package tainteviction

import (
	"context"
	"fmt"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes/fake"
	clienttesting "k8s.io/client-go/testing"
	"k8s.io/client-go/tools/record"
	clocktesting "k8s.io/utils/clock/testing"

	"github.com/duet-net/duet/internal/controller/fakeapi"
)

var t0 = time.Unix(100000, 0)

func seconds(s int64) *int64 { return &s }

func unreachable(added *time.Time) corev1.Taint {
	t := corev1.Taint{Key: corev1.TaintNodeUnreachable, Effect: corev1.TaintEffectNoExecute}
	if added != nil {
		at := metav1.NewTime(*added)
		t.TimeAdded = &at
	}
	return t
}

func tolerate(key string, secs *int64) corev1.Toleration {
	return corev1.Toleration{Key: key, Operator: corev1.TolerationOpExists, Effect: corev1.TaintEffectNoExecute, TolerationSeconds: secs}
}

func TestEvictAt(t *testing.T) {
	added := func(*corev1.Taint) time.Time { return t0 }
	notReady := corev1.Taint{Key: corev1.TaintNodeNotReady, Effect: corev1.TaintEffectNoExecute}
	custom := corev1.Taint{Key: "maintenance", Value: "now", Effect: corev1.TaintEffectNoExecute}
	tests := []struct {
		name    string
		taints  []corev1.Taint
		tols    []corev1.Toleration
		created time.Time
		want    time.Time
		evict   bool
		which   string
	}{
		{name: "no taints: stays"},
		{name: "untolerated: at once", taints: []corev1.Taint{custom}, tols: []corev1.Toleration{tolerate(corev1.TaintNodeUnreachable, seconds(300))}, evict: true, which: "maintenance"},
		{name: "the default 300s toleration", taints: []corev1.Taint{unreachable(nil)}, tols: []corev1.Toleration{tolerate(corev1.TaintNodeUnreachable, seconds(300))},
			want: t0.Add(300 * time.Second), evict: true, which: corev1.TaintNodeUnreachable},
		{name: "tolerated for ever", taints: []corev1.Taint{unreachable(nil)}, tols: []corev1.Toleration{tolerate(corev1.TaintNodeUnreachable, nil)}},
		{name: "the first matching toleration decides", taints: []corev1.Taint{unreachable(nil)},
			tols: []corev1.Toleration{tolerate(corev1.TaintNodeUnreachable, seconds(30)), {Operator: corev1.TolerationOpExists}}, want: t0.Add(30 * time.Second), evict: true, which: corev1.TaintNodeUnreachable},
		{name: "the earliest of two taints", taints: []corev1.Taint{notReady, unreachable(nil)},
			tols: []corev1.Toleration{tolerate(corev1.TaintNodeNotReady, seconds(600)), tolerate(corev1.TaintNodeUnreachable, seconds(60))}, want: t0.Add(60 * time.Second), evict: true, which: corev1.TaintNodeUnreachable},
		{name: "one taint for ever, one for a while", taints: []corev1.Taint{notReady, unreachable(nil)},
			tols: []corev1.Toleration{tolerate(corev1.TaintNodeNotReady, nil), tolerate(corev1.TaintNodeUnreachable, seconds(60))}, want: t0.Add(60 * time.Second), evict: true, which: corev1.TaintNodeUnreachable},
		{name: "negative seconds mean at once", taints: []corev1.Taint{unreachable(nil)}, tols: []corev1.Toleration{tolerate(corev1.TaintNodeUnreachable, seconds(-5))},
			want: t0, evict: true, which: corev1.TaintNodeUnreachable},
		{name: "a pod created after the taint gets its full toleration", taints: []corev1.Taint{unreachable(nil)}, tols: []corev1.Toleration{tolerate(corev1.TaintNodeUnreachable, seconds(300))},
			created: t0.Add(time.Hour), want: t0.Add(time.Hour + 300*time.Second), evict: true, which: corev1.TaintNodeUnreachable},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{CreationTimestamp: metav1.NewTime(tt.created)}, Spec: corev1.PodSpec{Tolerations: tt.tols}}
			at, which, evict := evictAt(pod, tt.taints, added)
			if evict != tt.evict || !at.Equal(tt.want) || which.Key != tt.which {
				t.Errorf("evictAt = %v, %q, %v; want %v, %q, %v", at, which.Key, evict, tt.want, tt.which, tt.evict)
			}
		})
	}
}

type harness struct {
	t      *testing.T
	ctx    context.Context
	client *fake.Clientset
	clock  *clocktesting.FakeClock
	c      *Controller
	events *record.FakeRecorder
}

func prepare(t *testing.T, node *corev1.Node, pods ...*corev1.Pod) *harness {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	h := &harness{t: t, ctx: ctx, client: fake.NewClientset(), clock: clocktesting.NewFakeClock(t0), events: record.NewFakeRecorder(100)}
	if _, err := h.client.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	for _, p := range pods {
		if _, err := h.client.CoreV1().Pods(p.Namespace).Create(ctx, p, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	factory := informers.NewSharedInformerFactory(h.client, 0)
	c, err := New(h.client, factory.Core().V1().Pods(), factory.Core().V1().Nodes(), h.clock, h.events)
	if err != nil {
		t.Fatal(err)
	}
	h.c = c
	factory.Start(ctx.Done())
	factory.WaitForCacheSync(ctx.Done())
	h.eventually("informers watching", func() error {
		if !fakeapi.Watching(h.client, "nodes", "pods") {
			return fmt.Errorf("not yet")
		}
		return nil
	})
	return h
}

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

// gone tells whether pod was deleted, and checks it was marked first.
func (h *harness) gone(name string) bool {
	h.t.Helper()
	_, err := h.client.CoreV1().Pods("default").Get(h.ctx, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		marked := false
		for _, a := range h.client.Actions() {
			if p, ok := a.(clienttesting.PatchAction); ok && a.GetSubresource() == "status" && p.GetName() == name {
				marked = true
			}
		}
		if !marked {
			h.t.Errorf("pod %s deleted without the DisruptionTarget condition", name)
		}
		return true
	}
	return false
}

func pod(name, node string, tols ...corev1.Toleration) *corev1.Pod {
	return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "default", UID: types.UID("uid-" + name), CreationTimestamp: metav1.NewTime(t0.Add(-time.Hour))},
		Spec: corev1.PodSpec{NodeName: node, Tolerations: tols}}
}

func TestEvictionAfterTheToleration(t *testing.T) {
	added := t0
	node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n1"}, Spec: corev1.NodeSpec{Taints: []corev1.Taint{unreachable(&added)}}}
	h := prepare(t, node, pod("tolerant", "n1", tolerate(corev1.TaintNodeUnreachable, seconds(300))))
	h.clock.Step(299 * time.Second)
	if err := h.c.sync(h.ctx, "default/tolerant"); err != nil {
		t.Fatal(err)
	}
	if h.gone("tolerant") {
		t.Fatal("evicted after 299s of a 300s toleration")
	}
	h.clock.Step(time.Second)
	if err := h.c.sync(h.ctx, "default/tolerant"); err != nil {
		t.Fatal(err)
	}
	if !h.gone("tolerant") {
		t.Fatal("not evicted when its 300s toleration ran out")
	}
	select {
	case e := <-h.events.Events:
		if want := "Normal " + ReasonTaintManagerEviction; len(e) < len(want) || e[:len(want)] != want {
			t.Errorf("event %q, want %s", e, want)
		}
	default:
		t.Error("no eviction event")
	}
}

func TestRunningControllerEvictsOnTime(t *testing.T) {
	node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n1"}}
	h := prepare(t, node,
		pod("intolerant", "n1"),
		pod("tolerant", "n1", tolerate(corev1.TaintNodeUnreachable, seconds(300))),
		pod("forever", "n1", tolerate(corev1.TaintNodeUnreachable, nil)),
		pod("elsewhere", "n2"))
	go h.c.Run(h.ctx, 2)
	// The node becomes unreachable now.
	now := h.clock.Now()
	node.Spec.Taints = []corev1.Taint{unreachable(&now)}
	if _, err := h.client.CoreV1().Nodes().Update(h.ctx, node, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	h.eventually("the intolerant pod evicted at once", func() error {
		if !h.gone("intolerant") {
			return fmt.Errorf("still there")
		}
		return nil
	})
	// The tolerant pod's deadline waits on the fake clock.
	h.eventually("an eviction scheduled", func() error {
		if !h.clock.HasWaiters() {
			return fmt.Errorf("no timer")
		}
		return nil
	})
	if h.gone("tolerant") {
		t.Fatal("tolerant pod evicted at once")
	}
	h.clock.Step(300 * time.Second)
	h.eventually("the tolerant pod evicted 300s later", func() error {
		if !h.gone("tolerant") {
			return fmt.Errorf("still there")
		}
		return nil
	})
	for _, name := range []string{"forever", "elsewhere"} {
		if h.gone(name) {
			t.Errorf("%s was evicted", name)
		}
	}
}

func TestUntaintedNodeCancelsEviction(t *testing.T) {
	now := t0
	node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n1"}, Spec: corev1.NodeSpec{Taints: []corev1.Taint{unreachable(&now)}}}
	h := prepare(t, node, pod("tolerant", "n1", tolerate(corev1.TaintNodeUnreachable, seconds(300))))
	if err := h.c.sync(h.ctx, "default/tolerant"); err != nil {
		t.Fatal(err)
	}
	// The node comes back before the deadline.
	node.Spec.Taints = nil
	if _, err := h.client.CoreV1().Nodes().Update(h.ctx, node, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	h.eventually("cache sees the untainted node", func() error {
		n, err := h.c.nodes.Get("n1")
		if err != nil || len(n.Spec.Taints) != 0 {
			return fmt.Errorf("still tainted in the cache")
		}
		return nil
	})
	h.clock.Step(time.Hour)
	if err := h.c.sync(h.ctx, "default/tolerant"); err != nil {
		t.Fatal(err)
	}
	if h.gone("tolerant") {
		t.Fatal("evicted from a node that is no longer tainted")
	}
}
