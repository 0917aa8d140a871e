//lint:file-ignore SA1019 this controller exists to write core/v1 Endpoints, which Kubernetes deprecates but clients still read.

// Package endpoints is Duet's Endpoints controller: it writes the legacy
// core/v1 Endpoints of every Service with a selector, as Kubernetes'
// endpoints controller does, for the clients that still read them.
//
// An Endpoints object has room for one address family only: it carries
// the Service's primary family (spec.ipFamilies[0]), ready Pods under
// addresses and the others under notReadyAddresses, at most MaxCapacity
// addresses (the rest are cut off and the object is annotated
// endpoints.kubernetes.io/over-capacity: truncated). Both families, and
// every endpoint, are in the EndpointSlices.
//
// The loop is level-triggered: informer events name a Service, and a
// worker rebuilds its Endpoints from the listers whatever woke it.
package endpoints

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	v1 "k8s.io/api/core/v1"
	apiequality "k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	coreinformers "k8s.io/client-go/informers/core/v1"
	"k8s.io/client-go/kubernetes"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/leaderelection/resourcelock"
	"k8s.io/client-go/tools/record"
	"k8s.io/client-go/util/workqueue"
	endpointsliceutil "k8s.io/endpointslice/util"
	"k8s.io/klog/v2"

	"github.com/duet-net/duet/internal/controller/events"
	"github.com/duet-net/duet/internal/controller/selectorindex"
	"github.com/duet-net/duet/internal/controller/worker"
)

const (
	// ControllerName names the controller in logs, events and its queue.
	ControllerName = "endpoint-controller"
	// MaxCapacity is the most addresses (ready and not) one Endpoints
	// object carries, as in Kubernetes.
	MaxCapacity = 1000
	// DefaultBatchPeriod is how long a Pod or Endpoints change waits
	// before its Service is synced, so that a burst costs one write per
	// Service instead of one per Pod.
	DefaultBatchPeriod = time.Second
	// truncated is the value of the over-capacity annotation.
	truncated = "truncated"
)

// Options tunes a Controller; the zero value is the default.
type Options struct {
	// BatchPeriod delays syncs triggered by Pod and Endpoints changes
	// (Service changes sync at once): 0 means DefaultBatchPeriod, a
	// negative value no delay.
	BatchPeriod time.Duration
	// RetryBaseDelay and RetryMaxDelay bound the per-Service exponential
	// backoff after a failed sync (defaults 100ms and 5m).
	RetryBaseDelay, RetryMaxDelay time.Duration
	// Recorder receives the warnings about Endpoints that could not be
	// written, as ControllerName; nil drops them.
	Recorder record.EventRecorder
}

// Controller keeps the Endpoints of selector Services.
type Controller struct {
	client   kubernetes.Interface
	pods     corelisters.PodLister
	services corelisters.ServiceLister
	// podIndex and svcIndex find a Service's Pods and a Pod's Services by
	// label lookup (selectorindex), not by scanning the namespace.
	podIndex, svcIndex cache.Indexer
	endpoints          corelisters.EndpointsLister
	synced             []cache.InformerSynced
	// setupErr is why New could not watch an informer; Run reports it.
	setupErr error
	opts     Options
	batch    time.Duration
	recorder record.EventRecorder

	// current is the state of the Run in progress, nil between runs:
	// events that arrive with no Run are dropped, since a Run starts by
	// enqueueing every Service anyway.
	current atomic.Pointer[runState]
}

// runState is what one Run builds from nothing, so that a controller that
// loses and regains leadership trusts nothing from its previous term.
type runState struct {
	queue    workqueue.TypedRateLimitingInterface[string]
	triggers *endpointsliceutil.TriggerTimeTracker
	// superseded is, per Service key, the resourceVersion of the
	// Endpoints this run last replaced: the cache showing it again is
	// behind this run's write.
	mu         sync.Mutex
	superseded map[string]string
}

