// Package networking holds the registries of networking.k8s.io/v1
// ServiceCIDRs and IPAddresses. An IPAddress object is the record that a
// cluster IP is taken: its name is the IP, and creating it only if absent
// is what keeps cluster IPs unique across API server replicas.
package networking

import (
	"context"
	"fmt"
	"net/netip"
	"strings"

	networkingv1 "k8s.io/api/networking/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/validation/field"
	"k8s.io/apiserver/pkg/authentication/user"
	genericapirequest "k8s.io/apiserver/pkg/endpoints/request"
	"k8s.io/apiserver/pkg/registry/generic"
	"k8s.io/apiserver/pkg/registry/rest"
	"k8s.io/apiserver/pkg/storage/names"

	"github.com/duet-net/duet/internal/netaddr"
	registry "github.com/duet-net/duet/internal/registry/generic"
)

// Options are the cluster settings the ServiceCIDR rules depend on.
type Options struct {
	// DualStack is the IPv6DualStack feature gate: off, a ServiceCIDR of
	// the family other than Primary is refused.
	DualStack bool
	Primary   netaddr.Family
	// DeleteGuard, when set, may refuse the deletion of a ServiceCIDR
	// (the cluster's default one, the last one of a family) with a Status
	// error saying why.
	DeleteGuard func(ctx context.Context, obj *networkingv1.ServiceCIDR) error
}

// NewStorage returns the networking.k8s.io/v1 stores.
func NewStorage(typer runtime.ObjectTyper, optsGetter generic.RESTOptionsGetter, opts Options) (map[string]rest.Storage, error) {
	out := map[string]rest.Storage{}
	cidrStrategy := &registry.Strategy{
		ObjectTyper: typer, NameGenerator: names.SimpleNameGenerator, HasStatus: true, APIVersion: "networking.k8s.io/v1",
		ValidateFunc: func(_ context.Context, obj runtime.Object) field.ErrorList {
			return ValidateServiceCIDR(obj.(*networkingv1.ServiceCIDR), opts)
		},
		ValidateUpdateFunc: func(ctx context.Context, obj, old runtime.Object) field.ErrorList {
			s, o := obj.(*networkingv1.ServiceCIDR), old.(*networkingv1.ServiceCIDR)
			if droppedSecondaryByServer(ctx, s, o) {
				return nil
			}
			return ValidateServiceCIDRUpdate(s, o, opts)
		},
	}
	cidrs, err := registry.NewStore(registry.Options{
		NewFunc:     func() runtime.Object { return &networkingv1.ServiceCIDR{} },
		NewListFunc: func() runtime.Object { return &networkingv1.ServiceCIDRList{} },
		Group:       networkingv1.GroupName, Resource: "servicecidrs", Singular: "servicecidr",
		Strategy: cidrStrategy,
		Table: registry.NewTable(registry.Column{Name: "CIDRs", Type: "string", Cell: func(o runtime.Object) any {
			return strings.Join(o.(*networkingv1.ServiceCIDR).Spec.CIDRs, ",")
		}}),
	}, optsGetter)
	if err != nil {
		return nil, err
	}
	out["servicecidrs"] = cidrs
	if opts.DeleteGuard != nil {
		out["servicecidrs"] = &registry.GuardedStore{Store: cidrs, Guard: func(ctx context.Context, obj runtime.Object) error {
			return opts.DeleteGuard(ctx, obj.(*networkingv1.ServiceCIDR))
		}}
	}
	out["servicecidrs/status"] = registry.NewStatusStore(cidrs, &registry.StatusStrategy{Strategy: cidrStrategy, KeepMeta: registry.KeepAllMeta})

	ips, err := registry.NewStore(registry.Options{
		NewFunc:     func() runtime.Object { return &networkingv1.IPAddress{} },
		NewListFunc: func() runtime.Object { return &networkingv1.IPAddressList{} },
		Group:       networkingv1.GroupName, Resource: "ipaddresses", Singular: "ipaddress", ShortNames: []string{"ip"},
		// Every cluster IP is one, written straight to etcd by the
		// allocator; only the repair loop and users read them.
		NoWatchCache: true,
		Strategy: &registry.Strategy{
			ObjectTyper: typer, NameGenerator: names.SimpleNameGenerator,
			NameValidator: func(name string, _ bool) []string {
				a, err := netip.ParseAddr(name)
				if err != nil || a.Zone() != "" || a.Is4In6() {
					return []string{"must be a valid IP address"}
				}
				if a.String() != name {
					return []string{"must be in canonical form (\"" + a.String() + "\")"}
				}
				return nil
			},
			ValidateFunc: func(_ context.Context, obj runtime.Object) field.ErrorList {
				ip := obj.(*networkingv1.IPAddress)
				if ip.Spec.ParentRef == nil {
					return field.ErrorList{field.Required(field.NewPath("spec", "parentRef"), "")}
				}
				var errs field.ErrorList
				if ip.Spec.ParentRef.Resource == "" {
					errs = append(errs, field.Required(field.NewPath("spec", "parentRef", "resource"), ""))
				}
				if ip.Spec.ParentRef.Name == "" {
					errs = append(errs, field.Required(field.NewPath("spec", "parentRef", "name"), ""))
				}
				return errs
			},
			ValidateUpdateFunc: func(_ context.Context, obj, old runtime.Object) field.ErrorList {
				n, o := obj.(*networkingv1.IPAddress).Spec.ParentRef, old.(*networkingv1.IPAddress).Spec.ParentRef
				if n == nil || o == nil || *n != *o {
					return field.ErrorList{field.Invalid(field.NewPath("spec", "parentRef"), n, "field is immutable")}
				}
				return nil
			},
		},
		Fields: func(obj runtime.Object) fields.Set {
			ref := obj.(*networkingv1.IPAddress).Spec.ParentRef
			if ref == nil {
				return fields.Set{}
			}
			return fields.Set{"spec.parentRef.resource": ref.Resource, "spec.parentRef.namespace": ref.Namespace, "spec.parentRef.name": ref.Name}
		},
		Table: registry.NewTable(registry.Column{Name: "ParentRef", Type: "string", Cell: func(o runtime.Object) any {
			ref := o.(*networkingv1.IPAddress).Spec.ParentRef
			if ref == nil {
				return "<none>"
			}
			return ref.Resource + "/" + ref.Namespace + "/" + ref.Name
		}}),
	}, optsGetter)
	if err != nil {
		return nil, err
	}
	out["ipaddresses"] = ips
	return out, nil
}

