// Package podconfig holds the registries of the core/v1 objects pods draw
// their configuration and identity from: ConfigMaps, Secrets and
// ServiceAccounts. Their rules are Kubernetes': key syntax and a 1 MiB
// size limit for ConfigMaps and Secrets, the required keys of each
// built-in Secret type, `immutable`, Secret type Opaque by default,
// stringData merged into data, and ServiceAccount secret references
// reduced to names.
package podconfig

import (
	"fmt"

	corev1 "k8s.io/api/core/v1"
	apivalidation "k8s.io/apimachinery/pkg/api/validation"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apiserver/pkg/registry/generic"
	"k8s.io/apiserver/pkg/registry/rest"
	"k8s.io/apiserver/pkg/storage/names"

	registry "github.com/duet-net/duet/internal/registry/generic"
)

// The resources this package serves, as their stores are keyed.
const (
	ConfigMaps      = "configmaps"
	Secrets         = "secrets"
	ServiceAccounts = "serviceaccounts"
)

// NewStorage returns the stores of ConfigMaps, Secrets and
// ServiceAccounts, keyed by resource path, and with tokens the
// serviceaccounts/token subresource.
func NewStorage(typer runtime.ObjectTyper, optsGetter generic.RESTOptionsGetter, tokens *TokenOptions) (map[string]rest.Storage, error) {
	out := map[string]rest.Storage{}
	for _, o := range []registry.Options{
		{
			NewFunc: func() runtime.Object { return &corev1.ConfigMap{} }, NewListFunc: func() runtime.Object { return &corev1.ConfigMapList{} },
			Resource: ConfigMaps, Singular: "configmap", ShortNames: []string{"cm"},
			Strategy: configMapStrategy(), Table: configMapTable(),
		},
		{
			NewFunc: func() runtime.Object { return &corev1.Secret{} }, NewListFunc: func() runtime.Object { return &corev1.SecretList{} },
			Resource: Secrets, Singular: "secret",
			Strategy: secretStrategy(), Table: secretTable(), Fields: secretFields,
		},
		{
			NewFunc: func() runtime.Object { return &corev1.ServiceAccount{} }, NewListFunc: func() runtime.Object { return &corev1.ServiceAccountList{} },
			Resource: ServiceAccounts, Singular: "serviceaccount", ShortNames: []string{"sa"},
			Strategy: serviceAccountStrategy(), Table: registry.NewTable(),
		},
	} {
		o.Strategy.ObjectTyper = typer
		o.Strategy.NameGenerator = names.SimpleNameGenerator
		o.Strategy.APIVersion = "v1"
		s, err := registry.NewStore(o, optsGetter)
		if err != nil {
			return nil, fmt.Errorf("building %s storage: %w", o.Resource, err)
		}
		out[o.Resource] = s
	}
	if tokens != nil {
		out[ServiceAccounts+"/token"] = &TokenREST{sas: out[ServiceAccounts].(rest.Getter), secrets: out[Secrets].(rest.Getter), opts: *tokens}
	}
	return out, nil
}

func secretFields(obj runtime.Object) fields.Set {
	return fields.Set{"type": string(obj.(*corev1.Secret).Type)}
}

// configMapTable is kubectl's: how many keys (data and binaryData).
func configMapTable() *registry.Table {
	return registry.NewTable(registry.Column{Name: "Data", Type: "string", Description: "Number of keys in data and binaryData", Cell: func(o runtime.Object) any {
		cm := o.(*corev1.ConfigMap)
		return int64(len(cm.Data) + len(cm.BinaryData))
	}})
}

// secretTable is kubectl's: the type and how many keys.
func secretTable() *registry.Table {
	return registry.NewTable(
		registry.Column{Name: "Type", Type: "string", Description: "Used to facilitate programmatic handling of secret data", Cell: func(o runtime.Object) any {
			return string(o.(*corev1.Secret).Type)
		}},
		registry.Column{Name: "Data", Type: "string", Description: "Number of keys in data", Cell: func(o runtime.Object) any {
			return int64(len(o.(*corev1.Secret).Data))
		}},
	)
}

// nameIsDNSSubdomain is the name rule of ConfigMaps and Secrets.
var nameIsDNSSubdomain = apivalidation.NameIsDNSSubdomain
