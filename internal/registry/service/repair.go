package service

import (
	"context"
	"fmt"
	"net/netip"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
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
// its Service leaves one) is deleted once it is older than Grace, and IPs
// held twice or out of range are reported as events. Every pass ends by
// reloading the allocators, so releases made by other replicas become
// reusable here.
type Repair struct {
	Client kubernetes.Interface
	// Records lists the IPAddress objects; without it they are listed
	// through Client.
	Records  func(ctx context.Context) ([]networkingv1.IPAddress, error)
	Ranges   map[netaddr.Family]*alloc.ServiceRange
	Recorder record.EventRecorder
	Interval time.Duration
	// Grace protects records of Services being created right now.
	Grace time.Duration
	Now   func() time.Time
}

// Run repairs every Interval until ctx is done.
func (r *Repair) Run(ctx context.Context) {
	wait.UntilWithContext(ctx, func(ctx context.Context) {
		if err := r.RunOnce(ctx); err != nil {
			klog.ErrorS(err, "cluster IP repair")
		}
	}, r.Interval)
}

// RunOnce makes one repair pass.
func (r *Repair) RunOnce(ctx context.Context) error {
	now := time.Now
	if r.Now != nil {
		now = r.Now
	}
	// IPAddresses first: an IP recorded after this list is newer than any
	// Service listed below can lack, so it is never taken for an orphan.
	ips, err := r.records(ctx)
	if err != nil {
		return err
	}
	svcList, err := r.Client.CoreV1().Services(metav1.NamespaceAll).List(ctx, metav1.ListOptions{})
	if err != nil {
		return fmt.Errorf("listing Services: %w", err)
	}
	records := map[string]*networkingv1.IPAddress{}
	for i := range ips {
		records[ips[i].Name] = &ips[i]
	}

	held := map[string]string{} // ip -> namespace/name
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
			rng, ok := r.Ranges[fam]
			if !ok || !rng.CIDR().Contains(ip) {
				r.Recorder.Eventf(svc, corev1.EventTypeWarning, "ClusterIPOutOfRange", "Cluster IP [%s]: %s is not within any configured Service CIDR; please recreate service", fam, name)
				continue
			}
			if other, dup := held[name]; dup {
				r.Recorder.Eventf(svc, corev1.EventTypeWarning, "ClusterIPAlreadyAllocated", "Cluster IP [%s]: %s was assigned to multiple services (%s too); please recreate service", fam, name, other)
				continue
			}
			held[name] = key
			rec, ok := records[name]
			if !ok {
				r.Recorder.Eventf(svc, corev1.EventTypeWarning, "ClusterIPNotAllocated", "Cluster IP [%s]: %s is not allocated; repairing", fam, name)
				if err := r.record(ctx, svc, ip); err != nil {
					klog.ErrorS(err, "recording a Service's cluster IP", "service", key, "ip", name)
				}
				continue
			}
			if ref := rec.Spec.ParentRef; ref == nil || ref.Resource != "services" || ref.Namespace != svc.Namespace || ref.Name != svc.Name {
				r.Recorder.Eventf(svc, corev1.EventTypeWarning, "ClusterIPAlreadyAllocated", "Cluster IP [%s]: %s is recorded for another object; repairing", fam, name)
				if err := r.replace(ctx, svc, rec, ip); err != nil {
					klog.ErrorS(err, "re-recording a Service's cluster IP", "service", key, "ip", name)
				}
			}
		}
	}

	for name, rec := range records {
		if _, ok := held[name]; ok || rec.Labels[LabelManagedBy] != ManagedBy {
			continue
		}
		if now().Sub(rec.CreationTimestamp.Time) < r.Grace {
			continue
		}
		r.Recorder.Eventf(rec, corev1.EventTypeWarning, "IPAddressOrphaned", "IPAddress %s is held by no Service; releasing it", name)
		err := r.Client.NetworkingV1().IPAddresses().Delete(ctx, name, metav1.DeleteOptions{Preconditions: &metav1.Preconditions{UID: &rec.UID}})
		if err != nil && !apierrors.IsNotFound(err) && !apierrors.IsConflict(err) {
			klog.ErrorS(err, "releasing an orphaned IPAddress", "ip", name)
		}
	}

	for fam, rng := range r.Ranges {
		if err := rng.Sync(ctx); err != nil {
			return err
		}
		metrics.Observe("service-ip", string(fam), rng.CIDR().String(), rng)
	}
	return nil
}

func (r *Repair) records(ctx context.Context) ([]networkingv1.IPAddress, error) {
	if r.Records != nil {
		return r.Records(ctx)
	}
	list, err := r.Client.NetworkingV1().IPAddresses().List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("listing IPAddresses: %w", err)
	}
	return list.Items, nil
}

func (r *Repair) record(ctx context.Context, svc *corev1.Service, ip netip.Addr) error {
	_, err := r.Client.NetworkingV1().IPAddresses().Create(ctx, &networkingv1.IPAddress{
		ObjectMeta: metav1.ObjectMeta{Name: ip.String(), Labels: map[string]string{
			LabelIPFamily: string(netaddr.FamilyOf(ip)), LabelManagedBy: ManagedBy,
		}},
		Spec: networkingv1.IPAddressSpec{ParentRef: &networkingv1.ParentReference{Resource: "services", Namespace: svc.Namespace, Name: svc.Name}},
	}, metav1.CreateOptions{})
	if apierrors.IsAlreadyExists(err) {
		return nil
	}
	return err
}

func (r *Repair) replace(ctx context.Context, svc *corev1.Service, rec *networkingv1.IPAddress, ip netip.Addr) error {
	err := r.Client.NetworkingV1().IPAddresses().Delete(ctx, rec.Name, metav1.DeleteOptions{Preconditions: &metav1.Preconditions{UID: &rec.UID}})
	if err != nil && !apierrors.IsNotFound(err) {
		return err
	}
	return r.record(ctx, svc, ip)
}
