// Package nodelifecycle watches nodes' heartbeats as Kubernetes' node
// lifecycle controller does: a node whose agent has neither renewed its
// Lease in kube-node-lease nor posted its Ready condition for the grace
// period gets its conditions set to Unknown, and the taints of each node
// follow its conditions (node.kubernetes.io/not-ready or unreachable with
// NoSchedule and NoExecute, pressure, network-unavailable, unschedulable).
// The pods of a node that is not Ready are marked not Ready, so Services
// stop sending them traffic; package tainteviction evicts them when their
// tolerations run out.
package nodelifecycle

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	coordinationinformers "k8s.io/client-go/informers/coordination/v1"
	coreinformers "k8s.io/client-go/informers/core/v1"
	"k8s.io/client-go/kubernetes"
	coordinationlisters "k8s.io/client-go/listers/coordination/v1"
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
const ControllerName = "node-controller"

// Defaults of Kubernetes' kube-controller-manager.
const (
	DefaultGracePeriod        = 50 * time.Second
	DefaultStartupGracePeriod = 60 * time.Second
	DefaultMonitorPeriod      = 5 * time.Second
)

// Reasons of the conditions this controller writes.
const (
	ReasonStatusUnknown      = "NodeStatusUnknown"
	ReasonStatusNeverUpdated = "NodeStatusNeverUpdated"
)

// Options tune the controller; zero values are Kubernetes' defaults.
type Options struct {
	// GracePeriod is how long a node may go without a heartbeat (a
	// Lease renewal or a Ready condition posted) before it is Unknown
	// (--node-monitor-grace-period).
	GracePeriod time.Duration
	// StartupGracePeriod replaces it for a node that never posted Ready.
	StartupGracePeriod time.Duration
	// MonitorPeriod is how often every node is checked.
	MonitorPeriod time.Duration
	Clock         clock.WithTicker
	Recorder      record.EventRecorder
}

// Controller watches nodes' health and taints them.
type Controller struct {
	client kubernetes.Interface
	nodes  corelisters.NodeLister
	leases coordinationlisters.LeaseLister
	pods   cache.Indexer
	synced []cache.InformerSynced
	opts   Options
	queue  workqueue.TypedRateLimitingInterface[string]

	mu     sync.Mutex
	health map[string]*health
}

// health is what was last seen of a node's heartbeats, and when (by this
// controller's clock, so that the nodes' clocks do not matter).
type health struct {
	readyHeartbeat metav1.Time
	leaseRenew     metav1.MicroTime
	probe          time.Time
}

// New returns a node lifecycle controller.
func New(client kubernetes.Interface, nodes coreinformers.NodeInformer, leases coordinationinformers.LeaseInformer, pods coreinformers.PodInformer, opts Options) (*Controller, error) {
	if opts.GracePeriod <= 0 {
		opts.GracePeriod = DefaultGracePeriod
	}
	if opts.StartupGracePeriod <= 0 {
		opts.StartupGracePeriod = DefaultStartupGracePeriod
	}
	if opts.MonitorPeriod <= 0 {
		opts.MonitorPeriod = DefaultMonitorPeriod
	}
	if opts.Clock == nil {
		opts.Clock = clock.RealClock{}
	}
	if opts.Recorder == nil {
		opts.Recorder = &record.FakeRecorder{}
	}
	if err := nodepods.AddIndex(pods.Informer()); err != nil {
		return nil, err
	}
	c := &Controller{
		client: client, nodes: nodes.Lister(), leases: leases.Lister(), pods: pods.Informer().GetIndexer(), opts: opts,
		synced: []cache.InformerSynced{nodes.Informer().HasSynced, leases.Informer().HasSynced, pods.Informer().HasSynced},
		queue: workqueue.NewTypedRateLimitingQueueWithConfig(
			workqueue.NewTypedItemExponentialFailureRateLimiter[string](100*time.Millisecond, 10*time.Second),
			workqueue.TypedRateLimitingQueueConfig[string]{Name: "node-lifecycle", Clock: opts.Clock}),
		health: map[string]*health{},
	}
	enqueueNode := func(obj any) {
		if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
			obj = t.Obj
		}
		if n, ok := obj.(*corev1.Node); ok {
			c.queue.Add(n.Name)
		}
	}
	_, _ = nodes.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: enqueueNode, UpdateFunc: func(_, obj any) { enqueueNode(obj) }, DeleteFunc: enqueueNode,
	})
	enqueueLease := func(obj any) {
		if l, ok := obj.(*coordinationv1.Lease); ok && l.Namespace == corev1.NamespaceNodeLease {
			c.queue.Add(l.Name)
		}
	}
	_, _ = leases.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: enqueueLease, UpdateFunc: func(_, obj any) { enqueueLease(obj) },
	})
	// A pod bound to a node that is not Ready is marked not Ready too.
	_, _ = pods.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: func(obj any) {
			if p, ok := obj.(*corev1.Pod); ok && p.Spec.NodeName != "" {
				c.queue.Add(p.Spec.NodeName)
			}
		},
		UpdateFunc: func(old, obj any) {
			o, ok1 := old.(*corev1.Pod)
			p, ok2 := obj.(*corev1.Pod)
			if ok1 && ok2 && p.Spec.NodeName != "" && (o.Spec.NodeName != p.Spec.NodeName || podReady(p) && !podReady(o)) {
				c.queue.Add(p.Spec.NodeName)
			}
		},
	})
	return c, nil
}

