// Package nsdefaults gives every Namespace the two objects Kubernetes
// puts in each: the `default` ServiceAccount, which pods run as unless
// they name another, and the `kube-root-ca.crt` ConfigMap, whose `ca.crt`
// is the CA that pods verify the API server with (Kubernetes'
// serviceaccounts-controller and root-ca-cert-publisher in one).
//
// It is level-triggered: a Namespace's key is queued when the Namespace
// appears or changes and when either object in it changes or goes, and a
// sync creates what is missing and puts the ConfigMap back to what it
// must hold. The ServiceAccount is only ever created: what users do with
// it afterwards (image pull secrets, automount) is theirs. Terminating
// Namespaces are left alone; the namespace controller empties them.
package nsdefaults

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/labels"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	coreinformers "k8s.io/client-go/informers/core/v1"
	"k8s.io/client-go/kubernetes"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/workqueue"
	"k8s.io/klog/v2"

	"github.com/duet-net/duet/internal/controller/worker"
)

// ControllerName names the controller in logs, its work queue and as the
// field manager of its writes.
const ControllerName = "namespace-defaults-controller"

// The objects every Namespace gets, with Kubernetes' names.
const (
	DefaultServiceAccount = "default"
	RootCAConfigMap       = "kube-root-ca.crt"
	// RootCAKey is the ConfigMap key that holds the CA's PEM.
	RootCAKey = "ca.crt"
	// DescriptionAnnotation says what the ConfigMap is for, as Kubernetes
	// annotates it.
	DescriptionAnnotation = "kubernetes.io/description"
	// RootCADescription is the annotation's value.
	RootCADescription = "The CA bundle that verifies the API server on the cluster's internal endpoints " +
		"(the kubernetes.default.svc Service and its cluster IPs). No other use of it is promised."
)

// Controller keeps the default objects of every active Namespace.
type Controller struct {
	client kubernetes.Interface
	caPEM  []byte

	nsLister corelisters.NamespaceLister
	saLister corelisters.ServiceAccountLister
	cmLister corelisters.ConfigMapLister
	// saInformer and cmInformer watch only the objects of the names
	// above; Run runs them.
	saInformer, cmInformer cache.SharedIndexInformer
	synced                 []cache.InformerSynced

	retryBase, retryMax time.Duration
	queue               worker.Slot[string]
}

// New returns a controller for the Namespaces of nsInformer that writes
// through client and publishes caPEM. It watches the two objects itself
// (with informers of its own, selected by name), and registers handlers
// on nsInformer, so call it before that informer's factory starts, then
// call Run. A Controller is run once; a new leadership term builds a new
// one.
func New(client kubernetes.Interface, nsInformer coreinformers.NamespaceInformer, caPEM []byte) *Controller {
	byName := func(name string) func(*metav1.ListOptions) {
		return func(o *metav1.ListOptions) {
			o.FieldSelector = fields.OneTermEqualSelector("metadata.name", name).String()
		}
	}
	c := &Controller{
		client:     client,
		caPEM:      caPEM,
		nsLister:   nsInformer.Lister(),
		saInformer: coreinformers.NewFilteredServiceAccountInformer(client, metav1.NamespaceAll, 0, cache.Indexers{cache.NamespaceIndex: cache.MetaNamespaceIndexFunc}, byName(DefaultServiceAccount)),
		cmInformer: coreinformers.NewFilteredConfigMapInformer(client, metav1.NamespaceAll, 0, cache.Indexers{cache.NamespaceIndex: cache.MetaNamespaceIndexFunc}, byName(RootCAConfigMap)),
		retryBase:  50 * time.Millisecond,
		retryMax:   30 * time.Second,
	}
	c.saLister = corelisters.NewServiceAccountLister(c.saInformer.GetIndexer())
	c.cmLister = corelisters.NewConfigMapLister(c.cmInformer.GetIndexer())

	for _, h := range []struct {
		inf      cache.SharedInformer
		handlers cache.ResourceEventHandlerFuncs
	}{
		{nsInformer.Informer(), cache.ResourceEventHandlerFuncs{
			AddFunc:    c.enqueueNamespace,
			UpdateFunc: func(_, obj any) { c.enqueueNamespace(obj) },
		}},
		// The ServiceAccount's content is not the controller's, so only
		// its deletion matters; the ConfigMap's is checked whatever
		// happens to it.
		{c.saInformer, cache.ResourceEventHandlerFuncs{DeleteFunc: c.enqueueOwner}},
		{c.cmInformer, cache.ResourceEventHandlerFuncs{
			AddFunc:    c.enqueueOwner,
			UpdateFunc: func(_, obj any) { c.enqueueOwner(obj) },
			DeleteFunc: c.enqueueOwner,
		}},
	} {
		reg, err := h.inf.AddEventHandler(h.handlers)
		if err != nil {
			// Only a stopped informer refuses a handler; Run then waits
			// for a sync that never comes.
			utilruntime.HandleError(fmt.Errorf("%s: %w", ControllerName, err))
			c.synced = append(c.synced, func() bool { return false })
			continue
		}
		c.synced = append(c.synced, reg.HasSynced)
	}
	return c
}

