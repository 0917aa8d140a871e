package namespace

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/record"

	"github.com/duet-net/duet/internal/apis/core"
	"github.com/duet-net/duet/internal/controller/events"
)

const waitTimeout = 10 * time.Second

const otherFinalizer = "example.com/other"

// kinds maps the resources the fake serves to their kinds, for the
// tracker.
var kinds = map[schema.GroupVersionResource]schema.GroupVersionKind{
	corev1.SchemeGroupVersion.WithResource("pods"):                corev1.SchemeGroupVersion.WithKind("Pod"),
	corev1.SchemeGroupVersion.WithResource("services"):            corev1.SchemeGroupVersion.WithKind("Service"),
	corev1.SchemeGroupVersion.WithResource("endpoints"):           corev1.SchemeGroupVersion.WithKind("Endpoints"),
	corev1.SchemeGroupVersion.WithResource("events"):              corev1.SchemeGroupVersion.WithKind("Event"),
	discoveryv1.SchemeGroupVersion.WithResource("endpointslices"): discoveryv1.SchemeGroupVersion.WithKind("EndpointSlice"),
	coordinationv1.SchemeGroupVersion.WithResource("leases"):      coordinationv1.SchemeGroupVersion.WithKind("Lease"),
	corev1.SchemeGroupVersion.WithResource("configmaps"):          corev1.SchemeGroupVersion.WithKind("ConfigMap"),
	corev1.SchemeGroupVersion.WithResource("secrets"):             corev1.SchemeGroupVersion.WithKind("Secret"),
	corev1.SchemeGroupVersion.WithResource("serviceaccounts"):     corev1.SchemeGroupVersion.WithKind("ServiceAccount"),
	appsv1.SchemeGroupVersion.WithResource("deployments"):         appsv1.SchemeGroupVersion.WithKind("Deployment"),
	appsv1.SchemeGroupVersion.WithResource("daemonsets"):          appsv1.SchemeGroupVersion.WithKind("DaemonSet"),
	appsv1.SchemeGroupVersion.WithResource("replicasets"):         appsv1.SchemeGroupVersion.WithKind("ReplicaSet"),
	appsv1.SchemeGroupVersion.WithResource("controllerrevisions"): appsv1.SchemeGroupVersion.WithKind("ControllerRevision"),
}

// deletedNamespace is a Namespace as the server holds it after
// `kubectl delete`: a deletionTimestamp, our finalizer (and another's),
// still Active.
func deletedNamespace(name string) *corev1.Namespace {
	now := metav1.Now()
	return &corev1.Namespace{
		ObjectMeta: metav1.ObjectMeta{
			Name: name, UID: "uid-" + types.UID(name), DeletionTimestamp: &now,
			Finalizers: []string{otherFinalizer, core.NamespaceFinalizer},
		},
		Status: corev1.NamespaceStatus{Phase: corev1.NamespaceActive},
	}
}

func activeNamespace(name string) *corev1.Namespace {
	return &corev1.Namespace{
		ObjectMeta: metav1.ObjectMeta{Name: name, Finalizers: []string{core.NamespaceFinalizer}},
		Status:     corev1.NamespaceStatus{Phase: corev1.NamespaceActive},
	}
}

// contentOf is one object of every namespaced resource in ns.
func contentOf(ns string) []runtime.Object {
	om := func(name string) metav1.ObjectMeta {
		return metav1.ObjectMeta{Namespace: ns, Name: name, UID: types.UID("uid-" + ns + "-" + name)}
	}
	return []runtime.Object{
		&appsv1.Deployment{ObjectMeta: om("web")},
		&appsv1.ReplicaSet{ObjectMeta: om("web-5d4f")},
		&appsv1.DaemonSet{ObjectMeta: om("agent")},
		&appsv1.ControllerRevision{ObjectMeta: om("agent-6c8b")},
		&corev1.Pod{ObjectMeta: om("web")},
		&corev1.Pod{ObjectMeta: om("db")},
		&corev1.Service{ObjectMeta: om("web")},
		//lint:ignore SA1019 Duet serves core/v1 Endpoints, so a Namespace holds them.
		&corev1.Endpoints{ObjectMeta: om("web")},
		&discoveryv1.EndpointSlice{ObjectMeta: om("web-ipv4"), AddressType: discoveryv1.AddressTypeIPv4},
		&discoveryv1.EndpointSlice{ObjectMeta: om("web-ipv6"), AddressType: discoveryv1.AddressTypeIPv6},
		&coordinationv1.Lease{ObjectMeta: om("leader")},
		&corev1.ConfigMap{ObjectMeta: om("kube-root-ca.crt")},
		&corev1.Secret{ObjectMeta: om("token")},
		&corev1.ServiceAccount{ObjectMeta: om("default")},
		&corev1.Event{ObjectMeta: om("web.1")},
	}
}

