// Package endpointslice is Duet's EndpointSlice controller: for every
// Service with a selector it keeps one set of discovery.k8s.io/v1
// EndpointSlices per entry of spec.ipFamilies (addressType IPv4 or IPv6),
// filled from the Pods the selector picks in the Service's namespace.
//
// What a Service's slices should hold, and which creates, updates and
// deletes get there with the fewest writes, is decided by Kubernetes' own
// reconciler (k8s.io/endpointslice), so Duet's slices are the ones
// kube-controller-manager would write: per-Pod port resolution, endpoint
// conditions, slice packing, labels, owner references. This package is the
// loop around it: informer events name a Service, a worker reconciles that
// Service from the listers whatever woke it, and an EndpointSliceTracker
// refuses to act on an informer cache that has not yet seen this
// controller's own writes.
//
// The slices of a deleted Service name it as their owner, and the garbage
// collector deletes them, as in Kubernetes; unlike Kubernetes, the
// controller deletes the slices of a Service turned ExternalName itself.
package endpointslice

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"golang.org/x/time/rate"
	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	utilerrors "k8s.io/apimachinery/pkg/util/errors"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	coreinformers "k8s.io/client-go/informers/core/v1"
	discoveryinformers "k8s.io/client-go/informers/discovery/v1"
	"k8s.io/client-go/kubernetes"
	corelisters "k8s.io/client-go/listers/core/v1"
	discoverylisters "k8s.io/client-go/listers/discovery/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/record"
	"k8s.io/client-go/util/workqueue"
	endpointslicerec "k8s.io/endpointslice"
	endpointslicemetrics "k8s.io/endpointslice/metrics"
	endpointsliceutil "k8s.io/endpointslice/util"
	"k8s.io/klog/v2"

	"github.com/duet-net/duet/internal/controller/events"
	"github.com/duet-net/duet/internal/controller/servicesync"
	"github.com/duet-net/duet/internal/controller/worker"
)

const (
	// ManagedBy is the endpointslice.kubernetes.io/managed-by value of the
	// slices this controller owns. It is Kubernetes' value, so tools that
	// look for the slices kube-controller-manager writes find Duet's.
	ManagedBy = "endpointslice-controller.k8s.io"
	// ControllerName names the controller in logs and its queue.
	ControllerName = "endpointslice-controller"
	// EventComponent is the source of the controller's events, as
	// Kubernetes' EndpointSlice controller spells it.
	EventComponent = "endpoint-slice-controller"

	// DefaultMaxEndpointsPerSlice is Kubernetes' default
	// (--max-endpoints-per-slice).
	DefaultMaxEndpointsPerSlice = 100
	// MaxEndpointsPerSliceLimit is the most endpoints the API accepts in
	// one slice.
	MaxEndpointsPerSliceLimit = 1000
	// DefaultBatchPeriod is how long a Pod or EndpointSlice change waits
	// before its Service is synced, so that a burst (a rollout, a node
	// going away) costs one sync per Service instead of one per Pod.
	DefaultBatchPeriod = servicesync.DefaultBatchPeriod

	// liveListAfter is how many failed syncs in a row make the next one
	// read the Service's slices from the API server instead of the
	// informer cache. The cache can miss a slice for good (one created
	// and deleted while its watch was being re-established); the checks
	// against stale caches would then hold the Service back forever.
	liveListAfter = 5
)

// Options tunes a Controller; the zero value is the default.
type Options struct {
	// MaxEndpointsPerSlice caps each slice: 0 means
	// DefaultMaxEndpointsPerSlice, at most MaxEndpointsPerSliceLimit.
	MaxEndpointsPerSlice int32
	// BatchPeriod delays syncs triggered by Pod and EndpointSlice changes
	// (Service changes sync at once): 0 means DefaultBatchPeriod, a
	// negative value no delay.
	BatchPeriod time.Duration
	// RetryBaseDelay and RetryMaxDelay bound the per-Service exponential
	// backoff after a failed sync (defaults 1s and 5m; Kubernetes starts
	// at 1s too, as one sync may be many writes).
	RetryBaseDelay, RetryMaxDelay time.Duration
	// Recorder receives the warnings about Services whose slices could
	// not be written, as EventComponent; nil drops them.
	Recorder record.EventRecorder
}

// Controller keeps the EndpointSlices of selector Services.
type Controller struct {
	// loop queues the Services that Service and Pod changes affect and
	// runs the workers (see servicesync).
	loop   *servicesync.Loop[runState, *runState]
	client kubernetes.Interface
	pods   corelisters.PodLister
	nodes  corelisters.NodeLister
	slices discoverylisters.EndpointSliceLister
	// byService indexes slices by namespace/service-name label, so a sync
	// reads its Service's slices without scanning the namespace's (a
	// scan per sync made creating N Services cost O(N²)).
	byService cache.Indexer
	opts      Options
	recorder  record.EventRecorder
}