// New returns a controller over the given informers. It registers event
// handlers, so call it before the informer factory starts; then call Run.
func New(client kubernetes.Interface, pods coreinformers.PodInformer, services coreinformers.ServiceInformer, endpoints coreinformers.EndpointsInformer, opts Options) (*Controller, error) {
	if opts.RetryBaseDelay <= 0 {
		opts.RetryBaseDelay = 100 * time.Millisecond
	}
	if opts.RetryMaxDelay <= 0 {
		opts.RetryMaxDelay = 5 * time.Minute
	}
	if err := selectorindex.AddPodIndex(pods.Informer()); err != nil {
		return nil, err
	}
	if err := selectorindex.AddServiceIndex(services.Informer()); err != nil {
		return nil, err
	}
	c := &Controller{
		podIndex:  pods.Informer().GetIndexer(),
		svcIndex:  services.Informer().GetIndexer(),
		client:    client,
		pods:      pods.Lister(),
		services:  services.Lister(),
		endpoints: endpoints.Lister(),
		opts:      opts,
		batch:     batchDelay(opts.BatchPeriod),
		recorder:  opts.Recorder,
	}
	if c.recorder == nil {
		c.recorder = events.Discard
	}
	handlers := []struct {
		what     string
		informer cache.SharedIndexInformer
		h        cache.ResourceEventHandler
	}{
		{"Services", services.Informer(), cache.ResourceEventHandlerFuncs{
			AddFunc:    c.onService,
			UpdateFunc: func(_, cur any) { c.onService(cur) },
			DeleteFunc: c.onService,
		}},
		{"Pods", pods.Informer(), cache.ResourceEventHandlerFuncs{
			AddFunc:    func(obj any) { c.onPod(nil, obj) },
			UpdateFunc: c.onPod,
			DeleteFunc: func(obj any) { c.onPod(obj, nil) },
		}},
		{"Endpoints", endpoints.Informer(), cache.ResourceEventHandlerFuncs{
			UpdateFunc: c.onEndpointsUpdate,
			DeleteFunc: c.onEndpointsDelete,
		}},
	}
	for _, h := range handlers {
		reg, err := h.informer.AddEventHandler(h.h)
		if err != nil {
			c.setupErr = errors.Join(c.setupErr, fmt.Errorf("watching %s: %w", h.what, err))
			continue
		}
		c.synced = append(c.synced, reg.HasSynced)
	}
	return c, nil
}

func batchDelay(d time.Duration) time.Duration {
	switch {
	case d == 0:
		return DefaultBatchPeriod
	case d < 0:
		return 0
	}
	return d
}

func (c *Controller) newRunState() *runState {
	return &runState{
		queue: workqueue.NewTypedRateLimitingQueueWithConfig(
			workqueue.NewTypedItemExponentialFailureRateLimiter[string](c.opts.RetryBaseDelay, c.opts.RetryMaxDelay),
			workqueue.TypedRateLimitingQueueConfig[string]{Name: "endpoint"}),
		triggers:   endpointsliceutil.NewTriggerTimeTracker(),
		superseded: map[string]string{},
	}
}

// Run reconciles Services with workers goroutines until ctx is done. It
// is meant to run while this server holds the controllers' leader lease:
// it starts from the informers' view of the API, not from anything an
// earlier Run left in memory, so it may be called again after leadership
// is regained (but not while another Run of the same Controller is in
// progress).
func (c *Controller) Run(ctx context.Context, workers int) {
	defer utilruntime.HandleCrash()
	logger := klog.FromContext(ctx).WithName(ControllerName)
	ctx = klog.NewContext(ctx, logger)
	if c.setupErr != nil {
		logger.Error(c.setupErr, "Not starting: the informers were stopped before the controller could watch them")
		return
	}
	r := c.newRunState()
	if !c.current.CompareAndSwap(nil, r) {
		logger.Error(nil, "Run called while the controller is already running; ignoring")
		return
	}
	defer func() {
		c.current.CompareAndSwap(r, nil)
		r.queue.ShutDown()
	}()

	logger.Info("Starting", "batchPeriod", c.batch)
	defer logger.Info("Stopped")
	if !cache.WaitForNamedCacheSyncWithContext(ctx, c.synced...) {
		return
	}
	if err := c.enqueueAll(r); err != nil {
		// Listers read memory; this does not happen.
		logger.Error(err, "Listing the Services and Endpoints to reconcile at start")
	}
	worker.Run(ctx, r.queue, workers, func(ctx context.Context, key string) error {
		return c.syncService(ctx, r, key)
	}, syncLogging)
}

