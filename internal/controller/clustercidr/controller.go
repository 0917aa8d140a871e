// Package clustercidr keeps networking.duet.dev/v1alpha1 ClusterCIDRs: the
// default ones (default-ipv4, default-ipv6) for the ranges of
// --cluster-cidr, and the Ready condition of each, which says whether node
// IPAM gives pod CIDRs from it: of several ClusterCIDRs of one family (two
// creates that raced past the registry's check) only the oldest, and none
// that is being deleted.
package clustercidr

import (
	"context"
	"fmt"
	"net/netip"
	"slices"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	apimeta "k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/record"
	"k8s.io/client-go/util/workqueue"
	"k8s.io/klog/v2"

	nclient "github.com/duet-net/duet/internal/apis/networking/client"
	"github.com/duet-net/duet/internal/apis/networking/v1alpha1"
	"github.com/duet-net/duet/internal/clusterranges"
	"github.com/duet-net/duet/internal/controller/worker"
	"github.com/duet-net/duet/internal/netaddr"
)

// ControllerName names the controller in logs, events and as the field
// manager of its writes.
const ControllerName = "cluster-cidr-controller"

// API is what the controller needs of the ClusterCIDR client.
type API interface {
	Get(ctx context.Context, name string, opts metav1.GetOptions) (*v1alpha1.ClusterCIDR, error)
	List(ctx context.Context, opts metav1.ListOptions) (*v1alpha1.ClusterCIDRList, error)
	Create(ctx context.Context, obj *v1alpha1.ClusterCIDR, opts metav1.CreateOptions) (*v1alpha1.ClusterCIDR, error)
	UpdateStatus(ctx context.Context, obj *v1alpha1.ClusterCIDR, opts metav1.UpdateOptions) (*v1alpha1.ClusterCIDR, error)
	Delete(ctx context.Context, name string, opts metav1.DeleteOptions) error
}

// FromFlagLabel marks the ClusterCIDRs the server made from --cluster-cidr.
// They follow the flag: a restart without a family's range deletes that
// family's one. A ClusterCIDR a user applied, whatever its name, is the
// user's to delete.
const FromFlagLabel = "networking.duet.dev/from-flag"

var _ API = &nclient.ClusterCIDRs{}