// runState is what one Run builds from nothing, so that a controller that
// loses and regains leadership trusts nothing from its previous term.
type runState struct {
	*servicesync.Run
	// tracker remembers the slice generations and deletions this run
	// wrote, to detect an informer cache that lags behind them.
	tracker *endpointsliceutil.EndpointSliceTracker
	// superseded covers for the tracker where the server keeps no
	// generations (see supersededVersions).
	superseded *supersededVersions
	reconciler *endpointslicerec.Reconciler
	// untracked holds, per Service key, deleted slices the tracker did
	// not know when their deletion was seen. A slice this run creates is
	// tracked only once the create returns; if it is deleted in between,
	// the deletion must still reach the tracker, or the tracker would
	// wait for the slice forever. The next sync of the Service hands them
	// over.
	untrackedMu sync.Mutex
	untracked   map[string][]*discovery.EndpointSlice
}

// New returns a controller over the given informers. It registers event
// handlers, so call it before the informer factory starts; then call Run.
func New(client kubernetes.Interface, pods coreinformers.PodInformer, services coreinformers.ServiceInformer, nodes coreinformers.NodeInformer, slices discoveryinformers.EndpointSliceInformer, opts Options) (*Controller, error) {
	if client == nil || pods == nil || services == nil || nodes == nil || slices == nil {
		return nil, errors.New("the EndpointSlice controller needs a client and Pod, Service, Node and EndpointSlice informers")
	}
	switch {
	case opts.MaxEndpointsPerSlice == 0:
		opts.MaxEndpointsPerSlice = DefaultMaxEndpointsPerSlice
	case opts.MaxEndpointsPerSlice < 0 || opts.MaxEndpointsPerSlice > MaxEndpointsPerSliceLimit:
		return nil, fmt.Errorf("max endpoints per slice %d is out of range: it must be between 1 and %d", opts.MaxEndpointsPerSlice, MaxEndpointsPerSliceLimit)
	}
	if opts.RetryBaseDelay <= 0 {
		opts.RetryBaseDelay = time.Second
	}
	if opts.RetryMaxDelay <= 0 {
		opts.RetryMaxDelay = 5 * time.Minute
	}
	if err := slices.Informer().AddIndexers(cache.Indexers{serviceIndex: func(obj any) ([]string, error) {
		s, ok := obj.(*discovery.EndpointSlice)
		if !ok || s.Labels[discovery.LabelServiceName] == "" {
			return nil, nil
		}
		return []string{s.Namespace + "/" + s.Labels[discovery.LabelServiceName]}, nil
	}}); err != nil {
		return nil, fmt.Errorf("indexing EndpointSlices by Service: %w", err)
	}
	c := &Controller{
		byService: slices.Informer().GetIndexer(),
		client:    client,
		pods:      pods.Lister(),
		nodes:     nodes.Lister(),
		slices:    slices.Lister(),
		opts:      opts,
		recorder:  opts.Recorder,
	}
	if c.recorder == nil {
		c.recorder = events.Discard
	}
	// The reconciler counts its work in these; they are served with the
	// server's other metrics from the legacy registry.
	endpointslicemetrics.RegisterMetrics()

	loop, err := servicesync.New[runState](ControllerName, pods, services, servicesync.BatchDelay(opts.BatchPeriod),
		servicesync.Handler{What: "Nodes", Informer: nodes.Informer(), Funcs: cache.ResourceEventHandlerFuncs{
			AddFunc:    func(obj any) { c.onNode(nil, obj) },
			UpdateFunc: c.onNode,
		}},
		servicesync.Handler{What: "EndpointSlices", Informer: slices.Informer(), Funcs: cache.ResourceEventHandlerFuncs{
			AddFunc:    c.onSliceAdd,
			UpdateFunc: c.onSliceUpdate,
			DeleteFunc: c.onSliceDelete,
		}})
	if err != nil {
		return nil, err
	}
	c.loop = loop
	return c, nil
}

// Run reconciles Services with workers goroutines until ctx is done; it
// may be called again after leadership is regained (see servicesync.Loop).
func (c *Controller) Run(ctx context.Context, workers int) {
	c.loop.Run(ctx, workers, c.newRunState(), c.queueSlices, func(ctx context.Context, r *runState, key string) error {
		err := c.syncService(ctx, r, key)
		countSync(err)
		return err
	}, syncLogging, "maxEndpointsPerSlice", c.opts.MaxEndpointsPerSlice)
}

