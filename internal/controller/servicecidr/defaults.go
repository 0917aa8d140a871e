package servicecidr

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	networkingv1 "k8s.io/api/networking/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/klog/v2"

	"github.com/duet-net/duet/internal/clusterranges"
)

// The default ServiceCIDR records the range flags the server last brought
// the default objects in step with, so that a start acts on what the
// flags changed since, and only on that: a range the flags add or drop is
// added to or dropped from the default objects, while a change made live
// (a ClusterCIDR deleted with kubectl, a family a user appended) stays
// when the server restarts with the same flags. It is written last, in
// the same update as the default ServiceCIDR's ranges, so a start killed
// half way does it again.
const (
	// FromFlagAnnotation lists --service-cluster-ip-range as last applied.
	FromFlagAnnotation = "networking.duet.dev/from-flag"
	// ClusterFromFlagAnnotation lists --cluster-cidr as last applied.
	ClusterFromFlagAnnotation = "networking.duet.dev/cluster-cidr-from-flag"
)

// Applied returns the --cluster-cidr ranges last applied to the default
// objects (see FromFlagAnnotation); first is true when there is no
// default ServiceCIDR yet: the first start with ranges as objects.
func Applied(ctx context.Context, client kubernetes.Interface) (clusterCIDRs []netip.Prefix, first bool, err error) {
	have, err := client.NetworkingV1().ServiceCIDRs().Get(ctx, clusterranges.DefaultServiceCIDRName, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil, true, nil
	}
	if err != nil {
		return nil, false, wrap(err)
	}
	for _, c := range splitList(have.Annotations[ClusterFromFlagAnnotation]) {
		if p, err := netip.ParsePrefix(c); err == nil {
			clusterCIDRs = append(clusterCIDRs, p)
		}
	}
	return clusterCIDRs, false, nil
}

func splitList(s string) []string {
	if s == "" {
		return nil
	}
	return strings.Split(s, ",")
}

func prefixStrings(ps []netip.Prefix) []string {
	out := make([]string, len(ps))
	for i, p := range ps {
		out[i] = p.String()
	}
	return out
}

// EnsureDefault makes the default ServiceCIDR, kubernetes, follow
// --service-cluster-ip-range (ranges, primary first) and records the
// flags applied (see FromFlagAnnotation; clusterCIDRs is --cluster-cidr,
// whose ClusterCIDRs the caller has brought in step first). It creates
// it when absent; when the flag gained a second family since the last
// start it appends it (a single-family ServiceCIDR may gain the other
// family), when the flag lost it, it drops it (only the API server may).
// Any other difference is left alone and logged, as Kubernetes does: the
// object, not the flag, is what the cluster runs with. It is idempotent;
// every server replica runs it at start.
func EnsureDefault(ctx context.Context, client kubernetes.Interface, ranges, clusterCIDRs []netip.Prefix) error {
	want, cluster := prefixStrings(ranges), strings.Join(prefixStrings(clusterCIDRs), ",")
	api := client.NetworkingV1().ServiceCIDRs()
	have, err := api.Get(ctx, clusterranges.DefaultServiceCIDRName, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		obj := &networkingv1.ServiceCIDR{ObjectMeta: metav1.ObjectMeta{Name: clusterranges.DefaultServiceCIDRName,
			Annotations: map[string]string{FromFlagAnnotation: strings.Join(want, ","), ClusterFromFlagAnnotation: cluster}},
			Spec: networkingv1.ServiceCIDRSpec{CIDRs: want}}
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
	applied, ok := have.Annotations[FromFlagAnnotation]
	if !ok {
		applied = strings.Join(have.Spec.CIDRs, ",")
	}
	last := splitList(applied)
	up := have.DeepCopy()
	log := klog.FromContext(ctx)
	switch {
	case slices.Equal(last, want):
	case len(last) == 1 && len(want) == 2 && last[0] == want[0] && slices.Equal(have.Spec.CIDRs, last):
		up.Spec.CIDRs = want
		log.Info("The default ServiceCIDR gains the family --service-cluster-ip-range added", "from", have.Spec.CIDRs, "to", want)
	case len(last) == 2 && len(want) == 1 && last[0] == want[0] && slices.Equal(have.Spec.CIDRs, last):
		// The cluster then takes the family out (familydrop) unless
		// another ServiceCIDR still has it.
		up.Spec.CIDRs = want
		log.Info("The default ServiceCIDR loses the family --service-cluster-ip-range dropped", "from", have.Spec.CIDRs, "to", want)
	default:
		log.Info("The default ServiceCIDR differs from --service-cluster-ip-range; the cluster keeps the ServiceCIDR's ranges",
			"serviceCIDR", have.Spec.CIDRs, "flag", want, "flagBefore", last)
	}
	metav1.SetMetaDataAnnotation(&up.ObjectMeta, FromFlagAnnotation, strings.Join(want, ","))
	metav1.SetMetaDataAnnotation(&up.ObjectMeta, ClusterFromFlagAnnotation, cluster)
	if equality.Semantic.DeepEqual(up, have) {
		return nil
	}
	_, err = api.Update(ctx, up, metav1.UpdateOptions{FieldManager: ControllerName})
	return wrap(err)
}

func wrap(err error) error {
	if err == nil {
		return nil
	}
	return fmt.Errorf("keeping the default ServiceCIDR %s: %w", clusterranges.DefaultServiceCIDRName, err)
}
