package familydrop

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/record"
	"k8s.io/client-go/util/retry"
	"k8s.io/klog/v2"
)

// ControllerName names the reconciler in logs, events and as the field
// manager of its writes.
const ControllerName = "family-drop-controller"

// Event reasons.
const (
	// ReasonServiceDowngraded: a Service lost the dropped family.
	ReasonServiceDowngraded = "IPFamilyDropped"
	// ReasonPodCIDRDropped: a Node lost its pod CIDR of the dropped family.
	ReasonPodCIDRDropped = "PodCIDRFamilyDropped"
)

// Records are allocation records of one kind (an alloc.Store such as
// etcdstore.Store): the reconciler lists those of a dropped family and
// deletes the ones nothing holds.
type Records interface {
	List(ctx context.Context, within netip.Prefix, fn func(key netip.Prefix) error) error
	Delete(ctx context.Context, key netip.Prefix) error
}

// Reconciler brings the cluster's objects and records to the families
// Keep names. Only Sync and Run are its interface; it holds no state
// between passes.
type Reconciler struct {
	Client kubernetes.Interface
	Keep   Families
	// NodeCIDRs holds the node CIDR records (node IPAM's store) and LBIPs
	// the load balancer IP records; nil when the cluster keeps none.
	NodeCIDRs, LBIPs Records
	// Recorder, if set, gets an event for every Service and Node changed.
	Recorder record.EventRecorder
	// RetryBase and RetryMax pace Run after a pass that left work
	// (defaults 1s and 2m).
	RetryBase, RetryMax time.Duration
}

// Result is what a pass did and what it left.
type Result struct {
	ServicesDowngraded, IngressesTrimmed, NodesTrimmed           int
	IPAddressesDeleted, LBRecordsDeleted, NodeCIDRRecordsDeleted int
	// Left are what the pass could not finish and why; a pass with
	// nothing left and no error converged.
	Left []string
}

// Changed reports whether the pass wrote anything.
func (r Result) Changed() bool {
	return r.ServicesDowngraded+r.IngressesTrimmed+r.NodesTrimmed+r.IPAddressesDeleted+r.LBRecordsDeleted+r.NodeCIDRRecordsDeleted > 0
}

// Run repeats Sync until a pass converges or ctx ends, backing off in
// between. It is meant to run while the server leads the controllers; a
// pass cut short is taken up by the next Run.
func (r *Reconciler) Run(ctx context.Context) {
	if len(r.Keep.DroppedServiceFamilies())+len(r.Keep.DroppedPodFamilies()) == 0 {
		return
	}
	logger := klog.FromContext(ctx).WithName(ControllerName)
	ctx = klog.NewContext(ctx, logger)
	base, limit := r.RetryBase, r.RetryMax
	if base <= 0 {
		base = time.Second
	}
	if limit <= 0 {
		limit = 2 * time.Minute
	}
	backoff := wait.Backoff{Duration: base, Factor: 2, Jitter: 0.1, Cap: limit, Steps: 1 << 30}
	_ = wait.ExponentialBackoffWithContext(ctx, backoff, func(ctx context.Context) (bool, error) {
		start := time.Now()
		res, err := r.Sync(ctx)
		if ctx.Err() != nil {
			return false, ctx.Err()
		}
		if res.Changed() || err != nil || len(res.Left) > 0 {
			logger.Info("Dropping IP families", "keepServiceFamilies", r.Keep.Services, "keepPodFamilies", r.Keep.Pods,
				"servicesDowngraded", res.ServicesDowngraded, "ingressesTrimmed", res.IngressesTrimmed, "nodesTrimmed", res.NodesTrimmed,
				"ipAddressesDeleted", res.IPAddressesDeleted, "lbRecordsDeleted", res.LBRecordsDeleted, "nodeCIDRRecordsDeleted", res.NodeCIDRRecordsDeleted,
				"took", time.Since(start).Round(time.Millisecond))
		}
		if err != nil {
			logger.Error(err, "Dropping IP families failed; will retry")
			return false, nil
		}
		if len(res.Left) > 0 {
			logger.Info("Dropping IP families: waiting", "left", res.Left)
			return false, nil
		}
		return true, nil
	})
}