// newRunState returns the empty state a Run starts from.
func (c *Controller) newRunState() *runState {
	r := &runState{
		Run: servicesync.NewRun(workqueue.NewTypedRateLimitingQueueWithConfig(
			workqueue.NewTypedMaxOfRateLimiter(
				workqueue.NewTypedItemExponentialFailureRateLimiter[string](c.opts.RetryBaseDelay, c.opts.RetryMaxDelay),
				// Retries of all Services together stay under 10/s, so a
				// failing API server is not hammered.
				&workqueue.TypedBucketRateLimiter[string]{Limiter: rate.NewLimiter(rate.Limit(10), 100)},
			),
			workqueue.TypedRateLimitingQueueConfig[string]{Name: "endpoint_slice"})),
		tracker:    endpointsliceutil.NewEndpointSliceTracker(),
		superseded: newSupersededVersions(),
		untracked:  map[string][]*discovery.EndpointSlice{},
	}
	writer := recordingClient{Interface: c.client, slices: c.slices, superseded: r.superseded}
	r.reconciler = endpointslicerec.NewReconciler(writer, c.nodes, c.opts.MaxEndpointsPerSlice, r.tracker,
		nil, // no topology cache: Duet does not implement the topology-aware-hints annotation
		c.recorder, ManagedBy,
		endpointslicerec.WithPreferSameTrafficDistributionEnabled(true))
	return r
}

// queueSlices queues every Service named by a slice of this controller:
// that is where slices of Services turned ExternalName while no replica
// ran the controller are found.
func (c *Controller) queueSlices(r *runState) error {
	slices, err := c.slices.List(labels.SelectorFromSet(labels.Set{discovery.LabelManagedBy: ManagedBy}))
	if err != nil {
		return fmt.Errorf("listing EndpointSlices: %w", err)
	}
	for _, s := range slices {
		if key, err := endpointslicerec.ServiceControllerKey(s); err == nil {
			r.Queue.Add(key)
		}
	}
	return nil
}

// syncLogging is how failed syncs are logged: a cache behind this
// controller's own writes is expected, and soon over.
var syncLogging = worker.Options{
	KeyName: "service", Failed: "Syncing EndpointSlices failed; will retry",
	Expected:  func(err error) bool { return errors.Is(err, errStaleCache) },
	ExpectedV: 4, Waiting: "EndpointSlice cache behind this controller's writes; will retry",
}

// countSync counts a sync's outcome as Kubernetes' controller does.
func countSync(err error) {
	outcome := "success"
	switch {
	case errors.Is(err, errStaleCache):
		outcome = "stale"
	case err != nil:
		outcome = "error"
	}
	endpointslicemetrics.EndpointSliceSyncs.WithLabelValues(outcome).Inc()
}

// errStaleCache means the informer has not yet shown slices this
// controller wrote or deleted; acting on it would duplicate or resurrect
// them, so the sync is retried once the cache has caught up.
var errStaleCache = errors.New("EndpointSlice informer cache is out of date")

func (c *Controller) syncService(ctx context.Context, r *runState, key string) error {
	logger := klog.FromContext(ctx)
	ns, name, svc, ok, err := c.loop.Service(key)
	switch {
	case !ok:
		return nil // not a key this controller queued; retrying cannot help
	case err != nil:
		return err
	case svc == nil:
		// Its slices are the garbage collector's: they name it as
		// their owner.
		r.forget(key)
		return nil
	case svc.Spec.Type == v1.ServiceTypeExternalName:
		// An ExternalName Service is a DNS alias and has no endpoints; one
		// that was another type before keeps no stale slices.
		return c.removeSlices(ctx, r, ns, name)
	case svc.Spec.Selector == nil:
		// Its endpoints are whatever its owner writes, out of band.
		return nil
	}

	pods, err := c.loop.SelectedPods(svc)
	if err != nil {
		return err
	}
	slices, err := c.currentSlices(ctx, r, svc)
	if err != nil {
		return err
	}
	// Computed even when the sync writes nothing, so that the tracker's
	// view of the Pods stays current.
	trigger := r.Triggers.ComputeEndpointLastChangeTriggerTime(ns, svc, pods)
	if err := r.reconciler.Reconcile(logger, svc, pods, slices, trigger); err != nil {
		c.recorder.Eventf(svc, v1.EventTypeWarning, "FailedToUpdateEndpointSlices",
			"Error updating Endpoint Slices for Service %s: %v", key, err)
		return fmt.Errorf("reconciling EndpointSlices of Service %s: %w", key, err)
	}
	return nil
}