// enqueueAll queues every Service, and the key of every Endpoints object:
// one whose Service was deleted while no replica ran the controller is
// deleted when its key finds no Service, as Kubernetes does at start.
func (c *Controller) enqueueAll(r *runState) error {
	services, err := c.services.List(labels.Everything())
	if err != nil {
		return fmt.Errorf("listing Services: %w", err)
	}
	for _, svc := range services {
		r.queue.Add(svc.Namespace + "/" + svc.Name)
	}
	all, err := c.endpoints.List(labels.Everything())
	if err != nil {
		return fmt.Errorf("listing Endpoints: %w", err)
	}
	for _, ep := range all {
		// An old-style leader-election lock lives in an Endpoints object
		// with no Service; it is not an orphan.
		if _, ok := ep.Annotations[resourcelock.LeaderElectionRecordAnnotationKey]; ok {
			continue
		}
		r.queue.Add(ep.Namespace + "/" + ep.Name)
	}
	return nil
}

// syncLogging is how failed syncs are logged: a cache behind this
// controller's own writes is expected, and soon over.
var syncLogging = worker.Options{
	KeyName: "service", Failed: "Syncing Endpoints failed; will retry",
	Expected:  func(err error) bool { return errors.Is(err, errStaleCache) },
	ExpectedV: 4, Waiting: "Endpoints cache behind this controller's writes; will retry",
}

// errStaleCache means the informer still shows Endpoints this controller
// has since replaced; writing from it would only fail on a conflict, or
// undo a newer write.
var errStaleCache = errors.New("the Endpoints informer cache is out of date")

func (c *Controller) syncService(ctx context.Context, r *runState, key string) error {
	ns, name, err := cache.SplitMetaNamespaceKey(key)
	if err != nil {
		return nil // not a key this controller queued; retrying cannot help
	}
	svc, err := c.services.Services(ns).Get(name)
	if apierrors.IsNotFound(err) {
		// Kubernetes deletes the Endpoints of a deleted Service whoever
		// wrote them.
		err := c.client.CoreV1().Endpoints(ns).Delete(ctx, name, metav1.DeleteOptions{})
		if err != nil && !apierrors.IsNotFound(err) {
			return fmt.Errorf("deleting the Endpoints of deleted Service %s: %w", key, err)
		}
		r.triggers.DeleteService(ns, name)
		r.forget(key)
		return nil
	}
	if err != nil {
		return fmt.Errorf("reading Service %s: %w", key, err)
	}
	if !selects(svc) {
		// Its Endpoints, if any, are whatever its owner writes.
		return nil
	}
	pods, err := selectorindex.PodsFor(c.podIndex, ns, svc.Spec.Selector)
	if err != nil {
		return fmt.Errorf("listing Pods of Service %s: %w", key, err)
	}
	// Computed even when the sync writes nothing, so that the tracker's
	// view of the Pods stays current.
	trigger := r.triggers.ComputeEndpointLastChangeTriggerTime(ns, svc, pods)
	subsets, cut := truncate(desiredSubsets(klog.FromContext(ctx), svc, pods))
	wantLabels := endpointsLabels(svc)

	current, err := c.endpoints.Endpoints(ns).Get(name)
	switch {
	case apierrors.IsNotFound(err):
		current = nil
	case err != nil:
		return fmt.Errorf("reading the Endpoints of Service %s: %w", key, err)
	case r.isSuperseded(key, current):
		return errStaleCache
	}
	if current != nil &&
		apiequality.Semantic.DeepEqual(current.Subsets, subsets) &&
		apiequality.Semantic.DeepEqual(current.Labels, wantLabels) &&
		capacityAnnotated(current, cut) {
		return nil
	}

	next := &v1.Endpoints{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns}}
	if current != nil {
		next = current.DeepCopy()
	}
	next.Subsets = subsets
	next.Labels = wantLabels
	if next.Annotations == nil {
		next.Annotations = map[string]string{}
	}
	if trigger.IsZero() {
		delete(next.Annotations, v1.EndpointsLastChangeTriggerTime)
	} else {
		next.Annotations[v1.EndpointsLastChangeTriggerTime] = trigger.UTC().Format(time.RFC3339Nano)
	}
	if cut {
		next.Annotations[v1.EndpointsOverCapacity] = truncated
	} else {
		delete(next.Annotations, v1.EndpointsOverCapacity)
	}

	if current == nil {
		_, err = c.client.CoreV1().Endpoints(ns).Create(ctx, next, metav1.CreateOptions{})
		switch {
		case err == nil:
			return nil
		case apierrors.HasStatusCause(err, v1.NamespaceTerminatingCause):
			return nil // nothing can be created there any more
		case apierrors.IsAlreadyExists(err):
			return errStaleCache // written by this controller moments ago, most likely
		}
		c.recorder.Eventf(next, v1.EventTypeWarning, "FailedToCreateEndpoint", "Failed to create endpoint for service %s: %v", key, err)
		return fmt.Errorf("creating the Endpoints of Service %s: %w", key, err)
	}
	updated, err := c.client.CoreV1().Endpoints(ns).Update(ctx, next, metav1.UpdateOptions{})
	if err != nil {
		c.recorder.Eventf(next, v1.EventTypeWarning, "FailedToUpdateEndpoint", "Failed to update endpoint %s: %v", key, err)
		return fmt.Errorf("updating the Endpoints of Service %s: %w", key, err)
	}
	// An update the server found to change nothing keeps its
	// resourceVersion, and the cache showing it is not behind.
	if updated.ResourceVersion != current.ResourceVersion {
		r.supersede(key, current.ResourceVersion)
	}
	return nil
}

