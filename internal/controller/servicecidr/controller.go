// Package servicecidr keeps networking.k8s.io/v1 ServiceCIDRs as
// Kubernetes does since 1.33 (KEP-1880): the default one, named
// kubernetes, holds --service-cluster-ip-range; every ServiceCIDR carries
// the protection finalizer and a Ready condition; and a ServiceCIDR being
// deleted keeps its finalizer, Ready False with reason Terminating, while
// cluster IPs inside it are in use and no other ServiceCIDR covers them.
//
// The allocators (internal/registry/service, fed through
// internal/clusterranges) draw cluster IPs from every ready ServiceCIDR and
// stop drawing from one the moment it is being deleted; the finalizer is
// removed only a grace period after that, so that every server replica
// has seen the deletion before the range is let go.
package servicecidr

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	apimeta "k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	networkinginformers "k8s.io/client-go/informers/networking/v1"
	"k8s.io/client-go/kubernetes"
	networkinglisters "k8s.io/client-go/listers/networking/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/record"
	"k8s.io/client-go/util/workqueue"
	"k8s.io/klog/v2"

	"github.com/duet-net/duet/internal/controller/worker"
	"github.com/duet-net/duet/internal/netaddr"
)

const (
	// ControllerName names the controller in logs, events and as the
	// field manager of its writes.
	ControllerName = "service-cidr-controller"
	// Finalizer is Kubernetes' protection finalizer of ServiceCIDRs.
	Finalizer = "networking.k8s.io/service-cidr-finalizer"
	// ReasonTerminating is the Ready condition's reason while a deleted
	// ServiceCIDR waits for its cluster IPs to be released.
	ReasonTerminating = networkingv1.ServiceCIDRReasonTerminating
	// DefaultDeletionGrace is how long after its deletion a ServiceCIDR
	// keeps its finalizer at least.
	DefaultDeletionGrace = 5 * time.Second
	// blockedRecheck is how often a ServiceCIDR whose deletion is blocked
	// looks at the cluster IPs again: their Services' deletions do not
	// wake it (IPAddresses have no watch cache).
	blockedRecheck = 2 * time.Second
)

// Labels of the IPAddress objects the cluster IP allocator writes; only
// those hold a ServiceCIDR back, as in Kubernetes.
const (
	labelManagedBy = "ipaddress.kubernetes.io/managed-by"
	managedBy      = "ipallocator.k8s.io"
)

// Options tunes a Controller.
type Options struct {
	// DeletionGrace: 0 means DefaultDeletionGrace.
	DeletionGrace time.Duration
	Now           func() time.Time
}

// Controller keeps the finalizer and Ready condition of every ServiceCIDR.
type Controller struct {
	client   kubernetes.Interface
	lister   networkinglisters.ServiceCIDRLister
	synced   cache.InformerSynced
	records  func(ctx context.Context) ([]networkingv1.IPAddress, error)
	recorder record.EventRecorder
	opts     Options
	queue    worker.Slot[string]
	// later re-queues a key after a delay, in the current Run's queue.
	later func(key string, d time.Duration)
}

// New returns a controller for the ServiceCIDRs of informer. records
// lists the cluster IP records (IPAddress objects); call New before the
// informer's factory starts, then Run.
func New(client kubernetes.Interface, informer networkinginformers.ServiceCIDRInformer, records func(ctx context.Context) ([]networkingv1.IPAddress, error), recorder record.EventRecorder, opts Options) (*Controller, error) {
	if opts.DeletionGrace <= 0 {
		opts.DeletionGrace = DefaultDeletionGrace
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	c := &Controller{client: client, lister: informer.Lister(), records: records, recorder: recorder, opts: opts}
	// Every change may unblock another ServiceCIDR's deletion (a wider
	// one created, a covering one deleted): there are few, look at all.
	all := func(any) {
		list, _ := c.lister.List(labels.Everything())
		for _, o := range list {
			c.queue.Add(o.Name)
		}
	}
	one := func(obj any) {
		if key, err := cache.DeletionHandlingMetaNamespaceKeyFunc(obj); err == nil {
			c.queue.Add(key)
		}
		all(nil)
	}
	reg, err := informer.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: one, UpdateFunc: func(_, obj any) { one(obj) }, DeleteFunc: all,
	})
	if err != nil {
		return nil, fmt.Errorf("watching ServiceCIDRs: %w", err)
	}
	c.synced = reg.HasSynced
	return c, nil
}

