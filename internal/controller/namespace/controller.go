// Package namespace is the namespace controller: it empties a deleted
// Namespace and then lets it go.
//
// The Namespace store gives every Namespace the metadata finalizer
// core.NamespaceFinalizer, so a deleted Namespace keeps existing, with a
// deletionTimestamp, until that finalizer is removed. For such a Namespace
// the controller sets status.phase=Terminating, deletes everything Duet
// stores in it (DeleteCollection per resource, or one object at a time
// where the server does not offer it), requeues itself with backoff until
// the last object is gone, and only then removes the finalizer, which
// lets the server delete the Namespace. Why a Namespace is still there is
// told by its status conditions, as Kubernetes does.
//
// It is level-triggered in the manner of Kubernetes' controllers: informer
// events only name a Namespace, and each reconcile reads the Namespace from
// the API server, never trusting the cache, so a Namespace deleted and
// created again under the same name is never emptied by a stale event.
package namespace

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	coreinformers "k8s.io/client-go/informers/core/v1"
	"k8s.io/client-go/kubernetes"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/record"
	"k8s.io/client-go/util/workqueue"
	"k8s.io/klog/v2"

	"github.com/duet-net/duet/internal/apis/core"
	"github.com/duet-net/duet/internal/controller/events"
	"github.com/duet-net/duet/internal/controller/worker"
)

// ControllerName names the controller in events, logs, its work queue and
// as the field manager of its writes.
const ControllerName = "namespace-controller"

// Event reasons recorded on Namespaces.
const (
	// ReasonContentDeletionFailed: deleting or listing some content of a
	// terminating Namespace failed; it is retried.
	ReasonContentDeletionFailed = "ContentDeletionFailed"
	// ReasonDeletionRefused: a system Namespace was deleted anyway (its
	// deletion should have been refused by admission); its content is
	// kept and the Namespace stays, terminating.
	ReasonDeletionRefused = "DeletionRefused"
)

// Protected is the Namespaces whose content this controller never
// removes, whatever their state: the cluster's own.
var Protected = []string{
	metav1.NamespaceDefault,
	metav1.NamespaceSystem,
	metav1.NamespacePublic,
	corev1.NamespaceNodeLease,
}

// Controller empties and finalizes deleted Namespaces.
type Controller struct {
	client kubernetes.Interface
	lister corelisters.NamespaceLister
	synced cache.InformerSynced

	// recorder is where events go.
	recorder record.EventRecorder
	// retryBase and retryMax bound the per-Namespace exponential backoff
	// between reconciles of a Namespace that still has content or failed.
	retryBase, retryMax time.Duration

	queue worker.Slot[string]

	// noDeleteCollection is the resources whose DeleteCollection the
	// server refused as unsupported; they are emptied one by one.
	nmu                sync.Mutex
	noDeleteCollection map[schema.GroupResource]bool
}

// New returns a controller for the Namespaces of nsInformer, writing
// through client and recording events to recorder (nil drops them). It
// registers the informer's event handlers, so call it before the informer
// factory starts; then call Run.
func New(client kubernetes.Interface, nsInformer coreinformers.NamespaceInformer, recorder record.EventRecorder) *Controller {
	if recorder == nil {
		recorder = events.Discard
	}
	c := &Controller{
		client:             client,
		lister:             nsInformer.Lister(),
		recorder:           recorder,
		retryBase:          100 * time.Millisecond,
		retryMax:           30 * time.Second,
		noDeleteCollection: map[schema.GroupResource]bool{},
	}
	reg, err := nsInformer.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    c.enqueueObject,
		UpdateFunc: func(_, obj any) { c.enqueueObject(obj) },
	})
	if err != nil {
		// Only a stopped informer refuses a handler; Run then waits for a
		// sync that never comes and logs why.
		utilruntime.HandleError(fmt.Errorf("%s: watching Namespaces: %w", ControllerName, err))
		c.synced = func() bool { return false }
		return c
	}
	c.synced = reg.HasSynced
	return c
}

func (c *Controller) enqueueObject(obj any) {
	ns, ok := obj.(*corev1.Namespace)
	if !ok || ns.DeletionTimestamp == nil {
		return // only deleted Namespaces have anything to do
	}
	c.queue.Add(ns.Name)
}

