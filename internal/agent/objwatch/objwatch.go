// Package objwatch keeps a node's pods' ConfigMaps and Secrets current, as
// the kubelet's watch-based ConfigMap and Secret managers do: each object
// a pod's volumes name gets a list and watch of its own, by name (a
// metadata.name field selector, the only list or watch a node identity may
// make of them), shared by the pods that name it and stopped with the last
// of them. Whoever registered is told of every change, within the watch's
// latency rather than a polling period, and reads the object from the
// watch's cache instead of the API.
//
// An immutable object is watched no further once it is seen: it cannot
// change, and a watch per object is what the API server pays for.
package objwatch

import (
	"fmt"
	"sync"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/runtime"
	coreinformers "k8s.io/client-go/informers/core/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
)

// Kind is the resource of a watched object.
type Kind string

// The kinds of objects watched.
const (
	ConfigMaps Kind = "configmaps"
	Secrets    Kind = "secrets"
)

// Ref names one object.
type Ref struct {
	Kind      Kind
	Namespace string
	Name      string
}

func (r Ref) String() string { return fmt.Sprintf("%s %s/%s", r.Kind, r.Namespace, r.Name) }

// Watcher watches objects for registrations. The zero value is not
// usable: set Client.
type Watcher struct {
	Client kubernetes.Interface

	mu   sync.Mutex
	objs map[Ref]*entry
}

// entry is one object's watch and the registrations that use it.
type entry struct {
	informer cache.SharedIndexInformer
	stop     chan struct{}
	// frozen is the immutable object seen last, once the watch stopped.
	frozen runtime.Object
	// seen is set by the first event. The informer's store holds an object
	// before its handlers hear of it, but the FIFO counts the first listing
	// synced only after they return: a registration told of the listing
	// must be able to read it before HasSynced says so.
	seen  bool
	users map[*registration]bool
}

type registration struct{ notify func() }

// Watch watches refs until the returned cancel is called, calling notify
// (which must not block) whenever one of them is added, changes or is
// deleted, the first listing included.
func (w *Watcher) Watch(refs []Ref, notify func()) (cancel func()) {
	reg := &registration{notify: notify}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.objs == nil {
		w.objs = map[Ref]*entry{}
	}
	var started []Ref
	for _, ref := range refs {
		e, ok := w.objs[ref]
		if !ok {
			e = w.start(ref)
			w.objs[ref] = e
		}
		if !e.users[reg] {
			e.users[reg] = true
			started = append(started, ref)
		}
	}
	var once sync.Once
	return func() {
		once.Do(func() {
			w.mu.Lock()
			defer w.mu.Unlock()
			for _, ref := range started {
				e := w.objs[ref]
				delete(e.users, reg)
				if len(e.users) == 0 {
					e.halt()
					delete(w.objs, ref)
				}
			}
		})
	}
}

// start begins ref's watch; w.mu is held.
func (w *Watcher) start(ref Ref) *entry {
	e := &entry{stop: make(chan struct{}), users: map[*registration]bool{}}
	byName := func(o *metav1.ListOptions) {
		o.FieldSelector = fields.OneTermEqualSelector("metadata.name", ref.Name).String()
	}
	switch ref.Kind {
	case Secrets:
		e.informer = coreinformers.NewFilteredSecretInformer(w.Client, ref.Namespace, 0, cache.Indexers{}, byName)
	default:
		e.informer = coreinformers.NewFilteredConfigMapInformer(w.Client, ref.Namespace, 0, cache.Indexers{}, byName)
	}
	// The handler of a new informer cannot fail to register.
	_, _ = e.informer.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { w.changed(ref, e, obj, false) },
		UpdateFunc: func(_, obj any) { w.changed(ref, e, obj, false) },
		DeleteFunc: func(obj any) { w.changed(ref, e, obj, true) },
	})
	go e.informer.Run(e.stop)
	return e
}

// halt stops the watch; w.mu is held.
func (e *entry) halt() {
	select {
	case <-e.stop:
	default:
		close(e.stop)
	}
}

// changed tells ref's users of an event of obj, and stops the watch of an
// immutable object that is there. A server that ignored the field selector (as fakes
// do) sends others' events too: they are dropped.
func (w *Watcher) changed(ref Ref, e *entry, obj any, deleted bool) {
	if tomb, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		if tomb.Key != ref.Namespace+"/"+ref.Name {
			return
		}
	} else if m, ok := obj.(metav1.Object); !ok || m.GetName() != ref.Name || m.GetNamespace() != ref.Namespace {
		return
	}
	w.mu.Lock()
	if w.objs[ref] != e {
		w.mu.Unlock()
		return // cancelled meanwhile
	}
	if o, ok := obj.(runtime.Object); ok && !deleted && immutable(o) {
		e.frozen = o
		e.halt()
	}
	e.seen = true
	notify := make([]func(), 0, len(e.users))
	for reg := range e.users {
		notify = append(notify, reg.notify)
	}
	w.mu.Unlock()
	for _, n := range notify {
		n()
	}
}

func immutable(obj runtime.Object) bool {
	switch o := obj.(type) {
	case *corev1.ConfigMap:
		return o.Immutable != nil && *o.Immutable
	case *corev1.Secret:
		return o.Immutable != nil && *o.Immutable
	}
	return false
}

// get returns ref's object as its watch has it: known is false when ref is
// not watched or its first listing has not come yet (ask the API then);
// obj is nil when it does not exist.
func (w *Watcher) get(ref Ref) (obj any, known bool) {
	w.mu.Lock()
	e, ok := w.objs[ref]
	var frozen runtime.Object
	var seen bool
	if ok {
		frozen, seen = e.frozen, e.seen
	}
	w.mu.Unlock()
	switch {
	case !ok:
		return nil, false
	case frozen != nil:
		return frozen, true
	case !seen && !e.informer.HasSynced():
		return nil, false
	}
	obj, exists, err := e.informer.GetStore().GetByKey(ref.Namespace + "/" + ref.Name)
	if err != nil {
		return nil, false
	}
	if !exists {
		return nil, true
	}
	return obj, true
}

// ConfigMap returns a watched ConfigMap (see get); the caller must not
// change it.
func (w *Watcher) ConfigMap(namespace, name string) (cm *corev1.ConfigMap, known bool) {
	obj, known := w.get(Ref{ConfigMaps, namespace, name})
	cm, _ = obj.(*corev1.ConfigMap)
	return cm, known
}

// Secret returns a watched Secret (see get); the caller must not change
// it.
func (w *Watcher) Secret(namespace, name string) (sec *corev1.Secret, known bool) {
	obj, known := w.get(Ref{Secrets, namespace, name})
	sec, _ = obj.(*corev1.Secret)
	return sec, known
}

// Watching reports whether ref has a running watch (not one stopped for an
// immutable object).
func (w *Watcher) Watching(ref Ref) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	e, ok := w.objs[ref]
	if !ok {
		return false
	}
	select {
	case <-e.stop:
		return false
	default:
		return true
	}
}
