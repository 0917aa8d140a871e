// Package clustercidr is the registry of networking.duet.dev/v1alpha1
// ClusterCIDRs: defaulting, validation with field paths (the range, its
// node mask, at most one ClusterCIDR per family, an immutable spec), the
// kubectl table, and deletions the cluster's rules may refuse.
package clustercidr

import (
	"context"
	"fmt"
	"net/netip"

	metainternalversion "k8s.io/apimachinery/pkg/apis/meta/internalversion"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/validation/field"
	"k8s.io/apiserver/pkg/registry/generic"
	"k8s.io/apiserver/pkg/registry/rest"
	"k8s.io/apiserver/pkg/storage/names"

	"github.com/duet-net/duet/internal/apis/networking/v1alpha1"
	"github.com/duet-net/duet/internal/netaddr"
	registry "github.com/duet-net/duet/internal/registry/generic"
)

// Resource is the resource's name.
const Resource = "clustercidrs"

// Options are the cluster settings the rules depend on.
type Options struct {
	// DualStack is the IPv6DualStack feature gate: off, a ClusterCIDR of
	// the family other than Primary is refused.
	DualStack bool
	Primary   netaddr.Family
	// DeleteGuard, when set, may refuse a deletion with a Status error
	// saying why (the primary family's range, say).
	DeleteGuard func(ctx context.Context, obj *v1alpha1.ClusterCIDR) error
}

// NewStorage returns the clustercidrs and clustercidrs/status stores.
func NewStorage(typer runtime.ObjectTyper, optsGetter generic.RESTOptionsGetter, opts Options) (map[string]rest.Storage, error) {
	var others func(ctx context.Context) ([]v1alpha1.ClusterCIDR, error)
	strategy := &registry.Strategy{
		ObjectTyper: typer, NameGenerator: names.SimpleNameGenerator, HasStatus: true, APIVersion: v1alpha1.SchemeGroupVersion.String(),
		PrepareForCreateFunc: func(_ context.Context, obj runtime.Object) { SetDefaults(obj.(*v1alpha1.ClusterCIDR)) },
		PrepareForUpdateFunc: func(_ context.Context, obj, _ runtime.Object) { SetDefaults(obj.(*v1alpha1.ClusterCIDR)) },
		ValidateFunc: func(ctx context.Context, obj runtime.Object) field.ErrorList {
			c := obj.(*v1alpha1.ClusterCIDR)
			errs := Validate(c, opts)
			if len(errs) > 0 {
				return errs
			}
			existing, err := others(ctx)
			if err != nil {
				return field.ErrorList{field.InternalError(field.NewPath("spec", "cidr"), fmt.Errorf("listing the ClusterCIDRs: %w", err))}
			}
			return ValidateOnePerFamily(c, existing)
		},
		ValidateUpdateFunc: func(_ context.Context, obj, old runtime.Object) field.ErrorList {
			return ValidateUpdate(obj.(*v1alpha1.ClusterCIDR), old.(*v1alpha1.ClusterCIDR))
		},
	}
	store, err := registry.NewStore(registry.Options{
		NewFunc:     func() runtime.Object { return &v1alpha1.ClusterCIDR{} },
		NewListFunc: func() runtime.Object { return &v1alpha1.ClusterCIDRList{} },
		Group:       v1alpha1.GroupName, Resource: Resource, Singular: "clustercidr", ShortNames: []string{"ccidr"},
		Strategy: strategy,
		Table: registry.NewTable(
			registry.Column{Name: "CIDR", Type: "string", Description: "The range of pod addresses", Cell: func(o runtime.Object) any {
				return o.(*v1alpha1.ClusterCIDR).Spec.CIDR
			}},
			registry.Column{Name: "NodeMaskSize", Type: "integer", Description: "The prefix length of each Node's pod CIDR", Cell: func(o runtime.Object) any {
				return int64(o.(*v1alpha1.ClusterCIDR).Spec.NodeMaskSize)
			}},
		),
	}, optsGetter)
	if err != nil {
		return nil, err
	}
	others = func(ctx context.Context) ([]v1alpha1.ClusterCIDR, error) {
		list, err := store.List(ctx, &metainternalversion.ListOptions{})
		if err != nil {
			return nil, err
		}
		return list.(*v1alpha1.ClusterCIDRList).Items, nil
	}
	var main rest.Storage = store
	if opts.DeleteGuard != nil {
		main = &registry.GuardedStore{Store: store, Guard: func(ctx context.Context, obj runtime.Object) error {
			return opts.DeleteGuard(ctx, obj.(*v1alpha1.ClusterCIDR))
		}}
	}
	return map[string]rest.Storage{
		Resource:             main,
		Resource + "/status": registry.NewStatusStore(store, &registry.StatusStrategy{Strategy: strategy, KeepMeta: registry.KeepAllMeta}),
	}, nil
}