// Run reconciles deleted Namespaces with workers goroutines until ctx is
// cancelled. It may be started again after it returns (after leadership
// is regained): it starts from the Namespaces, not from anything an
// earlier Run left in memory.
func (c *Controller) Run(ctx context.Context, workers int) {
	defer utilruntime.HandleCrash()
	logger := klog.FromContext(ctx).WithName(ControllerName)
	ctx = klog.NewContext(ctx, logger)
	q := workqueue.NewTypedRateLimitingQueueWithConfig(
		workqueue.NewTypedItemExponentialFailureRateLimiter[string](c.retryBase, c.retryMax),
		workqueue.TypedRateLimitingQueueConfig[string]{Name: "namespace"},
	)
	defer c.queue.Fill(q)()

	logger.Info("Starting")
	defer logger.Info("Stopped")
	if !cache.WaitForNamedCacheSyncWithContext(ctx, c.synced) {
		return
	}
	all, _ := c.lister.List(labels.Everything())
	for _, ns := range all {
		c.enqueueObject(ns)
	}
	worker.Run(ctx, q, workers, c.sync, worker.Options{
		KeyName: "namespace", Failed: "Deleting the content of a Namespace failed; will retry",
		// Content with finalizers of its own, or a write that raced
		// another: waiting is all there is to do.
		Expected: func(err error) bool {
			var remaining *contentRemainingError
			return errors.As(err, &remaining) || apierrors.IsConflict(err)
		},
		ExpectedV: 2, Waiting: "Namespace not finalized yet; will retry",
	})
}

// contentRemainingError says a Namespace still holds objects, typically
// ones with finalizers of their own; the Namespace is reconciled again
// after a backoff.
type contentRemainingError struct{ msg string }

func (e *contentRemainingError) Error() string { return e.msg }

// sync reconciles one Namespace: nothing unless it is deleted and holds
// our finalizer; otherwise Terminating, content deleted, finalizer removed
// once nothing is left.
func (c *Controller) sync(ctx context.Context, name string) error {
	// The cache only said where to look: act on the Namespace as the
	// server has it now.
	ns, err := c.client.CoreV1().Namespaces().Get(ctx, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return err
	}
	if ns.DeletionTimestamp == nil || !slices.Contains(ns.Finalizers, core.NamespaceFinalizer) {
		return nil
	}
	if slices.Contains(Protected, ns.Name) {
		klog.FromContext(ctx).Error(nil, "System Namespace was deleted; keeping its content, so it stays terminating (the NamespaceLifecycle admission plugin should have refused the deletion)", "namespace", ns.Name)
		c.recorder.Eventf(ns, corev1.EventTypeWarning, ReasonDeletionRefused,
			"Namespace %s is a system namespace: its content is never deleted, so it stays terminating (the NamespaceLifecycle admission plugin should have refused the deletion)", ns.Name)
		return nil
	}

	if ns.Status.Phase != corev1.NamespaceTerminating {
		upd := ns.DeepCopy()
		upd.Status.Phase = corev1.NamespaceTerminating
		if ns, err = c.client.CoreV1().Namespaces().UpdateStatus(ctx, upd, metav1.UpdateOptions{FieldManager: ControllerName}); err != nil {
			if apierrors.IsNotFound(err) {
				return nil
			}
			return fmt.Errorf("marking Namespace %s Terminating: %w", name, err)
		}
	}

	t := c.deleteContent(ctx, ns.Name)
	if err := c.updateConditions(ctx, ns, t); err != nil {
		if apierrors.IsNotFound(err) {
			return nil
		}
		return err
	}
	if len(t.failures) > 0 {
		msg := t.failureMessage()
		c.recorder.Eventf(ns, corev1.EventTypeWarning, ReasonContentDeletionFailed, "Deleting the content of Namespace %s: %s", ns.Name, msg)
		return fmt.Errorf("deleting the content of Namespace %s: %s", ns.Name, msg)
	}
	if msg := t.remainingMessage(); msg != "" {
		return &contentRemainingError{fmt.Sprintf("Namespace %s: %s", ns.Name, msg)}
	}

	// Empty: let it go. An Update carries the resourceVersion just read,
	// so a Namespace changed meanwhile is retried, never overwritten.
	upd := ns.DeepCopy()
	upd.Finalizers = slices.DeleteFunc(upd.Finalizers, func(f string) bool { return f == core.NamespaceFinalizer })
	if _, err := c.client.CoreV1().Namespaces().Update(ctx, upd, metav1.UpdateOptions{FieldManager: ControllerName}); err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("removing finalizer %s from Namespace %s: %w", core.NamespaceFinalizer, name, err)
	}
	klog.FromContext(ctx).V(2).Info("Namespace emptied and finalized", "namespace", name)
	return nil
}