// cluster is a controller under test with the fake API server it talks to.
type cluster struct {
	t        *testing.T
	client   *fake.Clientset
	ctrl     *Controller
	recorder *record.FakeRecorder
}

// newCluster builds a controller over a fake seeded with objs, with the
// server's deletion semantics for content (an object with finalizers gets
// a deletionTimestamp and stays) and DeleteCollection. It starts the
// informers but not the controller.
func newCluster(t *testing.T, objs ...runtime.Object) *cluster {
	t.Helper()
	c := &cluster{t: t, client: fake.NewClientset(objs...), recorder: record.NewFakeRecorder(1000)}
	tracker := c.client.Tracker()
	del := func(gvr schema.GroupVersionResource, ns, name string) error {
		obj, err := tracker.Get(gvr, ns, name)
		if err != nil {
			return err
		}
		m, _ := meta.Accessor(obj)
		if len(m.GetFinalizers()) == 0 {
			return tracker.Delete(gvr, ns, name)
		}
		if m.GetDeletionTimestamp() == nil {
			now := metav1.Now()
			m.SetDeletionTimestamp(&now)
			return tracker.Update(gvr, obj, ns)
		}
		return nil
	}
	c.client.PrependReactor("delete", "*", func(a k8stesting.Action) (bool, runtime.Object, error) {
		if a.GetResource().Resource == "namespaces" {
			return false, nil, nil
		}
		return true, nil, del(a.GetResource(), a.GetNamespace(), a.(k8stesting.DeleteAction).GetName())
	})
	c.client.PrependReactor("delete-collection", "*", func(a k8stesting.Action) (bool, runtime.Object, error) {
		gvr := a.GetResource()
		list, err := tracker.List(gvr, kinds[gvr], a.GetNamespace())
		if err != nil {
			return true, nil, err
		}
		items, _ := meta.ExtractList(list)
		for _, it := range items {
			m, _ := meta.Accessor(it)
			if err := del(gvr, a.GetNamespace(), m.GetName()); err != nil && !apierrors.IsNotFound(err) {
				return true, nil, err
			}
		}
		return true, nil, nil
	})

	factory := informers.NewSharedInformerFactory(c.client, 0)
	c.ctrl = New(c.client, factory.Core().V1().Namespaces(), c.recorder)
	c.ctrl.retryBase, c.ctrl.retryMax = time.Millisecond, 20*time.Millisecond
	ctx, cancel := context.WithCancel(context.Background())
	factory.Start(ctx.Done())
	t.Cleanup(func() {
		cancel()
		factory.Shutdown()
	})
	if !cache.WaitForCacheSync(ctx.Done(), c.ctrl.synced) {
		t.Fatal("namespace informer did not sync")
	}
	return c
}

// run starts the controller with workers; it stops when the test ends.
func (c *cluster) run(workers int) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		c.ctrl.Run(ctx, workers)
	}()
	c.t.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(waitTimeout):
			c.t.Error("Run did not return after its context was cancelled")
		}
	})
}

// waitFor polls cond until it holds, failing the test with what after the
// deadline.
func (c *cluster) waitFor(what string, cond func() bool) {
	c.t.Helper()
	err := wait.PollUntilContextTimeout(context.Background(), 2*time.Millisecond, waitTimeout, true, func(context.Context) (bool, error) {
		return cond(), nil
	})
	if err != nil {
		c.t.Fatalf("timed out waiting until %s", what)
	}
}

func (c *cluster) namespace(name string) *corev1.Namespace {
	c.t.Helper()
	ns, err := c.client.CoreV1().Namespaces().Get(context.Background(), name, metav1.GetOptions{})
	if err != nil {
		c.t.Fatal(err)
	}
	return ns
}

func (c *cluster) waitFinalized(name string) *corev1.Namespace {
	c.t.Helper()
	var ns *corev1.Namespace
	c.waitFor("Namespace "+name+" loses finalizer "+core.NamespaceFinalizer, func() bool {
		ns = c.namespace(name)
		return !slices.Contains(ns.Finalizers, core.NamespaceFinalizer)
	})
	return ns
}

