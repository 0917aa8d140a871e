package service

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/record"
	"k8s.io/klog/v2"

	"github.com/duet-net/duet/internal/alloc"
	"github.com/duet-net/duet/internal/metrics"
	"github.com/duet-net/duet/internal/netaddr"
)

// Repair reconciles cluster IP records with Services, as Kubernetes'
// repair loop does: a Service IP without an IPAddress gets one, an
// IPAddress no Service holds (a crash between recording an IP and storing
// its Service leaves one) is deleted, and IPs held twice or out of range
// are reported as events. Every pass ends by reloading the allocators, so
// releases made by other replicas become reusable here.
//
// A pass compares Services and records read at one point, and acts only
// on what is still inconsistent when it looks again:
//
//   - The Services are listed first; the list's resourceVersion is the
//     etcd revision it shows, and the records are read from etcd at that
//     same revision. The allocator writes a Service's record before the
//     Service is stored and deletes it only after the Service is deleted
//     or has given the IP up (alloc.go: allocation in BeginCreate and
//     BeginUpdate, release in AfterDelete and Commit), so at any one
//     revision every IP a Service holds has its record unless something
//     really lost it. Reading the two at different moments, records first,
//     made every Service created in between look unrecorded.
//   - A Service without its record is repaired only if a fresh read of
//     both shows the Service (same UID) still holding the IP and the
//     record still absent; the event is recorded only by the replica whose
//     create wrote the record, so a lost record is reported once.
//   - A record without a Service is normal while its Service is being
//     created (the record comes first), so it is released only when two
//     passes in a row found it (same UID) held by no Service, it is older
//     than Grace, and a fresh read of the Service it names does not show
//     the IP, as Kubernetes' repair loop counts "leaks" over passes before
//     cleaning them up.
//
// A Repair is not safe for concurrent use: Run calls RunOnce from one
// goroutine.
type Repair struct {
	Client kubernetes.Interface
	// Records lists the IPAddress objects as they were at etcd revision
	// rev, or as they are when rev is 0; without it they are listed
	// through Client at that resourceVersion.
	Records func(ctx context.Context, rev int64) ([]networkingv1.IPAddress, error)
	// Ranges returns the service ranges as they are now, ready or not
	// (Allocators.Ranges): the ranges of every ServiceCIDR.
	Ranges   func() []*alloc.ServiceRange
	Recorder record.EventRecorder
	Interval time.Duration
	// Grace protects records of Services being created right now: a
	// create can store its Service until its request times out (a minute
	// in the API server), so a younger record without a Service may still
	// get one.
	Grace time.Duration
	Now   func() time.Time

	// orphans are the records the previous pass found held by no
	// Service: name to UID, so that a record deleted and written again in
	// between starts over.
	orphans map[string]types.UID
}

// Run repairs every Interval until ctx is done.
func (r *Repair) Run(ctx context.Context) {
	wait.UntilWithContext(ctx, func(ctx context.Context) {
		if err := r.RunOnce(ctx); err != nil {
			klog.ErrorS(err, "cluster IP repair")
		}
	}, r.Interval)
}

// candidate is a Service IP that looked inconsistent in a pass's snapshot.
type candidate struct {
	svc *corev1.Service
	ip  netip.Addr
	rec *networkingv1.IPAddress // the record naming another object, if any
}

// RunOnce makes one repair pass.
func (r *Repair) RunOnce(ctx context.Context) error {
	svcList, err := r.Client.CoreV1().Services(metav1.NamespaceAll).List(ctx, metav1.ListOptions{})
	if err != nil {
		return fmt.Errorf("listing Services: %w", err)
	}
	rev, err := revisionOf(svcList.ResourceVersion)
	if err != nil {
		return err
	}
	ips, err := r.records(ctx, rev)
	if err != nil {
		return err
	}
	records := map[string]*networkingv1.IPAddress{}
	for i := range ips {
		records[ips[i].Name] = &ips[i]
	}

	ranges := r.Ranges()
	held := map[string]string{} // ip -> namespace/name
	var missing, misowned []candidate
	for i := range svcList.Items {
		svc := &svcList.Items[i]
		key := svc.Namespace + "/" + svc.Name
		for _, s := range svc.Spec.ClusterIPs {
			if s == "" || s == corev1.ClusterIPNone {
				continue
			}
			ip, err := netip.ParseAddr(s)
			if err != nil {
				continue
			}
			name := ip.String()
			fam := netaddr.FamilyOf(ip)
			if !slices.ContainsFunc(ranges, func(rng *alloc.ServiceRange) bool { return netaddr.FamilyOf(rng.CIDR().Addr()) == fam }) {
				// A family the cluster dropped: the family drop reconcile
				// downgrades the Service (see internal/controller/familydrop);
				// telling the user to recreate it would be wrong.
				klog.V(2).InfoS("Service holds a cluster IP of a family the cluster does not serve", "service", klog.KObj(svc), "clusterIP", name)
				continue
			}
			if !slices.ContainsFunc(ranges, func(rng *alloc.ServiceRange) bool { return rng.CIDR().Contains(ip) }) {
				r.Recorder.Eventf(svc, corev1.EventTypeWarning, "ClusterIPOutOfRange", "Cluster IP [%s]: %s is not within any configured Service CIDR; please recreate service", fam, name)
				continue
			}
			if other, dup := held[name]; dup {
				r.Recorder.Eventf(svc, corev1.EventTypeWarning, "ClusterIPAlreadyAllocated", "Cluster IP [%s]: %s was assigned to multiple services (%s too); please recreate service", fam, name, other)
				continue
			}
			held[name] = key
			rec, ok := records[name]
			switch {
			case !ok:
				missing = append(missing, candidate{svc: svc, ip: ip})
			case !recordedFor(rec, svc):
				misowned = append(misowned, candidate{svc: svc, ip: ip, rec: rec})
			}
		}
	}
	for _, c := range missing {
		r.repairMissing(ctx, c)
	}
	for _, c := range misowned {
		r.repairMisowned(ctx, c)
	}
	r.releaseOrphans(ctx, records, held)

	for _, rng := range ranges {
		if err := rng.Sync(ctx); err != nil {
			return err
		}
		metrics.Observe("service-ip", string(rng.Family()), rng.CIDR().String(), rng)
	}
	return nil
}