// Run checks the nodes until ctx is done: on every change of a node or its
// Lease, and every MonitorPeriod, when heartbeats may have run out.
func (c *Controller) Run(ctx context.Context) {
	defer utilruntime.HandleCrash()
	defer c.queue.ShutDown()
	if !cache.WaitForCacheSync(ctx.Done(), c.synced...) {
		return
	}
	go func() {
		ticker := c.opts.Clock.NewTicker(c.opts.MonitorPeriod)
		defer ticker.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-ticker.C():
				nodes, err := c.nodes.List(labels.Everything())
				if err != nil {
					continue
				}
				for _, n := range nodes {
					c.queue.Add(n.Name)
				}
			}
		}
	}()
	// One worker: a node's health record is read and written by one
	// sync at a time.
	worker.Run(ctx, c.queue, 1, c.sync, worker.Options{KeyName: "node", Failed: "Syncing node health failed; will retry"})
}

func (c *Controller) sync(ctx context.Context, name string) error {
	node, err := c.nodes.Get(name)
	if apierrors.IsNotFound(err) {
		c.mu.Lock()
		delete(c.health, name)
		c.mu.Unlock()
		return nil
	}
	if err != nil {
		return err
	}
	if node, err = c.checkHealth(ctx, node); err != nil {
		return err
	}
	if err := c.syncTaints(ctx, node); err != nil {
		return err
	}
	return c.markPodsNotReady(ctx, node)
}

// checkHealth notes the node's heartbeats and, when none came for the
// grace period, sets its conditions Unknown. It returns the node as it is
// now.
func (c *Controller) checkHealth(ctx context.Context, node *corev1.Node) (*corev1.Node, error) {
	now := c.opts.Clock.Now()
	ready := condition(node, corev1.NodeReady)
	var renew metav1.MicroTime
	if l, err := c.leases.Leases(corev1.NamespaceNodeLease).Get(node.Name); err == nil && l.Spec.RenewTime != nil {
		renew = *l.Spec.RenewTime
	}
	c.mu.Lock()
	h := c.health[node.Name]
	if h == nil {
		// First sight: a full grace period from now, or from its
		// creation for a node that never posted Ready.
		h = &health{probe: now}
		if ready == nil {
			h.probe = node.CreationTimestamp.Time
		}
		c.health[node.Name] = h
	}
	if ready != nil && !ready.LastHeartbeatTime.Equal(&h.readyHeartbeat) {
		h.readyHeartbeat, h.probe = ready.LastHeartbeatTime, now
	}
	if !renew.Equal(&h.leaseRenew) {
		h.leaseRenew, h.probe = renew, now
	}
	grace := c.opts.GracePeriod
	if ready == nil {
		grace = c.opts.StartupGracePeriod
	}
	late := now.Sub(h.probe) > grace
	c.mu.Unlock()
	if !late {
		return node, nil
	}
	updated, changed := unknownConditions(node, now)
	if !changed {
		return node, nil
	}
	klog.FromContext(ctx).Info("Node stopped posting its status: conditions set to Unknown", "node", node.Name, "grace", grace)
	out, err := c.client.CoreV1().Nodes().UpdateStatus(ctx, updated, metav1.UpdateOptions{})
	if err != nil {
		return nil, fmt.Errorf("setting the conditions of node %s Unknown: %w", node.Name, err)
	}
	c.opts.Recorder.Eventf(out, corev1.EventTypeNormal, "NodeNotReady", "Node %s status is now: NodeNotReady (no heartbeat for %s)", node.Name, grace)
	return out, nil
}

