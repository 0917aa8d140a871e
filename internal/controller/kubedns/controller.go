package kubedns

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	coreinformers "k8s.io/client-go/informers/core/v1"
	discoveryinformers "k8s.io/client-go/informers/discovery/v1"
	"k8s.io/client-go/kubernetes"
	corelisters "k8s.io/client-go/listers/core/v1"
	discoverylisters "k8s.io/client-go/listers/discovery/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/workqueue"
	"k8s.io/klog/v2"

	"github.com/duet-net/duet/internal/controller/worker"
)

// key is the controller's one work item: everything is recomputed from
// the listers whatever changed.
const key = "kube-dns"

// Controller keeps kube-dns and its slices.
type Controller struct {
	client kubernetes.Interface
	// ranges are the cluster's service ranges, one per family, primary
	// first (SetRanges changes them while it runs).
	ranges   atomic.Pointer[[]netip.Prefix]
	nodes    corelisters.NodeLister
	services corelisters.ServiceLister
	slices   discoverylisters.EndpointSliceLister
	synced   []cache.InformerSynced
	queue    worker.Slot[string]
	// retryBase and retryMax pace a failing sync.
	retryBase, retryMax time.Duration
}

// New returns a controller for the cluster's service ranges (primary
// first) that registers handlers on the informers; call it before their
// factory starts, then Run.
func New(client kubernetes.Interface, nodes coreinformers.NodeInformer, services coreinformers.ServiceInformer,
	slices discoveryinformers.EndpointSliceInformer, ranges []netip.Prefix) *Controller {
	c := &Controller{
		client: client,
		nodes:  nodes.Lister(), services: services.Lister(), slices: slices.Lister(),
		retryBase: 100 * time.Millisecond, retryMax: 30 * time.Second,
	}
	c.ranges.Store(&ranges)
	all := func(any) { c.queue.Add(key) }
	ours := func(obj any) {
		if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
			obj = t.Obj
		}
		switch o := obj.(type) {
		case *corev1.Service:
			if o.Namespace == Namespace && o.Name == Name {
				c.queue.Add(key)
			}
		case *discoveryv1.EndpointSlice:
			if o.Namespace == Namespace && o.Labels[discoveryv1.LabelServiceName] == Name {
				c.queue.Add(key)
			}
		}
	}
	for _, h := range []struct {
		inf cache.SharedIndexInformer
		fn  func(any)
	}{{nodes.Informer(), all}, {services.Informer(), ours}, {slices.Informer(), ours}} {
		reg, err := h.inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
			AddFunc: h.fn, UpdateFunc: func(_, o any) { h.fn(o) }, DeleteFunc: h.fn,
		})
		if err != nil {
			utilruntime.HandleError(fmt.Errorf("%s: %w", ControllerName, err))
			c.synced = append(c.synced, func() bool { return false })
			continue
		}
		c.synced = append(c.synced, reg.HasSynced)
	}
	return c
}

// SetRanges gives the controller the cluster's service ranges as they are
// now, one per family, primary first: kube-dns gains a family the cluster
// gained (a ServiceCIDR of a second family applied while it runs).
func (c *Controller) SetRanges(ranges []netip.Prefix) {
	c.ranges.Store(&ranges)
	c.queue.Add(key)
}

// Run keeps kube-dns until ctx ends.
func (c *Controller) Run(ctx context.Context) {
	defer utilruntime.HandleCrash()
	logger := klog.FromContext(ctx).WithName(ControllerName)
	ctx = klog.NewContext(ctx, logger)
	q := workqueue.NewTypedRateLimitingQueueWithConfig(
		workqueue.NewTypedItemExponentialFailureRateLimiter[string](c.retryBase, c.retryMax),
		workqueue.TypedRateLimitingQueueConfig[string]{Name: "kubedns"},
	)
	defer c.queue.Fill(q)()
	logger.Info("Starting")
	defer logger.Info("Stopped")
	if !cache.WaitForNamedCacheSyncWithContext(ctx, c.synced...) {
		return
	}
	q.Add(key)
	worker.Run(ctx, q, 1, func(ctx context.Context, _ string) error { return c.sync(ctx) }, worker.Options{
		Failed: "Keeping kube-dns and its EndpointSlices failed; will retry",
		Expected: func(err error) bool {
			return apierrors.IsConflict(err) || apierrors.IsAlreadyExists(err) || apierrors.IsNotFound(err)
		},
		ExpectedV: 2, Waiting: "Cache behind; will retry",
	})
}

func (c *Controller) sync(ctx context.Context) error {
	ranges := *c.ranges.Load()
	svc, err := c.services.Services(Namespace).Get(Name)
	if apierrors.IsNotFound(err) {
		klog.FromContext(ctx).Info("kube-dns is missing; creating it")
		return Ensure(ctx, c.client, ranges)
	}
	if err != nil {
		return err
	}
	if want := addedFamilies(svc, ranges); want != nil {
		// Its slices follow once the informer shows it with both families.
		return upgrade(ctx, c.client, svc, ranges)
	}
	have, err := c.slices.EndpointSlices(Namespace).List(labels.SelectorFromSet(labels.Set{
		discoveryv1.LabelServiceName: Name, discoveryv1.LabelManagedBy: ManagedBy,
	}))
	if err != nil {
		return err
	}
	var want []*discoveryv1.EndpointSlice
	if len(svc.Spec.Selector) == 0 && svc.Spec.Type != corev1.ServiceTypeExternalName {
		nodes, err := c.nodes.List(labels.Everything())
		if err != nil {
			return err
		}
		want = desiredSlices(svc, nodes)
	}
	api := c.client.DiscoveryV1().EndpointSlices(Namespace)
	var errs []error
	byName := map[string]*discoveryv1.EndpointSlice{}
	for _, s := range have {
		byName[s.Name] = s
	}
	for _, w := range want {
		h, ok := byName[w.Name]
		delete(byName, w.Name)
		switch {
		case !ok:
			_, err = api.Create(ctx, w, metav1.CreateOptions{FieldManager: ControllerName})
		case !sameSlice(h, w):
			w.ResourceVersion = h.ResourceVersion
			_, err = api.Update(ctx, w, metav1.UpdateOptions{FieldManager: ControllerName})
		default:
			continue
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("writing EndpointSlice %s/%s: %w", Namespace, w.Name, err))
		} else {
			klog.FromContext(ctx).V(2).Info("Wrote kube-dns's EndpointSlice", "slice", w.Name, "endpoints", len(w.Endpoints))
		}
	}
	for name := range byName {
		if err := api.Delete(ctx, name, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
			errs = append(errs, fmt.Errorf("deleting EndpointSlice %s/%s: %w", Namespace, name, err))
		}
	}
	return errors.Join(errs...)
}
