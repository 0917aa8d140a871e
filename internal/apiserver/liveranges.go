package apiserver

import (
	"context"
	"fmt"
	"net/netip"
	"sync"
	"time"

	networkingv1 "k8s.io/api/networking/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/wait"
	genericapiserver "k8s.io/apiserver/pkg/server"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/record"
	"k8s.io/klog/v2"

	"github.com/duet-net/duet/internal/alloc"
	nclient "github.com/duet-net/duet/internal/apis/networking/client"
	netv1alpha1 "github.com/duet-net/duet/internal/apis/networking/v1alpha1"
	"github.com/duet-net/duet/internal/clusterranges"
	clustercidrctl "github.com/duet-net/duet/internal/controller/clustercidr"
	"github.com/duet-net/duet/internal/controller/servicecidr"
	"github.com/duet-net/duet/internal/netaddr"
	"github.com/duet-net/duet/internal/registry/clustercidr"
	"github.com/duet-net/duet/internal/registry/networking"
	"github.com/duet-net/duet/internal/registry/service"
)

// liveRanges is the server's side of the cluster's ranges as objects: the
// Source every part reads them from, fed by informers on ServiceCIDRs, and
// the service allocators kept in step with it. The command-line ranges
// seed it and become the default objects; from then on the objects are
// the truth, so a range applied with kubectl is served at once, and a
// restart with a range appended to a flag goes the same way (the default
// object gains it, the informers see it).
type liveRanges struct {
	source   *clusterranges.Source
	defaults clusterranges.Defaults
	allocs   *service.Allocators
	store    alloc.Store
	// primaryRange is --service-cluster-ip-range's first: the range that
	// keeps the kubernetes Service's address.
	primaryRange netip.Prefix

	mu sync.Mutex
	// ranges are the allocators built so far, by range: reused while
	// their range is in the Snapshot, so their state carries over.
	ranges map[netip.Prefix]*alloc.ServiceRange
}

func newLiveRanges(cfg *Config, allocs *service.Allocators, store alloc.Store, built map[netaddr.Family]*alloc.ServiceRange) *liveRanges {
	d := clusterranges.Defaults{ServiceRanges: cfg.ServiceRanges, ClusterCIDRs: cfg.ClusterCIDRs}
	l := &liveRanges{
		source: clusterranges.NewSource(clusterranges.Initial(d)), defaults: d, allocs: allocs, store: store,
		primaryRange: cfg.ServiceRanges[0], ranges: map[netip.Prefix]*alloc.ServiceRange{},
	}
	for _, r := range built {
		l.ranges[r.CIDR()] = r
	}
	l.source.Subscribe(l.applyServiceRanges)
	return l
}

// applyServiceRanges gives the allocators the Snapshot's service ranges,
// building (and loading the allocations of) those that are new. Until a
// new range's allocations are loaded the allocators keep the previous
// ranges: a range is never used with a partial view of what it holds.
func (l *liveRanges) applyServiceRanges(snap *clusterranges.Snapshot) {
	l.mu.Lock()
	defer l.mu.Unlock()
	var set []service.Range
	for _, sc := range snap.Service {
		for _, p := range sc.CIDRs {
			r, err := l.rangeFor(p)
			if err != nil {
				klog.ErrorS(err, "Serving no cluster IPs from a ServiceCIDR's range", "serviceCIDR", sc.Name, "cidr", p)
				continue
			}
			set = append(set, service.Range{ServiceRange: r, Ready: sc.Ready})
		}
	}
	if err := l.allocs.SetRanges(set); err != nil {
		klog.ErrorS(err, "Keeping the previous service ranges", "ranges", snap.String())
		return
	}
	klog.InfoS("Service ranges", "families", l.allocs.Config().Families(), "ranges", snap.String())
}

