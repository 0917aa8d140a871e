package namespacelifecycle

import (
	"context"
	"errors"
	"net/http"
	"slices"
	"testing"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apiserver/pkg/admission"
	genericapirequest "k8s.io/apiserver/pkg/endpoints/request"
	"k8s.io/apiserver/pkg/registry/rest"
)

// store is a fake NamespaceGetter: the Namespaces it holds, or err for
// every lookup; it counts lookups.
type store struct {
	namespaces map[string]*corev1.Namespace
	err        error
	lookups    int
}

func (s *store) get(_ context.Context, name string) (*corev1.Namespace, error) {
	s.lookups++
	if s.err != nil {
		return nil, s.err
	}
	ns, ok := s.namespaces[name]
	if !ok {
		return nil, apierrors.NewNotFound(schema.GroupResource{Resource: "namespaces"}, name)
	}
	return ns, nil
}

func namespaces() map[string]*corev1.Namespace {
	now := metav1.Now()
	return map[string]*corev1.Namespace{
		"app": {ObjectMeta: metav1.ObjectMeta{Name: "app"}, Status: corev1.NamespaceStatus{Phase: corev1.NamespaceActive}},
		"going": {
			ObjectMeta: metav1.ObjectMeta{Name: "going", DeletionTimestamp: &now},
			Status:     corev1.NamespaceStatus{Phase: corev1.NamespaceTerminating},
		},
		// Deleted a moment ago: the controller has not set the phase yet.
		"just-deleted": {
			ObjectMeta: metav1.ObjectMeta{Name: "just-deleted", DeletionTimestamp: &now},
			Status:     corev1.NamespaceStatus{Phase: corev1.NamespaceActive},
		},
	}
}

var (
	pods       = corev1.SchemeGroupVersion.WithResource("pods")
	services   = corev1.SchemeGroupVersion.WithResource("services")
	nodes      = corev1.SchemeGroupVersion.WithResource("nodes")
	nsResource = corev1.SchemeGroupVersion.WithResource("namespaces")
)

type request struct {
	op          admission.Operation
	resource    schema.GroupVersionResource
	subresource string
	namespace   string
	name        string
	obj         runtime.Object
}

func (r request) attributes() admission.Attributes {
	name := r.name
	if r.op == admission.Create && r.obj != nil {
		name = "" // as the API server passes a create: the name is in the object
	}
	return admission.NewAttributesRecord(r.obj, nil, schema.GroupVersionKind{}, r.namespace, name, r.resource, r.subresource, r.op, nil, false, nil)
}

func pod(ns, name, generateName string) *corev1.Pod {
	return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, GenerateName: generateName}}
}