// tally is what one pass over a Namespace's content found.
type tally struct {
	failures   []string                     // one per resource that could not be deleted or listed
	remaining  map[schema.GroupResource]int // objects left after deletion
	finalizers map[string]int               // finalizer -> objects left that carry it
}

func (t *tally) failureMessage() string {
	msgs := slices.Clone(t.failures)
	sort.Strings(msgs)
	return fmt.Sprintf("failed to delete %d resource types: %s", len(msgs), strings.Join(msgs, "; "))
}

func (t *tally) remainingMessage() string {
	var rs []string
	for gr, n := range t.remaining {
		rs = append(rs, fmt.Sprintf("%s has %d resource instances", gr, n))
	}
	if len(rs) == 0 {
		return ""
	}
	sort.Strings(rs)
	return "Some resources are remaining: " + strings.Join(rs, ", ")
}

func (t *tally) finalizerMessage() string {
	var fs []string
	for f, n := range t.finalizers {
		fs = append(fs, fmt.Sprintf("%s in %d resource instances", f, n))
	}
	if len(fs) == 0 {
		return ""
	}
	sort.Strings(fs)
	return "Some finalizers are remaining: " + strings.Join(fs, ", ")
}

// deleteOptions deletes in the background: nothing waits on dependents,
// and no orphan or foreground finalizer is added that only a garbage
// collector would remove.
func deleteOptions() metav1.DeleteOptions {
	bg := metav1.DeletePropagationBackground
	return metav1.DeleteOptions{PropagationPolicy: &bg}
}

// deleteContent deletes every object of every namespaced resource in ns
// and counts what is left.
func (c *Controller) deleteContent(ctx context.Context, ns string) tally {
	t := tally{remaining: map[schema.GroupResource]int{}, finalizers: map[string]int{}}
	for _, r := range contents {
		coll := r.collection(c.client, ns)
		if err := c.deleteAll(ctx, r.resource, coll); err != nil {
			t.failures = append(t.failures, fmt.Sprintf("%s: %v", r.resource, err))
		}
		left, err := coll.list(ctx)
		switch {
		case err != nil && servedNot(err):
			continue // the server does not serve this resource: nothing to delete
		case err != nil:
			t.failures = append(t.failures, fmt.Sprintf("listing %s: %v", r.resource, err))
			continue
		}
		if len(left) > 0 {
			t.remaining[r.resource] = len(left)
		}
		for _, o := range left {
			for _, f := range o.GetFinalizers() {
				t.finalizers[f]++
			}
		}
	}
	return t
}

// servedNot reports an error that means the server offers no such
// operation on the resource, as DeleteCollection or List answer for a
// resource it does not serve.
func servedNot(err error) bool {
	return apierrors.IsMethodNotSupported(err) || apierrors.IsNotFound(err)
}

// deleteAll deletes one resource's objects: all at once, or one at a time
// where the server does not support DeleteCollection.
func (c *Controller) deleteAll(ctx context.Context, gr schema.GroupResource, coll collection) error {
	c.nmu.Lock()
	oneByOne := c.noDeleteCollection[gr] || !coll.canDeleteAll()
	c.nmu.Unlock()
	if !oneByOne {
		err := coll.deleteCollection(ctx, deleteOptions())
		if err == nil || !servedNot(err) {
			return err
		}
		klog.FromContext(ctx).V(2).Info("DeleteCollection not supported; deleting one object at a time", "resource", gr)
		c.nmu.Lock()
		c.noDeleteCollection[gr] = true
		c.nmu.Unlock()
	}
	items, err := coll.list(ctx)
	if err != nil {
		if servedNot(err) {
			return nil
		}
		return err
	}
	var errs []error
	for _, o := range items {
		if o.GetDeletionTimestamp() != nil {
			continue // already going; waiting on its finalizers
		}
		opts := deleteOptions()
		uid := o.GetUID()
		opts.Preconditions = &metav1.Preconditions{UID: &uid}
		if err := coll.Delete(ctx, o.GetName(), opts); err != nil && !apierrors.IsNotFound(err) && !apierrors.IsConflict(err) {
			errs = append(errs, fmt.Errorf("%s: %w", o.GetName(), err))
		}
	}
	return errors.Join(errs...)
}

// maintainedConditions are the Namespace conditions this controller owns,
// the subset of Kubernetes' that apply to a fixed set of resources.
var maintainedConditions = []corev1.NamespaceConditionType{
	corev1.NamespaceDeletionContentFailure,
	corev1.NamespaceContentRemaining,
	corev1.NamespaceFinalizersRemaining,
}

