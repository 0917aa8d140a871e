// Package servicesync is the loop the Endpoints and EndpointSlice
// controllers share. Both keep, for every Service with a selector, objects
// built from the Pods the selector picks, and both are level-triggered:
// informer events only name a Service, and a worker rebuilds what belongs
// to that Service from the listers, whatever woke it.
//
// A Loop owns what that takes in common: the selector indexes over Pods
// and Services, the event handlers that queue the Services a Service or
// Pod change affects (Pod changes batched), the Run that builds a fresh
// queue and trigger-time tracker for every leadership term, queues every
// Service at start and runs the workers. A controller adds its own state
// (a struct that embeds *Run), the handlers for the objects it writes,
// and its sync.
package servicesync

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	v1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/labels"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	"k8s.io/apimachinery/pkg/util/sets"
	coreinformers "k8s.io/client-go/informers/core/v1"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/workqueue"
	endpointsliceutil "k8s.io/endpointslice/util"
	"k8s.io/klog/v2"

	"github.com/duet-net/duet/internal/controller/selectorindex"
	"github.com/duet-net/duet/internal/controller/worker"
)

// DefaultBatchPeriod is how long a Pod change (or a change of the
// controller's own objects) waits before its Service is synced, so that a
// burst (a rollout, a node going away) costs one sync per Service instead
// of one per Pod.
const DefaultBatchPeriod = time.Second

// BatchDelay is the batch period a controller's BatchPeriod option asks
// for: 0 means DefaultBatchPeriod, a negative value no delay.
func BatchDelay(d time.Duration) time.Duration {
	switch {
	case d == 0:
		return DefaultBatchPeriod
	case d < 0:
		return 0
	}
	return d
}

// Run is what every Run of a controller builds from nothing, so that a
// controller that loses and regains leadership trusts nothing from its
// previous term. A controller's own run state embeds it.
type Run struct {
	// Queue holds the keys (namespace/name) of the Services to sync.
	Queue workqueue.TypedRateLimitingInterface[string]
	// Triggers tracks when the Pods and Service behind each Service last
	// changed, for the last-change-trigger-time annotation.
	Triggers *endpointsliceutil.TriggerTimeTracker
	// started is set once every Service has been queued.
	started atomic.Bool
}

// NewRun returns the state a Run starts from, over a fresh queue.
func NewRun(queue workqueue.TypedRateLimitingInterface[string]) *Run {
	return &Run{Queue: queue, Triggers: endpointsliceutil.NewTriggerTimeTracker()}
}

// Base returns r; through embedding, it gives a controller's run state
// to the Loop.
func (r *Run) Base() *Run { return r }

// Started reports whether every Service has been queued: until then,
// handlers need not look for the Services an event affects.
func (r *Run) Started() bool { return r.started.Load() }

// Handler is an event handler a controller registers on an informer of
// its own, such as the one of the objects it writes.
type Handler struct {
	What     string // for errors: "Endpoints"
	Informer cache.SharedIndexInformer
	Funcs    cache.ResourceEventHandler
}

// Loop is the shared part of a controller whose run state is S (a struct
// embedding *Run); R is *S.
type Loop[S any, R interface {
	*S
	Base() *Run
}] struct {
	name     string
	batch    time.Duration
	services corelisters.ServiceLister
	podIndex cache.Indexer
	svcIndex cache.Indexer
	synced   []cache.InformerSynced
	// current is the state of the Run in progress, nil between runs:
	// events that arrive with no Run are dropped, since a Run starts by
	// queueing every Service anyway.
	current atomic.Pointer[S]
}

// New returns the loop of controller name (for logs). It indexes Pods and
// Services by label and selector, and registers the handlers that queue
// the Services a Service or Pod change affects, then the controller's own
// handlers: call it before the informer factory starts. batch is the
// delay of Pod-triggered syncs (see BatchDelay).
func New[S any, R interface {
	*S
	Base() *Run
}](name string, pods coreinformers.PodInformer, services coreinformers.ServiceInformer, batch time.Duration, own ...Handler) (*Loop[S, R], error) {
	if err := selectorindex.AddPodIndex(pods.Informer()); err != nil {
		return nil, err
	}
	if err := selectorindex.AddServiceIndex(services.Informer()); err != nil {
		return nil, err
	}
	l := &Loop[S, R]{
		name:     name,
		batch:    batch,
		services: services.Lister(),
		podIndex: pods.Informer().GetIndexer(),
		svcIndex: services.Informer().GetIndexer(),
	}
	handlers := append([]Handler{
		{"Services", services.Informer(), cache.ResourceEventHandlerFuncs{
			AddFunc:    l.onService,
			UpdateFunc: func(_, cur any) { l.onService(cur) },
			DeleteFunc: l.onService,
		}},
		{"Pods", pods.Informer(), cache.ResourceEventHandlerFuncs{
			AddFunc:    func(obj any) { l.onPod(nil, obj) },
			UpdateFunc: l.onPod,
			DeleteFunc: func(obj any) { l.onPod(obj, nil) },
		}},
	}, own...)
	for _, h := range handlers {
		reg, err := h.Informer.AddEventHandler(h.Funcs)
		if err != nil {
			return nil, fmt.Errorf("watching %s: %w", h.What, err)
		}
		l.synced = append(l.synced, reg.HasSynced)
	}
	return l, nil
}

