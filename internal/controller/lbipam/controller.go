// Package lbipam is the LoadBalancer IPAM controller: it gives every
// Service of type LoadBalancer one ingress IP per entry of its ipFamilies,
// from pools of that family (--load-balancer-ip-pool), and takes them back
// when the Service goes away or changes type.
//
// Every assignment is an etcd record (create-if-absent, naming the Service)
// written before the Service's status shows it, so an address is never
// handed to two Services, whatever replica leads and however often the
// controller restarts: on start it rebuilds who holds what from the records
// alone, and finishes or undoes what a crashed predecessor left half done.
package lbipam

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	"k8s.io/apimachinery/pkg/util/wait"
	coreinformers "k8s.io/client-go/informers/core/v1"
	"k8s.io/client-go/kubernetes"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/record"
	"k8s.io/client-go/util/workqueue"
	"k8s.io/klog/v2"

	"github.com/duet-net/duet/internal/alloc"
	"github.com/duet-net/duet/internal/controller/worker"
	"github.com/duet-net/duet/internal/etcdstore"
)

// ControllerName names the controller in events and logs.
const ControllerName = "load-balancer-ipam-controller"

// IPsAnnotation requests specific ingress IPs, one per family,
// comma-separated, like MetalLB's annotation; spec.loadBalancerIP (one
// address) is honoured too.
const IPsAnnotation = "duet.dev/load-balancer-ips"

// Event reasons on Services.
const (
	ReasonAllocated      = "IPAllocated"
	ReasonPending        = "LoadBalancerPending"
	ReasonPartial        = "LoadBalancerSingleFamily"
	ReasonRequestInvalid = "LoadBalancerIPInvalid"
	ReasonReleased       = "IPReleased"
)

// Store keeps the records: create-if-absent keys, listed with their owner.
type Store interface {
	alloc.Store
	ListRecords(ctx context.Context, within netip.Prefix, fn func(etcdstore.Record) error) error
}

// Controller assigns LoadBalancer ingress IPs.
type Controller struct {
	client   kubernetes.Interface
	services corelisters.ServiceLister
	synced   cache.InformerSynced
	pools    map[corev1.IPFamily][]*alloc.LBPool
	store    Store
	recorder record.EventRecorder
	queue    workqueue.TypedRateLimitingInterface[string]

	mu sync.Mutex
	// held is what each Service (namespace/name) holds per the records.
	held map[string][]netip.Addr
}

// New returns a controller handing out addresses of pools, whose records
// live in store.
func New(client kubernetes.Interface, services coreinformers.ServiceInformer, pools []netip.Prefix, store Store, recorder record.EventRecorder) (*Controller, error) {
	c := &Controller{
		client: client, services: services.Lister(), synced: services.Informer().HasSynced,
		pools: map[corev1.IPFamily][]*alloc.LBPool{}, store: store, recorder: recorder,
		queue: workqueue.NewTypedRateLimitingQueueWithConfig(
			workqueue.NewTypedItemExponentialFailureRateLimiter[string](100*time.Millisecond, time.Minute),
			workqueue.TypedRateLimitingQueueConfig[string]{Name: ControllerName}),
		held: map[string][]netip.Addr{},
	}
	for _, p := range pools {
		pool, err := alloc.NewLBPool(p, store)
		if err != nil {
			return nil, err
		}
		fam := familyOf(p.Addr())
		c.pools[fam] = append(c.pools[fam], pool)
	}
	enqueue := func(obj any) {
		if key, err := cache.DeletionHandlingMetaNamespaceKeyFunc(obj); err == nil {
			c.queue.Add(key)
		}
	}
	if _, err := services.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: enqueue, UpdateFunc: func(_, o any) { enqueue(o) }, DeleteFunc: enqueue,
	}); err != nil {
		return nil, err
	}
	return c, nil
}