// Sync makes one pass: Services, then the records they gave up; Nodes,
// then the node CIDR records they gave up. Records are deleted only when a
// read made after the objects were changed shows nothing holding them.
func (r *Reconciler) Sync(ctx context.Context) (Result, error) {
	var res Result
	var errs []error
	if drop := r.Keep.DroppedServiceFamilies(); len(drop) > 0 {
		errs = append(errs, r.syncServices(ctx, drop, &res))
		errs = append(errs, r.deleteIPAddresses(ctx, drop, &res))
		if r.LBIPs != nil {
			errs = append(errs, r.deleteLBRecords(ctx, drop, &res))
		}
	}
	if drop := r.Keep.DroppedPodFamilies(); len(drop) > 0 {
		errs = append(errs, r.syncNodes(ctx, drop, &res))
		if r.NodeCIDRs != nil {
			errs = append(errs, r.deleteNodeCIDRRecords(ctx, drop, &res))
		}
	}
	return res, errors.Join(errs...)
}

// Downgraded returns svc as it is to be when Services may have only the
// families keep: SingleStack of its first family with its first cluster
// IP, as a user downgrades a Service. It returns nil when nothing is to
// change, or nothing can: a Service of any family (ExternalName, headless
// without selector) or whose first family is dropped (a Blocker).
func Downgraded(svc *corev1.Service, keep []corev1.IPFamily) *corev1.Service {
	fams := svc.Spec.IPFamilies
	if anyFamily(svc) || len(fams) < 2 || !slices.Contains(keep, fams[0]) {
		return nil
	}
	if !slices.ContainsFunc(fams[1:], func(f corev1.IPFamily) bool { return !slices.Contains(keep, f) }) {
		return nil
	}
	out := svc.DeepCopy()
	single := corev1.IPFamilyPolicySingleStack
	out.Spec.IPFamilyPolicy = &single
	out.Spec.IPFamilies = fams[:1:1]
	if len(out.Spec.ClusterIPs) > 1 {
		out.Spec.ClusterIPs = out.Spec.ClusterIPs[:1:1]
	}
	return out
}

// TrimmedIngress returns the ingress entries whose IP is of no dropped
// family (hostnames kept), and whether any entry went.
func TrimmedIngress(in []corev1.LoadBalancerIngress, drop []corev1.IPFamily) ([]corev1.LoadBalancerIngress, bool) {
	out := slices.DeleteFunc(slices.Clone(in), func(e corev1.LoadBalancerIngress) bool {
		ip, err := netip.ParseAddr(e.IP)
		return err == nil && slices.Contains(drop, familyOf(ip))
	})
	if len(out) == 0 {
		out = nil
	}
	return out, len(out) != len(in)
}

// TrimmedPodCIDRs returns cidrs without those of a dropped family, in
// order, and whether any went. What does not parse is kept: node IPAM
// reports it.
func TrimmedPodCIDRs(cidrs []string, drop []corev1.IPFamily) ([]string, bool) {
	out := slices.DeleteFunc(slices.Clone(cidrs), func(s string) bool {
		p, err := netip.ParsePrefix(s)
		return err == nil && slices.Contains(drop, familyOf(p.Addr()))
	})
	return out, len(out) != len(cidrs)
}

func familyOf(a netip.Addr) corev1.IPFamily {
	if a.Unmap().Is4() {
		return corev1.IPv4Protocol
	}
	return corev1.IPv6Protocol
}

// familyPrefix is every address of f: 0.0.0.0/0 or ::/0.
func familyPrefix(f corev1.IPFamily) netip.Prefix {
	if f == corev1.IPv4Protocol {
		return netip.PrefixFrom(netip.IPv4Unspecified(), 0)
	}
	return netip.PrefixFrom(netip.IPv6Unspecified(), 0)
}

