// Package discovery holds the registry of discovery.k8s.io/v1 EndpointSlices.
package discovery

import (
	"context"
	"fmt"
	"net/netip"
	"strings"

	discoveryv1 "k8s.io/api/discovery/v1"
	apiequality "k8s.io/apimachinery/pkg/api/equality"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/validation/field"
	"k8s.io/apiserver/pkg/registry/generic"
	"k8s.io/apiserver/pkg/registry/rest"
	"k8s.io/apiserver/pkg/storage/names"

	registry "github.com/duet-net/duet/internal/registry/generic"
)

const maxEndpoints = 1000

// NewStorage returns the discovery.k8s.io/v1 stores.
func NewStorage(typer runtime.ObjectTyper, optsGetter generic.RESTOptionsGetter) (map[string]rest.Storage, error) {
	s, err := registry.NewStore(registry.Options{
		NewFunc:     func() runtime.Object { return &discoveryv1.EndpointSlice{} },
		NewListFunc: func() runtime.Object { return &discoveryv1.EndpointSliceList{} },
		Group:       discoveryv1.GroupName, Resource: "endpointslices", Singular: "endpointslice",
		Strategy: &registry.Strategy{
			ObjectTyper: typer, NameGenerator: names.SimpleNameGenerator, Namespaced: true,
			// generation counts content changes, as in Kubernetes: the
			// EndpointSlice controller's tracker compares it with what it
			// wrote to tell a stale cache from a fresh one.
			PrepareForCreateFunc: func(_ context.Context, obj runtime.Object) {
				obj.(*discoveryv1.EndpointSlice).Generation = 1
			},
			PrepareForUpdateFunc: func(_ context.Context, obj, old runtime.Object) {
				n, o := obj.(*discoveryv1.EndpointSlice), old.(*discoveryv1.EndpointSlice)
				n.Generation = o.Generation
				if !apiequality.Semantic.DeepEqual(n.Endpoints, o.Endpoints) || !apiequality.Semantic.DeepEqual(n.Ports, o.Ports) ||
					n.AddressType != o.AddressType || !apiequality.Semantic.DeepEqual(n.Labels, o.Labels) {
					n.Generation = o.Generation + 1
				}
			},
			ValidateFunc: func(_ context.Context, obj runtime.Object) field.ErrorList {
				return validateEndpointSlice(obj.(*discoveryv1.EndpointSlice))
			},
		},
		Table: registry.NewTable(
			registry.Column{Name: "AddressType", Type: "string", Cell: func(o runtime.Object) any { return string(o.(*discoveryv1.EndpointSlice).AddressType) }},
			registry.Column{Name: "Ports", Type: "string", Cell: func(o runtime.Object) any { return slicePorts(o.(*discoveryv1.EndpointSlice)) }},
			registry.Column{Name: "Endpoints", Type: "string", Cell: func(o runtime.Object) any { return sliceEndpoints(o.(*discoveryv1.EndpointSlice)) }},
		),
	}, optsGetter)
	if err != nil {
		return nil, err
	}
	return map[string]rest.Storage{"endpointslices": s}, nil
}

func validateEndpointSlice(s *discoveryv1.EndpointSlice) field.ErrorList {
	var errs field.ErrorList
	switch s.AddressType {
	case discoveryv1.AddressTypeIPv4, discoveryv1.AddressTypeIPv6, discoveryv1.AddressTypeFQDN:
	default:
		errs = append(errs, field.NotSupported(field.NewPath("addressType"), s.AddressType, []string{"IPv4", "IPv6", "FQDN"}))
	}
	if len(s.Endpoints) > maxEndpoints {
		errs = append(errs, field.TooMany(field.NewPath("endpoints"), len(s.Endpoints), maxEndpoints))
	}
	for i, ep := range s.Endpoints {
		p := field.NewPath("endpoints").Index(i).Child("addresses")
		if len(ep.Addresses) == 0 || len(ep.Addresses) > 100 {
			errs = append(errs, field.Invalid(p, ep.Addresses, "must contain at least 1 and at most 100 addresses"))
		}
		for j, a := range ep.Addresses {
			if s.AddressType == discoveryv1.AddressTypeFQDN {
				continue
			}
			ip, err := netip.ParseAddr(a)
			if err != nil || ip.Zone() != "" {
				errs = append(errs, field.Invalid(p.Index(j), a, "must be a valid IP address"))
				continue
			}
			if (s.AddressType == discoveryv1.AddressTypeIPv4) != ip.Is4() {
				errs = append(errs, field.Invalid(p.Index(j), a, fmt.Sprintf("must be an %s address", s.AddressType)))
			}
		}
	}
	return errs
}

func slicePorts(s *discoveryv1.EndpointSlice) string {
	if len(s.Ports) == 0 {
		return "<unset>"
	}
	var out []string
	for _, p := range s.Ports {
		if p.Port != nil {
			out = append(out, fmt.Sprint(*p.Port))
		}
	}
	return strings.Join(out, ",")
}

func sliceEndpoints(s *discoveryv1.EndpointSlice) string {
	var out []string
	n := 0
	for _, ep := range s.Endpoints {
		for _, a := range ep.Addresses {
			if len(out) < 3 {
				out = append(out, a)
			}
			n++
		}
	}
	if n == 0 {
		return "<unset>"
	}
	res := strings.Join(out, ",")
	if n > 3 {
		res += fmt.Sprintf(" + %d more...", n-3)
	}
	return res
}