// EnsureDefaults brings the ClusterCIDRs in step with what --cluster-cidr
// (cidrs) changed since the last start, whose flag was applied
// (servicecidr.Applied; first on the cluster's first start with ranges as
// objects, when every family of the flag counts as new). For a family the
// flag gained it creates default-ipv4 or default-ipv6, unless a
// ClusterCIDR of the family exists (one applied with kubectl before the
// flag named the family: the cluster keeps that one); for a family the
// flag lost it deletes the one the server made (FromFlagLabel). A family
// the flag kept is left as it is, whatever happened to its objects since
// (deleted with kubectl: it stays deleted; a differing spec stays: Nodes'
// pod CIDRs were cut from it). It is idempotent; every server replica
// runs it at start.
func EnsureDefaults(ctx context.Context, api API, cidrs netaddr.ClusterCIDRs, applied []netip.Prefix, first bool) error {
	list, err := api.List(ctx, metav1.ListOptions{})
	if err != nil {
		return fmt.Errorf("listing ClusterCIDRs: %w", err)
	}
	hasFamily := func(ps []netip.Prefix, f netaddr.Family) bool {
		return slices.ContainsFunc(ps, func(p netip.Prefix) bool { return netaddr.FamilyOf(p.Addr()) == f })
	}
	log := klog.FromContext(ctx)
	for _, o := range list.Items {
		q, err := netip.ParsePrefix(o.Spec.CIDR)
		if err != nil || first || o.Labels[FromFlagLabel] != "true" || o.DeletionTimestamp != nil {
			continue
		}
		if f := netaddr.FamilyOf(q.Addr()); hasFamily(applied, f) && !hasFamily(cidrs.CIDRs, f) {
			if err := api.Delete(ctx, o.Name, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
				return fmt.Errorf("deleting ClusterCIDR %s, whose family --cluster-cidr dropped: %w", o.Name, err)
			}
			log.Info("Deleted the default ClusterCIDR of the family --cluster-cidr dropped", "name", o.Name, "cidr", o.Spec.CIDR)
		}
	}
	for i, p := range cidrs.CIDRs {
		f := netaddr.FamilyOf(p.Addr())
		if !first && hasFamily(applied, f) {
			continue
		}
		name := clusterranges.DefaultClusterCIDRName(f)
		want := v1alpha1.ClusterCIDRSpec{CIDR: p.String(), NodeMaskSize: int32(cidrs.NodeMaskSizes[i])}
		var other *v1alpha1.ClusterCIDR
		for j := range list.Items {
			o := &list.Items[j]
			if q, err := netip.ParsePrefix(o.Spec.CIDR); err == nil && netaddr.FamilyOf(q.Addr()) == f && o.DeletionTimestamp == nil {
				other = o
				break
			}
		}
		switch {
		case other != nil && other.Name == name && other.Spec != want:
			log.Info("The default ClusterCIDR differs from --cluster-cidr; the cluster keeps the ClusterCIDR's range",
				"clusterCIDR", name, "cidr", other.Spec.CIDR, "nodeMaskSize", other.Spec.NodeMaskSize, "flag", p, "flagNodeMaskSize", want.NodeMaskSize)
		case other != nil && other.Name != name:
			log.Info("A ClusterCIDR of the family exists; the cluster keeps it rather than --cluster-cidr's range",
				"family", f, "clusterCIDR", other.Name, "cidr", other.Spec.CIDR, "flag", p)
		case other == nil:
			obj := &v1alpha1.ClusterCIDR{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{FromFlagLabel: "true"}}, Spec: want}
			if _, err := api.Create(ctx, obj, metav1.CreateOptions{FieldManager: ControllerName}); err != nil && !apierrors.IsAlreadyExists(err) {
				return fmt.Errorf("creating ClusterCIDR %s for --cluster-cidr %s: %w", name, p, err)
			}
			log.Info("Created the default ClusterCIDR", "name", name, "cidr", p, "nodeMaskSize", want.NodeMaskSize)
		}
	}
	return nil
}

// Controller keeps the Ready condition of every ClusterCIDR.
type Controller struct {
	api      API
	informer cache.SharedIndexInformer
	recorder record.EventRecorder
	queue    worker.Slot[string]
}

// New returns a controller over informer (nclient's NewInformer), which
// the caller runs; then call Run.
func New(api API, informer cache.SharedIndexInformer, recorder record.EventRecorder) (*Controller, error) {
	c := &Controller{api: api, informer: informer, recorder: recorder}
	// Any change may change which ClusterCIDR of a family counts.
	all := func(any) {
		for _, k := range informer.GetStore().ListKeys() {
			c.queue.Add(k)
		}
	}
	if _, err := informer.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: all, UpdateFunc: func(_, o any) { all(o) }, DeleteFunc: all,
	}); err != nil {
		return nil, fmt.Errorf("watching ClusterCIDRs: %w", err)
	}
	return c, nil
}

// Run reconciles until ctx ends.
func (c *Controller) Run(ctx context.Context) {
	defer utilruntime.HandleCrash()
	logger := klog.FromContext(ctx).WithName(ControllerName)
	ctx = klog.NewContext(ctx, logger)
	q := workqueue.NewTypedRateLimitingQueueWithConfig(
		workqueue.DefaultTypedControllerRateLimiter[string](),
		workqueue.TypedRateLimitingQueueConfig[string]{Name: "clustercidr"},
	)
	defer c.queue.Fill(q)()
	if !cache.WaitForNamedCacheSyncWithContext(ctx, c.informer.HasSynced) {
		return
	}
	for _, k := range c.informer.GetStore().ListKeys() {
		q.Add(k)
	}
	worker.Run(ctx, q, 1, c.sync, worker.Options{
		KeyName: "clusterCIDR", Failed: "Syncing ClusterCIDR failed; will retry",
		Expected:  func(err error) bool { return apierrors.IsConflict(err) || apierrors.IsNotFound(err) },
		ExpectedV: 2, Waiting: "ClusterCIDR changed meanwhile; will retry",
	})
}