// Run works until ctx is done.
func (c *Controller) Run(ctx context.Context, workers int) {
	defer utilruntime.HandleCrash()
	defer c.queue.ShutDown()
	if !cache.WaitForCacheSync(ctx.Done(), c.synced) {
		return
	}
	// Learn what is held from the records, retrying while etcd is away:
	// handing out anything before that could hand out a held address.
	if err := wait.PollUntilContextCancel(ctx, time.Second, true, func(ctx context.Context) (bool, error) {
		err := c.load(ctx)
		if err != nil {
			klog.ErrorS(err, "Loading load balancer IP records, will retry")
		}
		return err == nil, nil
	}); err != nil {
		return
	}
	svcs, _ := c.services.List(labels.Everything())
	for _, s := range svcs {
		c.queue.Add(s.Namespace + "/" + s.Name)
	}
	c.mu.Lock()
	for key := range c.held { // Services deleted while no one led
		c.queue.Add(key)
	}
	c.mu.Unlock()
	worker.Run(ctx, c.queue, workers, c.sync, worker.Options{KeyName: "service", Failed: "Syncing load balancer IPs failed; will retry"})
}

func (c *Controller) load(ctx context.Context) error {
	held := map[string][]netip.Addr{}
	for _, pools := range c.pools {
		for _, p := range pools {
			if err := p.Sync(ctx); err != nil {
				return err
			}
			err := c.store.ListRecords(ctx, p.CIDR(), func(r etcdstore.Record) error {
				if r.Owner != nil && r.Prefix.IsSingleIP() {
					key := r.Owner.Namespace + "/" + r.Owner.Name
					held[key] = append(held[key], r.Prefix.Addr())
				}
				return nil
			})
			if err != nil {
				return err
			}
		}
	}
	c.mu.Lock()
	c.held = held
	c.mu.Unlock()
	return nil
}

func (c *Controller) heldBy(key string) []netip.Addr {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.held[key])
}

func (c *Controller) setHeld(key string, ips []netip.Addr) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(ips) == 0 {
		delete(c.held, key)
	} else {
		c.held[key] = ips
	}
}

// sync makes the records and the status of one Service agree with its spec.
func (c *Controller) sync(ctx context.Context, key string) error {
	ns, name, err := cache.SplitMetaNamespaceKey(key)
	if err != nil {
		return nil
	}
	svc, err := c.services.Services(ns).Get(name)
	switch {
	case apierrors.IsNotFound(err):
		return c.releaseAll(ctx, key, nil)
	case err != nil:
		return err
	}
	if !wantsIPs(svc) {
		return c.releaseAll(ctx, key, svc)
	}
	ctx = alloc.WithOwner(ctx, alloc.Owner{Resource: "services", Namespace: ns, Name: name})

	requested, reqErr := requestedIPs(svc)
	if reqErr != nil {
		c.recorder.Event(svc, corev1.EventTypeWarning, ReasonRequestInvalid, reqErr.Error())
		return nil
	}
	var missing []corev1.IPFamily
	for _, fam := range svc.Spec.IPFamilies {
		if len(c.pools[fam]) == 0 {
			missing = append(missing, fam)
		}
	}
	fams := svc.Spec.IPFamilies
	if len(missing) > 0 {
		policy := corev1.IPFamilyPolicySingleStack
		if svc.Spec.IPFamilyPolicy != nil {
			policy = *svc.Spec.IPFamilyPolicy
		}
		if policy != corev1.IPFamilyPolicyPreferDualStack || len(missing) == len(fams) {
			c.recorder.Eventf(svc, corev1.EventTypeWarning, ReasonPending,
				"no load balancer IP pool of family %s (--load-balancer-ip-pool); %s Services need one for each of ipFamilies %v",
				joinFamilies(missing), policy, fams)
			return c.releaseAll(ctx, key, svc)
		}
		fams = slices.DeleteFunc(slices.Clone(fams), func(f corev1.IPFamily) bool { return slices.Contains(missing, f) })
		if !hasEvent(svc, fams) {
			c.recorder.Eventf(svc, corev1.EventTypeNormal, ReasonPartial,
				"PreferDualStack: no load balancer IP pool of family %s, assigning %s only", joinFamilies(missing), joinFamilies(fams))
		}
	}

	held := c.heldBy(key)
	var want, took []netip.Addr
	for _, fam := range fams {
		ip, newlyTaken, err := c.pick(ctx, svc, fam, held, requested[fam])
		if err != nil {
			c.releaseIPs(ctx, took)
			var invalid *requestError
			if errors.As(err, &invalid) {
				c.recorder.Event(svc, corev1.EventTypeWarning, ReasonRequestInvalid, err.Error())
				return nil
			}
			if errors.Is(err, alloc.ErrFull) {
				c.recorder.Event(svc, corev1.EventTypeWarning, ReasonPending, err.Error())
			}
			return err
		}
		want = append(want, ip)
		if newlyTaken {
			took = append(took, ip)
		}
	}
	all := append(slices.Clone(held), took...)
	c.setHeld(key, all)

	if err := c.writeStatus(ctx, svc, want); err != nil {
		// The records stay with the Service: the retry finds them held.
		return err
	}
	for _, ip := range took {
		c.recorder.Eventf(svc, corev1.EventTypeNormal, ReasonAllocated, "Assigned load balancer IP %s", ip)
	}
	// Only once the status no longer shows them are the others given up.
	var stale []netip.Addr
	for _, ip := range all {
		if !slices.Contains(want, ip) {
			stale = append(stale, ip)
		}
	}
	if len(stale) > 0 {
		if err := c.releaseIPs(ctx, stale); err != nil {
			return err
		}
		c.setHeld(key, want)
	}
	return nil
}