// Run reconciles ServiceCIDRs until ctx ends.
func (c *Controller) Run(ctx context.Context, workers int) {
	defer utilruntime.HandleCrash()
	logger := klog.FromContext(ctx).WithName(ControllerName)
	ctx = klog.NewContext(ctx, logger)
	q := workqueue.NewTypedRateLimitingQueueWithConfig(
		workqueue.DefaultTypedControllerRateLimiter[string](),
		workqueue.TypedRateLimitingQueueConfig[string]{Name: "servicecidr"},
	)
	c.later = q.AddAfter
	defer c.queue.Fill(q)()
	logger.Info("Starting")
	defer logger.Info("Stopped")
	if !cache.WaitForNamedCacheSyncWithContext(ctx, c.synced) {
		return
	}
	list, _ := c.lister.List(labels.Everything())
	for _, o := range list {
		q.Add(o.Name)
	}
	worker.Run(ctx, q, workers, c.sync, worker.Options{
		KeyName: "serviceCIDR", Failed: "Syncing ServiceCIDR failed; will retry",
		Expected:  func(err error) bool { return apierrors.IsConflict(err) || apierrors.IsNotFound(err) },
		ExpectedV: 2, Waiting: "ServiceCIDR changed meanwhile; will retry",
	})
}

func (c *Controller) sync(ctx context.Context, name string) error {
	obj, err := c.lister.Get(name)
	if apierrors.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return err
	}
	if obj.DeletionTimestamp != nil {
		return c.syncDeleting(ctx, obj)
	}
	if !slices.Contains(obj.Finalizers, Finalizer) {
		obj = obj.DeepCopy()
		obj.Finalizers = append(obj.Finalizers, Finalizer)
		if obj, err = c.client.NetworkingV1().ServiceCIDRs().Update(ctx, obj, metav1.UpdateOptions{FieldManager: ControllerName}); err != nil {
			return fmt.Errorf("adding the finalizer to ServiceCIDR %s: %w", name, err)
		}
	}
	return c.setReady(ctx, obj, metav1.Condition{
		Type: networkingv1.ServiceCIDRConditionReady, Status: metav1.ConditionTrue,
		Reason: "Ready", Message: "Kubernetes Service CIDR is ready",
	})
}

// syncDeleting lets a deleted ServiceCIDR go once nothing holds it back
// and the grace period has passed.
func (c *Controller) syncDeleting(ctx context.Context, obj *networkingv1.ServiceCIDR) error {
	if !slices.Contains(obj.Finalizers, Finalizer) {
		return nil
	}
	all, err := c.lister.List(labels.Everything())
	if err != nil {
		return err
	}
	blocking, err := c.inUse(ctx, obj, all)
	if err != nil {
		return err
	}
	if len(blocking) > 0 {
		c.later(obj.Name, blockedRecheck)
		msg := fmt.Sprintf("There are still IPAddresses referencing the ServiceCIDR (%s), please remove them or create a new ServiceCIDR", describe(blocking))
		return c.setReady(ctx, obj, metav1.Condition{
			Type: networkingv1.ServiceCIDRConditionReady, Status: metav1.ConditionFalse, Reason: ReasonTerminating, Message: msg,
		})
	}
	if wait := obj.DeletionTimestamp.Add(c.opts.DeletionGrace).Sub(c.opts.Now()); wait > 0 {
		c.later(obj.Name, wait)
		return nil
	}
	obj = obj.DeepCopy()
	obj.Finalizers = slices.DeleteFunc(obj.Finalizers, func(f string) bool { return f == Finalizer })
	if _, err := c.client.NetworkingV1().ServiceCIDRs().Update(ctx, obj, metav1.UpdateOptions{FieldManager: ControllerName}); err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("removing the finalizer of ServiceCIDR %s: %w", obj.Name, err)
	}
	klog.FromContext(ctx).Info("ServiceCIDR released", "serviceCIDR", obj.Name, "cidrs", obj.Spec.CIDRs)
	return nil
}

