package kubedns

import (
	"context"
	"fmt"
	"net/netip"
	"slices"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/klog/v2"

	"github.com/duet-net/duet/internal/netaddr"
)

// addedFamilies returns kube-dns as it must be after the cluster gained a
// family (a server restarted with a second service range): Duet's own
// kube-dns, of the cluster's primary family and without a selector, gets
// the family appended, RequireDualStack like the kube-dns of a cluster
// born dual-stack, with the new range's 10th address when it is free. It
// returns nil when nothing is to change: the families are those of the
// ranges, or the Service is a user's (a selector, another primary).
func addedFamilies(svc *corev1.Service, ranges []netip.Prefix) *corev1.Service {
	if len(svc.Spec.Selector) > 0 || len(ranges) != 2 || len(svc.Spec.IPFamilies) != 1 || len(svc.Spec.ClusterIPs) != 1 {
		return nil
	}
	if string(svc.Spec.IPFamilies[0]) != string(netaddr.FamilyOf(ranges[0].Addr())) {
		return nil
	}
	out := svc.DeepCopy()
	policy := corev1.IPFamilyPolicyRequireDualStack
	out.Spec.IPFamilyPolicy = &policy
	out.Spec.IPFamilies = append(out.Spec.IPFamilies, corev1.IPFamily(netaddr.FamilyOf(ranges[1].Addr())))
	if ip, ok := ServiceIP(ranges[1]); ok {
		out.Spec.ClusterIPs = append(out.Spec.ClusterIPs, ip.String())
	}
	return out
}

// upgrade gives an existing kube-dns the family the cluster gained; an
// address of the new family taken by another Service makes it take one
// the allocator picks.
func upgrade(ctx context.Context, client kubernetes.Interface, svc *corev1.Service, ranges []netip.Prefix) error {
	want := addedFamilies(svc, ranges)
	if want == nil {
		return nil
	}
	svcs := client.CoreV1().Services(Namespace)
	_, err := svcs.Update(ctx, want, metav1.UpdateOptions{FieldManager: ControllerName})
	if err != nil && len(want.Spec.ClusterIPs) == 2 {
		klog.FromContext(ctx).Info("kube-dns's usual address of the new family is not free; letting the allocator pick one", "clusterIP", want.Spec.ClusterIPs[1], "err", err)
		want.Spec.ClusterIPs = slices.Clone(svc.Spec.ClusterIPs)
		_, err = svcs.Update(ctx, want, metav1.UpdateOptions{FieldManager: ControllerName})
	}
	if err != nil {
		return fmt.Errorf("adding family %s to Service %s/%s: %w", want.Spec.IPFamilies[1], Namespace, Name, err)
	}
	klog.FromContext(ctx).Info("kube-dns gained the cluster's new family", "ipFamilies", want.Spec.IPFamilies)
	return nil
}