// pick returns the address of family fam the Service is to have: the one
// it holds if that still answers its request, else the requested one, else
// the lowest free one of the family's pools.
func (c *Controller) pick(ctx context.Context, svc *corev1.Service, fam corev1.IPFamily, held []netip.Addr, requested netip.Addr) (netip.Addr, bool, error) {
	for _, ip := range held {
		if familyOf(ip) == fam && (!requested.IsValid() || requested == ip) {
			return ip, false, nil
		}
	}
	if requested.IsValid() {
		for _, p := range c.pools[fam] {
			if !p.Contains(requested) {
				continue
			}
			err := p.Allocate(ctx, requested)
			if errors.Is(err, alloc.ErrAllocated) {
				return netip.Addr{}, false, &requestError{fmt.Sprintf("requested load balancer IP %s is already allocated to another Service", requested)}
			}
			return requested, err == nil, err
		}
		return netip.Addr{}, false, &requestError{fmt.Sprintf("requested load balancer IP %s is not in any %s pool (%s)", requested, fam, c.poolList(fam))}
	}
	var errs []error
	for _, p := range c.pools[fam] {
		ip, err := p.AllocateNext(ctx)
		if err == nil {
			return ip, true, nil
		}
		errs = append(errs, err)
	}
	return netip.Addr{}, false, fmt.Errorf("no free %s load balancer IP for %s/%s: %w", fam, svc.Namespace, svc.Name, errors.Join(errs...))
}

type requestError struct{ msg string }

func (e *requestError) Error() string { return e.msg }

func (c *Controller) poolList(fam corev1.IPFamily) string {
	var s []string
	for _, p := range c.pools[fam] {
		s = append(s, p.CIDR().String())
	}
	if len(s) == 0 {
		return "none"
	}
	return strings.Join(s, ", ")
}

// writeStatus sets status.loadBalancer.ingress to ips, in ipFamilies order.
func (c *Controller) writeStatus(ctx context.Context, svc *corev1.Service, ips []netip.Addr) error {
	var ingress []corev1.LoadBalancerIngress
	vip := corev1.LoadBalancerIPModeVIP
	for _, ip := range ips {
		ingress = append(ingress, corev1.LoadBalancerIngress{IP: ip.String(), IPMode: &vip})
	}
	if ingressEqual(svc.Status.LoadBalancer.Ingress, ingress) {
		return nil
	}
	upd := svc.DeepCopy()
	upd.Status.LoadBalancer.Ingress = ingress
	_, err := c.client.CoreV1().Services(svc.Namespace).UpdateStatus(ctx, upd, metav1.UpdateOptions{})
	if err != nil {
		return fmt.Errorf("writing load balancer status of %s/%s: %w", svc.Namespace, svc.Name, err)
	}
	return nil
}

// releaseAll gives back everything key holds; svc, when it still exists,
// first loses the addresses from its status.
func (c *Controller) releaseAll(ctx context.Context, key string, svc *corev1.Service) error {
	held := c.heldBy(key)
	if svc != nil && len(svc.Status.LoadBalancer.Ingress) > 0 && ownsStatus(svc, held) {
		if err := c.writeStatus(ctx, svc, nil); err != nil {
			return err
		}
	}
	if len(held) == 0 {
		return nil
	}
	if err := c.releaseIPs(ctx, held); err != nil {
		return err
	}
	c.setHeld(key, nil)
	if svc != nil {
		c.recorder.Eventf(svc, corev1.EventTypeNormal, ReasonReleased, "Released load balancer IPs %v", held)
	}
	klog.InfoS("Released load balancer IPs", "service", key, "ips", held)
	return nil
}