// rangeFor returns the allocator of p, building it and loading what is
// allocated in it when it is new. l.mu is held.
func (l *liveRanges) rangeFor(p netip.Prefix) (*alloc.ServiceRange, error) {
	if r, ok := l.ranges[p]; ok {
		return r, nil
	}
	r, err := alloc.NewServiceRange(p, alloc.ServiceRangeOptions{Primary: p == l.primaryRange, Store: l.store})
	if err != nil {
		return nil, err
	}
	var syncErr error
	err = wait.PollUntilContextTimeout(context.Background(), 100*time.Millisecond, 30*time.Second, true, func(ctx context.Context) (bool, error) {
		syncErr = r.Sync(ctx)
		return syncErr == nil, nil
	})
	if err != nil {
		return nil, fmt.Errorf("loading the cluster IPs allocated in %s: %w", p, syncErr)
	}
	l.ranges[p] = r
	return r, nil
}

// guardServiceCIDRDelete refuses to delete the default ServiceCIDR: it
// holds the primary family's range and the kubernetes Service's address.
func (l *liveRanges) guardServiceCIDRDelete(_ context.Context, obj *networkingv1.ServiceCIDR) error {
	if obj.Name == clusterranges.DefaultServiceCIDRName {
		return apierrors.NewForbidden(networkingv1.Resource("servicecidrs"), obj.Name, fmt.Errorf(
			"the default ServiceCIDR holds --service-cluster-ip-range, the cluster's primary (%s) service range and the kubernetes Service's address; it cannot be deleted",
			l.source.Load().Primary))
	}
	return nil
}

// guardClusterCIDRDelete refuses to delete the ClusterCIDR of the
// cluster's primary family: every Node's first pod CIDR, and every pod's
// primary address, come from it.
func (l *liveRanges) guardClusterCIDRDelete(_ context.Context, obj *netv1alpha1.ClusterCIDR) error {
	p, err := netip.ParsePrefix(obj.Spec.CIDR)
	if err != nil {
		return nil
	}
	primary := l.clusterPrimary()
	if netaddr.FamilyOf(p.Addr()) == primary {
		return apierrors.NewForbidden(netv1alpha1.Resource("clustercidrs"), obj.Name, fmt.Errorf(
			"%s is of the cluster's primary family %s: every Node's first pod CIDR and every pod's primary address come from it, so it cannot be deleted (the primary family never changes)",
			obj.Spec.CIDR, primary))
	}
	return nil
}

// clusterPrimary is the primary family of the cluster CIDRs: that of the
// first --cluster-cidr, or of the service ranges without one.
func (l *liveRanges) clusterPrimary() netaddr.Family {
	if len(l.defaults.ClusterCIDRs.CIDRs) > 0 {
		return netaddr.FamilyOf(l.defaults.ClusterCIDRs.CIDRs[0].Addr())
	}
	return netaddr.FamilyOf(l.primaryRange.Addr())
}

func (l *liveRanges) clusterCIDROptions(cfg *Config) clustercidr.Options {
	return clustercidr.Options{DualStack: cfg.DualStack, Primary: l.clusterPrimary(), DeleteGuard: l.guardClusterCIDRDelete}
}

func (l *liveRanges) networkingOptions(cfg *Config) networking.Options {
	return networking.Options{DualStack: cfg.DualStack, Primary: netaddr.FamilyOf(cfg.ServiceRanges[0].Addr()), DeleteGuard: l.guardServiceCIDRDelete}
}

