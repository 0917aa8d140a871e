package fakeapi

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"

	v1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// SetReady sets a Pod's Ready condition.
func SetReady(p *v1.Pod, ready bool) {
	status := v1.ConditionFalse
	if ready {
		status = v1.ConditionTrue
	}
	p.Status.Conditions = []v1.PodCondition{{Type: v1.PodReady, Status: status}}
}

// UpdatePodStatus applies mutate to the Pod as stored and writes its
// status, reading and retrying again on a conflict with another writer.
func UpdatePodStatus(ctx context.Context, client kubernetes.Interface, ns, name string, mutate func(*v1.Pod)) error {
	for {
		p, err := client.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		mutate(p)
		_, err = client.CoreV1().Pods(ns).UpdateStatus(ctx, p, metav1.UpdateOptions{})
		if apierrors.IsConflict(err) {
			continue
		}
		return err
	}
}

// PodFate is how a Pod ended a churn.
type PodFate struct{ Exists, Ready bool }

// ChurnPods changes n Pods named p00, p01... in namespace ns from four
// goroutines at once, as a rollout or a flapping readiness probe would,
// for the controllers' tests of concurrent syncs: eight times each, a Pod
// flips its readiness, is deleted, or is created again (by newPod, ready
// or not). Every Pod exists and is ready when it starts. seed makes the
// sequence repeatable. It returns each Pod's final state, and the errors
// of the writes, if any.
func ChurnPods(ctx context.Context, client kubernetes.Interface, ns string, n int, seed uint64, newPod func(i int, ready bool) *v1.Pod) ([]PodFate, error) {
	const writers = 4
	final := make([]PodFate, n)
	var mu sync.Mutex
	var errs []error
	fail := func(err error) {
		mu.Lock()
		defer mu.Unlock()
		errs = append(errs, err)
	}
	var wg sync.WaitGroup
	for g := range writers {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(g), seed))
			for i := g; i < n; i += writers {
				name := fmt.Sprintf("p%02d", i)
				f := PodFate{Exists: true, Ready: true}
				for range 8 {
					switch rng.IntN(3) {
					case 0:
						if !f.Exists {
							continue
						}
						f.Ready = !f.Ready
						ready := f.Ready
						if err := UpdatePodStatus(ctx, client, ns, name, func(p *v1.Pod) { SetReady(p, ready) }); err != nil {
							fail(err)
						}
					case 1:
						if !f.Exists {
							continue
						}
						if err := client.CoreV1().Pods(ns).Delete(ctx, name, metav1.DeleteOptions{}); err != nil {
							fail(err)
						}
						f.Exists = false
					case 2:
						if f.Exists {
							continue
						}
						f.Ready = rng.IntN(2) == 0
						if _, err := client.CoreV1().Pods(ns).Create(ctx, newPod(i, f.Ready), metav1.CreateOptions{}); err != nil {
							fail(err)
						}
						f.Exists = true
					}
				}
				final[i] = f
			}
		})
	}
	wg.Wait()
	return final, errors.Join(errs...)
}