// objects is every namespaced object of the served resources in ns, as
// "resource/name".
func (c *cluster) objects(ns string) []string {
	c.t.Helper()
	var out []string
	for gvr, gvk := range kinds {
		list, err := c.client.Tracker().List(gvr, gvk, ns)
		if err != nil {
			c.t.Fatal(err)
		}
		items, _ := meta.ExtractList(list)
		for _, it := range items {
			m, _ := meta.Accessor(it)
			out = append(out, gvr.Resource+"/"+m.GetName())
		}
	}
	slices.Sort(out)
	return out
}

// writes is the mutating actions the controller sent, in order, as
// "verb resource[/subresource] namespace/name".
func (c *cluster) writes() []string {
	var out []string
	for _, a := range c.client.Actions() {
		switch a.GetVerb() {
		case "get", "list", "watch":
			continue
		}
		r := a.GetResource().Resource
		if a.GetSubresource() != "" {
			r += "/" + a.GetSubresource()
		}
		name := ""
		switch a := a.(type) {
		case k8stesting.DeleteAction:
			name = a.GetName()
		case k8stesting.UpdateAction:
			name, _ = meta.NewAccessor().Name(a.GetObject())
		}
		out = append(out, fmt.Sprintf("%s %s %s/%s", a.GetVerb(), r, a.GetNamespace(), name))
	}
	return out
}

func indexOf(list []string, pred func(string) bool) int { return slices.IndexFunc(list, pred) }

func lastIndexOf(list []string, pred func(string) bool) int {
	for i := len(list) - 1; i >= 0; i-- {
		if pred(list[i]) {
			return i
		}
	}
	return -1
}

func condition(ns *corev1.Namespace, typ corev1.NamespaceConditionType) *corev1.NamespaceCondition {
	for i := range ns.Status.Conditions {
		if ns.Status.Conditions[i].Type == typ {
			return &ns.Status.Conditions[i]
		}
	}
	return nil
}

func (c *cluster) waitEvent(prefix string) string {
	c.t.Helper()
	deadline := time.After(waitTimeout)
	for {
		select {
		case e := <-c.recorder.Events:
			if strings.HasPrefix(e, prefix) {
				return e
			}
		case <-deadline:
			c.t.Fatalf("timed out waiting for an event %q", prefix)
		}
	}
}

func TestDeletedNamespaceIsEmptiedThenFinalized(t *testing.T) {
	objs := []runtime.Object{deletedNamespace("doomed"), activeNamespace("keep")}
	objs = append(objs, contentOf("doomed")...)
	objs = append(objs, contentOf("keep")...)
	c := newCluster(t, objs...)
	c.run(2)

	ns := c.waitFinalized("doomed")
	if got := c.objects("doomed"); len(got) != 0 {
		t.Errorf("Namespace doomed was finalized with content left: %v", got)
	}
	if got, want := len(c.objects("keep")), len(contentOf("keep")); got != want {
		t.Errorf("Namespace keep holds %d objects, want its %d untouched", got, want)
	}
	if ns.Status.Phase != corev1.NamespaceTerminating {
		t.Errorf("Namespace doomed has phase %q, want Terminating", ns.Status.Phase)
	}
	if !slices.Equal(ns.Finalizers, []string{otherFinalizer}) {
		t.Errorf("Namespace doomed has finalizers %v, want only another controller's %q kept", ns.Finalizers, otherFinalizer)
	}
	if len(ns.Status.Conditions) != 0 {
		t.Errorf("a Namespace emptied at once got conditions %v, want none written", ns.Status.Conditions)
	}

	w := c.writes()
	terminating := indexOf(w, func(s string) bool { return s == "update namespaces/status /doomed" })
	firstDelete := indexOf(w, func(s string) bool { return strings.HasPrefix(s, "delete") })
	lastDelete := lastIndexOf(w, func(s string) bool { return strings.HasPrefix(s, "delete") })
	finalize := indexOf(w, func(s string) bool { return s == "update namespaces /doomed" })
	if terminating < 0 || firstDelete < 0 || finalize < 0 || terminating > firstDelete || finalize < lastDelete {
		t.Errorf("writes %q: want the Terminating status first, then deletions, then the finalizer removed", w)
	}
	for _, s := range w {
		if strings.Contains(s, " keep/") || strings.HasSuffix(s, " /keep") {
			t.Errorf("write %q touches Namespace keep", s)
		}
	}
	for _, r := range []string{"pods", "endpoints", "endpointslices", "leases", "events"} {
		if !slices.Contains(w, "delete-collection "+r+" doomed/") {
			t.Errorf("%s not deleted with DeleteCollection; writes: %q", r, w)
		}
	}
	if !slices.Contains(w, "delete services doomed/web") {
		t.Errorf("Service not deleted on its own (Services offer no DeleteCollection); writes: %q", w)
	}
}