// updateConditions writes why the Namespace is still there to its status
// conditions, with Kubernetes' reasons and messages, when that changed.
// A Namespace that is about to go and never had trouble is left alone.
func (c *Controller) updateConditions(ctx context.Context, ns *corev1.Namespace, t tally) error {
	want := map[corev1.NamespaceConditionType]corev1.NamespaceCondition{
		corev1.NamespaceDeletionContentFailure: {Status: corev1.ConditionFalse, Reason: "ContentDeleted", Message: "All content successfully deleted, may be waiting on finalization"},
		corev1.NamespaceContentRemaining:       {Status: corev1.ConditionFalse, Reason: "ContentRemoved", Message: "All content successfully removed"},
		corev1.NamespaceFinalizersRemaining:    {Status: corev1.ConditionFalse, Reason: "ContentRemoved", Message: "All content successfully removed"},
	}
	trouble := false
	if len(t.failures) > 0 {
		want[corev1.NamespaceDeletionContentFailure] = corev1.NamespaceCondition{Status: corev1.ConditionTrue, Reason: "ContentDeletionFailed", Message: t.failureMessage()}
		trouble = true
	}
	if msg := t.remainingMessage(); msg != "" {
		want[corev1.NamespaceContentRemaining] = corev1.NamespaceCondition{Status: corev1.ConditionTrue, Reason: "SomeResourcesRemain", Message: msg}
		trouble = true
	}
	if msg := t.finalizerMessage(); msg != "" {
		want[corev1.NamespaceFinalizersRemaining] = corev1.NamespaceCondition{Status: corev1.ConditionTrue, Reason: "SomeFinalizerRemain", Message: msg}
		trouble = true
	}
	hasOurs := slices.ContainsFunc(ns.Status.Conditions, func(cond corev1.NamespaceCondition) bool {
		return slices.Contains(maintainedConditions, cond.Type)
	})
	if !trouble && !hasOurs {
		return nil
	}

	upd := ns.DeepCopy()
	changed := false
	now := metav1.Now()
	for _, typ := range maintainedConditions {
		w := want[typ]
		w.Type = typ
		i := slices.IndexFunc(upd.Status.Conditions, func(cond corev1.NamespaceCondition) bool { return cond.Type == typ })
		if i < 0 {
			w.LastTransitionTime = now
			upd.Status.Conditions = append(upd.Status.Conditions, w)
			changed = true
			continue
		}
		old := &upd.Status.Conditions[i]
		if old.Status == w.Status && old.Reason == w.Reason && old.Message == w.Message {
			continue
		}
		if old.Status != w.Status {
			old.LastTransitionTime = now
		}
		old.Status, old.Reason, old.Message = w.Status, w.Reason, w.Message
		changed = true
	}
	if !changed {
		return nil
	}
	got, err := c.client.CoreV1().Namespaces().UpdateStatus(ctx, upd, metav1.UpdateOptions{FieldManager: ControllerName})
	if err != nil {
		return fmt.Errorf("updating the conditions of Namespace %s: %w", ns.Name, err)
	}
	*ns = *got
	return nil
}

// content is one namespaced resource Duet serves.
type content struct {
	resource   schema.GroupResource
	collection func(c kubernetes.Interface, ns string) collection
}