// revisionOf turns a list's resourceVersion into the etcd revision it
// stands for; "" (a fake client's lists) is 0, the current revision.
func revisionOf(rv string) (int64, error) {
	if rv == "" {
		return 0, nil
	}
	rev, err := strconv.ParseInt(rv, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("listing Services: resourceVersion %q is not an etcd revision: %w", rv, err)
	}
	return rev, nil
}

func recordedFor(rec *networkingv1.IPAddress, svc *corev1.Service) bool {
	ref := rec.Spec.ParentRef
	return ref != nil && ref.Group == "" && ref.Resource == "services" && ref.Namespace == svc.Namespace && ref.Name == svc.Name
}

// stillHolds reads svc again and reports whether it is the same object
// and still holds ip. When the read fails it says no: the next pass will
// look again.
func (r *Repair) stillHolds(ctx context.Context, svc *corev1.Service, ip netip.Addr) bool {
	cur, err := r.Client.CoreV1().Services(svc.Namespace).Get(ctx, svc.Name, metav1.GetOptions{})
	if err != nil {
		if !apierrors.IsNotFound(err) {
			klog.ErrorS(err, "reading a Service again before repairing its cluster IP record", "service", klog.KObj(svc), "ip", ip)
		}
		return false
	}
	return cur.UID == svc.UID && holds(cur, ip)
}

func holds(svc *corev1.Service, ip netip.Addr) bool {
	for _, s := range svc.Spec.ClusterIPs {
		if a, err := netip.ParseAddr(s); err == nil && a == ip {
			return true
		}
	}
	return false
}

// repairMissing records the IP of a Service that had no record in the
// snapshot, if that is still so.
func (r *Repair) repairMissing(ctx context.Context, c candidate) {
	name := c.ip.String()
	if !r.stillHolds(ctx, c.svc, c.ip) {
		return
	}
	_, err := r.Client.NetworkingV1().IPAddresses().Get(ctx, name, metav1.GetOptions{})
	switch {
	case err == nil:
		return // recorded after all; a record naming another object is the next pass's business
	case !apierrors.IsNotFound(err):
		klog.ErrorS(err, "reading a cluster IP record again before repairing it", "service", klog.KObj(c.svc), "ip", name)
		return
	}
	created, err := r.record(ctx, c.svc, c.ip)
	if err != nil {
		klog.ErrorS(err, "recording a Service's cluster IP", "service", klog.KObj(c.svc), "ip", name)
		return
	}
	if created {
		r.Recorder.Eventf(c.svc, corev1.EventTypeWarning, "ClusterIPNotAllocated", "Cluster IP [%s]: %s is not allocated; repairing", netaddr.FamilyOf(c.ip), name)
	}
}

// repairMisowned records for the Service an IP whose record named another
// object in the snapshot, if that is still so.
func (r *Repair) repairMisowned(ctx context.Context, c candidate) {
	name := c.ip.String()
	if !r.stillHolds(ctx, c.svc, c.ip) {
		return
	}
	cur, err := r.Client.NetworkingV1().IPAddresses().Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		if !apierrors.IsNotFound(err) {
			klog.ErrorS(err, "reading a cluster IP record again before repairing it", "service", klog.KObj(c.svc), "ip", name)
		}
		return
	}
	if cur.UID != c.rec.UID || recordedFor(cur, c.svc) {
		return
	}
	created, err := r.replace(ctx, c.svc, cur, c.ip)
	if err != nil {
		klog.ErrorS(err, "re-recording a Service's cluster IP", "service", klog.KObj(c.svc), "ip", name)
		return
	}
	if created {
		r.Recorder.Eventf(c.svc, corev1.EventTypeWarning, "ClusterIPAlreadyAllocated", "Cluster IP [%s]: %s is recorded for another object; repairing", netaddr.FamilyOf(c.ip), name)
	}
}