func (r *Reconciler) event(obj *corev1.ObjectReference, reason, format string, args ...any) {
	if r.Recorder != nil {
		r.Recorder.Eventf(obj, corev1.EventTypeNormal, reason, format, args...)
	}
}

func joinFamilies(fams []corev1.IPFamily) string {
	s := make([]string, len(fams))
	for i, f := range fams {
		s[i] = string(f)
	}
	return strings.Join(s, " and ")
}

// syncServices downgrades every Service of two families to its first, and
// takes the dropped family's ingress IPs out of the statuses Duet's load
// balancer IPAM writes (those of Services without a loadBalancerClass).
func (r *Reconciler) syncServices(ctx context.Context, drop []corev1.IPFamily, res *Result) error {
	list, err := r.Client.CoreV1().Services(metav1.NamespaceAll).List(ctx, metav1.ListOptions{})
	if err != nil {
		return fmt.Errorf("listing Services: %w", err)
	}
	var errs []error
	for i := range list.Items {
		svc := &list.Items[i]
		if anyFamily(svc) {
			continue
		}
		if Blocking(svc, r.Keep.Services) == ReasonPrimaryDropped {
			res.Left = append(res.Left, fmt.Sprintf("Service %s/%s: %s (%s); delete it, or recreate it with spec.ipFamilies [%s]",
				svc.Namespace, svc.Name, ReasonPrimaryDropped, svc.Spec.IPFamilies[0], r.Keep.Services[0]))
			continue
		}
		if err := r.syncService(ctx, svc, drop, res); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func (r *Reconciler) syncService(ctx context.Context, svc *corev1.Service, drop []corev1.IPFamily, res *Result) error {
	services := r.Client.CoreV1().Services(svc.Namespace)
	cur := svc
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		want := Downgraded(cur, r.Keep.Services)
		if want == nil {
			return nil
		}
		updated, err := services.Update(ctx, want, metav1.UpdateOptions{FieldManager: ControllerName})
		if apierrors.IsConflict(err) {
			if fresh, gerr := services.Get(ctx, svc.Name, metav1.GetOptions{}); gerr == nil {
				cur = fresh
			}
			return err
		}
		if err != nil {
			return err
		}
		klog.FromContext(ctx).Info("Service downgraded to one family", "service", klog.KObj(svc), "ipFamilies", updated.Spec.IPFamilies, "clusterIPs", updated.Spec.ClusterIPs)
		r.event(ref(updated), ReasonServiceDowngraded, "The cluster dropped %s: the Service is now SingleStack %s", joinFamilies(drop), updated.Spec.IPFamilies[0])
		res.ServicesDowngraded++
		cur = updated
		return nil
	})
	if apierrors.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("downgrading Service %s/%s: %w", svc.Namespace, svc.Name, err)
	}
	if cur.Spec.LoadBalancerClass != nil {
		return nil // another load balancer's status, not Duet's to edit
	}
	err = retry.RetryOnConflict(retry.DefaultRetry, func() error {
		trimmed, changed := TrimmedIngress(cur.Status.LoadBalancer.Ingress, drop)
		if !changed {
			return nil
		}
		upd := cur.DeepCopy()
		upd.Status.LoadBalancer.Ingress = trimmed
		updated, err := services.UpdateStatus(ctx, upd, metav1.UpdateOptions{FieldManager: ControllerName})
		if apierrors.IsConflict(err) {
			if fresh, gerr := services.Get(ctx, svc.Name, metav1.GetOptions{}); gerr == nil {
				cur = fresh
			}
			return err
		}
		if err != nil {
			return err
		}
		res.IngressesTrimmed++
		cur = updated
		return nil
	})
	if err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("removing %s load balancer IPs of Service %s/%s: %w", joinFamilies(drop), svc.Namespace, svc.Name, err)
	}
	return nil
}