// contents is every namespaced resource Duet serves, in deletion order:
// workloads first, their events last.
var contents = []content{
	// Controllers before what they make, so nothing is made again.
	{schema.GroupResource{Group: "apps", Resource: "deployments"}, func(c kubernetes.Interface, ns string) collection {
		x := c.AppsV1().Deployments(ns)
		return typed[*appsv1.DeploymentList]{c: x, all: x}
	}},
	{schema.GroupResource{Group: "apps", Resource: "daemonsets"}, func(c kubernetes.Interface, ns string) collection {
		x := c.AppsV1().DaemonSets(ns)
		return typed[*appsv1.DaemonSetList]{c: x, all: x}
	}},
	{schema.GroupResource{Group: "apps", Resource: "replicasets"}, func(c kubernetes.Interface, ns string) collection {
		x := c.AppsV1().ReplicaSets(ns)
		return typed[*appsv1.ReplicaSetList]{c: x, all: x}
	}},
	{schema.GroupResource{Group: "apps", Resource: "controllerrevisions"}, func(c kubernetes.Interface, ns string) collection {
		x := c.AppsV1().ControllerRevisions(ns)
		return typed[*appsv1.ControllerRevisionList]{c: x, all: x}
	}},
	{schema.GroupResource{Resource: "pods"}, func(c kubernetes.Interface, ns string) collection {
		x := c.CoreV1().Pods(ns)
		return typed[*corev1.PodList]{c: x, all: x}
	}},
	{schema.GroupResource{Resource: "services"}, func(c kubernetes.Interface, ns string) collection {
		return typed[*corev1.ServiceList]{c: c.CoreV1().Services(ns)} // no DeleteCollection: see collectionDeleter
	}},
	{schema.GroupResource{Group: "discovery.k8s.io", Resource: "endpointslices"}, func(c kubernetes.Interface, ns string) collection {
		x := c.DiscoveryV1().EndpointSlices(ns)
		return typed[*discoveryv1.EndpointSliceList]{c: x, all: x}
	}},
	{schema.GroupResource{Resource: "endpoints"}, func(c kubernetes.Interface, ns string) collection {
		x := c.CoreV1().Endpoints(ns)
		return typed[*corev1.EndpointsList]{c: x, all: x}
	}},
	{schema.GroupResource{Group: "coordination.k8s.io", Resource: "leases"}, func(c kubernetes.Interface, ns string) collection {
		x := c.CoordinationV1().Leases(ns)
		return typed[*coordinationv1.LeaseList]{c: x, all: x}
	}},
	{schema.GroupResource{Resource: "configmaps"}, func(c kubernetes.Interface, ns string) collection {
		x := c.CoreV1().ConfigMaps(ns)
		return typed[*corev1.ConfigMapList]{c: x, all: x}
	}},
	{schema.GroupResource{Resource: "secrets"}, func(c kubernetes.Interface, ns string) collection {
		x := c.CoreV1().Secrets(ns)
		return typed[*corev1.SecretList]{c: x, all: x}
	}},
	{schema.GroupResource{Resource: "serviceaccounts"}, func(c kubernetes.Interface, ns string) collection {
		x := c.CoreV1().ServiceAccounts(ns)
		return typed[*corev1.ServiceAccountList]{c: x, all: x}
	}},
	{schema.GroupResource{Resource: "events"}, func(c kubernetes.Interface, ns string) collection {
		x := c.CoreV1().Events(ns)
		return typed[*corev1.EventList]{c: x, all: x}
	}},
}

// collection is one resource in one namespace.
type collection interface {
	Delete(ctx context.Context, name string, opts metav1.DeleteOptions) error
	list(ctx context.Context) ([]metav1.Object, error)
	// deleteCollection deletes every object at once, if canDeleteAll; a
	// MethodNotSupported error means the server wants it done one object
	// at a time.
	deleteCollection(ctx context.Context, opts metav1.DeleteOptions) error
	canDeleteAll() bool
}

// typedClient is the part of a typed client-go client a collection needs.
type typedClient[L runtime.Object] interface {
	List(ctx context.Context, opts metav1.ListOptions) (L, error)
	Delete(ctx context.Context, name string, opts metav1.DeleteOptions) error
}

// collectionDeleter is a typed client's DeleteCollection. Services are
// never deleted that way, whatever a server offers: Kubernetes serves no
// deletecollection for them, because each deletion must release the
// Service's cluster IPs and node ports, which a generic DeleteCollection
// over the store would skip.
type collectionDeleter interface {
	DeleteCollection(ctx context.Context, opts metav1.DeleteOptions, listOpts metav1.ListOptions) error
}

// typed is a collection over a typed client; all is nil for a resource
// deleted one object at a time.
type typed[L runtime.Object] struct {
	c   typedClient[L]
	all collectionDeleter
}

func (t typed[L]) Delete(ctx context.Context, name string, opts metav1.DeleteOptions) error {
	return t.c.Delete(ctx, name, opts)
}

func (t typed[L]) canDeleteAll() bool { return t.all != nil }

func (t typed[L]) deleteCollection(ctx context.Context, opts metav1.DeleteOptions) error {
	if t.all == nil {
		return apierrors.NewMethodNotSupported(schema.GroupResource{}, "deletecollection")
	}
	return t.all.DeleteCollection(ctx, opts, metav1.ListOptions{})
}

func (t typed[L]) list(ctx context.Context) ([]metav1.Object, error) {
	l, err := t.c.List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, err
	}
	items, err := meta.ExtractList(l)
	if err != nil {
		return nil, err
	}
	out := make([]metav1.Object, 0, len(items))
	for _, it := range items {
		m, err := meta.Accessor(it)
		if err != nil {
			return nil, err
		}
		out = append(out, m)
	}
	return out, nil
}
