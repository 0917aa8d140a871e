// Package scheduler binds pods without spec.nodeName to nodes, as
// Kubernetes' default scheduler decides for the constraints workloads use:
// nodeSelector and node affinity (required and preferred), pod affinity
// and anti-affinity (required and preferred) on any topology key, taints
// and tolerations, host ports, and resource requests against the nodes'
// allocatable. Among the nodes that fit it prefers, with the default
// profile's weights, tolerated taints, preferred affinities, fewer
// replicas of the same workload and the most resources left.
//
// A pod that fits no node gets the condition PodScheduled=False (reason
// Unschedulable) with Kubernetes' message ("0/2 nodes are available: …")
// and a FailedScheduling event, and is tried again when nodes or pods
// change, and with backoff. Not done: preemption, priority order, topology
// spread constraints, volumes, scheduling gates being lifted (Duet's API
// keeps them immutable, so a gated pod waits).
//
// The node checks come from k8s.io/component-helpers (node affinity,
// tolerations, pod requests), the library Kubernetes' own scheduler uses;
// the scheduler framework itself (k8s.io/kubernetes/pkg/scheduler) wants
// informers for APIs Duet does not serve (storage, DRA) and is not used.
package scheduler

import (
	"context"
	"encoding/json"
	"fmt"
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
	"k8s.io/klog/v2"

	"github.com/duet-net/duet/internal/controller/worker"
)

// Name is the scheduler's name: pods whose spec.schedulerName is another
// name are left alone.
const Name = corev1.DefaultSchedulerName

// ReasonUnschedulable is the PodScheduled condition's reason for a pod
// that fits no node.
const ReasonUnschedulable = corev1.PodReasonUnschedulable

// Scheduler binds pending pods to nodes.
type Scheduler struct {
	client     kubernetes.Interface
	pods       corelisters.PodLister
	namespaces corelisters.NamespaceLister // nil: namespace selectors see no labels
	synced     []cache.InformerSynced
	recorder   record.EventRecorder
	queue      workqueue.TypedRateLimitingInterface[string]

	// mu makes deciding and counting the decision one step, and guards
	// what follows.
	mu    sync.Mutex
	cache *clusterState
	// waiting holds the pods that fit no node, until a change to nodes
	// or pods may let them fit; true for those with pod affinity terms,
	// which a new or relabelled pod may satisfy.
	waiting map[string]bool
}

// New returns a scheduler over the given informers; namespaces may be nil.
func New(client kubernetes.Interface, pods coreinformers.PodInformer, nodes coreinformers.NodeInformer, namespaces coreinformers.NamespaceInformer, recorder record.EventRecorder) *Scheduler {
	s := &Scheduler{
		client: client, pods: pods.Lister(), recorder: recorder,
		synced: []cache.InformerSynced{pods.Informer().HasSynced, nodes.Informer().HasSynced},
		queue: workqueue.NewTypedRateLimitingQueueWithConfig(
			workqueue.NewTypedItemExponentialFailureRateLimiter[string](200*time.Millisecond, 30*time.Second),
			workqueue.TypedRateLimitingQueueConfig[string]{Name: "scheduler"}),
		cache:   newClusterState(),
		waiting: map[string]bool{},
	}
	if namespaces != nil {
		s.namespaces = namespaces.Lister()
		s.synced = append(s.synced, namespaces.Informer().HasSynced)
		_, _ = namespaces.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
			UpdateFunc: func(old, cur any) {
				o, ok1 := old.(*corev1.Namespace)
				c, ok2 := cur.(*corev1.Namespace)
				if ok1 && ok2 && !labels.Equals(o.Labels, c.Labels) {
					s.wake(false)
				}
			},
		})
	}
	_, _ = pods.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { s.podChanged(nil, obj) },
		UpdateFunc: s.podChanged,
		DeleteFunc: s.podDeleted,
	})
	_, _ = nodes.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: func(obj any) {
			if n, ok := obj.(*corev1.Node); ok {
				s.mu.Lock()
				s.cache.setNode(n)
				s.mu.Unlock()
				s.wake(true)
			}
		},
		UpdateFunc: func(old, cur any) {
			o, ok1 := old.(*corev1.Node)
			n, ok2 := cur.(*corev1.Node)
			if !ok1 || !ok2 {
				return
			}
			s.mu.Lock()
			s.cache.setNode(n)
			s.mu.Unlock()
			if nodeChangeMatters(o, n) {
				s.wake(true)
			}
		},
		DeleteFunc: func(obj any) {
			if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
				obj = t.Obj
			}
			if n, ok := obj.(*corev1.Node); ok {
				s.mu.Lock()
				s.cache.removeNode(n.Name)
				s.mu.Unlock()
			}
		},
	})
	return s
}

// nodeChangeMatters tells whether a node update may let a waiting pod fit:
// heartbeats do not.
func nodeChangeMatters(old, cur *corev1.Node) bool {
	if old.Spec.Unschedulable != cur.Spec.Unschedulable || !labels.Equals(old.Labels, cur.Labels) ||
		len(old.Spec.Taints) != len(cur.Spec.Taints) || len(old.Status.Allocatable) != len(cur.Status.Allocatable) {
		return true
	}
	for i := range old.Spec.Taints {
		if o, c := &old.Spec.Taints[i], &cur.Spec.Taints[i]; !o.MatchTaint(c) || o.Value != c.Value {
			return true
		}
	}
	for name, q := range old.Status.Allocatable {
		if c, ok := cur.Status.Allocatable[name]; !ok || c.Cmp(q) != 0 {
			return true
		}
	}
	return false
}

