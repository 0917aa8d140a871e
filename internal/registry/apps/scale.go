package apps

import (
	"context"
	"fmt"

	appsv1 "k8s.io/api/apps/v1"
	autoscalingv1 "k8s.io/api/autoscaling/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	metav1validation "k8s.io/apimachinery/pkg/apis/meta/v1/validation"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/managedfields"
	"k8s.io/apimachinery/pkg/util/validation/field"
	genericregistry "k8s.io/apiserver/pkg/registry/generic/registry"
	"k8s.io/apiserver/pkg/registry/rest"
	corevalidation "k8s.io/kubernetes/pkg/apis/core/validation"
	"sigs.k8s.io/structured-merge-diff/v6/fieldpath"
)

// scaleKind is what the scale subresource reads and writes of a kind.
type scaleKind struct {
	resource string
	// replicas returns spec.replicas, status.replicas and the selector.
	replicas    func(obj runtime.Object) (spec, status int32, selector *metav1.LabelSelector)
	setReplicas func(obj runtime.Object, n int32)
}

var deploymentScale = scaleKind{
	resource: "deployments",
	replicas: func(obj runtime.Object) (int32, int32, *metav1.LabelSelector) {
		d := obj.(*appsv1.Deployment)
		return replicas(d.Spec.Replicas), d.Status.Replicas, d.Spec.Selector
	},
	setReplicas: func(obj runtime.Object, n int32) { obj.(*appsv1.Deployment).Spec.Replicas = &n },
}

var replicaSetScale = scaleKind{
	resource: "replicasets",
	replicas: func(obj runtime.Object) (int32, int32, *metav1.LabelSelector) {
		rs := obj.(*appsv1.ReplicaSet)
		return replicas(rs.Spec.Replicas), rs.Status.Replicas, rs.Spec.Selector
	},
	setReplicas: func(obj runtime.Object, n int32) { obj.(*appsv1.ReplicaSet).Spec.Replicas = &n },
}

// replicasPaths maps the Scale's spec.replicas to the parent's, so that
// field ownership set through the subresource lands on the parent's field.
var replicasPaths = managedfields.ResourcePathMappings{APIVersion: fieldpath.MakePathOrDie("spec", "replicas")}

// ScaleREST is the scale subresource (autoscaling/v1 Scale) of a kind with
// replicas: kubectl scale and the HorizontalPodAutoscaler's way of
// changing spec.replicas alone.
type ScaleREST struct {
	store *genericregistry.Store
	kind  scaleKind
}

var (
	_ rest.Getter                   = &ScaleREST{}
	_ rest.Updater                  = &ScaleREST{}
	_ rest.GroupVersionKindProvider = &ScaleREST{}
)

func newScaleREST(store *genericregistry.Store, kind scaleKind) *ScaleREST {
	return &ScaleREST{store: store, kind: kind}
}

// GroupVersionKind says the subresource speaks autoscaling/v1 Scale.
func (r *ScaleREST) GroupVersionKind(schema.GroupVersion) schema.GroupVersionKind {
	return autoscalingv1.SchemeGroupVersion.WithKind("Scale")
}

func (r *ScaleREST) New() runtime.Object { return &autoscalingv1.Scale{} }
func (r *ScaleREST) Destroy()            {}

func (r *ScaleREST) Get(ctx context.Context, name string, options *metav1.GetOptions) (runtime.Object, error) {
	obj, err := r.store.Get(ctx, name, options)
	if err != nil {
		return nil, err
	}
	return r.kind.scale(obj)
}

func (r *ScaleREST) Update(ctx context.Context, name string, objInfo rest.UpdatedObjectInfo, createValidation rest.ValidateObjectFunc, updateValidation rest.ValidateObjectUpdateFunc, _ bool, options *metav1.UpdateOptions) (runtime.Object, bool, error) {
	obj, _, err := r.store.Update(ctx, name, &scaleUpdate{name: name, req: objInfo, kind: r.kind},
		r.createValidation(createValidation), r.updateValidation(updateValidation), false, options)
	if err != nil {
		return nil, false, err
	}
	scale, err := r.kind.scale(obj)
	return scale, false, err
}

// createValidation and updateValidation show admission the Scale, not
// the parent object, as the request was about the Scale.
func (r *ScaleREST) createValidation(f rest.ValidateObjectFunc) rest.ValidateObjectFunc {
	return func(ctx context.Context, obj runtime.Object) error {
		scale, err := r.kind.scale(obj)
		if err != nil {
			return err
		}
		return f(ctx, scale)
	}
}

