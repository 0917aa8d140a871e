package integration

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/workqueue"
)

// fakeKubelet plays the node agents for one namespace, where no agent
// runs: a pod bound to a node becomes Running and Ready (when Ready
// says so) with an address of each family, and a pod being deleted is
// deleted for good, as an agent does once its containers have stopped.
type fakeKubelet struct {
	client kubernetes.Interface
	ns     string
	// Ready decides whether a bound pod becomes ready; nil means every
	// pod does.
	Ready  func(*corev1.Pod) bool
	queue  workqueue.TypedRateLimitingInterface[string]
	lister func(ns, name string) (*corev1.Pod, error)
	addrs  atomic.Int32
}

// startKubelet runs a fake kubelet for ns until the test ends.
func startKubelet(t testing.TB, client kubernetes.Interface, ns string, ready func(*corev1.Pod) bool) *fakeKubelet {
	t.Helper()
	k := &fakeKubelet{client: client, ns: ns, Ready: ready,
		queue: workqueue.NewTypedRateLimitingQueue(workqueue.NewTypedItemExponentialFailureRateLimiter[string](10*time.Millisecond, time.Second))}
	factory := informers.NewSharedInformerFactoryWithOptions(client, 0, informers.WithNamespace(ns))
	pods := factory.Core().V1().Pods()
	enqueue := func(obj any) {
		if key, err := cache.MetaNamespaceKeyFunc(obj); err == nil {
			k.queue.Add(key)
		}
	}
	_, _ = pods.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{AddFunc: enqueue, UpdateFunc: func(_, o any) { enqueue(o) }})
	k.lister = func(ns, name string) (*corev1.Pod, error) { return pods.Lister().Pods(ns).Get(name) }
	ctx, cancel := context.WithCancel(context.Background())
	factory.Start(ctx.Done())
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			key, quit := k.queue.Get()
			if quit {
				return
			}
			if err := k.sync(ctx, key); err != nil && ctx.Err() == nil {
				k.queue.AddRateLimited(key)
			} else {
				k.queue.Forget(key)
			}
			k.queue.Done(key)
		}
	})
	t.Cleanup(func() {
		cancel()
		k.queue.ShutDown()
		wg.Wait()
		factory.Shutdown()
	})
	return k
}

func (k *fakeKubelet) sync(ctx context.Context, key string) error {
	ns, name, _ := cache.SplitMetaNamespaceKey(key)
	pod, err := k.lister(ns, name)
	if apierrors.IsNotFound(err) || pod == nil || pod.Spec.NodeName == "" {
		return nil
	}
	if err != nil {
		return err
	}
	if pod.DeletionTimestamp != nil {
		err := k.client.CoreV1().Pods(ns).Delete(ctx, name, metav1.DeleteOptions{GracePeriodSeconds: new(int64), Preconditions: &metav1.Preconditions{UID: &pod.UID}})
		if apierrors.IsNotFound(err) || apierrors.IsConflict(err) {
			return nil
		}
		return err
	}
	if isReady(pod) || (k.Ready != nil && !k.Ready(pod)) {
		return nil
	}
	pod = pod.DeepCopy()
	n := k.addrs.Add(1)
	now := metav1.Now()
	pod.Status.Phase = corev1.PodRunning
	pod.Status.PodIPs = []corev1.PodIP{{IP: fmt.Sprintf("10.244.%d.%d", n/250, n%250+1)}, {IP: fmt.Sprintf("fd00:10:244::%x", n)}}
	pod.Status.PodIP = pod.Status.PodIPs[0].IP
	pod.Status.StartTime = &now
	pod.Status.Conditions = []corev1.PodCondition{
		{Type: corev1.PodScheduled, Status: corev1.ConditionTrue, LastTransitionTime: now},
		{Type: corev1.ContainersReady, Status: corev1.ConditionTrue, LastTransitionTime: now},
		{Type: corev1.PodReady, Status: corev1.ConditionTrue, LastTransitionTime: now},
	}
	_, err = k.client.CoreV1().Pods(ns).UpdateStatus(ctx, pod, metav1.UpdateOptions{})
	if apierrors.IsNotFound(err) {
		return nil
	}
	return err
}

func isReady(pod *corev1.Pod) bool {
	for _, c := range pod.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}