func ref(svc *corev1.Service) *corev1.ObjectReference {
	return &corev1.ObjectReference{Kind: "Service", APIVersion: "v1", Namespace: svc.Namespace, Name: svc.Name, UID: svc.UID, ResourceVersion: svc.ResourceVersion}
}

// deleteIPAddresses deletes the IPAddress objects of dropped families
// that no Service holds, read afresh: the cluster has no range left to
// hand those addresses out again, and the allocator's release skips a
// family it does not serve.
func (r *Reconciler) deleteIPAddresses(ctx context.Context, drop []corev1.IPFamily, res *Result) error {
	api := r.Client.NetworkingV1().IPAddresses()
	list, err := api.List(ctx, metav1.ListOptions{})
	if err != nil {
		return fmt.Errorf("listing IPAddresses: %w", err)
	}
	var errs []error
	for i := range list.Items {
		rec := &list.Items[i]
		ip, err := netip.ParseAddr(rec.Name)
		if err != nil || !slices.Contains(drop, familyOf(ip)) {
			continue
		}
		if p := rec.Spec.ParentRef; p != nil && p.Group == "" && p.Resource == "services" {
			held, err := r.serviceHolds(ctx, p.Namespace, p.Name, ip)
			if err != nil {
				errs = append(errs, err)
				continue
			}
			if held {
				res.Left = append(res.Left, fmt.Sprintf("IPAddress %s: Service %s/%s still holds it", ip, p.Namespace, p.Name))
				continue
			}
		}
		uid := rec.UID
		err = api.Delete(ctx, rec.Name, metav1.DeleteOptions{Preconditions: &metav1.Preconditions{UID: &uid}})
		switch {
		case err == nil:
			res.IPAddressesDeleted++
		case apierrors.IsNotFound(err):
		case apierrors.IsConflict(err):
			res.Left = append(res.Left, fmt.Sprintf("IPAddress %s: recorded anew meanwhile", ip))
		default:
			errs = append(errs, fmt.Errorf("deleting IPAddress %s: %w", ip, err))
		}
	}
	return errors.Join(errs...)
}

// serviceHolds reads a Service and reports whether it holds ip as a
// cluster IP.
func (r *Reconciler) serviceHolds(ctx context.Context, namespace, name string, ip netip.Addr) (bool, error) {
	svc, err := r.Client.CoreV1().Services(namespace).Get(ctx, name, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		return false, nil
	case err != nil:
		return false, fmt.Errorf("reading Service %s/%s, which IPAddress %s names: %w", namespace, name, ip, err)
	}
	for _, s := range svc.Spec.ClusterIPs {
		if a, err := netip.ParseAddr(s); err == nil && a == ip {
			return true, nil
		}
	}
	return false, nil
}

