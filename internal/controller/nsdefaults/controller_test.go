package nsdefaults

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes/fake"
	clienttesting "k8s.io/client-go/testing"
	"k8s.io/utils/ptr"

	"github.com/duet-net/duet/internal/controller/fakeapi"
)

const (
	waitTimeout = 10 * time.Second
	caPEM       = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
)

func namespace(name string) *corev1.Namespace {
	return &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}, Status: corev1.NamespaceStatus{Phase: corev1.NamespaceActive}}
}

func terminating(name string) *corev1.Namespace {
	ns := namespace(name)
	now := metav1.Now()
	ns.DeletionTimestamp = &now
	ns.Finalizers = []string{"x"}
	return ns
}

type env struct {
	t      *testing.T
	ctx    context.Context
	client *fake.Clientset
	ctrl   *Controller
}

// start runs a controller over a fake seeded with objs and waits until
// its informers watch.
func start(t *testing.T, objs ...runtime.Object) *env {
	t.Helper()
	client := fake.NewClientset(objs...)
	fakeapi.ServeLikeAPIServer(client)
	factory := informers.NewSharedInformerFactory(client, 0)
	c := New(client, factory.Core().V1().Namespaces(), []byte(caPEM))
	c.retryBase, c.retryMax = time.Millisecond, 20*time.Millisecond
	ctx, cancel := context.WithCancel(context.Background())
	factory.Start(ctx.Done())
	stop := fakeapi.Background(ctx, func(ctx context.Context) { c.Run(ctx, 2) })
	t.Cleanup(func() {
		stop()
		cancel()
		factory.Shutdown()
	})
	e := &env{t: t, ctx: ctx, client: client, ctrl: c}
	e.eventually("informers watching", func() (bool, string) {
		return fakeapi.Watching(client, "namespaces", "serviceaccounts", "configmaps"), "not yet"
	})
	return e
}

func (e *env) eventually(what string, cond func() (bool, string)) {
	e.t.Helper()
	if ok, last := fakeapi.Eventually(e.ctx, waitTimeout, cond); !ok {
		e.t.Fatalf("timed out waiting for %s: %s", what, last)
	}
}

// hasDefaults reports whether ns holds both objects as they must be.
func (e *env) hasDefaults(ns string) (bool, string) {
	if _, err := e.client.CoreV1().ServiceAccounts(ns).Get(e.ctx, DefaultServiceAccount, metav1.GetOptions{}); err != nil {
		return false, err.Error()
	}
	cm, err := e.client.CoreV1().ConfigMaps(ns).Get(e.ctx, RootCAConfigMap, metav1.GetOptions{})
	if err != nil {
		return false, err.Error()
	}
	if !maps.Equal(cm.Data, map[string]string{RootCAKey: caPEM}) || len(cm.BinaryData) > 0 || cm.Annotations[DescriptionAnnotation] != RootCADescription {
		return false, fmt.Sprintf("ConfigMap data %v binaryData %v annotations %v", cm.Data, cm.BinaryData, cm.Annotations)
	}
	return true, ""
}