func (r *ScaleREST) updateValidation(f rest.ValidateObjectUpdateFunc) rest.ValidateObjectUpdateFunc {
	return func(ctx context.Context, obj, old runtime.Object) error {
		scale, err := r.kind.scale(obj)
		if err != nil {
			return err
		}
		oldScale, err := r.kind.scale(old)
		if err != nil {
			return err
		}
		return f(ctx, scale, oldScale)
	}
}

// scale is the Scale of obj: its identity, replicas and the selector of its
// pods.
func (k scaleKind) scale(obj runtime.Object) (*autoscalingv1.Scale, error) {
	spec, status, sel := k.replicas(obj)
	selector, err := metav1.LabelSelectorAsSelector(sel)
	if err != nil {
		return nil, apierrors.NewBadRequest(fmt.Sprintf("invalid spec.selector: %v", err))
	}
	m := obj.(metav1.Object)
	return &autoscalingv1.Scale{
		ObjectMeta: metav1.ObjectMeta{
			Name: m.GetName(), Namespace: m.GetNamespace(), UID: m.GetUID(),
			ResourceVersion: m.GetResourceVersion(), CreationTimestamp: m.GetCreationTimestamp(),
		},
		Spec:   autoscalingv1.ScaleSpec{Replicas: spec},
		Status: autoscalingv1.ScaleStatus{Replicas: status, Selector: selector.String()},
	}, nil
}

// scaleUpdate turns the stored object into its Scale, lets the request
// change that, and carries the new replicas (and the resourceVersion the
// client sent, for optimistic concurrency) back into the object.
type scaleUpdate struct {
	name string
	req  rest.UpdatedObjectInfo
	kind scaleKind
}

func (u *scaleUpdate) Preconditions() *metav1.Preconditions { return u.req.Preconditions() }

func (u *scaleUpdate) UpdatedObject(ctx context.Context, oldObj runtime.Object) (runtime.Object, error) {
	obj := oldObj.DeepCopyObject()
	m := obj.(metav1.Object)
	if m.GetResourceVersion() == "" {
		// The store hands an empty object when none is stored.
		return nil, apierrors.NewNotFound(schema.GroupResource{Group: appsv1.GroupName, Resource: u.kind.resource + "/scale"}, u.name)
	}
	fields := managedfields.NewScaleHandler(m.GetManagedFields(), appsv1.SchemeGroupVersion, replicasPaths)
	old, err := u.kind.scale(obj)
	if err != nil {
		return nil, err
	}
	if old.ManagedFields, err = fields.ToSubresource(); err != nil {
		return nil, err
	}
	newObj, err := u.req.UpdatedObject(ctx, old)
	if err != nil {
		return nil, err
	}
	if newObj == nil {
		return nil, apierrors.NewBadRequest("nil update passed to Scale")
	}
	scale, ok := newObj.(*autoscalingv1.Scale)
	if !ok {
		return nil, apierrors.NewBadRequest(fmt.Sprintf("expected input object type to be Scale, but %T", newObj))
	}
	if errs := validateScale(scale); len(errs) > 0 {
		return nil, apierrors.NewInvalid(autoscalingv1.SchemeGroupVersion.WithKind("Scale").GroupKind(), m.GetName(), errs)
	}
	if scale.UID != "" && scale.UID != m.GetUID() {
		return nil, apierrors.NewConflict(schema.GroupResource{Group: appsv1.GroupName, Resource: u.kind.resource + "/scale"}, m.GetName(),
			//lint:ignore ST1005 Kubernetes' own message, which clients may match.
			fmt.Errorf("Precondition failed: UID in precondition: %v, UID in object meta: %v", scale.UID, m.GetUID()))
	}
	u.kind.setReplicas(obj, scale.Spec.Replicas)
	m.SetResourceVersion(scale.ResourceVersion)
	entries, err := fields.ToParent(scale.ManagedFields)
	if err != nil {
		return nil, err
	}
	m.SetManagedFields(entries)
	return obj, nil
}

// validateScale checks what a Scale write may change: replicas and field
// ownership. The rest of its metadata is ignored.
func validateScale(s *autoscalingv1.Scale) field.ErrorList {
	errs := metav1validation.ValidateManagedFields(s.ManagedFields, field.NewPath("metadata", "managedFields"))
	return append(errs, corevalidation.ValidateNonnegativeField(int64(s.Spec.Replicas), field.NewPath("spec", "replicas"))...)
}
