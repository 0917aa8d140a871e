// Package scheduler binds pods without spec.nodeName to a node: the one
// with the fewest pods among the schedulable nodes that match the pod's
// nodeSelector, ties broken by name. It is deliberately simple: Duet is a
// networking system, and this is enough to spread pods over nodes.
package scheduler

import (
	"context"
	"encoding/json"
	"fmt"
	"sort"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	coreinformers "k8s.io/client-go/informers/core/v1"
	"k8s.io/client-go/kubernetes"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/record"
	"k8s.io/client-go/util/workqueue"
	"k8s.io/component-helpers/scheduling/corev1/nodeaffinity"

	"github.com/duet-net/duet/internal/controller/worker"
)

// Name is the scheduler's name: pods whose spec.schedulerName is another
// name are left alone.
const Name = corev1.DefaultSchedulerName

// Scheduler binds pending pods to nodes.
type Scheduler struct {
	client   kubernetes.Interface
	pods     corelisters.PodLister
	nodes    corelisters.NodeLister
	synced   []cache.InformerSynced
	recorder record.EventRecorder
	queue    workqueue.TypedRateLimitingInterface[string]
	// mu makes choosing a node and counting it one step, so that workers
	// binding concurrently still spread a burst.
	mu sync.Mutex
	// assumed counts bindings made but not yet seen in the pod cache, so a
	// burst spreads instead of piling onto the node that looked emptiest.
	assumed map[string]string // pod key -> node
}

// New returns a scheduler over the given informers.
func New(client kubernetes.Interface, pods coreinformers.PodInformer, nodes coreinformers.NodeInformer, recorder record.EventRecorder) *Scheduler {
	s := &Scheduler{
		client: client, pods: pods.Lister(), nodes: nodes.Lister(), recorder: recorder,
		synced: []cache.InformerSynced{pods.Informer().HasSynced, nodes.Informer().HasSynced},
		queue: workqueue.NewTypedRateLimitingQueueWithConfig(
			workqueue.NewTypedItemExponentialFailureRateLimiter[string](200*time.Millisecond, 30*time.Second),
			workqueue.TypedRateLimitingQueueConfig[string]{Name: "scheduler"}),
		assumed: map[string]string{},
	}
	_, _ = pods.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    s.enqueuePod,
		UpdateFunc: func(_, obj any) { s.enqueuePod(obj) },
	})
	// A new or changed node may make waiting pods schedulable.
	_, _ = nodes.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(any) { s.enqueuePending() },
		UpdateFunc: func(_, _ any) { s.enqueuePending() },
	})
	return s
}

func (s *Scheduler) enqueuePod(obj any) {
	pod, ok := obj.(*corev1.Pod)
	if !ok || !needsBinding(pod) {
		return
	}
	if key, err := cache.MetaNamespaceKeyFunc(pod); err == nil {
		s.queue.Add(key)
	}
}

func (s *Scheduler) enqueuePending() {
	pods, err := s.pods.List(labels.Everything())
	if err != nil {
		return
	}
	for _, p := range pods {
		s.enqueuePod(p)
	}
}

func needsBinding(pod *corev1.Pod) bool {
	return pod.Spec.NodeName == "" && pod.DeletionTimestamp == nil &&
		(pod.Spec.SchedulerName == "" || pod.Spec.SchedulerName == Name) &&
		pod.Status.Phase != corev1.PodSucceeded && pod.Status.Phase != corev1.PodFailed
}

// Run schedules until ctx is done.
func (s *Scheduler) Run(ctx context.Context, workers int) {
	defer utilruntime.HandleCrash()
	defer s.queue.ShutDown()
	if !cache.WaitForCacheSync(ctx.Done(), s.synced...) {
		return
	}
	// Binding is one API round trip each: workers overlap them. A Pod
	// that fits no Node yet is the normal case of a failure, so failures
	// are logged quietly.
	worker.Run(ctx, s.queue, workers, s.schedule, worker.Options{
		KeyName: "pod", Expected: func(error) bool { return true }, ExpectedV: 2, Waiting: "Scheduling failed; will retry",
	})
}