// currentSlices returns a Service's slices as the reconciler may act on
// them: from the informer cache once it shows every write of this run
// (else errStaleCache), or from the API server after liveListAfter failed
// syncs.
func (c *Controller) currentSlices(ctx context.Context, r *runState, svc *v1.Service) ([]*discovery.EndpointSlice, error) {
	key := svc.Namespace + "/" + svc.Name
	r.handOverDeletions(key)
	if r.Queue.NumRequeues(key) >= liveListAfter {
		slices, err := c.liveSlices(ctx, svc.Namespace, svc.Name)
		if err == nil {
			// What this run remembers writing is what held the Service
			// back; the API server has the last word.
			r.tracker.DeleteService(svc.Namespace, svc.Name)
		}
		return slices, err
	}
	slices, err := c.managedSlices(svc.Namespace, svc.Name)
	if err != nil {
		return nil, err
	}
	if r.tracker.StaleSlices(svc, slices) || r.superseded.stale(slices) {
		return nil, errStaleCache
	}
	return slices, nil
}

// managedSlices returns the slices this controller keeps for a Service,
// without those already being deleted: waiting for them would stall the
// Service behind a finalizer that is none of its business.
// serviceIndex names the index of slices by the Service they belong to.
const serviceIndex = "service"

func (c *Controller) managedSlices(ns, name string) ([]*discovery.EndpointSlice, error) {
	objs, err := c.byService.ByIndex(serviceIndex, ns+"/"+name)
	if err != nil {
		return nil, fmt.Errorf("listing EndpointSlices of Service %s/%s: %w", ns, name, err)
	}
	var slices []*discovery.EndpointSlice
	for _, o := range objs {
		if s, ok := o.(*discovery.EndpointSlice); ok && s.DeletionTimestamp == nil && s.Labels[discovery.LabelManagedBy] == ManagedBy {
			slices = append(slices, s)
		}
	}
	return slices, nil
}

// liveSlices is managedSlices read from the API server.
func (c *Controller) liveSlices(ctx context.Context, ns, name string) ([]*discovery.EndpointSlice, error) {
	list, err := c.client.DiscoveryV1().EndpointSlices(ns).List(ctx, metav1.ListOptions{
		LabelSelector: labels.Set{discovery.LabelServiceName: name, discovery.LabelManagedBy: ManagedBy}.String(),
	})
	if err != nil {
		return nil, fmt.Errorf("listing EndpointSlices of Service %s/%s from the API server: %w", ns, name, err)
	}
	var slices []*discovery.EndpointSlice
	for i := range list.Items {
		if list.Items[i].DeletionTimestamp == nil {
			slices = append(slices, &list.Items[i])
		}
	}
	return slices, nil
}

// removeSlices deletes this controller's slices of an ExternalName
// Service, and forgets the Service.
func (c *Controller) removeSlices(ctx context.Context, r *runState, ns, name string) error {
	slices, err := c.currentSlices(ctx, r, &v1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}})
	if err != nil {
		return err
	}
	var errs []error
	for _, s := range slices {
		err := c.client.DiscoveryV1().EndpointSlices(ns).Delete(ctx, s.Name, metav1.DeleteOptions{
			// Only the slice seen, not a namesake created since.
			Preconditions: &metav1.Preconditions{UID: &s.UID},
		})
		switch {
		case err == nil:
			r.superseded.forget(s.UID)
			endpointslicemetrics.EndpointSliceChanges.WithLabelValues("delete").Inc()
			klog.FromContext(ctx).V(2).Info("Deleted EndpointSlice of a Service that has no endpoints", "service", klog.KRef(ns, name), "endpointSlice", s.Name)
		case apierrors.IsNotFound(err):
		default:
			errs = append(errs, fmt.Errorf("deleting EndpointSlice %s of Service %s/%s: %w", s.Name, ns, name, err))
		}
	}
	if len(errs) > 0 {
		return utilerrors.NewAggregate(errs)
	}
	r.forget(ns + "/" + name)
	return nil
}

// forget drops what this run knows of a Service that has no slices to
// keep: one deleted or turned ExternalName.
func (r *runState) forget(key string) {
	ns, name, err := cache.SplitMetaNamespaceKey(key)
	if err != nil {
		return
	}
	r.untrackedMu.Lock()
	delete(r.untracked, key)
	r.untrackedMu.Unlock()
	r.tracker.DeleteService(ns, name)
	r.Triggers.DeleteService(ns, name)
	r.reconciler.DeleteService(ns, name)
}

