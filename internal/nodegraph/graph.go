// Package nodegraph knows which Secrets, ConfigMaps and ServiceAccounts
// each node may read: those the pods bound to it refer to, as Kubernetes'
// Node authorizer decides them. It follows the pods with an informer of
// its own that keeps, per pod, only its node and what it refers to.
package nodegraph

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"time"
	"unique"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	coreinformers "k8s.io/client-go/informers/core/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"

	"github.com/duet-net/duet/internal/podrefs"
)

// The resources a Ref may name.
const (
	Secrets         = "secrets"
	ConfigMaps      = "configmaps"
	ServiceAccounts = "serviceaccounts"
)

// Ref names one object in a namespace.
type Ref struct {
	Resource, Namespace, Name string
}

func (r Ref) String() string { return fmt.Sprintf("%s %s/%s", r.Resource, r.Namespace, r.Name) }

// Graph maps nodes to the objects their pods refer to.
type Graph struct {
	mu sync.Mutex
	// refs counts, per node, the pods that refer to each object.
	refs map[string]map[Ref]int
	// changed is closed, and replaced, on every change, so that a
	// lookup can wait for the graph to catch up with a pod just bound.
	changed chan struct{}
	synced  bool
}

// New returns an empty graph; Run fills it.
func New() *Graph {
	return &Graph{refs: map[string]map[Ref]int{}, changed: make(chan struct{})}
}

// Allowed reports whether a pod bound to node refers to ref. A miss waits
// up to wait for the graph to change (the pod may have been bound a
// moment ago, and its node told before this graph), then answers with
// what it has; the reason says why not.
func (g *Graph) Allowed(ctx context.Context, node string, ref Ref, wait time.Duration) (bool, string) {
	deadline := time.NewTimer(wait)
	defer deadline.Stop()
	for {
		g.mu.Lock()
		ok, synced, changed := g.refs[node][ref] > 0, g.synced, g.changed
		g.mu.Unlock()
		if ok {
			return true, ""
		}
		select {
		case <-changed:
			continue
		case <-deadline.C:
		case <-ctx.Done():
		}
		if !synced {
			return false, "the node authorizer has not loaded the cluster's pods yet"
		}
		return false, fmt.Sprintf("no relationship found between node %q and %s", node, ref)
	}
}

// pod is what the informer keeps of a Pod: its key, node and references.
// This graph follows every bound pod in every replica, so it is small:
// about 260 bytes a pod with its store entry (measured), against 570 for
// a Pod reduced to the same fields but keeping its ObjectMeta. Its strings
// are canonical (unique), so the names every pod of a namespace shares
// are kept once.
type pod struct {
	namespace, name, node string
	refs                  []Ref
}

// GetObjectMeta gives the informer the key it files a pod under.
func (p *pod) GetObjectMeta() metav1.Object {
	return &metav1.ObjectMeta{Namespace: p.namespace, Name: p.name}
}

func (p *pod) GetObjectKind() schema.ObjectKind { return schema.EmptyObjectKind }

func (p *pod) DeepCopyObject() runtime.Object {
	out := *p
	out.refs = slices.Clone(p.refs)
	return &out
}

func canonical(s string) string { return unique.Make(s).Value() }

// reduce is the informer's transform: a Pod becomes a *pod.
func reduce(obj any) (any, error) {
	p, ok := obj.(*corev1.Pod)
	if !ok {
		return obj, nil // tombstones keep what they hold
	}
	out := &pod{namespace: canonical(p.Namespace), name: p.Name, node: canonical(p.Spec.NodeName), refs: Refs(p)}
	for i := range out.refs {
		r := &out.refs[i]
		r.Namespace, r.Name = out.namespace, canonical(r.Name)
	}
	return out, nil
}

// Refs is what a pod lets its node read.
func Refs(p *corev1.Pod) []Ref {
	var out []Ref
	if p.Spec.ServiceAccountName != "" {
		out = append(out, Ref{ServiceAccounts, p.Namespace, p.Spec.ServiceAccountName})
	}
	for _, s := range podrefs.Secrets(p) {
		out = append(out, Ref{Secrets, p.Namespace, s})
	}
	for _, c := range podrefs.ConfigMaps(p) {
		out = append(out, Ref{ConfigMaps, p.Namespace, c})
	}
	return slices.Clip(out)
}

func (g *Graph) apply(p *pod, delta int) {
	if p == nil || p.node == "" {
		return
	}
	m := g.refs[p.node]
	if m == nil {
		m = map[Ref]int{}
		g.refs[p.node] = m
	}
	for _, r := range p.refs {
		if m[r] += delta; m[r] <= 0 {
			delete(m, r)
		}
	}
	if len(m) == 0 {
		delete(g.refs, p.node)
	}
}

// update replaces old's references with cur's (either may be nil).
func (g *Graph) update(old, cur *pod) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.apply(old, -1)
	g.apply(cur, +1)
	close(g.changed)
	g.changed = make(chan struct{})
}

func asPod(obj any) *pod {
	if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = t.Obj
	}
	p, _ := obj.(*pod)
	return p
}

// Run follows the pods bound to nodes through client until ctx is done.
func (g *Graph) Run(ctx context.Context, client kubernetes.Interface) {
	defer utilruntime.HandleCrash()
	inf := coreinformers.NewFilteredPodInformer(client, metav1.NamespaceAll, 0, cache.Indexers{}, func(o *metav1.ListOptions) {
		o.FieldSelector = fields.OneTermNotEqualSelector("spec.nodeName", "").String()
	})
	if err := inf.SetTransform(reduce); err != nil {
		utilruntime.HandleError(fmt.Errorf("node graph: %w", err))
		return
	}
	reg, err := inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { g.update(nil, asPod(obj)) },
		UpdateFunc: func(old, cur any) { g.update(asPod(old), asPod(cur)) },
		DeleteFunc: func(obj any) { g.update(asPod(obj), nil) },
	})
	if err != nil {
		utilruntime.HandleError(fmt.Errorf("node graph: %w", err))
		return
	}
	go inf.RunWithContext(ctx)
	if cache.WaitForCacheSync(ctx.Done(), reg.HasSynced) {
		g.mu.Lock()
		g.synced = true
		g.mu.Unlock()
	}
	<-ctx.Done()
}
