package core

import (
	"context"
	"net/netip"
	"slices"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apiserver/pkg/authentication/user"
	genericapirequest "k8s.io/apiserver/pkg/endpoints/request"

	"github.com/duet-net/duet/internal/netaddr"
)

// Option configures the core/v1 stores.
type Option func(*options)

type options struct {
	// podFamilies returns the cluster's pod families now, primary first.
	podFamilies func() []netaddr.Family
}

// WithClusterPodFamilies gives the families of the cluster CIDRs as they
// are at each request (they change with the ClusterCIDR objects). A Node's
// spec.podCIDRs, which otherwise never shrink, may then lose the CIDRs of
// any other family, when the server itself (its controller that drops a
// family, see internal/controller/familydrop) asks: that is the one change
// of pod CIDRs left to do once a family left the cluster's ranges.
func WithClusterPodFamilies(fams func() []netaddr.Family) Option {
	return func(o *options) { o.podFamilies = fams }
}

// podCIDRFamilyDrop reports whether node is old with the pod CIDRs of
// families outside podFamilies removed, and nothing else changed in
// them, at least one left, written by the API server's own loopback
// client. Users, agents and controllers of other processes get the usual
// refusal.
func podCIDRFamilyDrop(ctx context.Context, node, old *corev1.Node, podFamilies []netaddr.Family) bool {
	if len(podFamilies) == 0 || len(node.Spec.PodCIDRs) == 0 || len(node.Spec.PodCIDRs) >= len(old.Spec.PodCIDRs) {
		return false
	}
	if u, ok := genericapirequest.UserFrom(ctx); !ok || u.GetName() != user.APIServerUser {
		return false
	}
	kept := slices.DeleteFunc(slices.Clone(old.Spec.PodCIDRs), func(s string) bool {
		p, err := netip.ParsePrefix(s)
		return err == nil && !slices.Contains(podFamilies, netaddr.FamilyOf(p.Addr()))
	})
	return slices.Equal(kept, node.Spec.PodCIDRs)
}

// families are the cluster's pod families now; none without the option.
func (o *options) families() []netaddr.Family {
	if o.podFamilies == nil {
		return nil
	}
	return o.podFamilies()
}
