// Package tainteviction evicts pods from nodes with NoExecute taints, as
// Kubernetes' taint eviction controller does: a pod that does not tolerate
// such a taint is deleted at once, one that tolerates it for
// tolerationSeconds is deleted that long after the taint was added, and
// one that tolerates it without a limit stays. Every pod gets the 300 s
// tolerations of node.kubernetes.io/not-ready and unreachable at creation
// (package defaulttolerations), so pods leave a node five minutes after it
// stopped reporting.
//
// A deadline counts from the taint's timeAdded, so a new leader evicts on
// time, and from the pod's creation for a pod that came later; a taint
// without timeAdded counts from when this controller first saw it.
package tainteviction

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	coreinformers "k8s.io/client-go/informers/core/v1"
	"k8s.io/client-go/kubernetes"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/record"
	"k8s.io/client-go/util/workqueue"
	"k8s.io/klog/v2"
	"k8s.io/utils/clock"

	"github.com/duet-net/duet/internal/controller/nodepods"
	"github.com/duet-net/duet/internal/controller/worker"
)

// ControllerName names the controller in events.
const ControllerName = "taint-eviction-controller"

// Reasons, as Kubernetes gives them: of the pod's DisruptionTarget
// condition, and of the event.
const (
	ReasonDeletionByTaintManager = "DeletionByTaintManager"
	ReasonTaintManagerEviction   = "TaintManagerEviction"
)

// Controller evicts pods from NoExecute-tainted nodes.
type Controller struct {
	client   kubernetes.Interface
	pods     corelisters.PodLister
	podIndex cache.Indexer
	nodes    corelisters.NodeLister
	synced   []cache.InformerSynced
	clock    clock.WithTicker
	recorder record.EventRecorder
	queue    workqueue.TypedRateLimitingInterface[string]

	mu sync.Mutex
	// firstSeen is when a taint without timeAdded was first seen, by
	// node, key and effect.
	firstSeen map[string]time.Time
}

// New returns a taint eviction controller; clk nil is the real clock.
func New(client kubernetes.Interface, pods coreinformers.PodInformer, nodes coreinformers.NodeInformer, clk clock.WithTicker, recorder record.EventRecorder) (*Controller, error) {
	if clk == nil {
		clk = clock.RealClock{}
	}
	if recorder == nil {
		recorder = &record.FakeRecorder{}
	}
	if err := nodepods.AddIndex(pods.Informer()); err != nil {
		return nil, err
	}
	c := &Controller{
		client: client, pods: pods.Lister(), podIndex: pods.Informer().GetIndexer(), nodes: nodes.Lister(), clock: clk, recorder: recorder,
		synced: []cache.InformerSynced{pods.Informer().HasSynced, nodes.Informer().HasSynced},
		// The queue's delays (eviction deadlines, retries) run on clk.
		queue: workqueue.NewTypedRateLimitingQueueWithConfig(
			workqueue.NewTypedItemExponentialFailureRateLimiter[string](100*time.Millisecond, 10*time.Second),
			workqueue.TypedRateLimitingQueueConfig[string]{Name: "taint-eviction", Clock: clk}),
		firstSeen: map[string]time.Time{},
	}
	_, _ = pods.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    c.enqueuePod,
		UpdateFunc: func(_, obj any) { c.enqueuePod(obj) },
	})
	_, _ = nodes.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: func(obj any) {
			if n, ok := obj.(*corev1.Node); ok && len(noExecute(n)) > 0 {
				c.enqueueNode(n.Name)
			}
		},
		UpdateFunc: func(old, obj any) {
			o, ok1 := old.(*corev1.Node)
			n, ok2 := obj.(*corev1.Node)
			if ok1 && ok2 && !sameTaints(noExecute(o), noExecute(n)) {
				c.enqueueNode(n.Name)
			}
		},
	})
	return c, nil
}

func (c *Controller) enqueuePod(obj any) {
	if p, ok := obj.(*corev1.Pod); ok && p.Spec.NodeName != "" && p.DeletionTimestamp == nil {
		c.queue.Add(p.Namespace + "/" + p.Name)
	}
}

func (c *Controller) enqueueNode(name string) {
	pods, err := nodepods.On(c.podIndex, name)
	if err != nil {
		return
	}
	for _, p := range pods {
		c.enqueuePod(p)
	}
}

func noExecute(n *corev1.Node) []corev1.Taint {
	var out []corev1.Taint
	for _, t := range n.Spec.Taints {
		if t.Effect == corev1.TaintEffectNoExecute {
			out = append(out, t)
		}
	}
	return out
}

func sameTaints(a, b []corev1.Taint) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if !a[i].MatchTaint(&b[i]) || a[i].Value != b[i].Value || !a[i].TimeAdded.Equal(b[i].TimeAdded) {
			return false
		}
	}
	return true
}

