// Package coordination holds the registry of coordination.k8s.io/v1 Leases
// (node heartbeats and controller leader election).
package coordination

import (
	coordinationv1 "k8s.io/api/coordination/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apiserver/pkg/registry/generic"
	"k8s.io/apiserver/pkg/registry/rest"
	"k8s.io/apiserver/pkg/storage/names"

	registry "github.com/duet-net/duet/internal/registry/generic"
)

// NewStorage returns the coordination.k8s.io/v1 stores.
func NewStorage(typer runtime.ObjectTyper, optsGetter generic.RESTOptionsGetter) (map[string]rest.Storage, error) {
	s, err := registry.NewStore(registry.Options{
		NewFunc:     func() runtime.Object { return &coordinationv1.Lease{} },
		NewListFunc: func() runtime.Object { return &coordinationv1.LeaseList{} },
		Group:       coordinationv1.GroupName, Resource: "leases", Singular: "lease",
		Strategy: &registry.Strategy{ObjectTyper: typer, NameGenerator: names.SimpleNameGenerator, Namespaced: true},
		Table: registry.NewTable(registry.Column{Name: "Holder", Type: "string", Cell: func(o runtime.Object) any {
			if h := o.(*coordinationv1.Lease).Spec.HolderIdentity; h != nil {
				return *h
			}
			return ""
		}}),
	}, optsGetter)
	if err != nil {
		return nil, err
	}
	return map[string]rest.Storage{"leases": s}, nil
}
