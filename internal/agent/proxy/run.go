package proxy

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"sync"
	"time"

	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/workqueue"

	"github.com/duet-net/duet/internal/controller/worker"
)

// Options configure the service proxy of one node.
type Options struct {
	NodeName string
	// NetNS is the path of the node's network namespace ("" for the
	// caller's own).
	NetNS string
	// NodeIPs are the node's InternalIPs: NodePorts are served on them,
	// and a proxier runs for each family they have.
	NodeIPs []netip.Addr
	// ClusterCIDRs are the pod CIDRs of the whole cluster. Traffic to a
	// cluster IP from outside them is masqueraded; empty turns that off.
	ClusterCIDRs []netip.Prefix
	// FullSyncPeriod is how often the table is read back and repaired
	// (default one minute).
	FullSyncPeriod time.Duration
	Log            *slog.Logger
}

const indexByService = "duet-proxy-service"

// Run runs one proxier per family of o.NodeIPs until ctx is done, fed by
// informers of its own on Services and EndpointSlices. Changes are
// coalesced: while a family syncs, further changes wait and go together
// into the next sync. The tables stay when Run returns, so that traffic
// flows while the agent restarts.
func Run(ctx context.Context, client kubernetes.Interface, o Options) error {
	log := o.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	o.Log = log
	period := o.FullSyncPeriod
	if period <= 0 {
		period = time.Minute
	}
	var families []Family
	for _, a := range o.NodeIPs {
		if f := FamilyOf(a); !slices.Contains(families, f) {
			families = append(families, f)
		}
	}
	if len(families) == 0 {
		return errors.New("service proxy: the node has no IPs, so no family to serve")
	}

	factory := informers.NewSharedInformerFactory(client, 0)
	services := factory.Core().V1().Services()
	endpointSlices := factory.Discovery().V1().EndpointSlices()
	if err := endpointSlices.Informer().AddIndexers(cache.Indexers{indexByService: sliceServiceKey}); err != nil {
		return fmt.Errorf("service proxy: indexing EndpointSlices: %w", err)
	}

	queue := workqueue.NewTypedRateLimitingQueueWithConfig(
		workqueue.NewTypedItemExponentialFailureRateLimiter[Family](100*time.Millisecond, 30*time.Second),
		workqueue.TypedRateLimitingQueueConfig[Family]{Name: "duet-proxy"})
	defer queue.ShutDown()

	workers := map[Family]*familyWorker{}
	for _, f := range families {
		p, err := NewProxier(f, o)
		if err != nil {
			return fmt.Errorf("service proxy: %w", err)
		}
		defer p.Close()
		workers[f] = &familyWorker{fam: f, proxier: p, log: log.With("family", f.String()),
			services: services.Lister(), slices: endpointSlices.Informer().GetIndexer(),
			dirty: map[string]bool{}, desired: map[ServicePortName]ServicePort{}, byService: map[string][]ServicePortName{}}
	}
	changed := func(key string) {
		for f, w := range workers {
			w.markDirty(key)
			queue.Add(f)
		}
	}
	serviceHandler := func(obj any) {
		if key, err := cache.DeletionHandlingMetaNamespaceKeyFunc(obj); err == nil {
			changed(key)
		}
	}
	sliceHandler := func(obj any) {
		if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
			obj = d.Obj
		}
		if keys, _ := sliceServiceKey(obj); len(keys) > 0 {
			changed(keys[0])
		}
	}
	if _, err := services.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: serviceHandler, UpdateFunc: func(_, n any) { serviceHandler(n) }, DeleteFunc: serviceHandler,
	}); err != nil {
		return err
	}
	if _, err := endpointSlices.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: sliceHandler,
		// A slice relabelled to another service changes both.
		UpdateFunc: func(o, n any) { sliceHandler(o); sliceHandler(n) },
		DeleteFunc: sliceHandler,
	}); err != nil {
		return err
	}
	factory.Start(ctx.Done())
	defer factory.Shutdown()
	// Syncing before the caches are full would delete the rules of every
	// service not listed yet.
	if !cache.WaitForCacheSync(ctx.Done(), services.Informer().HasSynced, endpointSlices.Informer().HasSynced) {
		return nil
	}
	log.Info("service proxy started", "node", o.NodeName, "families", families, "nodeIPs", o.NodeIPs, "clusterCIDRs", o.ClusterCIDRs)
	for f := range workers {
		queue.Add(f) // the first sync of each reads its table anyway
	}
	go func() {
		tick := time.NewTicker(period)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
				for f, w := range workers {
					w.repairDue()
					queue.Add(f)
				}
			}
		}
	}()
	// One worker per family: the queue never hands one family to two.
	worker.Run(worker.WithSlog(ctx, log), queue, len(workers), func(_ context.Context, f Family) error {
		return workers[f].sync()
	}, worker.Options{KeyName: "family", Failed: "Syncing the service proxy failed; will retry"})
	return nil
}

