// Package namespacelifecycle is Duet's NamespaceLifecycle admission
// plugin, with Kubernetes' behaviour and messages:
//
//   - creating an object in a Namespace that does not exist is refused
//     with NotFound (namespaces "foo" not found);
//   - creating an object in a Namespace that is being deleted is refused
//     with Forbidden (unable to create new content in namespace foo
//     because it is being terminated), so the namespace controller can
//     empty it for good;
//   - deleting a system Namespace (default, kube-system, kube-public,
//     kube-node-lease) is refused with Forbidden (this namespace may not be
//     deleted).
//
// Namespaces themselves, cluster-scoped objects, and every update, delete
// and subresource operation that is not a create are let through.
//
// Unlike Kubernetes' plugin it reads Namespaces through a NamespaceGetter
// backed by storage, not an informer: a Namespace created a moment ago is
// found, and a Namespace deleted a moment ago is seen as terminating, with
// no cache to wait for. Namespaces that cannot be deleted are the
// exception (see FromStorage).
package namespacelifecycle

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apiserver/pkg/admission"
	genericapirequest "k8s.io/apiserver/pkg/endpoints/request"
	"k8s.io/apiserver/pkg/registry/rest"
)

// PluginName is the plugin's name, Kubernetes' own, for
// --enable-admission-plugins and admission.Plugins.
const PluginName = "NamespaceLifecycle"

// Immortal is the Namespaces that may not be deleted. Kubernetes' list
// (default, kube-system, kube-public) plus kube-node-lease, whose content
// Duet's namespace controller never removes, so deleting it would leave it
// terminating for good, refusing new node Leases.
var Immortal = []string{
	metav1.NamespaceDefault,
	metav1.NamespaceSystem,
	metav1.NamespacePublic,
	corev1.NamespaceNodeLease,
}

// NamespaceGetter reads a Namespace as the store holds it now. A missing
// Namespace is a NotFound error (or a nil Namespace); ctx is the
// request's.
type NamespaceGetter func(ctx context.Context, name string) (*corev1.Namespace, error)

// FromStorage returns a NamespaceGetter over the Namespace registry's
// storage, read directly (no informer). Only the Immortal namespaces are
// read from the watch cache: they cannot be deleted, so once the cache
// holds one it is there and active for good, and the creates that land in
// them (most of a small cluster's) skip a quorum read of etcd each.
func FromStorage(namespaces rest.Getter) NamespaceGetter {
	return func(ctx context.Context, name string) (*corev1.Namespace, error) {
		ctx = genericapirequest.WithNamespace(ctx, metav1.NamespaceNone)
		if slices.Contains(Immortal, name) {
			if obj, err := namespaces.Get(ctx, name, &metav1.GetOptions{ResourceVersion: "0"}); err == nil {
				if ns, ok := obj.(*corev1.Namespace); ok {
					return ns, nil
				}
			}
			// Not cached yet (a fresh cluster): ask etcd.
		}
		obj, err := namespaces.Get(ctx, name, &metav1.GetOptions{})
		if err != nil {
			return nil, err
		}
		ns, ok := obj.(*corev1.Namespace)
		if !ok {
			return nil, fmt.Errorf("namespace storage returned %T, not a Namespace", obj)
		}
		return ns, nil
	}
}

// Lifecycle is the admission plugin.
type Lifecycle struct {
	*admission.Handler
	get NamespaceGetter
}

var (
	_ admission.ValidationInterface     = (*Lifecycle)(nil)
	_ admission.InitializationValidator = (*Lifecycle)(nil)
)

// New returns the plugin, reading Namespaces through get.
func New(get NamespaceGetter) *Lifecycle {
	return &Lifecycle{Handler: admission.NewHandler(admission.Create, admission.Delete), get: get}
}

// Register adds the plugin, reading Namespaces through get, to plugins
// under PluginName. It takes no configuration.
func Register(plugins *admission.Plugins, get NamespaceGetter) {
	plugins.Register(PluginName, func(io.Reader) (admission.Interface, error) {
		return New(get), nil
	})
}

// ValidateInitialization reports a plugin built without a NamespaceGetter.
func (l *Lifecycle) ValidateInitialization() error {
	if l.get == nil {
		return errors.New("the NamespaceLifecycle admission plugin has no way to read Namespaces")
	}
	return nil
}

var namespacesResource = schema.GroupResource{Resource: "namespaces"}

// Validate admits or refuses one request.
func (l *Lifecycle) Validate(ctx context.Context, a admission.Attributes, _ admission.ObjectInterfaces) error {
	if a.GetResource().GroupResource() == namespacesResource {
		if a.GetOperation() == admission.Delete && a.GetSubresource() == "" && slices.Contains(Immortal, a.GetName()) {
			return apierrors.NewForbidden(namespacesResource, a.GetName(), errors.New("this namespace may not be deleted"))
		}
		return nil // every other operation on Namespaces, creates included
	}
	if a.GetOperation() != admission.Create || a.GetNamespace() == "" {
		return nil // only new content is checked, and only in a namespace
	}

	name := a.GetNamespace()
	ns, err := l.get(ctx, name)
	switch {
	case apierrors.IsNotFound(err) || (err == nil && ns == nil):
		return apierrors.NewNotFound(namespacesResource, name)
	case err != nil:
		return apierrors.NewInternalError(fmt.Errorf("reading namespace %s: %w", name, err))
	}
	// A deleted Namespace is terminating before the namespace controller
	// has set its phase: refuse from the first moment, so no object lands
	// after the controller's last sweep.
	if ns.DeletionTimestamp == nil && ns.Status.Phase != corev1.NamespaceTerminating {
		return nil
	}
	forbidden := admission.NewForbidden(a, fmt.Errorf("unable to create new content in namespace %s because it is being terminated", name))
	var status *apierrors.StatusError
	if errors.As(forbidden, &status) && status.ErrStatus.Details != nil {
		status.ErrStatus.Details.Causes = append(status.ErrStatus.Details.Causes, metav1.StatusCause{
			Type:    corev1.NamespaceTerminatingCause,
			Message: fmt.Sprintf("namespace %s is being terminated", name),
			Field:   "metadata.namespace",
		})
	}
	return forbidden
}