func TestContentWithFinalizersHoldsTheNamespace(t *testing.T) {
	held := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "doomed", Name: "held", UID: "uid-held", Finalizers: []string{"example.com/hold"}}}
	objs := append([]runtime.Object{deletedNamespace("doomed"), held}, contentOf("doomed")...)
	c := newCluster(t, objs...)
	c.run(1)

	var ns *corev1.Namespace
	c.waitFor("Namespace doomed reports the remaining Pod", func() bool {
		ns = c.namespace("doomed")
		cond := condition(ns, corev1.NamespaceContentRemaining)
		return cond != nil && cond.Status == corev1.ConditionTrue
	})
	if !slices.Contains(ns.Finalizers, core.NamespaceFinalizer) {
		t.Fatalf("finalizer removed while Pod held still exists")
	}
	if got, want := condition(ns, corev1.NamespaceContentRemaining).Message, "Some resources are remaining: pods has 1 resource instances"; got != want {
		t.Errorf("NamespaceContentRemaining message %q, want %q", got, want)
	}
	fin := condition(ns, corev1.NamespaceFinalizersRemaining)
	if fin == nil || fin.Status != corev1.ConditionTrue || fin.Message != "Some finalizers are remaining: example.com/hold in 1 resource instances" {
		t.Errorf("NamespaceFinalizersRemaining is %+v, want True naming example.com/hold", fin)
	}
	if got := c.objects("doomed"); !slices.Equal(got, []string{"pods/held"}) {
		t.Errorf("content left %v, want only the Pod with a finalizer", got)
	}

	// Its owner removes the finalizer; the server deletes the Pod. The
	// controller notices on a retry.
	if err := c.client.Tracker().Delete(corev1.SchemeGroupVersion.WithResource("pods"), "doomed", "held"); err != nil {
		t.Fatal(err)
	}
	ns = c.waitFinalized("doomed")
	for _, typ := range maintainedConditions {
		if cond := condition(ns, typ); cond == nil || cond.Status != corev1.ConditionFalse {
			t.Errorf("condition %s is %+v after the content went, want False", typ, cond)
		}
	}
}

func TestSystemNamespacesAreNeverEmptied(t *testing.T) {
	for _, name := range Protected {
		t.Run(name, func(t *testing.T) {
			objs := append([]runtime.Object{deletedNamespace(name)}, contentOf(name)...)
			c := newCluster(t, objs...)
			if err := c.ctrl.sync(context.Background(), name); err != nil {
				t.Fatalf("sync: %v", err)
			}
			if e := <-c.recorder.Events; !strings.HasPrefix(e, "Warning "+ReasonDeletionRefused+" ") {
				t.Errorf("event %q, want a Warning %s", e, ReasonDeletionRefused)
			}
			if w := c.writes(); len(w) != 0 {
				t.Errorf("deleted system Namespace %s got writes %q, want none", name, w)
			}
			if !slices.Contains(c.namespace(name).Finalizers, core.NamespaceFinalizer) {
				t.Errorf("finalizer removed from system Namespace %s", name)
			}
		})
	}
}

func TestNamespacesNotOursToFinalizeAreLeftAlone(t *testing.T) {
	notOurs := deletedNamespace("not-ours")
	notOurs.Finalizers = []string{otherFinalizer}
	objs := []runtime.Object{activeNamespace("active"), notOurs}
	objs = append(objs, contentOf("active")...)
	objs = append(objs, contentOf("not-ours")...)
	for _, tc := range []struct{ name, ns string }{
		{"an active Namespace", "active"},
		{"a deleted Namespace without our finalizer", "not-ours"},
		{"a Namespace that is gone", "gone"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := newCluster(t, objs...)
			if err := c.ctrl.sync(context.Background(), tc.ns); err != nil {
				t.Fatalf("sync: %v", err)
			}
			if w := c.writes(); len(w) != 0 {
				t.Errorf("writes %q, want none", w)
			}
		})
	}
}

func TestStaleCacheNeverEmptiesARecreatedNamespace(t *testing.T) {
	// The cache still shows the deleted Namespace; the server already has
	// a new one of the same name, with content that must stay.
	objs := append([]runtime.Object{activeNamespace("reborn")}, contentOf("reborn")...)
	c := newCluster(t, objs...)
	stale := newCluster(t, deletedNamespace("reborn"))
	c.ctrl.lister = stale.ctrl.lister

	if err := c.ctrl.sync(context.Background(), "reborn"); err != nil {
		t.Fatalf("sync: %v", err)
	}
	if w := c.writes(); len(w) != 0 {
		t.Errorf("writes %q to a live Namespace the cache showed as deleted, want none", w)
	}
}

