package servicecidr

import (
	"context"
	"fmt"
	"net/netip"
	"slices"

	networkingv1 "k8s.io/api/networking/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/klog/v2"

	"github.com/duet-net/duet/internal/clusterranges"
)

// EnsureDefault makes the default ServiceCIDR, kubernetes, hold ranges
// (--service-cluster-ip-range, primary first): it creates it when absent
// and appends the family a restart added (a single-family ServiceCIDR may
// gain the other family). Any other difference is left alone and logged,
// as Kubernetes does: the object, not the flag, is what the cluster runs
// with. It is idempotent; every server replica runs it at start.
func EnsureDefault(ctx context.Context, client kubernetes.Interface, ranges []netip.Prefix) error {
	want := make([]string, len(ranges))
	for i, p := range ranges {
		want[i] = p.String()
	}
	api := client.NetworkingV1().ServiceCIDRs()
	have, err := api.Get(ctx, clusterranges.DefaultServiceCIDRName, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		obj := &networkingv1.ServiceCIDR{ObjectMeta: metav1.ObjectMeta{Name: clusterranges.DefaultServiceCIDRName}, Spec: networkingv1.ServiceCIDRSpec{CIDRs: want}}
		_, err = api.Create(ctx, obj, metav1.CreateOptions{FieldManager: ControllerName})
		if apierrors.IsAlreadyExists(err) {
			return nil
		}
		if err == nil {
			klog.FromContext(ctx).Info("Created the default ServiceCIDR", "cidrs", want)
		}
		return wrap(err)
	}
	if err != nil {
		return wrap(err)
	}
	switch {
	case len(have.Spec.CIDRs) == 1 && len(want) == 2 && have.Spec.CIDRs[0] == want[0]:
		up := have.DeepCopy()
		up.Spec.CIDRs = want
		if _, err := api.Update(ctx, up, metav1.UpdateOptions{FieldManager: ControllerName}); err != nil {
			return wrap(err)
		}
		klog.FromContext(ctx).Info("The default ServiceCIDR gained the family --service-cluster-ip-range added", "from", have.Spec.CIDRs, "to", want)
	case !slices.Equal(have.Spec.CIDRs, want):
		klog.FromContext(ctx).Info("The default ServiceCIDR differs from --service-cluster-ip-range; the cluster keeps the ServiceCIDR's ranges",
			"serviceCIDR", have.Spec.CIDRs, "flag", want)
	}
	return nil
}

func wrap(err error) error {
	if err == nil {
		return nil
	}
	return fmt.Errorf("keeping the default ServiceCIDR %s: %w", clusterranges.DefaultServiceCIDRName, err)
}