// releaseOrphans deletes the records that this pass and the previous one
// found held by no Service, once they are older than Grace and the Service
// they name, read again, does not hold their IP.
func (r *Repair) releaseOrphans(ctx context.Context, records map[string]*networkingv1.IPAddress, held map[string]string) {
	now := time.Now
	if r.Now != nil {
		now = r.Now
	}
	seen := map[string]types.UID{}
	for name, rec := range records {
		if _, ok := held[name]; ok || rec.Labels[LabelManagedBy] != ManagedBy {
			continue
		}
		seen[name] = rec.UID
		if uid, before := r.orphans[name]; !before || uid != rec.UID {
			continue // first sighting: its Service may be being stored right now
		}
		if now().Sub(rec.CreationTimestamp.Time) < r.Grace || r.parentHolds(ctx, rec) {
			continue
		}
		err := r.Client.NetworkingV1().IPAddresses().Delete(ctx, name, metav1.DeleteOptions{Preconditions: &metav1.Preconditions{UID: &rec.UID}})
		switch {
		case err == nil:
			delete(seen, name)
			r.Recorder.Eventf(rec, corev1.EventTypeWarning, "IPAddressOrphaned", "IPAddress %s is held by no Service; releasing it", name)
		case apierrors.IsNotFound(err) || apierrors.IsConflict(err):
			delete(seen, name) // released, or recorded anew, meanwhile
		default:
			klog.ErrorS(err, "releasing an orphaned IPAddress", "ip", name)
		}
	}
	r.orphans = seen
}

// parentHolds reads the Service a record names and reports whether it
// holds the record's IP; when the read fails it says yes, so that nothing
// is released on a guess.
func (r *Repair) parentHolds(ctx context.Context, rec *networkingv1.IPAddress) bool {
	ref := rec.Spec.ParentRef
	ip, err := netip.ParseAddr(rec.Name)
	if ref == nil || ref.Group != "" || ref.Resource != "services" || err != nil {
		return false
	}
	svc, err := r.Client.CoreV1().Services(ref.Namespace).Get(ctx, ref.Name, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		return false
	case err != nil:
		klog.ErrorS(err, "reading the Service of an IPAddress that looks orphaned", "ip", rec.Name, "service", klog.KRef(ref.Namespace, ref.Name))
		return true
	}
	return holds(svc, ip)
}

func (r *Repair) records(ctx context.Context, rev int64) ([]networkingv1.IPAddress, error) {
	if r.Records != nil {
		return r.Records(ctx, rev)
	}
	opts := metav1.ListOptions{}
	if rev != 0 {
		opts.ResourceVersion, opts.ResourceVersionMatch = strconv.FormatInt(rev, 10), metav1.ResourceVersionMatchExact
	}
	list, err := r.Client.NetworkingV1().IPAddresses().List(ctx, opts)
	if err != nil {
		return nil, fmt.Errorf("listing IPAddresses: %w", err)
	}
	return list.Items, nil
}

// record creates the IPAddress of ip for svc. It reports whether it wrote
// it: false when a record of ip exists already.
func (r *Repair) record(ctx context.Context, svc *corev1.Service, ip netip.Addr) (bool, error) {
	_, err := r.Client.NetworkingV1().IPAddresses().Create(ctx, &networkingv1.IPAddress{
		ObjectMeta: metav1.ObjectMeta{Name: ip.String(), Labels: map[string]string{
			LabelIPFamily: string(netaddr.FamilyOf(ip)), LabelManagedBy: ManagedBy,
		}},
		Spec: networkingv1.IPAddressSpec{ParentRef: &networkingv1.ParentReference{Resource: "services", Namespace: svc.Namespace, Name: svc.Name}},
	}, metav1.CreateOptions{})
	if apierrors.IsAlreadyExists(err) {
		return false, nil
	}
	return err == nil, err
}

// replace deletes rec, if it is still the object read, and records ip for
// svc in its place. It reports whether it wrote the new record.
func (r *Repair) replace(ctx context.Context, svc *corev1.Service, rec *networkingv1.IPAddress, ip netip.Addr) (bool, error) {
	err := r.Client.NetworkingV1().IPAddresses().Delete(ctx, rec.Name, metav1.DeleteOptions{Preconditions: &metav1.Preconditions{UID: &rec.UID}})
	switch {
	case apierrors.IsConflict(err):
		return false, nil // changed meanwhile: the next pass looks again
	case err != nil && !apierrors.IsNotFound(err):
		return false, err
	}
	return r.record(ctx, svc, ip)
}
