// Package podgc deletes the pods of nodes that no longer exist, as
// Kubernetes' pod garbage collector does: once a node bound to by pods has
// been missing from the API for a quarantine (40 s, so that a node being
// re-registered is not mistaken for a deleted one), its pods are marked
// DisruptionTarget and deleted at once, with no grace period, since no
// agent is left to stop them. Deleting a node that stopped reporting is
// how an administrator releases its Terminating pods.
package podgc

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
	"k8s.io/klog/v2"
	"k8s.io/utils/clock"
)

// Kubernetes' pod garbage collector's timing.
const (
	Quarantine = 40 * time.Second
	Period     = 20 * time.Second
)

// ReasonDeletionByPodGC is the pods' DisruptionTarget reason.
const ReasonDeletionByPodGC = "DeletionByPodGC"

// Controller deletes orphaned pods.
type Controller struct {
	client kubernetes.Interface
	pods   corelisters.PodLister
	nodes  corelisters.NodeLister
	synced []cache.InformerSynced
	clock  clock.WithTicker

	mu sync.Mutex
	// missing is when each node that pods name was first found missing.
	missing map[string]time.Time
}

// New returns a pod garbage collector; clk nil is the real clock.
func New(client kubernetes.Interface, pods coreinformers.PodInformer, nodes coreinformers.NodeInformer, clk clock.WithTicker) *Controller {
	if clk == nil {
		clk = clock.RealClock{}
	}
	return &Controller{
		client: client, pods: pods.Lister(), nodes: nodes.Lister(), clock: clk, missing: map[string]time.Time{},
		synced: []cache.InformerSynced{pods.Informer().HasSynced, nodes.Informer().HasSynced},
	}
}

// Run collects every Period until ctx is done.
func (c *Controller) Run(ctx context.Context) {
	defer utilruntime.HandleCrash()
	if !cache.WaitForCacheSync(ctx.Done(), c.synced...) {
		return
	}
	ticker := c.clock.NewTicker(Period)
	defer ticker.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-ticker.C():
			if err := c.collect(ctx); err != nil {
				klog.FromContext(ctx).Error(err, "Deleting the pods of deleted nodes")
			}
		}
	}
}

// collect deletes the pods of nodes missing for the quarantine.
func (c *Controller) collect(ctx context.Context) error {
	pods, err := c.pods.List(labels.Everything())
	if err != nil {
		return err
	}
	byNode := map[string][]*corev1.Pod{}
	for _, p := range pods {
		if p.Spec.NodeName == "" {
			continue
		}
		if _, err := c.nodes.Get(p.Spec.NodeName); apierrors.IsNotFound(err) {
			byNode[p.Spec.NodeName] = append(byNode[p.Spec.NodeName], p)
		}
	}
	now := c.clock.Now()
	c.mu.Lock()
	var due []string
	for node := range c.missing {
		if _, still := byNode[node]; !still {
			delete(c.missing, node) // back, or its pods are gone
		}
	}
	for node := range byNode {
		since, seen := c.missing[node]
		if !seen {
			c.missing[node] = now
			continue
		}
		if now.Sub(since) >= Quarantine {
			due = append(due, node)
		}
	}
	c.mu.Unlock()
	var errs []error
	for _, node := range due {
		// The cache may lag behind a node re-registered meanwhile.
		if _, err := c.client.CoreV1().Nodes().Get(ctx, node, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
			if err != nil {
				errs = append(errs, err)
			}
			continue
		}
		for _, p := range byNode[node] {
			if err := c.delete(ctx, p); err != nil {
				errs = append(errs, err)
			}
		}
	}
	if len(errs) > 0 {
		return errs[0]
	}
	return nil
}

func (c *Controller) delete(ctx context.Context, pod *corev1.Pod) error {
	klog.FromContext(ctx).Info("Deleting a pod of a deleted node", "pod", klog.KObj(pod), "node", pod.Spec.NodeName)
	pods := c.client.CoreV1().Pods(pod.Namespace)
	if pod.Status.Phase != corev1.PodSucceeded && pod.Status.Phase != corev1.PodFailed {
		cond := corev1.PodCondition{
			Type: corev1.DisruptionTarget, Status: corev1.ConditionTrue, Reason: ReasonDeletionByPodGC,
			Message: fmt.Sprintf("node %s no longer exists", pod.Spec.NodeName), LastTransitionTime: metav1.NewTime(c.clock.Now()),
		}
		patch, err := json.Marshal(map[string]any{
			"metadata": map[string]any{"uid": pod.UID},
			"status":   map[string]any{"conditions": []corev1.PodCondition{cond}},
		})
		if err != nil {
			return err
		}
		if _, err := pods.Patch(ctx, pod.Name, types.StrategicMergePatchType, patch, metav1.PatchOptions{}, "status"); err != nil && !apierrors.IsNotFound(err) {
			return fmt.Errorf("marking pod %s/%s of deleted node %s: %w", pod.Namespace, pod.Name, pod.Spec.NodeName, err)
		}
	}
	zero := int64(0)
	err := pods.Delete(ctx, pod.Name, metav1.DeleteOptions{GracePeriodSeconds: &zero, Preconditions: &metav1.Preconditions{UID: &pod.UID}})
	if err != nil && !apierrors.IsNotFound(err) && !apierrors.IsConflict(err) {
		return fmt.Errorf("deleting pod %s/%s of deleted node %s: %w", pod.Namespace, pod.Name, pod.Spec.NodeName, err)
	}
	return nil
}