// Run evicts until ctx is done.
func (c *Controller) Run(ctx context.Context, workers int) {
	defer utilruntime.HandleCrash()
	defer c.queue.ShutDown()
	if !cache.WaitForCacheSync(ctx.Done(), c.synced...) {
		return
	}
	worker.Run(ctx, c.queue, workers, c.sync, worker.Options{KeyName: "pod", Failed: "Evicting a pod failed; will retry"})
}

// added is when taint was added to node: its timeAdded, or when this
// controller first saw it.
func (c *Controller) added(node string, t *corev1.Taint) time.Time {
	if t.TimeAdded != nil {
		return t.TimeAdded.Time
	}
	key := node + "/" + t.Key + "/" + string(t.Effect)
	c.mu.Lock()
	defer c.mu.Unlock()
	at, ok := c.firstSeen[key]
	if !ok {
		at = c.clock.Now()
		c.firstSeen[key] = at
	}
	return at
}

func (c *Controller) sync(ctx context.Context, key string) error {
	ns, name, err := cache.SplitMetaNamespaceKey(key)
	if err != nil {
		return nil
	}
	pod, err := c.pods.Pods(ns).Get(name)
	if apierrors.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return err
	}
	if pod.DeletionTimestamp != nil || pod.Spec.NodeName == "" {
		return nil
	}
	node, err := c.nodes.Get(pod.Spec.NodeName)
	if apierrors.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return err
	}
	taints := noExecute(node)
	at, taint, evict := evictAt(pod, taints, func(t *corev1.Taint) time.Time { return c.added(node.Name, t) })
	if !evict {
		return nil
	}
	if now := c.clock.Now(); now.Before(at) {
		c.queue.AddAfter(key, at.Sub(now))
		return nil
	}
	return c.evict(ctx, pod, node.Name, taint)
}

// evictAt returns when pod must leave a node with the NoExecute taints:
// at once (the zero time) for a taint it does not tolerate, else the
// earliest of added(taint)+tolerationSeconds (or the pod's creation, if
// later, plus tolerationSeconds) over the taints, each tolerated by its
// first matching toleration. It returns false when the pod tolerates
// them all for ever, and the taint that decides.
func evictAt(pod *corev1.Pod, taints []corev1.Taint, added func(*corev1.Taint) time.Time) (time.Time, corev1.Taint, bool) {
	var at time.Time
	var which corev1.Taint
	found := false
	for i := range taints {
		t := &taints[i]
		var tol *corev1.Toleration
		for j := range pod.Spec.Tolerations {
			if pod.Spec.Tolerations[j].ToleratesTaint(klog.Background(), t, false) {
				tol = &pod.Spec.Tolerations[j]
				break
			}
		}
		if tol == nil {
			return time.Time{}, *t, true
		}
		if tol.TolerationSeconds == nil {
			continue
		}
		start := added(t)
		if created := pod.CreationTimestamp.Time; created.After(start) {
			start = created
		}
		deadline := start.Add(time.Duration(max(*tol.TolerationSeconds, 0)) * time.Second)
		if !found || deadline.Before(at) {
			at, which, found = deadline, *t, true
		}
	}
	return at, which, found
}

// evict marks the pod as disrupted and deletes it, gracefully.
func (c *Controller) evict(ctx context.Context, pod *corev1.Pod, node string, taint corev1.Taint) error {
	c.recorder.Eventf(pod, corev1.EventTypeNormal, ReasonTaintManagerEviction, "Evicting pod %s/%s from node %s: taint %s:%s", pod.Namespace, pod.Name, node, taint.Key, taint.Effect)
	klog.FromContext(ctx).Info("Evicting pod from a NoExecute-tainted node", "pod", klog.KObj(pod), "node", node, "taint", taint.Key)
	cond := corev1.PodCondition{
		Type: corev1.DisruptionTarget, Status: corev1.ConditionTrue, Reason: ReasonDeletionByTaintManager,
		Message:            fmt.Sprintf("Taint eviction: node %s has taint %s:%s", node, taint.Key, taint.Effect),
		LastTransitionTime: metav1.NewTime(c.clock.Now()),
	}
	patch, err := json.Marshal(map[string]any{
		"metadata": map[string]any{"uid": pod.UID},
		"status":   map[string]any{"conditions": []corev1.PodCondition{cond}},
	})
	if err != nil {
		return err
	}
	pods := c.client.CoreV1().Pods(pod.Namespace)
	if _, err := pods.Patch(ctx, pod.Name, types.StrategicMergePatchType, patch, metav1.PatchOptions{}, "status"); err != nil {
		if apierrors.IsNotFound(err) {
			return nil
		}
		return fmt.Errorf("marking pod %s/%s for eviction: %w", pod.Namespace, pod.Name, err)
	}
	err = pods.Delete(ctx, pod.Name, metav1.DeleteOptions{Preconditions: &metav1.Preconditions{UID: &pod.UID}})
	if err != nil && !apierrors.IsNotFound(err) && !apierrors.IsConflict(err) {
		return fmt.Errorf("evicting pod %s/%s: %w", pod.Namespace, pod.Name, err)
	}
	return nil
}
