package servicesync

import (
	"context"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/client-go/util/workqueue"

	"github.com/duet-net/duet/internal/controller/fakeapi"
	"github.com/duet-net/duet/internal/controller/worker"
)

func TestBatchDelay(t *testing.T) {
	for in, want := range map[time.Duration]time.Duration{0: DefaultBatchPeriod, -1: 0, 250 * time.Millisecond: 250 * time.Millisecond} {
		if got := BatchDelay(in); got != want {
			t.Errorf("BatchDelay(%v) = %v, want %v", in, got, want)
		}
	}
}

type state struct {
	*Run
	synced chan string
}

// A Run queues every Service at start, then the Services a Pod change
// affects, and syncs them; a second Run while one is in progress is
// refused; keys that are not namespace/name are no Service's.
func TestLoop(t *testing.T) {
	client := fake.NewClientset(fakeapi.Service("ns", "web", []v1.IPFamily{v1.IPv4Protocol}),
		fakeapi.Service("ns", "db", []v1.IPFamily{v1.IPv4Protocol}))
	factory := informers.NewSharedInformerFactory(client, 0)
	l, err := New[state](t.Name(), factory.Core().V1().Pods(), factory.Core().V1().Services(), 0)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	factory.Start(ctx.Done())
	defer func() {
		cancel()
		factory.Shutdown()
	}()

	r := &state{Run: NewRun(workqueue.NewTypedRateLimitingQueue(workqueue.DefaultTypedControllerRateLimiter[string]())), synced: make(chan string, 10)}
	sync := func(_ context.Context, r *state, key string) error {
		r.synced <- key
		return nil
	}
	stop := fakeapi.Background(ctx, func(ctx context.Context) {
		l.Run(ctx, 2, r, func(*state) error { return nil }, sync, worker.Options{})
	})
	defer stop()
	seen := map[string]bool{}
	for len(seen) < 2 {
		select {
		case k := <-r.synced:
			seen[k] = true
		case <-time.After(20 * time.Second):
			t.Fatalf("synced %v at start, want ns/web and ns/db", seen)
		}
	}
	if l.Current() != r || !r.Started() {
		t.Errorf("the running state is not current and started")
	}
	other := &state{Run: NewRun(workqueue.NewTypedRateLimitingQueue(workqueue.DefaultTypedControllerRateLimiter[string]()))}
	l.Run(ctx, 1, other, func(*state) error { t.Error("a second Run started"); return nil }, sync, worker.Options{})

	if _, err := client.CoreV1().Pods("ns").Create(ctx, fakeapi.Pod("ns", "p", "web", "n1", true, 80, "10.0.0.1"), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	select {
	case k := <-r.synced:
		if k != "ns/web" {
			t.Errorf("a Pod of app=web queued %s", k)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("a new Pod did not queue its Service")
	}

	if _, _, _, ok, _ := l.Service("not/a/key"); ok {
		t.Error("a malformed key names a Service")
	}
	if _, _, svc, ok, err := l.Service("ns/gone"); !ok || err != nil || svc != nil {
		t.Errorf("a deleted Service: svc %v, ok %v, err %v; want nil, true, nil", svc, ok, err)
	}
	stop()
	if l.Current() != nil {
		t.Error("a stopped loop still has a current run")
	}
}
