package service

import (
	"context"
	"fmt"
	"strings"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/validation/field"
	genericapirequest "k8s.io/apiserver/pkg/endpoints/request"
	"k8s.io/apiserver/pkg/registry/generic"
	genericregistry "k8s.io/apiserver/pkg/registry/generic/registry"
	"k8s.io/apiserver/pkg/registry/rest"
	"k8s.io/apiserver/pkg/storage/names"
	"k8s.io/apiserver/pkg/util/dryrun"
	"k8s.io/klog/v2"

	"github.com/duet-net/duet/internal/apis/core"
	registry "github.com/duet-net/duet/internal/registry/generic"
)

// NewStorage returns the services and services/status stores. Cluster IPs
// are allocated in the store's BeginCreate/BeginUpdate hooks, committed when
// the Service is persisted and reverted when it is not, and released after
// a delete: an address is never held by a Service that was not stored. The
// cluster's families are read from allocs at every request, so that
// service ranges added while the server runs are served at once.
func NewStorage(typer runtime.ObjectTyper, optsGetter generic.RESTOptionsGetter, allocs *Allocators) (map[string]rest.Storage, error) {
	strategy := &registry.Strategy{
		ObjectTyper: typer, NameGenerator: names.SimpleNameGenerator,
		Namespaced: true, HasStatus: true, ValidatesMeta: true, APIVersion: "v1",
		PrepareForCreateFunc: func(_ context.Context, obj runtime.Object) {
			svc := obj.(*core.Service)
			SetDefaults(svc)
			PrepareForCreate(svc, allocs.Config())
		},
		PrepareForUpdateFunc: func(_ context.Context, obj, old runtime.Object) {
			svc := obj.(*core.Service)
			SetDefaults(svc)
			PrepareForUpdate(svc, old.(*core.Service), allocs.Config())
		},
		ValidateFunc: func(_ context.Context, obj runtime.Object) field.ErrorList {
			return ValidateCreate(obj.(*core.Service), allocs.Config())
		},
		ValidateUpdateFunc: func(_ context.Context, obj, old runtime.Object) field.ErrorList {
			return ValidateUpdate(obj.(*core.Service), old.(*core.Service), allocs.Config())
		},
		WarningsFunc: func(obj runtime.Object) []string { return Warnings(obj.(*core.Service)) },
	}
	main, err := registry.NewStore(registry.Options{
		NewFunc:     func() runtime.Object { return &core.Service{} },
		NewListFunc: func() runtime.Object { return &core.ServiceList{} },
		Resource:    "services", Singular: "service",
		Strategy: strategy, ShortNames: []string{"svc"}, Categories: []string{"all"},
		Fields: func(obj runtime.Object) fields.Set {
			svc := obj.(*core.Service)
			return fields.Set{"spec.clusterIP": svc.Spec.ClusterIP, "spec.type": string(svc.Spec.Type)}
		},
		Table: serviceTable(),
	}, optsGetter)
	if err != nil {
		return nil, err
	}
	s := main.Store
	allocs.SetStoredReader(func(ctx context.Context, namespace, name string) (*core.Service, error) {
		// An unset resourceVersion reads etcd itself, not the watch cache.
		obj, err := s.Get(genericapirequest.WithNamespace(ctx, namespace), name, &metav1.GetOptions{})
		if err != nil {
			return nil, err
		}
		svc, ok := obj.(*core.Service)
		if !ok {
			return nil, fmt.Errorf("reading Service %s/%s: got %T", namespace, name, obj)
		}
		return svc, nil
	})
	s.BeginCreate = func(ctx context.Context, obj runtime.Object, options *metav1.CreateOptions) (genericregistry.FinishFunc, error) {
		svc := obj.(*core.Service)
		SetDefaults(svc)
		txn, err := allocs.AllocateCreate(ctx, svc, dryrun.IsDryRun(options.DryRun))
		if err != nil {
			return nil, err
		}
		return finish(txn), nil
	}
	s.BeginUpdate = func(ctx context.Context, obj, old runtime.Object, options *metav1.UpdateOptions) (genericregistry.FinishFunc, error) {
		svc := obj.(*core.Service)
		SetDefaults(svc)
		txn, err := allocs.AllocateUpdate(ctx, svc, old.(*core.Service), dryrun.IsDryRun(options.DryRun))
		if err != nil {
			return nil, err
		}
		return finish(txn), nil
	}
	s.AfterDelete = func(obj runtime.Object, options *metav1.DeleteOptions) {
		if dryrun.IsDryRun(options.DryRun) {
			return
		}
		svc := obj.(*core.Service)
		if err := allocs.Release(context.Background(), svc); err != nil {
			// The repair loop frees what could not be freed here.
			klog.ErrorS(err, "releasing cluster IPs of a deleted Service", "service", klog.KObj(svc))
		}
	}
	s.Decorator = func(obj runtime.Object) {
		cfg := allocs.Config()
		switch o := obj.(type) {
		case *core.Service:
			DefaultOnRead(o, cfg)
		case *core.ServiceList:
			for i := range o.Items {
				DefaultOnRead(&o.Items[i], cfg)
			}
		}
	}
	return map[string]rest.Storage{
		"services":        main,
		"services/status": registry.NewStatusStore(main, &registry.StatusStrategy{Strategy: strategy}),
	}, nil
}

