package servicecidr

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	networkingv1 "k8s.io/api/networking/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/klog/v2"

	"github.com/duet-net/duet/internal/clusterranges"
)

// FromFlagAnnotation on the default ServiceCIDR lists the ranges
// --service-cluster-ip-range gave it: a range the flag drops later is
// dropped from it, one a user appended is not.
const FromFlagAnnotation = "networking.duet.dev/from-flag"

// EnsureDefault makes the default ServiceCIDR, kubernetes, hold ranges
// (--service-cluster-ip-range, primary first): it creates it when absent,
// appends the family a restart added (a single-family ServiceCIDR may
// gain the other family) and drops the second family a restart dropped
// from the flag. Any other difference is left alone and logged,
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
		obj := &networkingv1.ServiceCIDR{ObjectMeta: metav1.ObjectMeta{Name: clusterranges.DefaultServiceCIDRName,
			Annotations: map[string]string{FromFlagAnnotation: strings.Join(want, ",")}}, Spec: networkingv1.ServiceCIDRSpec{CIDRs: want}}
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
		metav1.SetMetaDataAnnotation(&up.ObjectMeta, FromFlagAnnotation, strings.Join(want, ","))
		if _, err := api.Update(ctx, up, metav1.UpdateOptions{FieldManager: ControllerName}); err != nil {
			return wrap(err)
		}
		klog.FromContext(ctx).Info("The default ServiceCIDR gained the family --service-cluster-ip-range added", "from", have.Spec.CIDRs, "to", want)
	case len(have.Spec.CIDRs) == 2 && len(want) == 1 && have.Spec.CIDRs[0] == want[0] &&
		slices.Contains(strings.Split(have.Annotations[FromFlagAnnotation], ","), have.Spec.CIDRs[1]):
		// A restart dropped the second family from the flag that put it
		// there: the default ServiceCIDR drops it too, and the cluster
		// takes the family out (familydrop) unless another ServiceCIDR
		// still has it. Only the API server may make this change. A family
		// a user appended with kubectl is the user's.
		up := have.DeepCopy()
		up.Spec.CIDRs = want
		metav1.SetMetaDataAnnotation(&up.ObjectMeta, FromFlagAnnotation, strings.Join(want, ","))
		if _, err := api.Update(ctx, up, metav1.UpdateOptions{FieldManager: ControllerName}); err != nil {
			return wrap(err)
		}
		klog.FromContext(ctx).Info("The default ServiceCIDR lost the family --service-cluster-ip-range dropped", "from", have.Spec.CIDRs, "to", want)
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