func (c *Controller) enqueueNamespace(obj any) {
	if ns, ok := obj.(*corev1.Namespace); ok && active(ns) {
		c.queue.Add(ns.Name)
	}
}

// enqueueOwner queues the Namespace of a watched object (or of its
// tombstone).
func (c *Controller) enqueueOwner(obj any) {
	if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = t.Obj
	}
	if m, ok := obj.(metav1.Object); ok {
		c.queue.Add(m.GetNamespace())
	}
}

func active(ns *corev1.Namespace) bool {
	return ns.DeletionTimestamp == nil && ns.Status.Phase != corev1.NamespaceTerminating
}

// Run keeps the objects with workers goroutines until ctx is cancelled.
func (c *Controller) Run(ctx context.Context, workers int) {
	defer utilruntime.HandleCrash()
	logger := klog.FromContext(ctx).WithName(ControllerName)
	ctx = klog.NewContext(ctx, logger)
	q := workqueue.NewTypedRateLimitingQueueWithConfig(
		workqueue.NewTypedItemExponentialFailureRateLimiter[string](c.retryBase, c.retryMax),
		workqueue.TypedRateLimitingQueueConfig[string]{Name: "nsdefaults"},
	)
	defer c.queue.Fill(q)()

	go c.saInformer.RunWithContext(ctx)
	go c.cmInformer.RunWithContext(ctx)
	logger.Info("Starting")
	defer logger.Info("Stopped")
	if !cache.WaitForNamedCacheSyncWithContext(ctx, c.synced...) {
		return
	}
	all, _ := c.nsLister.List(labels.Everything())
	for _, ns := range all {
		c.enqueueNamespace(ns)
	}
	worker.Run(ctx, q, workers, c.sync, worker.Options{
		KeyName: "namespace", Failed: "Keeping the default ServiceAccount and root CA ConfigMap failed; will retry",
		// The cache behind the controller's own writes.
		Expected:  func(err error) bool { return apierrors.IsConflict(err) || apierrors.IsAlreadyExists(err) },
		ExpectedV: 2, Waiting: "Cache behind; will retry",
	})
}

// sync puts both objects of one Namespace right.
func (c *Controller) sync(ctx context.Context, name string) error {
	ns, err := c.nsLister.Get(name)
	if apierrors.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return err
	}
	if !active(ns) {
		return nil
	}
	return errors.Join(c.syncServiceAccount(ctx, name), c.syncRootCA(ctx, name))
}

// gone reports a write refused because the Namespace is gone or going:
// nothing to do, the Namespace's own events say what comes next.
func gone(err error) bool {
	return apierrors.IsNotFound(err) || apierrors.HasStatusCause(err, corev1.NamespaceTerminatingCause)
}

