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
	"k8s.io/klog/v2"

	"github.com/duet-net/duet/internal/controller/events"
	"github.com/duet-net/duet/internal/controller/servicesync"
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
	DefaultBatchPeriod = servicesync.DefaultBatchPeriod
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
	// loop queues the Services that Service and Pod changes affect and
	// runs the workers (see servicesync).
	loop      *servicesync.Loop[runState, *runState]
	client    kubernetes.Interface
	pods      corelisters.PodLister
	services  corelisters.ServiceLister
	endpoints corelisters.EndpointsLister
	opts      Options
	recorder  record.EventRecorder
}

// runState is what one Run builds from nothing, so that a controller that
// loses and regains leadership trusts nothing from its previous term.
type runState struct {
	*servicesync.Run
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
	c := &Controller{
		client:    client,
		pods:      pods.Lister(),
		services:  services.Lister(),
		endpoints: endpoints.Lister(),
		opts:      opts,
		recorder:  opts.Recorder,
	}
	if c.recorder == nil {
		c.recorder = events.Discard
	}
	loop, err := servicesync.New[runState](ControllerName, pods, services, servicesync.BatchDelay(opts.BatchPeriod),
		servicesync.Handler{What: "Endpoints", Informer: endpoints.Informer(), Funcs: cache.ResourceEventHandlerFuncs{
			UpdateFunc: c.onEndpointsUpdate,
			DeleteFunc: c.onEndpointsDelete,
		}})
	if err != nil {
		return nil, err
	}
	c.loop = loop
	return c, nil
}

func (c *Controller) newRunState() *runState {
	return &runState{
		Run: servicesync.NewRun(workqueue.NewTypedRateLimitingQueueWithConfig(
			workqueue.NewTypedItemExponentialFailureRateLimiter[string](c.opts.RetryBaseDelay, c.opts.RetryMaxDelay),
			workqueue.TypedRateLimitingQueueConfig[string]{Name: "endpoint"})),
		superseded: map[string]string{},
	}
}

// Run reconciles Services with workers goroutines until ctx is done; it
// may be called again after leadership is regained (see servicesync.Loop).
func (c *Controller) Run(ctx context.Context, workers int) {
	c.loop.Run(ctx, workers, c.newRunState(), c.queueEndpoints, c.syncService, syncLogging)
}

// queueEndpoints queues the key of every Endpoints object: one whose
// Service was deleted while no replica ran the controller is deleted when
// its key finds no Service, as Kubernetes does at start.
func (c *Controller) queueEndpoints(r *runState) error {
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
		r.Queue.Add(ep.Namespace + "/" + ep.Name)
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
	ns, name, svc, ok, err := c.loop.Service(key)
	switch {
	case !ok:
		return nil // not a key this controller queued; retrying cannot help
	case err != nil:
		return err
	case svc == nil:
		// Kubernetes deletes the Endpoints of a deleted Service whoever
		// wrote them.
		err := c.client.CoreV1().Endpoints(ns).Delete(ctx, name, metav1.DeleteOptions{})
		if err != nil && !apierrors.IsNotFound(err) {
			return fmt.Errorf("deleting the Endpoints of deleted Service %s: %w", key, err)
		}
		r.Triggers.DeleteService(ns, name)
		r.forget(key)
		return nil
	case !selects(svc):
		// Its Endpoints, if any, are whatever its owner writes.
		return nil
	}
	pods, err := c.loop.SelectedPods(svc)
	if err != nil {
		return err
	}
	// Computed even when the sync writes nothing, so that the tracker's
	// view of the Pods stays current.
	trigger := r.Triggers.ComputeEndpointLastChangeTriggerTime(ns, svc, pods)
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

// onEndpointsUpdate queues a Service whose Endpoints someone changed, so
// that the change is undone (a sync after this controller's own write
// finds nothing to do). Endpoints of Services this controller does not
// write are left to their owners, even before their Service exists.
func (c *Controller) onEndpointsUpdate(old, cur any) {
	r := c.loop.Current()
	prev, ok1 := old.(*v1.Endpoints)
	ep, ok2 := cur.(*v1.Endpoints)
	if r == nil || !ok1 || !ok2 || prev.ResourceVersion == ep.ResourceVersion {
		return
	}
	if svc, err := c.services.Services(ep.Namespace).Get(ep.Name); err == nil && selects(svc) {
		r.Queue.AddAfter(ep.Namespace+"/"+ep.Name, c.loop.Batch())
	}
}

// onEndpointsDelete queues the Service of deleted Endpoints that this
// controller writes, so that they are written again.
func (c *Controller) onEndpointsDelete(obj any) {
	r := c.loop.Current()
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
		r.Queue.Add(key)
	}
}
