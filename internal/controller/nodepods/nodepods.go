// Package nodepods indexes Pods by the node they are bound to, for the
// controllers that act on a node's pods (node lifecycle, taint eviction).
package nodepods

import (
	"fmt"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/tools/cache"
)

const index = "duet.dev/pod-node"

// AddIndex adds the index to a Pod informer that has not started; adding
// it twice (two controllers sharing the informer) is fine.
func AddIndex(inf cache.SharedIndexInformer) error {
	if _, ok := inf.GetIndexer().GetIndexers()[index]; ok {
		return nil
	}
	err := inf.AddIndexers(cache.Indexers{index: func(obj any) ([]string, error) {
		if p, ok := obj.(*corev1.Pod); ok && p.Spec.NodeName != "" {
			return []string{p.Spec.NodeName}, nil
		}
		return nil, nil
	}})
	if err != nil {
		return fmt.Errorf("adding index %s: %w", index, err)
	}
	return nil
}

// On returns the pods bound to node.
func On(pods cache.Indexer, node string) ([]*corev1.Pod, error) {
	objs, err := pods.ByIndex(index, node)
	if err != nil {
		return nil, err
	}
	out := make([]*corev1.Pod, 0, len(objs))
	for _, o := range objs {
		if p, ok := o.(*corev1.Pod); ok {
			out = append(out, p)
		}
	}
	return out, nil
}
