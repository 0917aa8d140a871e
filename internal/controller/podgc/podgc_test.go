package podgc

import (
	"context"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes/fake"
	clocktesting "k8s.io/utils/clock/testing"

	"github.com/duet-net/duet/internal/controller/fakeapi"
)

func TestPodsOfDeletedNodesGoAfterTheQuarantine(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	client := fake.NewClientset()
	clk := clocktesting.NewFakeClock(time.Unix(1000, 0))
	for _, n := range []string{"kept", "deleted"} {
		if _, err := client.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: n}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	for _, p := range []struct{ name, node string }{{"on-kept", "kept"}, {"on-deleted", "deleted"}, {"pending", ""}, {"on-never", "never-existed"}} {
		if _, err := client.CoreV1().Pods("default").Create(ctx, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: p.name, Namespace: "default", UID: types.UID(p.name)},
			Spec: corev1.PodSpec{NodeName: p.node}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	factory := informers.NewSharedInformerFactory(client, 0)
	c := New(client, factory.Core().V1().Pods(), factory.Core().V1().Nodes(), clk)
	factory.Start(ctx.Done())
	factory.WaitForCacheSync(ctx.Done())
	poll := func(what string, f func() bool) {
		t.Helper()
		if err := wait.PollUntilContextTimeout(ctx, 2*time.Millisecond, 10*time.Second, true, func(context.Context) (bool, error) { return f(), nil }); err != nil {
			t.Fatal(what)
		}
	}
	poll("informers watching", func() bool { return fakeapi.Watching(client, "pods", "nodes") })
	if err := client.CoreV1().Nodes().Delete(ctx, "deleted", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	poll("cache sees the deletion", func() bool {
		_, err := c.nodes.Get("deleted")
		return apierrors.IsNotFound(err)
	})
	exists := func(name string) bool {
		_, err := client.CoreV1().Pods("default").Get(ctx, name, metav1.GetOptions{})
		return !apierrors.IsNotFound(err)
	}
	collect := func() {
		t.Helper()
		if err := c.collect(ctx); err != nil {
			t.Fatal(err)
		}
	}
	collect() // first found missing
	clk.Step(Quarantine - time.Second)
	collect()
	if !exists("on-deleted") || !exists("on-never") {
		t.Fatal("pods deleted within the quarantine")
	}
	clk.Step(time.Second)
	collect()
	for name, want := range map[string]bool{"on-kept": true, "pending": true, "on-deleted": false, "on-never": false} {
		if exists(name) != want {
			t.Errorf("pod %s exists: %v, want %v", name, !want, want)
		}
	}
	deletes := 0
	for _, a := range client.Actions() {
		if d, ok := a.(interface {
			GetDeleteOptions() metav1.DeleteOptions
		}); ok && a.GetResource().Resource == "pods" {
			deletes++
			if g := d.GetDeleteOptions().GracePeriodSeconds; g == nil || *g != 0 {
				t.Errorf("pod deleted with grace %v, want 0", g)
			}
		}
	}
	if deletes != 2 {
		t.Errorf("%d pod deletes, want 2", deletes)
	}
}

func TestARecreatedNodeKeepsItsPods(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	client := fake.NewClientset(&corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "p", Namespace: "default"}, Spec: corev1.PodSpec{NodeName: "flappy"}})
	clk := clocktesting.NewFakeClock(time.Unix(1000, 0))
	factory := informers.NewSharedInformerFactory(client, 0)
	c := New(client, factory.Core().V1().Pods(), factory.Core().V1().Nodes(), clk)
	factory.Start(ctx.Done())
	factory.WaitForCacheSync(ctx.Done())
	if err := c.collect(ctx); err != nil {
		t.Fatal(err)
	}
	// The node registers again; the cache has not seen it yet when the
	// quarantine ends, but the API has it.
	if _, err := client.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "flappy"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	clk.Step(time.Hour)
	if err := c.collect(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := client.CoreV1().Pods("default").Get(ctx, "p", metav1.GetOptions{}); err != nil {
		t.Fatalf("pod of a re-registered node: %v", err)
	}
}