func TestValidate(t *testing.T) {
	terminating := func(ns string) string {
		return "unable to create new content in namespace " + ns + " because it is being terminated"
	}
	for _, tc := range []struct {
		name    string
		req     request
		err     error // the getter's error for every lookup
		code    int32 // 0: admitted
		message string
		noRead  bool // decided without reading a Namespace
	}{
		{name: "create a Pod in an active namespace", req: request{op: admission.Create, resource: pods, namespace: "app", obj: pod("app", "web", "")}},
		{
			name: "create a Pod in a namespace that does not exist",
			req:  request{op: admission.Create, resource: pods, namespace: "foo", obj: pod("foo", "web", "")},
			code: http.StatusNotFound, message: `namespaces "foo" not found`,
		},
		{
			name: "create a Pod in a terminating namespace",
			req:  request{op: admission.Create, resource: pods, namespace: "going", obj: pod("going", "web", "")},
			code: http.StatusForbidden, message: `pods "web" is forbidden: ` + terminating("going"),
		},
		{
			name: "create a Pod in a namespace deleted before the controller marked it Terminating",
			req:  request{op: admission.Create, resource: pods, namespace: "just-deleted", obj: pod("just-deleted", "web", "")},
			code: http.StatusForbidden, message: `pods "web" is forbidden: ` + terminating("just-deleted"),
		},
		{
			name: "create a Pod by generateName in a terminating namespace",
			req:  request{op: admission.Create, resource: pods, namespace: "going", obj: pod("going", "", "web-")},
			code: http.StatusForbidden, message: `pods "web-" is forbidden: ` + terminating("going"),
		},
		{
			name: "create a Service in a terminating namespace",
			req:  request{op: admission.Create, resource: services, namespace: "going", obj: &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "api"}}},
			code: http.StatusForbidden, message: `services "api" is forbidden: ` + terminating("going"),
		},
		{
			name: "a create on a subresource in a terminating namespace is new content too",
			req:  request{op: admission.Create, resource: pods, subresource: "binding", namespace: "going", name: "web"},
			code: http.StatusForbidden, message: `pods "web" is forbidden: ` + terminating("going"),
		},
		{name: "update a Pod in a terminating namespace", req: request{op: admission.Update, resource: pods, namespace: "going", name: "web"}, noRead: true},
		{name: "update a Pod's status in a terminating namespace", req: request{op: admission.Update, resource: pods, subresource: "status", namespace: "going", name: "web"}, noRead: true},
		{name: "delete a Pod in a terminating namespace", req: request{op: admission.Delete, resource: pods, namespace: "going", name: "web"}, noRead: true},
		{name: "delete a Pod in a namespace that does not exist", req: request{op: admission.Delete, resource: pods, namespace: "foo", name: "web"}, noRead: true},
		{name: "connect to a Pod in a terminating namespace", req: request{op: admission.Connect, resource: pods, subresource: "exec", namespace: "going", name: "web"}, noRead: true},
		{name: "create a cluster-scoped Node", req: request{op: admission.Create, resource: nodes, obj: &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n1"}}}, noRead: true},
		{
			name: "create a Namespace, even while namespaces cannot be read",
			req:  request{op: admission.Create, resource: nsResource, obj: &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "new"}}},
			err:  errors.New("etcd is unreachable"), noRead: true,
		},
		{name: "delete an ordinary namespace", req: request{op: admission.Delete, resource: nsResource, name: "app"}, noRead: true},
		{name: "update a system namespace", req: request{op: admission.Update, resource: nsResource, name: "kube-system"}, noRead: true},
		{name: "finalize a system namespace", req: request{op: admission.Update, resource: nsResource, subresource: "finalize", name: "kube-system"}, noRead: true},
		{
			name: "namespaces cannot be read",
			req:  request{op: admission.Create, resource: pods, namespace: "app", obj: pod("app", "web", "")},
			err:  errors.New("etcd is unreachable"),
			code: http.StatusInternalServerError, message: "Internal error occurred: reading namespace app: etcd is unreachable",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := &store{namespaces: namespaces(), err: tc.err}
			l := New(s.get)
			err := l.Validate(context.Background(), tc.req.attributes(), nil)
			if tc.code == 0 {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
			} else {
				var status apierrors.APIStatus
				if !errors.As(err, &status) {
					t.Fatalf("got %v, want a %d Status error %q", err, tc.code, tc.message)
				}
				if got := status.Status(); got.Code != tc.code || got.Message != tc.message {
					t.Errorf("got %d %q, want %d %q", got.Code, got.Message, tc.code, tc.message)
				}
			}
			if tc.noRead && s.lookups != 0 {
				t.Errorf("read %d namespaces, want the decision made without one", s.lookups)
			}
		})
	}
}

func TestTerminatingRefusalCarriesKubernetesCause(t *testing.T) {
	s := &store{namespaces: namespaces()}
	err := New(s.get).Validate(context.Background(), request{op: admission.Create, resource: pods, namespace: "going", obj: pod("going", "web", "")}.attributes(), nil)
	var status apierrors.APIStatus
	if !errors.As(err, &status) {
		t.Fatalf("got %v, want a Status error", err)
	}
	want := metav1.StatusCause{Type: corev1.NamespaceTerminatingCause, Message: "namespace going is being terminated", Field: "metadata.namespace"}
	if d := status.Status().Details; d == nil || !slices.Contains(d.Causes, want) {
		t.Errorf("details %+v lack cause %+v, which kubectl and controllers look for", d, want)
	}
	if !apierrors.HasStatusCause(err, corev1.NamespaceTerminatingCause) {
		t.Error("apierrors.HasStatusCause does not find NamespaceTerminatingCause")
	}
}

func TestSystemNamespacesMayNotBeDeleted(t *testing.T) {
	for _, name := range []string{"default", "kube-system", "kube-public", "kube-node-lease"} {
		t.Run(name, func(t *testing.T) {
			s := &store{namespaces: namespaces()}
			err := New(s.get).Validate(context.Background(), request{op: admission.Delete, resource: nsResource, name: name}.attributes(), nil)
			if !apierrors.IsForbidden(err) {
				t.Fatalf("deleting namespace %s: got %v, want Forbidden", name, err)
			}
			if want := `namespaces "` + name + `" is forbidden: this namespace may not be deleted`; err.Error() != want {
				t.Errorf("got %q, want %q", err.Error(), want)
			}
		})
	}
}

func TestHandles(t *testing.T) {
	l := New((&store{}).get)
	for op, want := range map[admission.Operation]bool{
		admission.Create: true, admission.Delete: true, admission.Update: false, admission.Connect: false,
	} {
		if got := l.Handles(op); got != want {
			t.Errorf("Handles(%s) = %v, want %v", op, got, want)
		}
	}
}

