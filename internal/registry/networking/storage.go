// Package networking holds the registries of networking.k8s.io/v1
// ServiceCIDRs and IPAddresses. An IPAddress object is the record that a
// cluster IP is taken: its name is the IP, and creating it only if absent
// is what keeps cluster IPs unique across API server replicas.
package networking

import (
	"context"
	"net/netip"
	"strings"

	networkingv1 "k8s.io/api/networking/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/validation/field"
	"k8s.io/apiserver/pkg/registry/generic"
	"k8s.io/apiserver/pkg/registry/rest"
	"k8s.io/apiserver/pkg/storage/names"

	"github.com/duet-net/duet/internal/netaddr"
	registry "github.com/duet-net/duet/internal/registry/generic"
)

// NewStorage returns the networking.k8s.io/v1 stores.
func NewStorage(typer runtime.ObjectTyper, optsGetter generic.RESTOptionsGetter) (map[string]rest.Storage, error) {
	out := map[string]rest.Storage{}
	cidrStrategy := &registry.Strategy{
		ObjectTyper: typer, NameGenerator: names.SimpleNameGenerator, HasStatus: true, APIVersion: "networking.k8s.io/v1",
		ValidateFunc: func(_ context.Context, obj runtime.Object) field.ErrorList {
			return validateServiceCIDR(obj.(*networkingv1.ServiceCIDR))
		},
		ValidateUpdateFunc: func(_ context.Context, obj, old runtime.Object) field.ErrorList {
			errs := validateServiceCIDR(obj.(*networkingv1.ServiceCIDR))
			if strings.Join(obj.(*networkingv1.ServiceCIDR).Spec.CIDRs, ",") != strings.Join(old.(*networkingv1.ServiceCIDR).Spec.CIDRs, ",") {
				errs = append(errs, field.Invalid(field.NewPath("spec", "cidrs"), obj.(*networkingv1.ServiceCIDR).Spec.CIDRs, "field is immutable"))
			}
			return errs
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

func validateServiceCIDR(s *networkingv1.ServiceCIDR) field.ErrorList {
	var errs field.ErrorList
	path := field.NewPath("spec", "cidrs")
	if len(s.Spec.CIDRs) == 0 || len(s.Spec.CIDRs) > 2 {
		errs = append(errs, field.Invalid(path, s.Spec.CIDRs, "must contain one CIDR, or two of different families"))
	}
	fams := map[netaddr.Family]bool{}
	for i, c := range s.Spec.CIDRs {
		p, err := netaddr.ParseCIDR(c)
		if err != nil {
			errs = append(errs, field.Invalid(path.Index(i), c, err.Error()))
			continue
		}
		fams[netaddr.FamilyOf(p.Addr())] = true
	}
	if len(s.Spec.CIDRs) == 2 && len(fams) != 2 {
		errs = append(errs, field.Invalid(path, s.Spec.CIDRs, "may specify no more than one IP for each IP family, i.e 192.168.0.0/24 and 2001:db8::/64"))
	}
	return errs
}