// startRanges is the post-start hook that makes the default objects and
// starts feeding the Source from informers, in every replica. The server
// reports ready only once the Source shows the objects.
func (s *Server) startRanges(hookCtx genericapiserver.PostStartHookContext) error {
	client, err := kubernetes.NewForConfig(hookCtx.LoopbackClientConfig)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		<-hookCtx.Done()
		cancel()
	}()
	clusterCIDRs, err := nclient.New(hookCtx.LoopbackClientConfig)
	if err != nil {
		return err
	}
	err = wait.PollUntilContextCancel(hookCtx, 200*time.Millisecond, true, func(ctx context.Context) (bool, error) {
		if err := servicecidr.EnsureDefault(ctx, client, s.cfg.ServiceRanges); err != nil {
			klog.ErrorS(err, "Creating the default ServiceCIDR; retrying")
			return false, nil
		}
		if err := clustercidrctl.EnsureDefaults(ctx, clusterCIDRs, s.cfg.ClusterCIDRs); err != nil {
			klog.ErrorS(err, "Creating the default ClusterCIDRs; retrying")
			return false, nil
		}
		return true, nil
	})
	if err != nil {
		return fmt.Errorf("creating the default ServiceCIDR and ClusterCIDRs: %w", err)
	}

	factory := informers.NewSharedInformerFactory(client, 0)
	cidrs := factory.Networking().V1().ServiceCIDRs()
	clusterInformer := clusterCIDRs.NewInformer(0)
	feeder := clusterranges.NewFeeder(clusterranges.Feeder{
		Source: s.live.source, Defaults: s.live.defaults, Log: s.log,
		Services: func() ([]*networkingv1.ServiceCIDR, error) { return cidrs.Lister().List(labels.Everything()) },
		Clusters: func() ([]clusterranges.ClusterCIDR, error) {
			return clusterCIDRsOf(clusterInformer.GetStore().List()), nil
		},
	})
	changed := cache.ResourceEventHandlerFuncs{
		AddFunc: func(any) { feeder.Changed() }, UpdateFunc: func(_, _ any) { feeder.Changed() }, DeleteFunc: func(any) { feeder.Changed() },
	}
	if _, err := cidrs.Informer().AddEventHandler(changed); err != nil {
		return err
	}
	if _, err := clusterInformer.AddEventHandler(changed); err != nil {
		return err
	}
	factory.Start(ctx.Done())
	go clusterInformer.RunWithContext(ctx)
	for _, ok := range factory.WaitForCacheSync(hookCtx.Done()) {
		if !ok {
			return fmt.Errorf("loading the cluster's ranges: %w", context.Cause(hookCtx))
		}
	}
	if !cache.WaitForCacheSync(hookCtx.Done(), clusterInformer.HasSynced) {
		return fmt.Errorf("loading the cluster's ClusterCIDRs: %w", context.Cause(hookCtx))
	}
	if err := feeder.Rebuild(); err != nil {
		return fmt.Errorf("loading the cluster's ranges: %w", err)
	}
	go feeder.Run(ctx)
	return nil
}

// clusterCIDRsOf turns the informer's objects into the Snapshot's form.
func clusterCIDRsOf(objs []any) []clusterranges.ClusterCIDR {
	var out []clusterranges.ClusterCIDR
	for _, o := range objs {
		cc, ok := o.(*netv1alpha1.ClusterCIDR)
		if !ok {
			continue
		}
		p, err := netaddr.ParseCIDR(cc.Spec.CIDR)
		if err != nil {
			continue
		}
		out = append(out, clusterranges.ClusterCIDR{Name: cc.Name, CIDR: p, NodeMaskSize: int(cc.Spec.NodeMaskSize),
			Created: cc.CreationTimestamp, Deleting: cc.DeletionTimestamp != nil})
	}
	return out
}

// runRangeControllers starts, with the other leader-elected controllers,
// the ServiceCIDR controller (finalizer, Ready condition) and the
// ClusterCIDR controller (Ready condition).
func (s *Server) runRangeControllers(ctx context.Context, wg *sync.WaitGroup, loopback *rest.Config, client kubernetes.Interface, factory informers.SharedInformerFactory, recorder func(string) record.EventRecorder) {
	if api, err := nclient.New(loopback); err != nil {
		klog.ErrorS(err, "starting the ClusterCIDR controller")
	} else {
		informer := api.NewInformer(0)
		if ctl, err := clustercidrctl.New(api, informer, recorder(clustercidrctl.ControllerName)); err != nil {
			klog.ErrorS(err, "starting the ClusterCIDR controller")
		} else {
			wg.Go(func() { informer.RunWithContext(ctx) })
			wg.Go(func() { ctl.Run(ctx) })
		}
	}
	ctl, err := servicecidr.New(client, factory.Networking().V1().ServiceCIDRs(), func(ctx context.Context) ([]networkingv1.IPAddress, error) {
		return s.ipStore.ListAll(ctx, 0)
	}, recorder(servicecidr.ControllerName), servicecidr.Options{})
	if err != nil {
		klog.ErrorS(err, "starting the ServiceCIDR controller")
		return
	}
	wg.Go(func() { ctl.Run(ctx, 1) })
}