func (s *Scheduler) schedule(ctx context.Context, key string) error {
	ns, name, err := cache.SplitMetaNamespaceKey(key)
	if err != nil {
		return nil
	}
	pod, err := s.pods.Pods(ns).Get(name)
	if apierrors.IsNotFound(err) {
		s.mu.Lock()
		delete(s.assumed, key)
		s.mu.Unlock()
		return nil
	}
	if err != nil {
		return err
	}
	s.mu.Lock()
	if !needsBinding(pod) {
		delete(s.assumed, key)
		s.mu.Unlock()
		return nil
	}
	node, ok := s.assumed[key]
	if !ok {
		node, err = s.pick(pod)
		if err != nil {
			s.mu.Unlock()
			s.recorder.Event(pod, corev1.EventTypeWarning, "FailedScheduling", err.Error())
			return err
		}
		s.assumed[key] = node
	}
	s.mu.Unlock()
	return s.bind(ctx, pod, node)
}

// pick returns the matching schedulable node with the fewest pods; s.mu
// is held.
func (s *Scheduler) pick(pod *corev1.Pod) (string, error) {
	nodes, err := s.nodes.List(labels.SelectorFromSet(pod.Spec.NodeSelector))
	if err != nil {
		return "", err
	}
	pods, err := s.pods.List(labels.Everything())
	if err != nil {
		return "", err
	}
	count := map[string]int{}
	seen := map[string]bool{}
	for _, p := range pods {
		if p.Spec.NodeName != "" && p.Status.Phase != corev1.PodSucceeded && p.Status.Phase != corev1.PodFailed {
			count[p.Spec.NodeName]++
			seen[p.Namespace+"/"+p.Name] = true
		}
	}
	for key, node := range s.assumed {
		if seen[key] {
			delete(s.assumed, key) // the cache has caught up
		} else {
			count[node]++
		}
	}
	// Required node affinity is how a DaemonSet's pod names its node.
	affinity := nodeaffinity.GetRequiredNodeAffinity(pod)
	var candidates []*corev1.Node
	for _, n := range nodes {
		if ok, _ := affinity.Match(n); ok && !n.Spec.Unschedulable && n.DeletionTimestamp == nil {
			candidates = append(candidates, n)
		}
	}
	if len(candidates) == 0 {
		return "", fmt.Errorf("0/%d nodes are available: no schedulable node matches the pod's node selector %v and required node affinity", len(nodes), pod.Spec.NodeSelector)
	}
	sort.Slice(candidates, func(i, j int) bool {
		ci, cj := count[candidates[i].Name], count[candidates[j].Name]
		if ci != cj {
			return ci < cj
		}
		return candidates[i].Name < candidates[j].Name
	})
	return candidates[0].Name, nil
}

func (s *Scheduler) bind(ctx context.Context, pod *corev1.Pod, node string) error {
	// A patch, not an update of the informer's copy: that copy is trimmed
	// (see package trim). The resourceVersion makes it fail, as an update
	// would, if the pod changed since it was read.
	patch, err := json.Marshal(map[string]any{
		"metadata": map[string]any{"resourceVersion": pod.ResourceVersion},
		"spec":     map[string]any{"nodeName": node},
	})
	if err != nil {
		return err
	}
	_, err = s.client.CoreV1().Pods(pod.Namespace).Patch(ctx, pod.Name, types.MergePatchType, patch, metav1.PatchOptions{})
	if err != nil {
		if apierrors.IsNotFound(err) {
			return nil
		}
		return fmt.Errorf("binding %s/%s to %s: %w", pod.Namespace, pod.Name, node, err)
	}
	s.recorder.Eventf(pod, corev1.EventTypeNormal, "Scheduled", "Successfully assigned %s/%s to %s", pod.Namespace, pod.Name, node)
	return nil
}
