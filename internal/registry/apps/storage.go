// Package apps holds the registries of apps/v1 Deployments, ReplicaSets,
// DaemonSets and ControllerRevisions. Objects are stored as apps/v1, like
// every resource Duet serves; defaulting, validation and the strategies'
// rules (generation, templateGeneration, what status writes may change)
// are Kubernetes' own, from k8s.io/kubernetes, applied through its
// internal types.
package apps

import (
	"context"
	"strconv"

	appsv1 "k8s.io/api/apps/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/validation/field"
	"k8s.io/apiserver/pkg/registry/generic"
	"k8s.io/apiserver/pkg/registry/rest"
	"k8s.io/apiserver/pkg/storage/names"

	registry "github.com/duet-net/duet/internal/registry/generic"
)

// APIVersion is the group version the stores serve.
const APIVersion = "apps/v1"

// NewStorage returns the apps/v1 stores, keyed by resource path.
func NewStorage(typer runtime.ObjectTyper, optsGetter generic.RESTOptionsGetter) (map[string]rest.Storage, error) {
	out := map[string]rest.Storage{}
	add := func(o registry.Options, rules kindRules, status []registry.MetaField, scale *scaleKind) error {
		o.Group = appsv1.GroupName
		o.Strategy = strategy(typer, rules, status != nil)
		s, err := registry.NewStore(o, optsGetter)
		if err != nil {
			return err
		}
		out[o.Resource] = s
		if status != nil {
			out[o.Resource+"/status"] = registry.NewStatusStore(s, &registry.StatusStrategy{
				Strategy: o.Strategy, KeepMeta: status, ValidatesMeta: true,
				PrepareForUpdateFunc: func(_ context.Context, obj, old runtime.Object) {
					if rules.prepareStatus != nil {
						rules.prepareStatus(obj, old)
					}
				},
				ValidateStatusUpdateFunc: func(_ context.Context, obj, old runtime.Object) field.ErrorList {
					return rules.validateStatus(obj, old)
				},
			})
		}
		if scale != nil {
			out[o.Resource+"/scale"] = newScaleREST(s.Store, *scale)
		}
		return nil
	}
	all := []string{"all"}

	// A Deployment's status writes keep its labels, as in Kubernetes.
	if err := add(registry.Options{
		NewFunc: func() runtime.Object { return &appsv1.Deployment{} }, NewListFunc: func() runtime.Object { return &appsv1.DeploymentList{} },
		Resource: "deployments", Singular: "deployment", ShortNames: []string{"deploy"}, Categories: all,
		Table: deploymentTable(),
	}, deployment, []registry.MetaField{registry.MetaLabels}, &deploymentScale); err != nil {
		return nil, err
	}
	if err := add(registry.Options{
		NewFunc: func() runtime.Object { return &appsv1.ReplicaSet{} }, NewListFunc: func() runtime.Object { return &appsv1.ReplicaSetList{} },
		Resource: "replicasets", Singular: "replicaset", ShortNames: []string{"rs"}, Categories: all,
		Fields: func(obj runtime.Object) fields.Set {
			return fields.Set{"status.replicas": strconv.Itoa(int(obj.(*appsv1.ReplicaSet).Status.Replicas))}
		},
		Table: replicaSetTable(),
	}, replicaSet, []registry.MetaField{}, &replicaSetScale); err != nil {
		return nil, err
	}
	if err := add(registry.Options{
		NewFunc: func() runtime.Object { return &appsv1.DaemonSet{} }, NewListFunc: func() runtime.Object { return &appsv1.DaemonSetList{} },
		Resource: "daemonsets", Singular: "daemonset", ShortNames: []string{"ds"}, Categories: all,
		Table: daemonSetTable(),
	}, daemonSet, []registry.MetaField{}, nil); err != nil {
		return nil, err
	}
	if err := add(registry.Options{
		NewFunc: func() runtime.Object { return &appsv1.ControllerRevision{} }, NewListFunc: func() runtime.Object { return &appsv1.ControllerRevisionList{} },
		Resource: "controllerrevisions", Singular: "controllerrevision",
		Table: controllerRevisionTable(),
	}, controllerRevision, nil, nil); err != nil {
		return nil, err
	}
	return out, nil
}

// strategy wires a kind's rules into Duet's generic strategy. Upstream's
// validation checks metadata itself.
func strategy(typer runtime.ObjectTyper, rules kindRules, hasStatus bool) *registry.Strategy {
	return &registry.Strategy{
		ObjectTyper: typer, NameGenerator: names.SimpleNameGenerator, APIVersion: APIVersion,
		Namespaced: true, HasStatus: hasStatus, ValidatesMeta: true,
		PrepareForCreateFunc: func(_ context.Context, obj runtime.Object) { rules.create(obj) },
		PrepareForUpdateFunc: func(_ context.Context, obj, old runtime.Object) { rules.update(obj, old) },
		ValidateFunc:         func(_ context.Context, obj runtime.Object) field.ErrorList { return rules.validate(obj) },
		ValidateUpdateFunc: func(_ context.Context, obj, old runtime.Object) field.ErrorList {
			return rules.validateUpdate(obj, old)
		},
		WarningsFunc: rules.warnings,
	}
}