func (c *Controller) releaseIPs(ctx context.Context, ips []netip.Addr) error {
	var errs []error
	for _, ip := range ips {
		for _, p := range c.pools[familyOf(ip)] {
			if p.Contains(ip) {
				if err := p.Release(ctx, ip); err != nil {
					errs = append(errs, err)
				}
			}
		}
	}
	return errors.Join(errs...)
}

// ownsStatus reports whether the status shows addresses this controller
// handed out (it leaves alone a status some other load balancer wrote).
func ownsStatus(svc *corev1.Service, held []netip.Addr) bool {
	for _, in := range svc.Status.LoadBalancer.Ingress {
		if ip, err := netip.ParseAddr(in.IP); err == nil && slices.Contains(held, ip) {
			return true
		}
	}
	return false
}

// wantsIPs: LoadBalancer Services that no other implementation claims
// through spec.loadBalancerClass.
func wantsIPs(svc *corev1.Service) bool {
	return svc.Spec.Type == corev1.ServiceTypeLoadBalancer && svc.Spec.LoadBalancerClass == nil && len(svc.Spec.IPFamilies) > 0
}

// requestedIPs reads spec.loadBalancerIP and the annotation: at most one
// address per family.
func requestedIPs(svc *corev1.Service) (map[corev1.IPFamily]netip.Addr, error) {
	out := map[corev1.IPFamily]netip.Addr{}
	var raw []string
	if v := strings.TrimSpace(svc.Spec.LoadBalancerIP); v != "" {
		raw = append(raw, v)
	}
	if v, ok := svc.Annotations[IPsAnnotation]; ok {
		for _, s := range strings.Split(v, ",") {
			if s = strings.TrimSpace(s); s != "" {
				raw = append(raw, s)
			}
		}
	}
	for _, s := range raw {
		ip, err := netip.ParseAddr(s)
		if err != nil || ip.Zone() != "" {
			return nil, fmt.Errorf("requested load balancer IP %q is not an IP address", s)
		}
		ip = ip.Unmap()
		fam := familyOf(ip)
		if prev, ok := out[fam]; ok && prev != ip {
			return nil, fmt.Errorf("requested load balancer IPs %s and %s are both %s; request at most one per family", prev, ip, fam)
		}
		if !slices.Contains(svc.Spec.IPFamilies, fam) {
			return nil, fmt.Errorf("requested load balancer IP %s is %s, which is not among the Service's ipFamilies %v", ip, fam, svc.Spec.IPFamilies)
		}
		out[fam] = ip
	}
	return out, nil
}

func ingressEqual(a, b []corev1.LoadBalancerIngress) bool {
	return slices.EqualFunc(a, b, func(x, y corev1.LoadBalancerIngress) bool {
		return x.IP == y.IP && x.Hostname == y.Hostname && (x.IPMode == nil) == (y.IPMode == nil) && (x.IPMode == nil || *x.IPMode == *y.IPMode)
	})
}

// hasEvent reports whether the status already shows exactly fams, so the
// single-family event is not repeated on every resync.
func hasEvent(svc *corev1.Service, fams []corev1.IPFamily) bool {
	if len(svc.Status.LoadBalancer.Ingress) != len(fams) {
		return false
	}
	for i, in := range svc.Status.LoadBalancer.Ingress {
		ip, err := netip.ParseAddr(in.IP)
		if err != nil || familyOf(ip) != fams[i] {
			return false
		}
	}
	return true
}

func familyOf(ip netip.Addr) corev1.IPFamily {
	if ip.Is4() || ip.Is4In6() {
		return corev1.IPv4Protocol
	}
	return corev1.IPv6Protocol
}

func joinFamilies(f []corev1.IPFamily) string {
	s := make([]string, len(f))
	for i, x := range f {
		s[i] = string(x)
	}
	return strings.Join(s, " and ")
}