func (s *Scheduler) podChanged(old, obj any) {
	pod, ok := obj.(*corev1.Pod)
	if !ok {
		return
	}
	key := pod.Namespace + "/" + pod.Name
	if needsBinding(pod) {
		s.queue.Add(key)
	}
	s.mu.Lock()
	_, wasCounted := s.cache.podNode[key]
	s.cache.setPod(pod)
	_, isCounted := s.cache.podNode[key]
	s.mu.Unlock()
	switch {
	case wasCounted && !isCounted:
		s.wake(true) // it left room behind
	case isCounted && !wasCounted:
		s.wake(false) // pods waiting for company may find it
	case isCounted:
		if o, ok := old.(*corev1.Pod); ok && !labels.Equals(o.Labels, pod.Labels) {
			s.wake(false)
		}
	}
}

func (s *Scheduler) podDeleted(obj any) {
	if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = t.Obj
	}
	pod, ok := obj.(*corev1.Pod)
	if !ok {
		return
	}
	key := pod.Namespace + "/" + pod.Name
	s.mu.Lock()
	_, wasCounted := s.cache.podNode[key]
	s.cache.removePod(key)
	delete(s.waiting, key)
	s.mu.Unlock()
	if wasCounted {
		s.wake(true)
	}
}

// wake queues the waiting pods again: all of them, or (all false) those
// with pod affinity terms.
func (s *Scheduler) wake(all bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for key, affinity := range s.waiting {
		if all || affinity {
			s.queue.Add(key)
			delete(s.waiting, key)
		}
	}
}

func needsBinding(pod *corev1.Pod) bool {
	return pod.Spec.NodeName == "" && pod.DeletionTimestamp == nil &&
		(pod.Spec.SchedulerName == "" || pod.Spec.SchedulerName == Name) &&
		len(pod.Spec.SchedulingGates) == 0 &&
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

func (s *Scheduler) nsLabels(name string) labels.Set {
	if s.namespaces == nil {
		return nil
	}
	ns, err := s.namespaces.Get(name)
	if err != nil {
		return nil
	}
	return ns.Labels
}

func (s *Scheduler) schedule(ctx context.Context, key string) error {
	ns, name, err := cache.SplitMetaNamespaceKey(key)
	if err != nil {
		return nil
	}
	pod, err := s.pods.Pods(ns).Get(name)
	if apierrors.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return err
	}
	if !needsBinding(pod) {
		return nil
	}
	s.mu.Lock()
	delete(s.waiting, key)
	var node string
	if s.cache.assumed[key] {
		node = s.cache.podNode[key] // a binding already under way
	} else {
		p := newPodInfo(pod)
		var fe *fitError
		if node, fe = s.cache.pick(newAttempt(s.cache, p, s.nsLabels)); fe != nil {
			s.waiting[key] = p.hasRequiredAffinity()
			s.mu.Unlock()
			s.unschedulable(ctx, pod, fe.Error())
			return fe
		}
		s.cache.assume(p, node)
	}
	s.mu.Unlock()
	if err := s.bind(ctx, pod, node); err != nil {
		s.mu.Lock()
		s.cache.forget(key)
		s.mu.Unlock()
		if apierrors.IsNotFound(err) {
			return nil
		}
		s.recorder.Eventf(pod, corev1.EventTypeWarning, "FailedScheduling", "Binding rejected: %v", err)
		return fmt.Errorf("binding %s to %s: %w", key, node, err)
	}
	s.recorder.Eventf(pod, corev1.EventTypeNormal, "Scheduled", "Successfully assigned %s to %s", key, node)
	return nil
}

// bind sets the pod's spec.nodeName. The API server marks the pod
// PodScheduled=True as it does for a Binding.
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
	return err
}

// unschedulable reports that pod fits no node: a FailedScheduling event,
// and the PodScheduled=False condition, written when its message changed.
func (s *Scheduler) unschedulable(ctx context.Context, pod *corev1.Pod, msg string) {
	s.recorder.Event(pod, corev1.EventTypeWarning, "FailedScheduling", msg)
	for _, c := range pod.Status.Conditions {
		if c.Type == corev1.PodScheduled && c.Status == corev1.ConditionFalse && c.Reason == ReasonUnschedulable && c.Message == msg {
			return
		}
	}
	cond := corev1.PodCondition{
		Type: corev1.PodScheduled, Status: corev1.ConditionFalse, Reason: ReasonUnschedulable, Message: msg,
		LastTransitionTime: metav1.Now(),
	}
	for _, c := range pod.Status.Conditions {
		if c.Type == corev1.PodScheduled && c.Status == corev1.ConditionFalse {
			cond.LastTransitionTime = c.LastTransitionTime
		}
	}
	// A strategic merge patch replaces the one condition of its type and
	// keeps the others.
	patch, err := json.Marshal(map[string]any{
		"metadata": map[string]any{"uid": pod.UID},
		"status":   map[string]any{"conditions": []corev1.PodCondition{cond}},
	})
	if err == nil {
		_, err = s.client.CoreV1().Pods(pod.Namespace).Patch(ctx, pod.Name, types.StrategicMergePatchType, patch, metav1.PatchOptions{}, "status")
	}
	if err != nil && !apierrors.IsNotFound(err) {
		klog.FromContext(ctx).V(2).Info("Recording that a pod is unschedulable failed", "pod", klog.KObj(pod), "err", err)
	}
}