func (c *Controller) list() []*v1alpha1.ClusterCIDR {
	var out []*v1alpha1.ClusterCIDR
	for _, o := range c.informer.GetStore().List() {
		if cc, ok := o.(*v1alpha1.ClusterCIDR); ok {
			out = append(out, cc)
		}
	}
	return out
}

func (c *Controller) sync(ctx context.Context, name string) error {
	obj, ok, err := c.informer.GetStore().GetByKey(name)
	if err != nil || !ok {
		return err
	}
	cc := obj.(*v1alpha1.ClusterCIDR)
	return c.setReady(ctx, cc, Condition(cc, c.list()))
}

// Condition is the Ready condition a ClusterCIDR must have among all.
func Condition(cc *v1alpha1.ClusterCIDR, all []*v1alpha1.ClusterCIDR) metav1.Condition {
	cond := metav1.Condition{Type: v1alpha1.ClusterCIDRConditionReady, Status: metav1.ConditionTrue, Reason: "Ready",
		Message: "Node IPAM gives Nodes pod CIDRs from this range"}
	if cc.DeletionTimestamp != nil {
		cond.Status, cond.Reason, cond.Message = metav1.ConditionFalse, v1alpha1.ReasonTerminating, "The ClusterCIDR is being deleted: Nodes get no new pod CIDRs from it"
		return cond
	}
	p, err := netip.ParsePrefix(cc.Spec.CIDR)
	if err != nil {
		return cond
	}
	var counted []clusterranges.ClusterCIDR
	for _, o := range all {
		if q, err := netip.ParsePrefix(o.Spec.CIDR); err == nil {
			counted = append(counted, clusterranges.ClusterCIDR{Name: o.Name, CIDR: q, Created: o.CreationTimestamp, Deleting: o.DeletionTimestamp != nil})
		}
	}
	snap := clusterranges.Build(clusterranges.Defaults{}, nil, counted)
	for _, w := range snap.Cluster {
		if netaddr.FamilyOf(w.CIDR.Addr()) == netaddr.FamilyOf(p.Addr()) && w.Name != cc.Name {
			cond.Status, cond.Reason = metav1.ConditionFalse, v1alpha1.ReasonDuplicate
			cond.Message = fmt.Sprintf("The cluster has an older ClusterCIDR of family %s, %s (%s): a cluster has at most one per family; delete this one",
				netaddr.FamilyOf(p.Addr()), w.Name, w.CIDR)
		}
	}
	return cond
}

func (c *Controller) setReady(ctx context.Context, cc *v1alpha1.ClusterCIDR, cond metav1.Condition) error {
	cur := apimeta.FindStatusCondition(cc.Status.Conditions, cond.Type)
	if cur != nil && cur.Status == cond.Status && cur.Reason == cond.Reason && cur.Message == cond.Message {
		return nil
	}
	cc = cc.DeepCopy()
	cond.ObservedGeneration = cc.Generation
	apimeta.SetStatusCondition(&cc.Status.Conditions, cond)
	if _, err := c.api.UpdateStatus(ctx, cc, metav1.UpdateOptions{FieldManager: ControllerName}); err != nil {
		return fmt.Errorf("setting the Ready condition of ClusterCIDR %s: %w", cc.Name, err)
	}
	if cond.Reason == v1alpha1.ReasonDuplicate {
		// The event's reference is built from the kind the object says
		// it is: client-go's scheme does not know Duet's types.
		cc.APIVersion, cc.Kind = v1alpha1.SchemeGroupVersion.String(), "ClusterCIDR"
		c.recorder.Event(cc, corev1.EventTypeWarning, cond.Reason, cond.Message)
	}
	return nil
}