func TestNewNamespaceGetsDefaults(t *testing.T) {
	e := start(t, namespace("existing"), terminating("going"))
	e.eventually("defaults in a namespace that existed at start", func() (bool, string) { return e.hasDefaults("existing") })
	if _, err := e.client.CoreV1().Namespaces().Create(e.ctx, namespace("fresh"), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	e.eventually("defaults in a new namespace", func() (bool, string) { return e.hasDefaults("fresh") })
	for _, a := range e.client.Actions() {
		if a.GetVerb() == "create" && a.GetNamespace() == "going" {
			t.Errorf("created %s in a terminating namespace", a.GetResource().Resource)
		}
	}
}

func TestDeletedObjectsComeBack(t *testing.T) {
	e := start(t, namespace("ns1"))
	e.eventually("defaults", func() (bool, string) { return e.hasDefaults("ns1") })
	if err := e.client.CoreV1().ServiceAccounts("ns1").Delete(e.ctx, DefaultServiceAccount, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := e.client.CoreV1().ConfigMaps("ns1").Delete(e.ctx, RootCAConfigMap, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	e.eventually("both objects back", func() (bool, string) { return e.hasDefaults("ns1") })
}

func TestEditedConfigMapIsRepaired(t *testing.T) {
	for _, tc := range []struct {
		name string
		edit func(*corev1.ConfigMap)
		// recreated: an immutable ConfigMap can only be replaced, so
		// what the user added to it goes with it.
		recreated bool
	}{
		{"another CA", func(cm *corev1.ConfigMap) { cm.Data[RootCAKey] = "not a CA" }, false},
		{"an extra key", func(cm *corev1.ConfigMap) { cm.Data["extra"] = "x" }, false},
		{"binaryData", func(cm *corev1.ConfigMap) { cm.BinaryData = map[string][]byte{"b": {1}} }, false},
		{"no data", func(cm *corev1.ConfigMap) { cm.Data = nil }, false},
		{"no description", func(cm *corev1.ConfigMap) { delete(cm.Annotations, DescriptionAnnotation) }, false},
		{"made immutable with another CA", func(cm *corev1.ConfigMap) { cm.Data[RootCAKey] = "other"; cm.Immutable = ptr.To(true) }, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := start(t, namespace("ns1"))
			e.eventually("defaults", func() (bool, string) { return e.hasDefaults("ns1") })
			cm, err := e.client.CoreV1().ConfigMaps("ns1").Get(e.ctx, RootCAConfigMap, metav1.GetOptions{})
			if err != nil {
				t.Fatal(err)
			}
			cm.Annotations["example.com/mine"] = "kept"
			tc.edit(cm)
			if _, err := e.client.CoreV1().ConfigMaps("ns1").Update(e.ctx, cm, metav1.UpdateOptions{}); err != nil {
				t.Fatal(err)
			}
			e.eventually("ConfigMap repaired", func() (bool, string) { return e.hasDefaults("ns1") })
			got, err := e.client.CoreV1().ConfigMaps("ns1").Get(e.ctx, RootCAConfigMap, metav1.GetOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if got.Immutable != nil {
				t.Errorf("the repaired ConfigMap is still immutable")
			}
			if !tc.recreated && got.Annotations["example.com/mine"] != "kept" {
				t.Errorf("repair dropped the user's annotation: %v", got.Annotations)
			}
		})
	}
}

// A Namespace whose objects are right costs no writes, at start or on
// any later event.
func TestCorrectObjectsAreLeftAlone(t *testing.T) {
	sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: "ns1", Name: DefaultServiceAccount}}
	cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: "ns1", Name: RootCAConfigMap,
		Annotations: map[string]string{DescriptionAnnotation: "an older wording"}}, Data: map[string]string{RootCAKey: caPEM}}
	e := start(t, namespace("ns1"), sa, cm, namespace("ns2"))
	e.eventually("defaults in ns2", func() (bool, string) { return e.hasDefaults("ns2") })
	for _, a := range e.client.Actions() {
		if a.GetNamespace() == "ns1" && a.GetVerb() != "get" && a.GetVerb() != "list" && a.GetVerb() != "watch" {
			t.Errorf("%s %s in a namespace whose objects were right", a.GetVerb(), a.GetResource().Resource)
		}
	}
}

// A create refused because the Namespace is terminating, or gone, is not
// retried: the Namespace's own events say what comes next.
func TestRefusedCreatesAreNotRetried(t *testing.T) {
	for _, tc := range []struct {
		name string
		err  error
	}{
		{"namespace terminating", &apierrors.StatusError{ErrStatus: metav1.Status{Status: metav1.StatusFailure, Code: 403, Reason: metav1.StatusReasonForbidden,
			Details: &metav1.StatusDetails{Causes: []metav1.StatusCause{{Type: corev1.NamespaceTerminatingCause}}}}}},
		{"namespace gone", apierrors.NewNotFound(schema.GroupResource{Resource: "namespaces"}, "ns1")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			client := fake.NewClientset(namespace("ns1"))
			client.PrependReactor("create", "*", func(clienttesting.Action) (bool, runtime.Object, error) { return true, nil, tc.err })
			factory := informers.NewSharedInformerFactory(client, 0)
			c := New(client, factory.Core().V1().Namespaces(), []byte(caPEM))
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			factory.Start(ctx.Done())
			factory.WaitForCacheSync(ctx.Done())
			if err := c.sync(ctx, "ns1"); err != nil {
				t.Errorf("sync = %v, want nil", err)
			}
		})
	}
	client := fake.NewClientset(namespace("ns1"))
	client.PrependReactor("create", "*", func(clienttesting.Action) (bool, runtime.Object, error) {
		return true, nil, apierrors.NewInternalError(errors.New("etcd down"))
	})
	factory := informers.NewSharedInformerFactory(client, 0)
	c := New(client, factory.Core().V1().Namespaces(), []byte(caPEM))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	factory.Start(ctx.Done())
	factory.WaitForCacheSync(ctx.Done())
	if err := c.sync(ctx, "ns1"); err == nil {
		t.Error("sync = nil after a server error, want an error so the namespace is retried")
	}
}
