// Package gc runs Kubernetes' garbage collector (k8s.io/kubernetes
// pkg/controller/garbagecollector) in `duet server`: it deletes objects
// whose owners are gone, and carries out the propagation a delete asks
// for (background, foreground, orphan) on every resource the API server
// lists in discovery, Duet's own included. It is the collector of
// kube-controller-manager, wired as it wires it: a metadata client, a
// RESTMapper from discovery, and the typed informers other controllers
// already keep, with metadata-only informers (managedFields dropped) for
// the rest.
package gc

import (
	"context"
	"fmt"
	"time"

	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/metadata"
	"k8s.io/client-go/metadata/metadatainformer"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/restmapper"
	"k8s.io/controller-manager/pkg/informerfactory"
	"k8s.io/klog/v2"
	"k8s.io/kubernetes/pkg/controller/garbagecollector"

	"github.com/duet-net/duet/internal/controller/trim"
)

// ControllerName names the collector in logs and events.
const ControllerName = "garbage-collector-controller"

// Options tune the collector; zero values take kube-controller-manager's
// defaults.
type Options struct {
	// Shared lists the resources whose typed informers the other
	// controllers keep in the factory given to New: the collector
	// watches those through them. Every other resource it watches
	// metadata-only, rather than holding whole objects (Secrets,
	// ConfigMaps, IPAddresses) no controller reads.
	Shared []schema.GroupVersionResource
	// Workers is how many objects are deleted or orphaned at once (20).
	Workers int
	// SyncPeriod is how often discovery is read again for resources
	// added or removed (30 s).
	SyncPeriod time.Duration
}

// Collector is a garbage collector ready to Run.
type Collector struct {
	gc      *garbagecollector.GarbageCollector
	opts    Options
	client  kubernetes.Interface
	started chan struct{}
}

// New builds a collector over config's API server. typed is the shared
// informer factory of the other controllers: resources it has informers
// for are watched once, through it. Start must be called once typed has
// been started.
func New(ctx context.Context, config *rest.Config, client kubernetes.Interface, typed informers.SharedInformerFactory, opts Options) (*Collector, error) {
	if opts.Workers == 0 {
		opts.Workers = 20
	}
	if opts.SyncPeriod == 0 {
		opts.SyncPeriod = 30 * time.Second
	}
	cfg := rest.CopyConfig(config)
	rest.AddUserAgent(cfg, "generic-garbage-collector")
	md, err := metadata.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("garbage collector: metadata client: %w", err)
	}
	// The mapper has a discovery cache of its own, reset when the
	// collector finds the resources changed.
	cached := memory.NewMemCacheClient(client.Discovery())
	mapper := restmapper.NewDeferredDiscoveryRESTMapper(cached)
	c := &Collector{opts: opts, client: client, started: make(chan struct{})}
	factory := &informerFactory{typed: typed, shared: map[schema.GroupVersionResource]bool{},
		metadata: metadatainformer.NewSharedInformerFactoryWithOptions(md, 0, metadatainformer.WithTransform(trim.ForControllers))}
	for _, r := range opts.Shared {
		factory.shared[r] = true
	}
	c.gc, err = garbagecollector.NewGarbageCollector(ctx, client, md, mapper, garbagecollector.DefaultIgnoredResources(), factory, c.started)
	if err != nil {
		return nil, fmt.Errorf("garbage collector: %w", err)
	}
	return c, nil
}

// Run collects until ctx is done. The informers it needs beyond typed's
// are started by the collector itself once Started has been called.
func (c *Collector) Run(ctx context.Context) {
	klog.FromContext(ctx).Info("Starting garbage collector", "workers", c.opts.Workers)
	done := make(chan struct{})
	go func() {
		defer close(done)
		c.gc.Sync(ctx, c.client.Discovery(), c.opts.SyncPeriod)
	}()
	c.gc.Run(ctx, c.opts.Workers, c.opts.SyncPeriod)
	<-done
}

// Started tells the collector that the shared informers have been
// started, so that it may start its own: as in kube-controller-manager,
// no monitor delivers events before every controller has registered its
// informers.
func (c *Collector) Started() { close(c.started) }

// informerFactory hands the collector the shared typed informer of a
// resource the other controllers watch anyway, and a metadata-only one
// for any other.
type informerFactory struct {
	typed    informers.SharedInformerFactory
	shared   map[schema.GroupVersionResource]bool
	metadata metadatainformer.SharedInformerFactory
}

var _ informerfactory.InformerFactory = &informerFactory{}

func (f *informerFactory) ForResource(r schema.GroupVersionResource) (informers.GenericInformer, error) {
	if f.shared[r] {
		return f.typed.ForResource(r)
	}
	return f.metadata.ForResource(r), nil
}

func (f *informerFactory) Start(stop <-chan struct{}) {
	f.typed.Start(stop)
	f.metadata.Start(stop)
}
