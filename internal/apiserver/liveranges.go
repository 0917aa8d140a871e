package apiserver

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/wait"
	genericapiserver "k8s.io/apiserver/pkg/server"
	"k8s.io/client-go/informers"
	coreinformers "k8s.io/client-go/informers/core/v1"
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
	"github.com/duet-net/duet/internal/controller/familydrop"
	"github.com/duet-net/duet/internal/controller/kubedns"
	"github.com/duet-net/duet/internal/controller/nodeipam"
	"github.com/duet-net/duet/internal/controller/servicecidr"
	"github.com/duet-net/duet/internal/metrics"
	"github.com/duet-net/duet/internal/netaddr"
	"github.com/duet-net/duet/internal/registry/clustercidr"
	"github.com/duet-net/duet/internal/registry/networking"
	"github.com/duet-net/duet/internal/registry/service"
)

// liveRanges is the server's side of the cluster's ranges as objects: the
// Source every part reads them from, fed by informers on ServiceCIDRs and
// ClusterCIDRs, and what follows it: the service allocators (every
// replica), node IPAM, kube-dns, the kubernetes Service's slices and the
// record at rangesKey (the leader). The command-line ranges seed it and
// become the default objects; from then on the objects are the truth, so
// a range applied with kubectl is served at once, and a restart with a
// range appended to a flag goes the same way (the default object gains
// it, the informers see it).
type liveRanges struct {
	source   *clusterranges.Source
	defaults clusterranges.Defaults
	allocs   *service.Allocators
	store    alloc.Store
	// primaryRange is --service-cluster-ip-range's first: the range that
	// keeps the kubernetes Service's address.
	primaryRange netip.Prefix
	// synced is closed once the Source shows the objects, not just the
	// flags: what acts on the ranges waits for it.
	synced     chan struct{}
	syncedOnce sync.Once
	// clusterObjs lists the ClusterCIDR objects (the informer's), for the
	// delete guard, which must see the ones the Snapshot leaves out.
	clusterObjs func() []*netv1alpha1.ClusterCIDR
	// removeFamilies, when set, is how a family leaves the running
	// cluster (see FamilyRemover); without it, deleting the last range
	// of a family is refused.
	removeFamilies FamilyRemover
	// services lists the Services (the API server's loopback client),
	// set once the server serves: the delete guard asks it which need a
	// family.
	services atomic.Pointer[func(ctx context.Context) ([]*corev1.Service, error)]

	mu sync.Mutex
	// ranges are the allocators built so far, by range: reused while
	// their range is in the Snapshot, so their state carries over.
	ranges map[netip.Prefix]*alloc.ServiceRange
}