// onNode queues the Services of the Pods on a Node that appears or whose
// zone changes: a Pod whose Node the cache did not know yet was left out
// of its slices, and every endpoint on the Node carries its zone.
func (c *Controller) onNode(old, cur any) {
	r := c.loop.Current()
	if r == nil || !r.Started() {
		return
	}
	node, ok := cur.(*v1.Node)
	if !ok {
		return
	}
	if prev, ok := old.(*v1.Node); ok && prev.Labels[v1.LabelTopologyZone] == node.Labels[v1.LabelTopologyZone] {
		return
	}
	pods, err := c.pods.List(labels.Everything())
	if err != nil {
		utilruntime.HandleError(fmt.Errorf("listing the Pods of Node %s: %w", node.Name, err))
		return
	}
	for _, p := range pods {
		if p.Spec.NodeName != node.Name {
			continue
		}
		services, err := c.loop.ServicesSelecting(p.Namespace, p.Labels)
		if err != nil {
			utilruntime.HandleError(fmt.Errorf("finding the Services of Pod %s/%s: %w", p.Namespace, p.Name, err))
			continue
		}
		for key := range services {
			r.Queue.AddAfter(key, c.loop.Batch())
		}
	}
}

func managed(s *discovery.EndpointSlice) bool {
	return s.Labels[discovery.LabelManagedBy] == ManagedBy
}

// onSliceAdd queues the Service of a slice this run did not write itself:
// one left by an earlier leader, or written by someone else in its name.
func (c *Controller) onSliceAdd(obj any) {
	r := c.loop.Current()
	s, ok := obj.(*discovery.EndpointSlice)
	if r == nil || !ok {
		return
	}
	if managed(s) && r.tracker.ShouldSync(s) {
		c.queueForSlice(r, s)
	}
}

func (c *Controller) onSliceUpdate(old, cur any) {
	r := c.loop.Current()
	prev, ok1 := old.(*discovery.EndpointSlice)
	s, ok2 := cur.(*discovery.EndpointSlice)
	if r == nil || !ok1 || !ok2 {
		return
	}
	// A relabelled slice leaves one Service and joins another; the
	// generation does not change with labels.
	if prev.Labels[discovery.LabelServiceName] != s.Labels[discovery.LabelServiceName] {
		c.queueForSlice(r, prev)
		c.queueForSlice(r, s)
		return
	}
	if managed(prev) != managed(s) {
		c.queueForSlice(r, s)
		return
	}
	if !managed(s) {
		return
	}
	// The tracker tells this controller's writes from others' by
	// metadata.generation. A server that does not maintain generations
	// (they stay 0) gives it nothing to compare, so every change is
	// checked instead; a sync that finds nothing to do writes nothing.
	if r.tracker.ShouldSync(s) || (s.Generation == 0 && s.ResourceVersion != prev.ResourceVersion) {
		c.queueForSlice(r, s)
	}
}

// onSliceDelete queues the Service of a slice deleted by someone else, so
// that it is written again.
func (c *Controller) onSliceDelete(obj any) {
	r := c.loop.Current()
	if r == nil {
		return
	}
	if tomb, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = tomb.Obj
	}
	s, ok := obj.(*discovery.EndpointSlice)
	if !ok || !managed(s) {
		return
	}
	r.superseded.forget(s.UID)
	// The tracker only knows the slices this run wrote: a deletion of
	// any other is unexpected too (Kubernetes ignores those and leaves a
	// Service short of a slice until its next change).
	if r.tracker.Has(s) {
		if !r.tracker.HandleDeletion(s) {
			c.queueForSlice(r, s)
		}
		return
	}
	if key, err := endpointslicerec.ServiceControllerKey(s); err == nil {
		r.untrackedMu.Lock()
		r.untracked[key] = append(r.untracked[key], s)
		r.untrackedMu.Unlock()
		c.queueForSlice(r, s)
	}
}

// handOverDeletions tells the tracker about the deleted slices of a
// Service it did not know when their deletion was seen (see untracked).
func (r *runState) handOverDeletions(key string) {
	r.untrackedMu.Lock()
	deleted := r.untracked[key]
	delete(r.untracked, key)
	r.untrackedMu.Unlock()
	for _, s := range deleted {
		r.tracker.HandleDeletion(s)
	}
}

func (c *Controller) queueForSlice(r *runState, s *discovery.EndpointSlice) {
	key, err := endpointslicerec.ServiceControllerKey(s)
	if err != nil {
		return // not labelled with a Service: nobody's slice to keep
	}
	r.Queue.AddAfter(key, c.loop.Batch())
}