// unknownConditions returns a copy of node whose Ready and pressure
// conditions are Unknown, added if it never posted them, and whether
// that changed anything.
func unknownConditions(node *corev1.Node, now time.Time) (*corev1.Node, bool) {
	n := node.DeepCopy()
	at := metav1.NewTime(now)
	changed := false
	for _, t := range []corev1.NodeConditionType{corev1.NodeReady, corev1.NodeMemoryPressure, corev1.NodeDiskPressure, corev1.NodePIDPressure} {
		c := condition(n, t)
		if c == nil {
			n.Status.Conditions = append(n.Status.Conditions, corev1.NodeCondition{
				Type: t, Status: corev1.ConditionUnknown, Reason: ReasonStatusNeverUpdated,
				Message:           "The node agent never posted node status.",
				LastHeartbeatTime: node.CreationTimestamp, LastTransitionTime: at,
			})
			changed = true
			continue
		}
		if c.Status == corev1.ConditionUnknown {
			continue
		}
		c.Status, c.Reason, c.Message, c.LastTransitionTime = corev1.ConditionUnknown, ReasonStatusUnknown, "The node agent stopped posting node status.", at
		changed = true
	}
	return n, changed
}

// syncTaints makes the node's managed taints follow its conditions.
func (c *Controller) syncTaints(ctx context.Context, node *corev1.Node) error {
	taints, changed := desiredTaints(node, c.opts.Clock.Now())
	if !changed {
		return nil
	}
	if taints == nil {
		taints = []corev1.Taint{}
	}
	patch, err := json.Marshal(map[string]any{
		"metadata": map[string]any{"resourceVersion": node.ResourceVersion},
		"spec":     map[string]any{"taints": taints},
	})
	if err != nil {
		return err
	}
	if _, err := c.client.CoreV1().Nodes().Patch(ctx, node.Name, types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
		if apierrors.IsNotFound(err) {
			return nil
		}
		return fmt.Errorf("tainting node %s: %w", node.Name, err)
	}
	klog.FromContext(ctx).V(2).Info("Node taints follow its conditions", "node", node.Name, "taints", taints)
	return nil
}

// markPodsNotReady marks the Ready pods of a node that is not Ready as
// not Ready, as their agent cannot: Services stop sending them traffic.
// The agent marks them again when it is back.
func (c *Controller) markPodsNotReady(ctx context.Context, node *corev1.Node) error {
	ready := condition(node, corev1.NodeReady)
	if ready == nil || ready.Status == corev1.ConditionTrue {
		return nil
	}
	pods, err := nodepods.On(c.pods, node.Name)
	if err != nil {
		return err
	}
	var errs []error
	for _, p := range pods {
		if !podReady(p) {
			continue
		}
		cond := corev1.PodCondition{Type: corev1.PodReady, Status: corev1.ConditionFalse, Reason: "NodeNotReady",
			Message: fmt.Sprintf("node %s is not ready", node.Name), LastTransitionTime: metav1.NewTime(c.opts.Clock.Now())}
		patch, err := json.Marshal(map[string]any{
			"metadata": map[string]any{"uid": p.UID},
			"status":   map[string]any{"conditions": []corev1.PodCondition{cond}},
		})
		if err != nil {
			return err
		}
		_, err = c.client.CoreV1().Pods(p.Namespace).Patch(ctx, p.Name, types.StrategicMergePatchType, patch, metav1.PatchOptions{}, "status")
		if err != nil && !apierrors.IsNotFound(err) {
			errs = append(errs, fmt.Errorf("marking pod %s/%s not ready: %w", p.Namespace, p.Name, err))
			continue
		}
		c.opts.Recorder.Eventf(p, corev1.EventTypeWarning, "NodeNotReady", "Node is not ready")
	}
	if len(errs) > 0 {
		return errs[0]
	}
	return nil
}

func podReady(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}