func newLiveRanges(cfg *Config, allocs *service.Allocators, store alloc.Store, built map[netaddr.Family]*alloc.ServiceRange) *liveRanges {
	d := clusterranges.Defaults{ServiceRanges: cfg.ServiceRanges, ClusterCIDRs: cfg.ClusterCIDRs}
	l := &liveRanges{
		source: clusterranges.NewSource(clusterranges.Initial(d)), defaults: d, allocs: allocs, store: store,
		primaryRange: cfg.ServiceRanges[0], ranges: map[netip.Prefix]*alloc.ServiceRange{}, synced: make(chan struct{}),
		clusterObjs: func() []*netv1alpha1.ClusterCIDR { return nil },
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
	// A range no ServiceCIDR has any more is forgotten: should it come
	// back, it is loaded afresh from the records.
	for p, r := range l.ranges {
		if !slices.ContainsFunc(set, func(u service.Range) bool { return u.ServiceRange == r }) {
			delete(l.ranges, p)
		}
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

// guardServiceCIDRDelete refuses to delete the default ServiceCIDR (it
// holds the primary family's range and the kubernetes Service's address)
// and the last service range of the other family while Services need that
// family (RequireDualStack, or it first), or, without a FamilyRemover, at
// all.
func (l *liveRanges) guardServiceCIDRDelete(ctx context.Context, obj *networkingv1.ServiceCIDR) error {
	forbid := func(format string, args ...any) error {
		return apierrors.NewForbidden(networkingv1.Resource("servicecidrs"), obj.Name, fmt.Errorf(format, args...))
	}
	snap := l.source.Load()
	if obj.Name == clusterranges.DefaultServiceCIDRName {
		return forbid("the default ServiceCIDR holds --service-cluster-ip-range, the cluster's primary (%s) service range and the kubernetes Service's address; it cannot be deleted", snap.Primary)
	}
	for _, c := range obj.Spec.CIDRs {
		p, err := netip.ParsePrefix(c)
		if err != nil {
			continue
		}
		f := netaddr.FamilyOf(p.Addr())
		if f == snap.Primary {
			continue
		}
		last := true
		for _, sc := range snap.Service {
			if sc.Name != obj.Name && sc.Ready && slices.ContainsFunc(sc.CIDRs, func(q netip.Prefix) bool { return netaddr.FamilyOf(q.Addr()) == f }) {
				last = false
			}
		}
		if !last {
			continue
		}
		if l.removeFamilies == nil {
			return forbid("it is the cluster's last %s service range (%s): deleting it would take the %s family from the running cluster, which is not supported yet (Services and kube-dns hold %s addresses); create another %s ServiceCIDR first to replace it", f, p, f, f, f)
		}
		list := l.services.Load()
		if list == nil {
			return forbid("it is the cluster's last %s service range (%s) and the server cannot tell yet which Services need the family; retry", f, p)
		}
		svcs, err := (*list)(ctx)
		if err != nil {
			return apierrors.NewInternalError(fmt.Errorf("listing the Services that may need the %s family: %w", f, err))
		}
		if blockers := familydrop.Blockers(svcs, []corev1.IPFamily{corev1.IPFamily(snap.Primary)}); len(blockers) > 0 {
			var names []string
			for _, b := range blockers[:min(len(blockers), 5)] {
				names = append(names, b.Namespace+"/"+b.Name+" ("+b.Reason+")")
			}
			more := ""
			if len(blockers) > 5 {
				more = fmt.Sprintf(" and %d more", len(blockers)-5)
			}
			return forbid("it is the cluster's last %s service range (%s), and %d Service(s) need the %s family: %s%s; set their spec.ipFamilyPolicy to PreferDualStack (they then become SingleStack %s) or delete them, then delete this ServiceCIDR",
				f, p, len(blockers), f, strings.Join(names, ", "), more, snap.Primary)
		}
	}
	return nil
}

// guardClusterCIDRDelete refuses to delete the ClusterCIDR of the
// cluster's primary family (every Node's first pod CIDR and every pod's
// primary address come from it) and, until the cluster can remove a
// family (FamilyRemover), the last ClusterCIDR of the other family.
func (l *liveRanges) guardClusterCIDRDelete(_ context.Context, obj *netv1alpha1.ClusterCIDR) error {
	p, err := netip.ParsePrefix(obj.Spec.CIDR)
	if err != nil {
		return nil
	}
	forbid := func(format string, args ...any) error {
		return apierrors.NewForbidden(netv1alpha1.Resource("clustercidrs"), obj.Name, fmt.Errorf(format, args...))
	}
	f, primary := netaddr.FamilyOf(p.Addr()), l.clusterPrimary()
	if f == primary {
		return forbid("%s is of the cluster's primary family %s: every Node's first pod CIDR and every pod's primary address come from it, so it cannot be deleted (the primary family never changes)", obj.Spec.CIDR, primary)
	}
	if l.removeFamilies != nil {
		return nil
	}
	for _, o := range l.clusterObjs() {
		q, err := netip.ParsePrefix(o.Spec.CIDR)
		if err == nil && o.Name != obj.Name && o.DeletionTimestamp == nil && netaddr.FamilyOf(q.Addr()) == f {
			return nil
		}
	}
	return forbid("it is the cluster's %s ClusterCIDR (%s): deleting it would take the %s family from the running cluster's Nodes and pods, which is not supported yet", f, obj.Spec.CIDR, f)
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
	listServices := func(ctx context.Context) ([]*corev1.Service, error) {
		list, err := client.CoreV1().Services(metav1.NamespaceAll).List(ctx, metav1.ListOptions{})
		if err != nil {
			return nil, err
		}
		out := make([]*corev1.Service, len(list.Items))
		for i := range list.Items {
			out[i] = &list.Items[i]
		}
		return out, nil
	}
	s.live.services.Store(&listServices)
	err = wait.PollUntilContextCancel(hookCtx, 200*time.Millisecond, true, func(ctx context.Context) (bool, error) {
		// The ClusterCIDRs first: the default ServiceCIDR records the
		// flags applied, last (see servicecidr.FromFlagAnnotation).
		applied, first, err := servicecidr.Applied(ctx, client)
		if err != nil {
			klog.ErrorS(err, "Reading the range flags last applied; retrying")
			return false, nil
		}
		if err := clustercidrctl.EnsureDefaults(ctx, clusterCIDRs, s.cfg.ClusterCIDRs, applied, first); err != nil {
			klog.ErrorS(err, "Keeping the default ClusterCIDRs; retrying")
			return false, nil
		}
		if err := servicecidr.EnsureDefault(ctx, client, s.cfg.ServiceRanges, s.cfg.ClusterCIDRs.CIDRs); err != nil {
			klog.ErrorS(err, "Keeping the default ServiceCIDR; retrying")
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
	s.live.clusterObjs = func() []*netv1alpha1.ClusterCIDR {
		var out []*netv1alpha1.ClusterCIDR
		for _, o := range clusterInformer.GetStore().List() {
			if cc, ok := o.(*netv1alpha1.ClusterCIDR); ok {
				out = append(out, cc)
			}
		}
		return out
	}
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
	s.live.syncedOnce.Do(func() { close(s.live.synced) })
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

// FamilyRemover takes from the running cluster every trace of the
// families not in keep (the cluster's families, primary first, after the
// ServiceCIDRs and ClusterCIDRs of a family were deleted): Services
// downgraded, Nodes' pod CIDRs trimmed, allocation records deleted. It is
// called by the leader until it succeeds, and must be idempotent. With
// one set, deleting the last ServiceCIDR or ClusterCIDR of the secondary
// family is allowed; without, it is refused.
type FamilyRemover func(ctx context.Context, keep []netaddr.Family) error

// SetFamilyRemover sets how the cluster removes a family; call it before
// Run.
func (s *Server) SetFamilyRemover(fn FamilyRemover) { s.live.removeFamilies = fn }

// waitSynced waits until the Source shows the objects, or ctx ends.
func (l *liveRanges) waitSynced(ctx context.Context) bool {
	select {
	case <-l.synced:
		return true
	case <-ctx.Done():
		return false
	}
}

// follow calls fn with the current Snapshot once the Source is synced and
// with every change after, until ctx ends. fn runs in the publisher's
// goroutine: it must be quick.
func (l *liveRanges) follow(ctx context.Context, wg *sync.WaitGroup, fn func(*clusterranges.Snapshot)) {
	wg.Go(func() {
		if !l.waitSynced(ctx) {
			return
		}
		cancel := l.source.Subscribe(fn)
		defer cancel()
		fn(l.source.Load())
		<-ctx.Done()
	})
}

// changes returns a channel told (without blocking, coalesced) of every
// change, and the function that ends it.
func (l *liveRanges) changes() (<-chan struct{}, func()) {
	ch := make(chan struct{}, 1)
	cancel := l.source.Subscribe(func(*clusterranges.Snapshot) {
		select {
		case ch <- struct{}{}:
		default:
		}
	})
	return ch, cancel
}

// serviceFamilies are the families Services may have now, primary first.
func (l *liveRanges) serviceFamilies() []corev1.IPFamily {
	var out []corev1.IPFamily
	for _, f := range l.allocs.Config().Families() {
		out = append(out, corev1.IPFamily(f))
	}
	return out
}

// runNodeIPAM runs node IPAM over the Snapshot's cluster CIDRs, and runs
// it anew, with allocators for the new ranges, whenever they change: a
// ClusterCIDR of a second family makes it append a pod CIDR of that family
// to every Node. A run starts from the Nodes and the allocation records,
// so nothing carries over but what is stored.
func (s *Server) runNodeIPAM(ctx context.Context, wg *sync.WaitGroup, client kubernetes.Interface, nodes coreinformers.NodeInformer, recorder record.EventRecorder, store alloc.Store) {
	wg.Go(func() {
		if !s.live.waitSynced(ctx) {
			return
		}
		changed, unsubscribe := s.live.changes()
		defer unsubscribe()
		var cur netaddr.ClusterCIDRs
		stop := func() {}
		defer func() { stop() }()
		for first := true; ; first = false {
			want := s.live.source.Load().ClusterCIDRs()
			if first || !slices.Equal(want.CIDRs, cur.CIDRs) || !slices.Equal(want.NodeMaskSizes, cur.NodeMaskSizes) {
				stop()
				stop = startNodeIPAM(ctx, client, nodes, recorder, store, want)
				cur = want
			}
			select {
			case <-ctx.Done():
				return
			case <-changed:
			}
		}
	})
}

// startNodeIPAM starts one run of node IPAM and returns what stops it.
func startNodeIPAM(ctx context.Context, client kubernetes.Interface, nodes coreinformers.NodeInformer, recorder record.EventRecorder, store alloc.Store, cidrs netaddr.ClusterCIDRs) (stop func()) {
	if len(cidrs.CIDRs) == 0 {
		return func() {}
	}
	var allocators []*alloc.NodeCIDRs
	for i, cidr := range cidrs.CIDRs {
		a, err := alloc.NewNodeCIDRs(cidr, cidrs.NodeMaskSizes[i], store)
		if err != nil {
			klog.ErrorS(err, "starting node IPAM", "clusterCIDRs", cidrs.CIDRs)
			return func() {}
		}
		allocators = append(allocators, a)
	}
	ipam, err := nodeipam.New(client, nodes, cidrs, allocators, store, recorder, nodeipam.Options{})
	if err != nil {
		klog.ErrorS(err, "starting node IPAM", "clusterCIDRs", cidrs.CIDRs)
		return func() {}
	}
	runCtx, cancel := context.WithCancel(ctx)
	var running sync.WaitGroup
	running.Go(func() { ipam.Run(runCtx, 2) })
	running.Go(func() {
		wait.UntilWithContext(runCtx, func(context.Context) {
			for _, a := range allocators {
				metrics.Observe("node-cidr", string(netaddr.FamilyOf(a.CIDR().Addr())), a.CIDR().String(), a)
			}
		}, 15*time.Second)
	})
	return func() {
		cancel()
		running.Wait()
		if err := ipam.Close(); err != nil {
			klog.ErrorS(err, "removing node IPAM's Node event handlers")
		}
	}
}

// keepRecord keeps the record at rangesKey in step with the Snapshot (the
// leader runs it), and is where a family leaves the cluster: when the
// recorded ranges have a family the Snapshot no longer has, the
// FamilyRemover is called, and the record changes only once it has
// succeeded, so that a removal interrupted by a crash or a change of
// leader is taken up again.
func (s *Server) keepRecord(ctx context.Context, wg *sync.WaitGroup) {
	wg.Go(func() {
		if !s.live.waitSynced(ctx) {
			return
		}
		changed, unsubscribe := s.live.changes()
		defer unsubscribe()
		for {
			if err := s.syncRecord(ctx, s.live.source.Load()); err != nil {
				if ctx.Err() != nil {
					return
				}
				klog.ErrorS(err, "Keeping the cluster's ranges recorded; retrying")
				select {
				case <-ctx.Done():
					return
				case <-time.After(2 * time.Second):
				}
				continue
			}
			select {
			case <-ctx.Done():
				return
			case <-changed:
			}
		}
	})
}

func (s *Server) syncRecord(ctx context.Context, snap *clusterranges.Snapshot) error {
	resp, err := s.etcdClient.Get(ctx, rangesKey)
	if err != nil {
		return fmt.Errorf("reading %s: %w", rangesKey, err)
	}
	var old rangesRecord
	var rev int64
	if len(resp.Kvs) > 0 {
		if err := json.Unmarshal(resp.Kvs[0].Value, &old); err != nil {
			return fmt.Errorf("reading %s: %w", rangesKey, err)
		}
		rev = resp.Kvs[0].ModRevision
	}
	next := liveRecord(snap, old)
	if removed := removedFamilies(old, snap); len(removed) > 0 && s.live.removeFamilies != nil {
		klog.InfoS("A family left the cluster's ranges; removing it", "families", removed, "keep", snap.Families())
		if err := s.live.removeFamilies(ctx, snap.Families()); err != nil {
			return fmt.Errorf("removing family %v: %w", removed, err)
		}
	}
	val, err := json.Marshal(next)
	if err != nil || string(val) == string(kvValue(resp)) {
		return err
	}
	txn, err := s.etcdClient.Txn(ctx).
		If(clientv3.Compare(clientv3.ModRevision(rangesKey), "=", rev)).
		Then(clientv3.OpPut(rangesKey, string(val))).
		Commit()
	if err != nil {
		return fmt.Errorf("writing %s: %w", rangesKey, err)
	}
	if !txn.Succeeded {
		return fmt.Errorf("writing %s: changed meanwhile", rangesKey)
	}
	klog.InfoS("Recorded the cluster's ranges", "serviceRanges", next.ServiceRanges, "clusterCIDRs", next.ClusterCIDRs)
	return nil
}

func kvValue(resp *clientv3.GetResponse) []byte {
	if len(resp.Kvs) == 0 {
		return nil
	}
	return resp.Kvs[0].Value
}

// liveRecord is the record of the Snapshot's ranges, keeping the flags of
// the last start when they differ.
func liveRecord(snap *clusterranges.Snapshot, old rangesRecord) rangesRecord {
	flags := old.lastFlags()
	next := rangesRecord{ServiceRanges: snap.ServiceRanges(), ClusterCIDRs: snap.ClusterCIDRs().CIDRs}
	if !sameRanges(next, flags) && (len(flags.ServiceRanges) > 0 || len(flags.ClusterCIDRs) > 0) {
		next.Flags = &flags
	}
	return next
}

// removedFamilies are the families of the recorded ranges that the
// Snapshot lacks.
func removedFamilies(old rangesRecord, snap *clusterranges.Snapshot) []netaddr.Family {
	have := snap.Families()
	var out []netaddr.Family
	for _, p := range append(slices.Clone(old.ServiceRanges), old.ClusterCIDRs...) {
		if f := netaddr.FamilyOf(p.Addr()); !slices.Contains(have, f) && !slices.Contains(out, f) {
			out = append(out, f)
		}
	}
	return out
}

// lastFlags are the range flags of the last start: Flags, or the record
// itself when it has none (the ranges were the flags').
func (r rangesRecord) lastFlags() rangesRecord {
	if r.Flags != nil {
		return rangesRecord{ServiceRanges: r.Flags.ServiceRanges, ClusterCIDRs: r.Flags.ClusterCIDRs}
	}
	return rangesRecord{ServiceRanges: r.ServiceRanges, ClusterCIDRs: r.ClusterCIDRs}
}

// restartedWith is the record a start with the flags now writes: the
// flags, unless the ranges had changed through objects since the last
// start; then the recorded ranges, which the leader brings in step with
// the objects, and the flags beside them.
func (r rangesRecord) restartedWith(now rangesRecord) rangesRecord {
	if r.Flags == nil {
		return now
	}
	next := rangesRecord{ServiceRanges: r.ServiceRanges, ClusterCIDRs: r.ClusterCIDRs}
	if !sameRanges(next, now) {
		next.Flags = &now
	}
	return next
}

func sameRanges(a, b rangesRecord) bool {
	return slices.Equal(a.ServiceRanges, b.ServiceRanges) && slices.Equal(a.ClusterCIDRs, b.ClusterCIDRs)
}

// runLiveRanges starts, with the other leader-elected controllers, what
// follows the ranges in the leader only: node IPAM, kube-dns's families
// and the record.
func (s *Server) runLiveRanges(ctx context.Context, wg *sync.WaitGroup, client kubernetes.Interface, nodes coreinformers.NodeInformer, recorder record.EventRecorder, dns *kubedns.Controller, store alloc.Store) {
	s.runNodeIPAM(ctx, wg, client, nodes, recorder, store)
	s.live.follow(ctx, wg, func(snap *clusterranges.Snapshot) { dns.SetRanges(snap.ServiceRanges()) })
	s.keepRecord(ctx, wg)
}
