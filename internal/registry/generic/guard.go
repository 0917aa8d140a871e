package generic

import (
	"context"

	metainternalversion "k8s.io/apimachinery/pkg/apis/meta/internalversion"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apiserver/pkg/registry/rest"
)

// GuardedStore is a Store whose deletions a resource's own rules may
// refuse (the cluster's last range of its primary family, say). Guard sees
// the stored object inside the delete's precondition check, so it decides
// on what is deleted, for a single delete and for every object of a
// deletecollection alike; an object already being deleted is not checked
// again. Guard's error is the client's answer: make it a Status error
// (apierrors.NewForbidden) naming the object and the reason.
type GuardedStore struct {
	*Store
	Guard func(ctx context.Context, obj runtime.Object) error
}

func (g *GuardedStore) Delete(ctx context.Context, name string, deleteValidation rest.ValidateObjectFunc, options *metav1.DeleteOptions) (runtime.Object, bool, error) {
	return g.Store.Delete(ctx, name, g.guard(deleteValidation), options)
}

func (g *GuardedStore) DeleteCollection(ctx context.Context, deleteValidation rest.ValidateObjectFunc, options *metav1.DeleteOptions, listOptions *metainternalversion.ListOptions) (runtime.Object, error) {
	return g.Store.DeleteCollection(ctx, g.guard(deleteValidation), options, listOptions)
}

func (g *GuardedStore) guard(next rest.ValidateObjectFunc) rest.ValidateObjectFunc {
	return func(ctx context.Context, obj runtime.Object) error {
		if m, ok := obj.(metav1.Object); !ok || m.GetDeletionTimestamp() == nil {
			if err := g.Guard(ctx, obj); err != nil {
				return err
			}
		}
		if next == nil {
			return nil
		}
		return next(ctx, obj)
	}
}