// listRecords returns the records of the dropped families in recs.
func listRecords(ctx context.Context, recs Records, drop []corev1.IPFamily) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, f := range drop {
		if err := recs.List(ctx, familyPrefix(f), func(k netip.Prefix) error {
			out = append(out, k)
			return nil
		}); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// deleteLBRecords deletes the load balancer IP records of dropped families
// that no Service's status shows, read after the statuses were trimmed.
func (r *Reconciler) deleteLBRecords(ctx context.Context, drop []corev1.IPFamily, res *Result) error {
	keys, err := listRecords(ctx, r.LBIPs, drop)
	if err != nil || len(keys) == 0 {
		return err
	}
	list, err := r.Client.CoreV1().Services(metav1.NamespaceAll).List(ctx, metav1.ListOptions{})
	if err != nil {
		return fmt.Errorf("listing Services: %w", err)
	}
	shown := map[netip.Addr]string{}
	for i := range list.Items {
		for _, in := range list.Items[i].Status.LoadBalancer.Ingress {
			if ip, err := netip.ParseAddr(in.IP); err == nil {
				shown[ip] = list.Items[i].Namespace + "/" + list.Items[i].Name
			}
		}
	}
	var errs []error
	for _, k := range keys {
		if owner, ok := shown[k.Addr()]; ok && k.IsSingleIP() {
			res.Left = append(res.Left, fmt.Sprintf("load balancer IP %s: Service %s still shows it", k.Addr(), owner))
			continue
		}
		if err := r.LBIPs.Delete(ctx, k); err != nil {
			errs = append(errs, fmt.Errorf("deleting the load balancer IP record of %s: %w", k, err))
			continue
		}
		res.LBRecordsDeleted++
	}
	return errors.Join(errs...)
}

// syncNodes takes the pod CIDRs of dropped families off every Node.
func (r *Reconciler) syncNodes(ctx context.Context, drop []corev1.IPFamily, res *Result) error {
	nodes := r.Client.CoreV1().Nodes()
	list, err := nodes.List(ctx, metav1.ListOptions{})
	if err != nil {
		return fmt.Errorf("listing Nodes: %w", err)
	}
	var errs []error
	for i := range list.Items {
		cur := &list.Items[i]
		err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
			trimmed, changed := TrimmedPodCIDRs(cur.Spec.PodCIDRs, drop)
			if !changed {
				return nil
			}
			if len(trimmed) == 0 {
				// Node IPAM gives it a CIDR of a kept family first; the
				// next pass trims it then.
				res.Left = append(res.Left, fmt.Sprintf("Node %s: every pod CIDR it has (%v) is of a dropped family", cur.Name, cur.Spec.PodCIDRs))
				return nil
			}
			upd := cur.DeepCopy()
			upd.Spec.PodCIDRs, upd.Spec.PodCIDR = trimmed, trimmed[0]
			updated, err := nodes.Update(ctx, upd, metav1.UpdateOptions{FieldManager: ControllerName})
			if apierrors.IsConflict(err) {
				if fresh, gerr := nodes.Get(ctx, cur.Name, metav1.GetOptions{}); gerr == nil {
					cur = fresh
				}
				return err
			}
			if err != nil {
				return err
			}
			klog.FromContext(ctx).Info("Node's pod CIDRs trimmed to the cluster's families", "node", cur.Name, "podCIDRs", updated.Spec.PodCIDRs)
			if r.Recorder != nil {
				r.Recorder.Eventf(&corev1.ObjectReference{Kind: "Node", APIVersion: "v1", Name: updated.Name, UID: updated.UID},
					corev1.EventTypeNormal, ReasonPodCIDRDropped, "The cluster dropped %s: pod CIDRs are now %s", joinFamilies(drop), strings.Join(updated.Spec.PodCIDRs, ","))
			}
			res.NodesTrimmed++
			return nil
		})
		if err != nil && !apierrors.IsNotFound(err) {
			errs = append(errs, fmt.Errorf("trimming the pod CIDRs of Node %s: %w", cur.Name, err))
		}
	}
	return errors.Join(errs...)
}

// deleteNodeCIDRRecords deletes the node CIDR records of dropped families
// that no Node's pod CIDRs cover, read after the Nodes were trimmed.
func (r *Reconciler) deleteNodeCIDRRecords(ctx context.Context, drop []corev1.IPFamily, res *Result) error {
	keys, err := listRecords(ctx, r.NodeCIDRs, drop)
	if err != nil || len(keys) == 0 {
		return err
	}
	list, err := r.Client.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		return fmt.Errorf("listing Nodes: %w", err)
	}
	var errs []error
	for _, k := range keys {
		holder := ""
		for i := range list.Items {
			for _, s := range list.Items[i].Spec.PodCIDRs {
				if p, err := netip.ParsePrefix(s); err == nil && p.Overlaps(k) {
					holder = list.Items[i].Name
				}
			}
		}
		if holder != "" {
			res.Left = append(res.Left, fmt.Sprintf("node CIDR record %s: Node %s still has it", k, holder))
			continue
		}
		if err := r.NodeCIDRs.Delete(ctx, k); err != nil {
			errs = append(errs, fmt.Errorf("deleting the node CIDR record of %s: %w", k, err))
			continue
		}
		res.NodeCIDRRecordsDeleted++
	}
	return errors.Join(errs...)
}