func finish(txn Txn) genericregistry.FinishFunc {
	return func(_ context.Context, success bool) {
		if success {
			txn.Commit()
		} else {
			txn.Revert()
		}
	}
}

// serviceTable is kubectl's Service table plus IP-FAMILIES; CLUSTER-IP shows
// every cluster IP, primary first.
func serviceTable() *registry.Table {
	return registry.NewTable(
		registry.Column{Name: "Type", Type: "string", Cell: func(o runtime.Object) any { return string(o.(*core.Service).Spec.Type) }},
		registry.Column{Name: "Cluster-IP", Type: "string", Cell: func(o runtime.Object) any {
			svc := o.(*core.Service)
			if len(svc.Spec.ClusterIPs) > 0 {
				return strings.Join(svc.Spec.ClusterIPs, ",")
			}
			return orNone(svc.Spec.ClusterIP)
		}},
		registry.Column{Name: "External-IP", Type: "string", Cell: func(o runtime.Object) any { return externalIPs(o.(*core.Service)) }},
		registry.Column{Name: "Port(s)", Type: "string", Cell: func(o runtime.Object) any { return portsColumn(o.(*core.Service)) }},
		registry.AgeColumn(),
		registry.Column{Name: "Selector", Type: "string", Priority: 1, Cell: func(o runtime.Object) any {
			sel := o.(*core.Service).Spec.Selector
			if len(sel) == 0 {
				return "<none>"
			}
			return fields.Set(sel).String()
		}},
		registry.Column{Name: "IP-Families", Type: "string", Priority: 1, Cell: func(o runtime.Object) any {
			var fams []string
			for _, f := range o.(*core.Service).Spec.IPFamilies {
				fams = append(fams, string(f))
			}
			return orNone(strings.Join(fams, ","))
		}},
	)
}

func externalIPs(svc *core.Service) string {
	switch svc.Spec.Type {
	case corev1.ServiceTypeExternalName:
		return svc.Spec.ExternalName
	case corev1.ServiceTypeLoadBalancer:
		var ips []string
		for _, in := range svc.Status.LoadBalancer.Ingress {
			if in.IP != "" {
				ips = append(ips, in.IP)
			} else if in.Hostname != "" {
				ips = append(ips, in.Hostname)
			}
		}
		ips = append(ips, svc.Spec.ExternalIPs...)
		if len(ips) == 0 {
			return "<pending>"
		}
		return strings.Join(ips, ",")
	}
	if len(svc.Spec.ExternalIPs) > 0 {
		return strings.Join(svc.Spec.ExternalIPs, ",")
	}
	return "<none>"
}

func portsColumn(svc *core.Service) string {
	if len(svc.Spec.Ports) == 0 {
		return "<none>"
	}
	var out []string
	for _, p := range svc.Spec.Ports {
		s := fmt.Sprintf("%d/%s", p.Port, p.Protocol)
		if p.NodePort != 0 {
			s = fmt.Sprintf("%d:%d/%s", p.Port, p.NodePort, p.Protocol)
		}
		out = append(out, s)
	}
	return strings.Join(out, ",")
}

func orNone(s string) string {
	if s == "" {
		return "<none>"
	}
	return s
}