func TestNoDeleteCollectionFallsBackToOneByOne(t *testing.T) {
	objs := []runtime.Object{deletedNamespace("a"), deletedNamespace("b")}
	objs = append(objs, contentOf("a")...)
	objs = append(objs, contentOf("b")...)
	c := newCluster(t, objs...)
	c.client.PrependReactor("delete-collection", "pods", func(k8stesting.Action) (bool, runtime.Object, error) {
		return true, nil, apierrors.NewMethodNotSupported(schema.GroupResource{Resource: "pods"}, "deletecollection")
	})
	c.run(1)

	c.waitFinalized("a")
	c.waitFinalized("b")
	w := c.writes()
	for _, want := range []string{"delete pods a/web", "delete pods a/db", "delete pods b/web", "delete pods b/db"} {
		if !slices.Contains(w, want) {
			t.Errorf("no %q; writes: %q", want, w)
		}
	}
	tries := 0
	for _, s := range w {
		if strings.HasPrefix(s, "delete-collection pods ") {
			tries++
		}
	}
	if tries != 1 {
		t.Errorf("DeleteCollection on pods tried %d times, want once and then remembered as unsupported", tries)
	}
	if got := c.objects("a"); len(got) != 0 {
		t.Errorf("content left in a: %v", got)
	}
}

func TestFailedDeletionIsReportedAndRetried(t *testing.T) {
	objs := append([]runtime.Object{deletedNamespace("doomed")}, contentOf("doomed")...)
	c := newCluster(t, objs...)
	var failures atomic.Int32
	c.client.PrependReactor("delete-collection", "leases", func(k8stesting.Action) (bool, runtime.Object, error) {
		if failures.Add(1) <= 2 {
			return true, nil, apierrors.NewInternalError(fmt.Errorf("etcd is unreachable"))
		}
		return false, nil, nil
	})
	c.run(1)

	e := c.waitEvent("Warning " + ReasonContentDeletionFailed + " ")
	if !strings.Contains(e, "coordination.k8s.io") || !strings.Contains(e, "etcd is unreachable") {
		t.Errorf("event %q does not say which resource failed and why", e)
	}
	ns := c.waitFinalized("doomed")
	if got := c.objects("doomed"); len(got) != 0 {
		t.Errorf("content left: %v", got)
	}
	if cond := condition(ns, corev1.NamespaceDeletionContentFailure); cond == nil || cond.Status != corev1.ConditionFalse {
		t.Errorf("NamespaceDeletionContentFailure is %+v once deletion succeeded, want False", cond)
	}
	sawFailure := false
	for _, a := range c.client.Actions() {
		if u, ok := a.(k8stesting.UpdateAction); ok && a.GetSubresource() == "status" {
			if cond := condition(u.GetObject().(*corev1.Namespace), corev1.NamespaceDeletionContentFailure); cond != nil && cond.Status == corev1.ConditionTrue {
				sawFailure = strings.Contains(cond.Message, "leases.coordination.k8s.io")
			}
		}
		if sawFailure {
			break
		}
	}
	if !sawFailure {
		t.Error("NamespaceDeletionContentFailure was never True naming leases while deletion failed")
	}
}

func TestRunAgainAfterStop(t *testing.T) {
	c := newCluster(t, deletedNamespace("first"))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		c.ctrl.Run(ctx, 1)
	}()
	c.waitFinalized("first")
	cancel()
	select {
	case <-done:
	case <-time.After(waitTimeout):
		t.Fatal("Run did not return after its context was cancelled")
	}

	c.run(1)
	second := deletedNamespace("second")
	if _, err := c.client.CoreV1().Namespaces().Create(context.Background(), second, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	c.waitFinalized("second")
}

func TestEventsAreWrittenThroughTheAPI(t *testing.T) {
	c := newCluster(t, deletedNamespace(metav1.NamespaceSystem))
	// Through the process's broadcaster, as in the server.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	c.ctrl.recorder = events.Start(ctx, c.client).Recorder(corev1.EventSource{Component: ControllerName})
	c.run(1)
	c.waitFor("a DeletionRefused event about kube-system is written in default", func() bool {
		list, err := c.client.CoreV1().Events(metav1.NamespaceDefault).List(context.Background(), metav1.ListOptions{})
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range list.Items {
			if e.Reason == ReasonDeletionRefused && e.InvolvedObject.Kind == "Namespace" && e.InvolvedObject.Name == metav1.NamespaceSystem &&
				e.Source.Component == ControllerName && e.Type == corev1.EventTypeWarning {
				return true
			}
		}
		return false
	})
}