// sliceServiceKey indexes an EndpointSlice by its Service's key.
func sliceServiceKey(obj any) ([]string, error) {
	s, ok := obj.(*discoveryv1.EndpointSlice)
	if !ok {
		return nil, nil
	}
	name := s.Labels[discoveryv1.LabelServiceName]
	if name == "" {
		return nil, nil
	}
	return []string{s.Namespace + "/" + name}, nil
}

// familyWorker keeps one family's desired ports up to date with the
// informers, recomputing only the Services that changed since its last
// sync: with ten thousand Services, a sync must not look at all of them.
type familyWorker struct {
	fam      Family
	proxier  *Proxier
	log      *slog.Logger
	services corelisters.ServiceLister
	slices   cache.Indexer

	mu     sync.Mutex
	dirty  map[string]bool
	repair bool

	// Touched by sync only, which the queue never runs twice at once for
	// a family.
	desired   map[ServicePortName]ServicePort
	byService map[string][]ServicePortName
}

func (w *familyWorker) markDirty(key string) {
	w.mu.Lock()
	w.dirty[key] = true
	w.mu.Unlock()
}

func (w *familyWorker) repairDue() {
	w.mu.Lock()
	w.repair = true
	w.mu.Unlock()
}

func (w *familyWorker) sync() error {
	w.mu.Lock()
	dirty, repair := w.dirty, w.repair
	w.dirty, w.repair = map[string]bool{}, false
	w.mu.Unlock()

	for key := range dirty {
		if err := w.update(key); err != nil {
			// Keep it dirty: the retry recomputes it.
			w.markDirty(key)
			return err
		}
	}
	n, err := w.proxier.Sync(w.desired)
	if err != nil {
		return err
	}
	if n > 0 {
		w.log.Debug("service proxy synced", "changes", n, "services", len(dirty))
	}
	if repair {
		if _, err := w.proxier.Repair(); err != nil {
			w.repairDue()
			return err
		}
	}
	return nil
}

// update recomputes one Service's ports.
func (w *familyWorker) update(key string) error {
	for _, name := range w.byService[key] {
		delete(w.desired, name)
	}
	delete(w.byService, key)
	ns, name, err := cache.SplitMetaNamespaceKey(key)
	if err != nil {
		return nil
	}
	svc, err := w.services.Services(ns).Get(name)
	if apierrors.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("service %s: %w", key, err)
	}
	objs, err := w.slices.ByIndex(indexByService, key)
	if err != nil {
		return fmt.Errorf("endpoint slices of %s: %w", key, err)
	}
	sls := make([]*discoveryv1.EndpointSlice, 0, len(objs))
	for _, o := range objs {
		if s, ok := o.(*discoveryv1.EndpointSlice); ok {
			sls = append(sls, s)
		}
	}
	for _, sp := range ServicePorts(w.fam, svc, sls) {
		w.desired[sp.Name] = sp
		w.byService[key] = append(w.byService[key], sp.Name)
	}
	return nil
}