// inUse returns the cluster IPs inside obj that no other ServiceCIDR (not
// being deleted) contains: those hold its deletion back. A CIDR that
// another ServiceCIDR contains whole holds nothing back.
func (c *Controller) inUse(ctx context.Context, obj *networkingv1.ServiceCIDR, all []*networkingv1.ServiceCIDR) ([]netip.Addr, error) {
	var others, mine []netip.Prefix
	for _, o := range all {
		if o.Name == obj.Name || o.DeletionTimestamp != nil {
			continue
		}
		others = append(others, parse(o.Spec.CIDRs)...)
	}
	for _, p := range parse(obj.Spec.CIDRs) {
		if !slices.ContainsFunc(others, func(q netip.Prefix) bool { return q.Bits() <= p.Bits() && q.Contains(p.Addr()) }) {
			mine = append(mine, p)
		}
	}
	if len(mine) == 0 {
		return nil, nil
	}
	records, err := c.records(ctx)
	if err != nil {
		return nil, fmt.Errorf("listing cluster IPs to release ServiceCIDR %s: %w", obj.Name, err)
	}
	var out []netip.Addr
	for _, r := range records {
		ip, err := netip.ParseAddr(r.Name)
		if err != nil || r.Labels[labelManagedBy] != managedBy {
			continue
		}
		inMine := slices.ContainsFunc(mine, func(p netip.Prefix) bool { return p.Contains(ip) })
		elsewhere := slices.ContainsFunc(others, func(p netip.Prefix) bool { return p.Contains(ip) })
		if inMine && !elsewhere {
			out = append(out, ip)
		}
	}
	slices.SortFunc(out, netip.Addr.Compare)
	return out, nil
}

func describe(ips []netip.Addr) string {
	const show = 3
	s := ""
	for i, ip := range ips {
		if i == show {
			return fmt.Sprintf("%s and %d more", s, len(ips)-show)
		}
		if i > 0 {
			s += ", "
		}
		s += ip.String()
	}
	return s
}

func parse(cidrs []string) []netip.Prefix {
	var out []netip.Prefix
	for _, s := range cidrs {
		if p, err := netaddr.ParseCIDR(s); err == nil {
			out = append(out, p)
		}
	}
	return out
}

// setReady writes the Ready condition unless it already says the same.
func (c *Controller) setReady(ctx context.Context, obj *networkingv1.ServiceCIDR, cond metav1.Condition) error {
	cur := apimeta.FindStatusCondition(obj.Status.Conditions, cond.Type)
	if cur != nil && cur.Status == cond.Status && cur.Reason == cond.Reason && cur.Message == cond.Message {
		return nil
	}
	obj = obj.DeepCopy()
	cond.ObservedGeneration = obj.Generation
	apimeta.SetStatusCondition(&obj.Status.Conditions, cond)
	if _, err := c.client.NetworkingV1().ServiceCIDRs().UpdateStatus(ctx, obj, metav1.UpdateOptions{FieldManager: ControllerName}); err != nil {
		return fmt.Errorf("setting the Ready condition of ServiceCIDR %s: %w", obj.Name, err)
	}
	if cond.Status == metav1.ConditionFalse {
		c.recorder.Event(obj, corev1.EventTypeWarning, cond.Reason, cond.Message)
	}
	return nil
}