func TestNilNamespaceIsNotFound(t *testing.T) {
	l := New(func(context.Context, string) (*corev1.Namespace, error) { return nil, nil })
	err := l.Validate(context.Background(), request{op: admission.Create, resource: pods, namespace: "foo", obj: pod("foo", "web", "")}.attributes(), nil)
	if !apierrors.IsNotFound(err) || err.Error() != `namespaces "foo" not found` {
		t.Errorf("got %v, want namespaces \"foo\" not found", err)
	}
}

// getter is a fake namespace storage.
type getter struct {
	obj runtime.Object
	err error
	ns  string // the request namespace Get was called with
}

func (g *getter) Get(ctx context.Context, name string, _ *metav1.GetOptions) (runtime.Object, error) {
	g.ns, _ = genericapirequest.NamespaceFrom(ctx)
	return g.obj, g.err
}

var _ rest.Getter = (*getter)(nil)

func TestFromStorage(t *testing.T) {
	ctx := genericapirequest.WithNamespace(context.Background(), "app") // a request for a Pod in app
	want := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "app"}}
	g := &getter{obj: want}
	got, err := FromStorage(g)(ctx, "app")
	if err != nil || got != want {
		t.Fatalf("got %v, %v; want the stored Namespace", got, err)
	}
	if g.ns != "" {
		t.Errorf("storage read with request namespace %q, want none for a cluster-scoped Namespace", g.ns)
	}

	g = &getter{err: apierrors.NewNotFound(schema.GroupResource{Resource: "namespaces"}, "foo")}
	if _, err := FromStorage(g)(ctx, "foo"); !apierrors.IsNotFound(err) {
		t.Errorf("got %v, want storage's NotFound passed on", err)
	}
	g = &getter{obj: &corev1.Pod{}}
	if _, err := FromStorage(g)(ctx, "foo"); err == nil {
		t.Error("a non-Namespace from storage was accepted")
	}
}

// cachedGetter answers reads at resourceVersion "0" (the watch cache) from
// cached and the others (etcd) from stored, and counts both.
type cachedGetter struct {
	cached, stored map[string]*corev1.Namespace
	cacheReads     int
	etcdReads      int
}

func (g *cachedGetter) Get(_ context.Context, name string, opts *metav1.GetOptions) (runtime.Object, error) {
	from := g.stored
	if opts.ResourceVersion == "0" {
		from, g.cacheReads = g.cached, g.cacheReads+1
	} else {
		g.etcdReads++
	}
	if ns, ok := from[name]; ok {
		return ns, nil
	}
	return nil, apierrors.NewNotFound(schema.GroupResource{Resource: "namespaces"}, name)
}

func TestFromStorageReadsOnlyImmortalNamespacesFromCache(t *testing.T) {
	ns := func(name string) *corev1.Namespace {
		return &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}
	}
	now := metav1.Now()
	deleted := ns("app")
	deleted.DeletionTimestamp = &now
	for _, tc := range []struct {
		name                  string
		cached, stored        map[string]*corev1.Namespace
		get                   string
		wantCache, wantEtcd   int
		wantFound, wantDelete bool
	}{
		{"default, cached", map[string]*corev1.Namespace{"default": ns("default")}, map[string]*corev1.Namespace{"default": ns("default")}, "default", 1, 0, true, false},
		{"default, not cached yet", nil, map[string]*corev1.Namespace{"default": ns("default")}, "default", 1, 1, true, false},
		// The cache still shows app active, etcd knows it is being
		// deleted: a deletable namespace is always read from etcd.
		{"app, deleted since cached", map[string]*corev1.Namespace{"app": ns("app")}, map[string]*corev1.Namespace{"app": deleted}, "app", 0, 1, true, true},
		{"missing", nil, nil, "nope", 0, 1, false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g := &cachedGetter{cached: tc.cached, stored: tc.stored}
			got, err := FromStorage(g)(context.Background(), tc.get)
			if tc.wantFound != (err == nil) {
				t.Fatalf("got %v, %v", got, err)
			}
			if tc.wantFound && (got.DeletionTimestamp != nil) != tc.wantDelete {
				t.Errorf("deletionTimestamp %v, want set: %v", got.DeletionTimestamp, tc.wantDelete)
			}
			if g.cacheReads != tc.wantCache || g.etcdReads != tc.wantEtcd {
				t.Errorf("%d cache and %d etcd reads, want %d and %d", g.cacheReads, g.etcdReads, tc.wantCache, tc.wantEtcd)
			}
		})
	}
}

func TestRegister(t *testing.T) {
	plugins := admission.NewPlugins()
	Register(plugins, (&store{}).get)
	if !slices.Contains(plugins.Registered(), PluginName) {
		t.Fatalf("registered %v, want %s", plugins.Registered(), PluginName)
	}
	if err := New(nil).ValidateInitialization(); err == nil {
		t.Error("a plugin without a NamespaceGetter passed ValidateInitialization")
	}
	if err := New((&store{}).get).ValidateInitialization(); err != nil {
		t.Errorf("ValidateInitialization: %v", err)
	}
}
