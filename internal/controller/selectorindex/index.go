// Package selectorindex indexes Pods by their labels and Services by their
// selectors, so that the endpoint controllers find a Service's Pods and a
// Pod's Services by lookup. Listing a namespace and matching every
// selector costs O(Pods) per Service sync and O(Services) per Pod event,
// which made 150,000 Pods and 10,000 Services in one namespace crawl.
package selectorindex

import (
	"fmt"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/sets"
	"k8s.io/client-go/tools/cache"
	endpointsliceutil "k8s.io/endpointslice/util"
)

const (
	// podLabel indexes Pods by each label, as "namespace/key=value".
	podLabel = "duet.dev/pod-label"
	// serviceSelector indexes Services by each selector pair, likewise.
	serviceSelector = "duet.dev/service-selector"
)

func pair(ns, k, v string) string { return ns + "/" + k + "=" + v }

// AddPodIndex adds the label index to a Pod informer that has not started;
// adding it twice (two controllers sharing the informer) is fine.
func AddPodIndex(inf cache.SharedIndexInformer) error {
	return addIndex(inf, podLabel, func(obj any) ([]string, error) {
		p, ok := obj.(*v1.Pod)
		if !ok {
			return nil, nil
		}
		out := make([]string, 0, len(p.Labels))
		for k, v := range p.Labels {
			out = append(out, pair(p.Namespace, k, v))
		}
		return out, nil
	})
}

// AddServiceIndex adds the selector index to a Service informer that has
// not started; adding it twice is fine.
func AddServiceIndex(inf cache.SharedIndexInformer) error {
	return addIndex(inf, serviceSelector, func(obj any) ([]string, error) {
		s, ok := obj.(*v1.Service)
		if !ok {
			return nil, nil
		}
		out := make([]string, 0, len(s.Spec.Selector))
		for k, v := range s.Spec.Selector {
			out = append(out, pair(s.Namespace, k, v))
		}
		return out, nil
	})
}

func addIndex(inf cache.SharedIndexInformer, name string, fn cache.IndexFunc) error {
	if _, ok := inf.GetIndexer().GetIndexers()[name]; ok {
		return nil
	}
	if err := inf.AddIndexers(cache.Indexers{name: fn}); err != nil {
		return fmt.Errorf("adding index %s: %w", name, err)
	}
	return nil
}

// PodsFor returns the Pods of namespace ns that selector (non-empty)
// selects, reading only the smallest of the label buckets it names.
func PodsFor(pods cache.Indexer, ns string, selector map[string]string) ([]*v1.Pod, error) {
	var candidates []any
	if len(selector) == 0 {
		var err error
		if candidates, err = pods.ByIndex(cache.NamespaceIndex, ns); err != nil {
			return nil, err
		}
	}
	first := true
	for k, v := range selector {
		objs, err := pods.ByIndex(podLabel, pair(ns, k, v))
		if err != nil {
			return nil, err
		}
		if first || len(objs) < len(candidates) {
			candidates, first = objs, false
		}
		if len(candidates) == 0 {
			return nil, nil
		}
	}
	sel := labels.Set(selector).AsSelectorPreValidated()
	out := make([]*v1.Pod, 0, len(candidates))
	for _, o := range candidates {
		if p, ok := o.(*v1.Pod); ok && sel.Matches(labels.Set(p.Labels)) {
			out = append(out, p)
		}
	}
	return out, nil
}

// ServicesFor returns the keys (namespace/name) of the Services of ns
// whose non-empty selector matches lbls.
func ServicesFor(services cache.Indexer, ns string, lbls map[string]string) (sets.Set[string], error) {
	out := sets.New[string]()
	seen := map[*v1.Service]bool{}
	for k, v := range lbls {
		objs, err := services.ByIndex(serviceSelector, pair(ns, k, v))
		if err != nil {
			return nil, err
		}
		for _, o := range objs {
			s, ok := o.(*v1.Service)
			if !ok || seen[s] {
				continue
			}
			seen[s] = true
			if labels.Set(s.Spec.Selector).AsSelectorPreValidated().Matches(labels.Set(lbls)) {
				out.Insert(s.Namespace + "/" + s.Name)
			}
		}
	}
	return out, nil
}

// ServicesToUpdate is endpointsliceutil.GetServicesToUpdate answered from
// the index: the Services a Pod change concerns.
func ServicesToUpdate(services cache.Indexer, key *endpointsliceutil.PodProjectionKey) (sets.Set[string], error) {
	if key == nil {
		return nil, nil
	}
	now, err := ServicesFor(services, key.Namespace, key.Labels)
	if err != nil || key.OldLabels == nil {
		return now, err
	}
	before, err := ServicesFor(services, key.Namespace, key.OldLabels)
	if err != nil {
		return nil, err
	}
	if key.PodChanged {
		return now.Union(before), nil
	}
	// Only the labels changed: the Services that gained or lost the Pod.
	return now.SymmetricDifference(before), nil
}