// HasSynced reports whether every informer the loop watches has
// delivered its initial list to the loop's handlers.
func (l *Loop[S, R]) HasSynced() bool {
	for _, synced := range l.synced {
		if !synced() {
			return false
		}
	}
	return true
}

// Batch is the delay of Pod-triggered syncs.
func (l *Loop[S, R]) Batch() time.Duration { return l.batch }

// Current returns the state of the Run in progress, or nil.
func (l *Loop[S, R]) Current() R { return R(l.current.Load()) }

// Activate makes r the current run without running workers, so that
// event handlers queue keys for it, for callers that drive syncs
// themselves; it reports false if another run is current.
func (l *Loop[S, R]) Activate(r R) bool { return l.current.CompareAndSwap(nil, (*S)(r)) }

// Sync is a controller's reconcile of one Service key within run r.
type Sync[R any] func(ctx context.Context, r R, key string) error

// Run reconciles Services with workers goroutines until ctx is done, with
// r as its state: it waits for the informers, queues every Service and
// whatever queueOwn adds (the keys of the controller's own objects, which
// may belong to Services deleted while no replica ran it), then syncs
// keys with sync, logging failures as logging says. Run is meant to run
// while this server holds the controllers' leader lease: it starts from
// the informers' view of the API, not from anything an earlier Run left
// in memory, so it may be called again after leadership is regained (but
// not while another Run of the same loop is in progress). startKV are
// logged when it starts.
func (l *Loop[S, R]) Run(ctx context.Context, workers int, r R, queueOwn func(R) error, sync Sync[R], logging worker.Options, startKV ...any) {
	defer utilruntime.HandleCrash()
	logger := klog.FromContext(ctx).WithName(l.name)
	ctx = klog.NewContext(ctx, logger)
	if !l.Activate(r) {
		logger.Error(nil, "Run called while the controller is already running; ignoring")
		return
	}
	q := r.Base().Queue
	defer func() {
		l.current.CompareAndSwap((*S)(r), nil)
		q.ShutDown()
	}()

	logger.Info("Starting", append(startKV, "batchPeriod", l.batch)...)
	defer logger.Info("Stopped")
	if !cache.WaitForNamedCacheSyncWithContext(ctx, l.synced...) {
		return
	}
	if err := errors.Join(l.queueServices(q), queueOwn(r)); err != nil {
		// Listers read memory; this does not happen.
		logger.Error(err, "Listing what to reconcile at start")
	}
	r.Base().started.Store(true)
	worker.Run(ctx, q, workers, func(ctx context.Context, key string) error { return sync(ctx, r, key) }, logging)
}

func (l *Loop[S, R]) queueServices(q workqueue.TypedRateLimitingInterface[string]) error {
	services, err := l.services.List(labels.Everything())
	if err != nil {
		return fmt.Errorf("listing Services: %w", err)
	}
	for _, svc := range services {
		q.Add(svc.Namespace + "/" + svc.Name)
	}
	return nil
}

// Service returns the Service a queued key names, or nil with no error if
// it is gone; ok is false for a key that is not namespace/name, which no
// retry can help.
func (l *Loop[S, R]) Service(key string) (ns, name string, svc *v1.Service, ok bool, err error) {
	ns, name, err = cache.SplitMetaNamespaceKey(key)
	if err != nil {
		return "", "", nil, false, nil
	}
	svc, err = l.services.Services(ns).Get(name)
	switch {
	case apierrors.IsNotFound(err):
		return ns, name, nil, true, nil
	case err != nil:
		return ns, name, nil, true, fmt.Errorf("reading Service %s: %w", key, err)
	}
	return ns, name, svc, true, nil
}

// SelectedPods returns the Pods of svc's namespace that its selector
// picks, by index lookup.
func (l *Loop[S, R]) SelectedPods(svc *v1.Service) ([]*v1.Pod, error) {
	pods, err := selectorindex.PodsFor(l.podIndex, svc.Namespace, svc.Spec.Selector)
	if err != nil {
		return nil, fmt.Errorf("listing Pods of Service %s/%s: %w", svc.Namespace, svc.Name, err)
	}
	return pods, nil
}

// ServicesSelecting returns the keys of the Services whose selector
// picks a Pod of namespace ns with labels lbls.
func (l *Loop[S, R]) ServicesSelecting(ns string, lbls map[string]string) (sets.Set[string], error) {
	return selectorindex.ServicesFor(l.svcIndex, ns, lbls)
}

func (l *Loop[S, R]) onService(obj any) {
	r := l.Current()
	if r == nil {
		return
	}
	key, err := cache.DeletionHandlingMetaNamespaceKeyFunc(obj)
	if err != nil {
		utilruntime.HandleError(fmt.Errorf("%s: queueing a changed Service: %w", l.name, err))
		return
	}
	r.Base().Queue.Add(key)
}

// onPod queues the Services a Pod change may affect: those its labels
// match now and matched before. old is nil for an added Pod, cur for a
// deleted one.
func (l *Loop[S, R]) onPod(old, cur any) {
	r := l.Current()
	if r == nil {
		return
	}
	services, err := selectorindex.ServicesToUpdate(l.svcIndex, endpointsliceutil.GetPodUpdateProjectionKey(old, cur))
	if err != nil {
		utilruntime.HandleError(fmt.Errorf("%s: finding the Services of a changed Pod: %w", l.name, err))
		return
	}
	for key := range services {
		r.Base().Queue.AddAfter(key, l.batch)
	}
}