// ValidateServiceCIDR checks a new ServiceCIDR as Kubernetes does (one
// CIDR, or two of different families), and that Duet can serve it: a
// range of at least 8 addresses, an IPv6 one no larger than a /64, and
// with the IPv6DualStack gate off none of the other family.
func ValidateServiceCIDR(s *networkingv1.ServiceCIDR, opts Options) field.ErrorList {
	var errs field.ErrorList
	path := field.NewPath("spec", "cidrs")
	switch {
	case len(s.Spec.CIDRs) == 0:
		return field.ErrorList{field.Required(path, "at least one CIDR required")}
	case len(s.Spec.CIDRs) > 2:
		return field.ErrorList{field.Invalid(path, s.Spec.CIDRs, "may only hold up to 2 values")}
	}
	fams := map[netaddr.Family]bool{}
	for i, c := range s.Spec.CIDRs {
		p, err := netaddr.ParseCIDR(c)
		if err != nil {
			errs = append(errs, field.Invalid(path.Index(i), c, err.Error()))
			continue
		}
		f := netaddr.FamilyOf(p.Addr())
		fams[f] = true
		if err := netaddr.ValidateServiceRangeSize("service CIDR", p); err != nil {
			errs = append(errs, field.Invalid(path.Index(i), c, err.Error()))
		}
		if !opts.DualStack && opts.Primary != "" && f != opts.Primary {
			errs = append(errs, field.Invalid(path.Index(i), c, fmt.Sprintf("the cluster is %s-only and dual-stack is disabled (--feature-gates IPv6DualStack=false)", opts.Primary)))
		}
	}
	if len(s.Spec.CIDRs) == 2 && len(fams) == 1 {
		errs = append(errs, field.Invalid(path, s.Spec.CIDRs, "may specify no more than one IP for each IP family, i.e 192.168.0.0/24 and 2001:db8::/64"))
	}
	return errs
}

// droppedSecondaryByServer reports an update of a ServiceCIDR of two
// families to its first alone made by the API server itself: the default
// ServiceCIDR follows --service-cluster-ip-range when a restart drops the
// second family (users cannot make that change: spec.cidrs only grows).
func droppedSecondaryByServer(ctx context.Context, s, old *networkingv1.ServiceCIDR) bool {
	if len(old.Spec.CIDRs) != 2 || len(s.Spec.CIDRs) != 1 || s.Spec.CIDRs[0] != old.Spec.CIDRs[0] {
		return false
	}
	u, ok := genericapirequest.UserFrom(ctx)
	return ok && u.GetName() == user.APIServerUser
}

// ValidateServiceCIDRUpdate checks an update: spec.cidrs is immutable,
// except that a single-family ServiceCIDR may gain a CIDR of the other
// family (as Kubernetes allows, to turn the default one dual-stack).
func ValidateServiceCIDRUpdate(s, old *networkingv1.ServiceCIDR, opts Options) field.ErrorList {
	path := field.NewPath("spec", "cidrs")
	switch {
	case len(old.Spec.CIDRs) == len(s.Spec.CIDRs):
		var errs field.ErrorList
		for i, c := range old.Spec.CIDRs {
			if s.Spec.CIDRs[i] != c {
				errs = append(errs, field.Invalid(path.Index(i), s.Spec.CIDRs[i], "field is immutable"))
			}
		}
		return errs
	case len(old.Spec.CIDRs) == 1 && len(s.Spec.CIDRs) == 2:
		var errs field.ErrorList
		if s.Spec.CIDRs[0] != old.Spec.CIDRs[0] {
			errs = append(errs, field.Invalid(path.Index(0), s.Spec.CIDRs[0], "field is immutable"))
		}
		return append(errs, ValidateServiceCIDR(s, opts)...)
	}
	return field.ErrorList{field.Invalid(path, s.Spec.CIDRs, "field is immutable")}
}