// capacityAnnotated reports whether Endpoints carry the over-capacity
// annotation exactly when their addresses were cut.
func capacityAnnotated(ep *v1.Endpoints, cut bool) bool {
	value, ok := ep.Annotations[v1.EndpointsOverCapacity]
	if cut {
		return value == truncated
	}
	return !ok
}

// selects reports whether a Service's Endpoints are this controller's to
// write: ExternalName Services have none, and those without a selector
// get theirs from their owner.
func selects(svc *v1.Service) bool {
	return svc.Spec.Type != v1.ServiceTypeExternalName && svc.Spec.Selector != nil
}

func (r *runState) supersede(key, rv string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.superseded[key] = rv
}

func (r *runState) isSuperseded(key string, ep *v1.Endpoints) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	rv, ok := r.superseded[key]
	return ok && rv == ep.ResourceVersion
}

func (r *runState) forget(key string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.superseded, key)
}

func (c *Controller) onService(obj any) {
	r := c.current.Load()
	if r == nil {
		return
	}
	key, err := cache.DeletionHandlingMetaNamespaceKeyFunc(obj)
	if err != nil {
		utilruntime.HandleError(fmt.Errorf("queueing a changed Service: %w", err))
		return
	}
	r.queue.Add(key)
}

// onPod queues the Services a Pod change may affect: those its labels
// match now and matched before. old is nil for an added Pod, cur for a
// deleted one.
func (c *Controller) onPod(old, cur any) {
	r := c.current.Load()
	if r == nil {
		return
	}
	services, err := selectorindex.ServicesToUpdate(c.svcIndex, endpointsliceutil.GetPodUpdateProjectionKey(old, cur))
	if err != nil {
		utilruntime.HandleError(fmt.Errorf("finding the Services of a changed Pod: %w", err))
		return
	}
	for key := range services {
		r.queue.AddAfter(key, c.batch)
	}
}

// onEndpointsUpdate queues a Service whose Endpoints someone changed, so
// that the change is undone (a sync after this controller's own write
// finds nothing to do). Endpoints of Services this controller does not
// write are left to their owners, even before their Service exists.
func (c *Controller) onEndpointsUpdate(old, cur any) {
	r := c.current.Load()
	prev, ok1 := old.(*v1.Endpoints)
	ep, ok2 := cur.(*v1.Endpoints)
	if r == nil || !ok1 || !ok2 || prev.ResourceVersion == ep.ResourceVersion {
		return
	}
	if svc, err := c.services.Services(ep.Namespace).Get(ep.Name); err == nil && selects(svc) {
		r.queue.AddAfter(ep.Namespace+"/"+ep.Name, c.batch)
	}
}

// onEndpointsDelete queues the Service of deleted Endpoints that this
// controller writes, so that they are written again.
func (c *Controller) onEndpointsDelete(obj any) {
	r := c.current.Load()
	if r == nil {
		return
	}
	key, err := cache.DeletionHandlingMetaNamespaceKeyFunc(obj)
	if err != nil {
		utilruntime.HandleError(fmt.Errorf("queueing deleted Endpoints: %w", err))
		return
	}
	r.forget(key)
	ns, name, err := cache.SplitMetaNamespaceKey(key)
	if err != nil {
		return
	}
	if svc, err := c.services.Services(ns).Get(name); err == nil && selects(svc) {
		r.queue.Add(key)
	}
}