func (c *Controller) syncServiceAccount(ctx context.Context, ns string) error {
	if _, err := c.saLister.ServiceAccounts(ns).Get(DefaultServiceAccount); !apierrors.IsNotFound(err) {
		return err
	}
	_, err := c.client.CoreV1().ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{
		ObjectMeta: metav1.ObjectMeta{Name: DefaultServiceAccount},
	}, metav1.CreateOptions{FieldManager: ControllerName})
	switch {
	case err == nil:
		klog.FromContext(ctx).V(2).Info("Created the default ServiceAccount", "namespace", ns)
		return nil
	case gone(err):
		return nil
	case apierrors.IsAlreadyExists(err):
		// Created meanwhile; the informer has not seen it yet. Nothing
		// to do unless it is deleted again, which queues the Namespace.
		return nil
	}
	return fmt.Errorf("creating ServiceAccount %s/%s: %w", ns, DefaultServiceAccount, err)
}

// rootCA is the ConfigMap as it must be in ns.
func (c *Controller) rootCA(ns string) *corev1.ConfigMap {
	return &corev1.ConfigMap{
		ObjectMeta: metav1.ObjectMeta{Name: RootCAConfigMap, Namespace: ns, Annotations: map[string]string{DescriptionAnnotation: RootCADescription}},
		Data:       map[string]string{RootCAKey: string(c.caPEM)},
	}
}

// correct reports whether cm holds the CA, only it, and the description.
func (c *Controller) correct(cm *corev1.ConfigMap) bool {
	return maps.Equal(cm.Data, map[string]string{RootCAKey: string(c.caPEM)}) && len(cm.BinaryData) == 0 &&
		cm.Annotations[DescriptionAnnotation] != ""
}

func (c *Controller) syncRootCA(ctx context.Context, ns string) error {
	cms := c.client.CoreV1().ConfigMaps(ns)
	cm, err := c.cmLister.ConfigMaps(ns).Get(RootCAConfigMap)
	switch {
	case apierrors.IsNotFound(err):
		return c.createRootCA(ctx, ns)
	case err != nil:
		return err
	case c.correct(cm):
		return nil
	}
	logger := klog.FromContext(ctx)
	if cm.Immutable != nil && *cm.Immutable {
		// Its data cannot change: replace it, if it is still the one
		// the cache holds.
		uid := cm.UID
		err := cms.Delete(ctx, RootCAConfigMap, metav1.DeleteOptions{Preconditions: &metav1.Preconditions{UID: &uid}})
		if err != nil && !apierrors.IsNotFound(err) {
			return fmt.Errorf("replacing immutable ConfigMap %s/%s: %w", ns, RootCAConfigMap, err)
		}
		logger.Info("Replacing an immutable root CA ConfigMap that holds something else", "namespace", ns)
		return c.createRootCA(ctx, ns)
	}
	upd := cm.DeepCopy()
	want := c.rootCA(ns)
	upd.Data, upd.BinaryData = want.Data, nil
	if upd.Annotations == nil {
		upd.Annotations = map[string]string{}
	}
	upd.Annotations[DescriptionAnnotation] = RootCADescription
	// The update carries the cached resourceVersion: a ConfigMap changed
	// meanwhile is a conflict, retried from the newer cache.
	if _, err := cms.Update(ctx, upd, metav1.UpdateOptions{FieldManager: ControllerName}); err != nil {
		if gone(err) {
			return nil
		}
		return fmt.Errorf("repairing ConfigMap %s/%s: %w", ns, RootCAConfigMap, err)
	}
	logger.V(2).Info("Repaired the root CA ConfigMap", "namespace", ns)
	return nil
}

func (c *Controller) createRootCA(ctx context.Context, ns string) error {
	_, err := c.client.CoreV1().ConfigMaps(ns).Create(ctx, c.rootCA(ns), metav1.CreateOptions{FieldManager: ControllerName})
	switch {
	case err == nil:
		klog.FromContext(ctx).V(2).Info("Published the root CA", "namespace", ns)
		return nil
	case gone(err):
		return nil
	case apierrors.IsAlreadyExists(err):
		// Created meanwhile, by this controller's last term or another
		// hand: its arrival in the cache queues a check of its content.
		return err
	}
	return fmt.Errorf("creating ConfigMap %s/%s: %w", ns, RootCAConfigMap, err)
}