// SetDefaults gives nodeMaskSize Kubernetes' default node mask of the
// range's family (24 for IPv4, 64 for IPv6) when it is unset.
func SetDefaults(c *v1alpha1.ClusterCIDR) {
	if c.Spec.NodeMaskSize != 0 {
		return
	}
	p, err := netip.ParsePrefix(c.Spec.CIDR)
	if err != nil {
		return // validation says what is wrong
	}
	c.Spec.NodeMaskSize = netaddr.DefaultNodeMaskIPv4
	if p.Addr().Is6() {
		c.Spec.NodeMaskSize = netaddr.DefaultNodeMaskIPv6
	}
}

// Validate checks a ClusterCIDR on its own: a CIDR with no host bits set,
// of a family the cluster may have, and a node mask that fits it.
func Validate(c *v1alpha1.ClusterCIDR, opts Options) field.ErrorList {
	var errs field.ErrorList
	path := field.NewPath("spec")
	if c.Spec.CIDR == "" {
		return field.ErrorList{field.Required(path.Child("cidr"), "the range of pod addresses, such as 10.244.0.0/16 or fd00:10:244::/56")}
	}
	p, err := netaddr.ParseCIDR(c.Spec.CIDR)
	if err != nil {
		return field.ErrorList{field.Invalid(path.Child("cidr"), c.Spec.CIDR, err.Error())}
	}
	f := netaddr.FamilyOf(p.Addr())
	if !opts.DualStack && opts.Primary != "" && f != opts.Primary {
		errs = append(errs, field.Invalid(path.Child("cidr"), c.Spec.CIDR, fmt.Sprintf("the cluster is %s-only and dual-stack is disabled (--feature-gates IPv6DualStack=false)", opts.Primary)))
	}
	maxMask := netaddr.MaxNodeMaskIPv4
	if f == netaddr.IPv6 {
		maxMask = netaddr.MaxNodeMaskIPv6
	}
	if m := int(c.Spec.NodeMaskSize); m < p.Bits() || m > maxMask {
		errs = append(errs, field.Invalid(path.Child("nodeMaskSize"), c.Spec.NodeMaskSize,
			fmt.Sprintf("must be between the range's prefix length %d and %d for %s, so that each Node's pod CIDR lies within %s and holds its gateway and a pod", p.Bits(), maxMask, f, p)))
	}
	return errs
}

// ValidateOnePerFamily refuses a second ClusterCIDR of a family, naming
// the one the cluster has.
func ValidateOnePerFamily(c *v1alpha1.ClusterCIDR, existing []v1alpha1.ClusterCIDR) field.ErrorList {
	p, err := netip.ParsePrefix(c.Spec.CIDR)
	if err != nil {
		return nil
	}
	f := netaddr.FamilyOf(p.Addr())
	for _, o := range existing {
		q, err := netip.ParsePrefix(o.Spec.CIDR)
		if err != nil || o.Name == c.Name || netaddr.FamilyOf(q.Addr()) != f {
			continue
		}
		return field.ErrorList{field.Invalid(field.NewPath("spec", "cidr"), c.Spec.CIDR, fmt.Sprintf(
			"the cluster has a ClusterCIDR of family %s already: %s (%s); a cluster has at most one per family (delete %s first to replace it)",
			f, o.Name, o.Spec.CIDR, o.Name))}
	}
	return nil
}

// ValidateUpdate refuses any change to the spec: Nodes' pod CIDRs were cut
// from it.
func ValidateUpdate(c, old *v1alpha1.ClusterCIDR) field.ErrorList {
	var errs field.ErrorList
	path := field.NewPath("spec")
	if c.Spec.CIDR != old.Spec.CIDR {
		errs = append(errs, field.Invalid(path.Child("cidr"), c.Spec.CIDR, "field is immutable"))
	}
	if c.Spec.NodeMaskSize != old.Spec.NodeMaskSize {
		errs = append(errs, field.Invalid(path.Child("nodeMaskSize"), c.Spec.NodeMaskSize, "field is immutable"))
	}
	return errs
}
