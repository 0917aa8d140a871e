// Package generic builds registry stores for Duet's resources: a Strategy
// that a resource configures with its own defaulting and validation, the
// status-subresource variant, field selectors, and the wiring into
// k8s.io/apiserver's generic registry Store.
package generic

import (
	"context"
	"fmt"
	"reflect"

	validation "k8s.io/apimachinery/pkg/api/validation"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/validation/field"
	"k8s.io/apiserver/pkg/registry/generic"
	genericregistry "k8s.io/apiserver/pkg/registry/generic/registry"
	"k8s.io/apiserver/pkg/registry/rest"
	"k8s.io/apiserver/pkg/storage"
	"k8s.io/apiserver/pkg/storage/names"
	"sigs.k8s.io/structured-merge-diff/v6/fieldpath"
)

// Strategy is a resource's create/update/delete policy. Hooks left nil do
// nothing; metadata validation (names, labels, annotations) always runs.
type Strategy struct {
	runtime.ObjectTyper
	names.NameGenerator

	Namespaced bool
	// HasStatus splits the object: the main resource ignores status
	// changes and the status subresource ignores spec changes (see
	// StatusStrategy).
	HasStatus bool
	// NameValidator checks metadata.name (a DNS subdomain by default).
	NameValidator validation.ValidateNameFunc
	// ValidatesMeta says the Validate hooks check metadata themselves.
	ValidatesMeta bool
	// WarningsFunc returns warnings for a created or updated object.
	WarningsFunc func(obj runtime.Object) []string

	PrepareForCreateFunc func(ctx context.Context, obj runtime.Object)
	PrepareForUpdateFunc func(ctx context.Context, obj, old runtime.Object)
	ValidateFunc         func(ctx context.Context, obj runtime.Object) field.ErrorList
	ValidateUpdateFunc   func(ctx context.Context, obj, old runtime.Object) field.ErrorList
	// APIVersion is the group/version string for reset fields.
	APIVersion string
}

func (s *Strategy) NamespaceScoped() bool                         { return s.Namespaced }
func (s *Strategy) AllowCreateOnUpdate(context.Context) bool      { return false }
func (s *Strategy) AllowUnconditionalUpdate(context.Context) bool { return true }
func (s *Strategy) Canonicalize(obj runtime.Object)               {}

func (s *Strategy) WarningsOnCreate(ctx context.Context, obj runtime.Object) []string {
	if s.WarningsFunc == nil {
		return nil
	}
	return s.WarningsFunc(obj)
}

func (s *Strategy) WarningsOnUpdate(ctx context.Context, obj, old runtime.Object) []string {
	return s.WarningsOnCreate(ctx, obj)
}

func (s *Strategy) PrepareForCreate(ctx context.Context, obj runtime.Object) {
	if s.HasStatus {
		resetField(obj, nil, "Status")
	}
	if s.PrepareForCreateFunc != nil {
		s.PrepareForCreateFunc(ctx, obj)
	}
}

func (s *Strategy) PrepareForUpdate(ctx context.Context, obj, old runtime.Object) {
	if s.HasStatus {
		resetField(obj, old, "Status")
	}
	if s.PrepareForUpdateFunc != nil {
		s.PrepareForUpdateFunc(ctx, obj, old)
	}
}

func (s *Strategy) Validate(ctx context.Context, obj runtime.Object) field.ErrorList {
	errs := s.validateMeta(obj)
	if s.ValidateFunc != nil {
		errs = append(errs, s.ValidateFunc(ctx, obj)...)
	}
	return errs
}

func (s *Strategy) ValidateUpdate(ctx context.Context, obj, old runtime.Object) field.ErrorList {
	var errs field.ErrorList
	if !s.ValidatesMeta {
		errs = validation.ValidateObjectMetaAccessorUpdate(mustMeta(obj), mustMeta(old), field.NewPath("metadata"))
	}
	errs = append(errs, s.validateMeta(obj)...)
	if s.ValidateUpdateFunc != nil {
		errs = append(errs, s.ValidateUpdateFunc(ctx, obj, old)...)
	} else if s.ValidateFunc != nil {
		errs = append(errs, s.ValidateFunc(ctx, obj)...)
	}
	return errs
}

func (s *Strategy) validateMeta(obj runtime.Object) field.ErrorList {
	if s.ValidatesMeta {
		return nil
	}
	nameFn := s.NameValidator
	if nameFn == nil {
		nameFn = validation.NameIsDNSSubdomain
	}
	return validation.ValidateObjectMetaAccessor(mustMeta(obj), s.Namespaced, nameFn, field.NewPath("metadata"))
}

// GetResetFields tells server-side apply which fields this strategy wipes.
func (s *Strategy) GetResetFields() map[fieldpath.APIVersion]*fieldpath.Set {
	if !s.HasStatus || s.APIVersion == "" {
		return nil
	}
	return map[fieldpath.APIVersion]*fieldpath.Set{
		fieldpath.APIVersion(s.APIVersion): fieldpath.NewSet(fieldpath.MakePathOrDie("status")),
	}
}

// StatusStrategy is the status subresource of a Strategy. As in
// Kubernetes, a status write changes status and, unless KeepMeta says
// otherwise, metadata (labels, annotations...); everything else, the spec
// above all, keeps its stored value whatever the client sent, and the
// write succeeds: a client that read the object, changed its status and
// wrote it back must not fail on a spec that changed meanwhile.
type StatusStrategy struct {
	*Strategy
	// KeepMeta lists the metadata a status write may not change either,
	// as Kubernetes' strategy for the resource resets it.
	KeepMeta []MetaField
	// ValidatesMeta says ValidateStatusUpdateFunc checks the metadata
	// update itself (as Kubernetes' own status validation functions do).
	ValidatesMeta bool
	// PrepareForUpdateFunc, if set, runs after the reset, for what the
	// resource guarantees of its metadata whoever writes it.
	PrepareForUpdateFunc     func(ctx context.Context, obj, old runtime.Object)
	ValidateStatusUpdateFunc func(ctx context.Context, obj, old runtime.Object) field.ErrorList
}

// MetaField names a metadata field a StatusStrategy may keep.
type MetaField string

// The metadata fields a StatusStrategy may keep.
const (
	MetaLabels            MetaField = "labels"
	MetaAnnotations       MetaField = "annotations"
	MetaFinalizers        MetaField = "finalizers"
	MetaOwnerReferences   MetaField = "ownerReferences"
	MetaDeletionTimestamp MetaField = "deletionTimestamp"
)

// KeepAllMeta is what metav1.ResetObjectMetaForStatus keeps, the rule of
// Kubernetes' newer status subresources (ServiceCIDR's, for one).
var KeepAllMeta = []MetaField{MetaLabels, MetaAnnotations, MetaFinalizers, MetaOwnerReferences, MetaDeletionTimestamp}

func (s *StatusStrategy) PrepareForUpdate(ctx context.Context, obj, old runtime.Object) {
	stored := old.DeepCopyObject()
	cur, was := reflect.ValueOf(obj).Elem(), reflect.ValueOf(stored).Elem()
	for i := range cur.NumField() {
		switch cur.Type().Field(i).Name {
		case "TypeMeta", "ObjectMeta", "Status":
		default:
			cur.Field(i).Set(was.Field(i))
		}
	}
	m, om := mustMeta(obj), mustMeta(stored)
	for _, f := range s.KeepMeta {
		switch f {
		case MetaLabels:
			m.SetLabels(om.GetLabels())
		case MetaAnnotations:
			m.SetAnnotations(om.GetAnnotations())
		case MetaFinalizers:
			m.SetFinalizers(om.GetFinalizers())
		case MetaOwnerReferences:
			m.SetOwnerReferences(om.GetOwnerReferences())
		case MetaDeletionTimestamp:
			m.SetDeletionTimestamp(om.GetDeletionTimestamp())
		}
	}
	if s.PrepareForUpdateFunc != nil {
		s.PrepareForUpdateFunc(ctx, obj, old)
	}
}

func (s *StatusStrategy) ValidateUpdate(ctx context.Context, obj, old runtime.Object) field.ErrorList {
	// Checks the immutable metadata and the syntax of what may change
	// (labels, annotations, owner references).
	var errs field.ErrorList
	if !s.ValidatesMeta {
		errs = validation.ValidateObjectMetaAccessorUpdate(mustMeta(obj), mustMeta(old), field.NewPath("metadata"))
	}
	if s.ValidateStatusUpdateFunc != nil {
		errs = append(errs, s.ValidateStatusUpdateFunc(ctx, obj, old)...)
	}
	return errs
}

// WarningsOnUpdate has nothing to say: warnings are about what users
// write, the spec, which a status write keeps.
func (s *StatusStrategy) WarningsOnUpdate(context.Context, runtime.Object, runtime.Object) []string {
	return nil
}

func (s *StatusStrategy) GetResetFields() map[fieldpath.APIVersion]*fieldpath.Set {
	if s.APIVersion == "" {
		return nil
	}
	set := fieldpath.NewSet(fieldpath.MakePathOrDie("spec"))
	for _, f := range s.KeepMeta {
		set.Insert(fieldpath.MakePathOrDie("metadata", string(f)))
	}
	return map[fieldpath.APIVersion]*fieldpath.Set{fieldpath.APIVersion(s.APIVersion): set}
}

// resetField sets obj's named field to old's (or to its zero value when
// old is nil).
func resetField(obj, old runtime.Object, name string) {
	f := reflect.ValueOf(obj).Elem().FieldByName(name)
	if !f.IsValid() {
		return
	}
	if old == nil {
		f.Set(reflect.Zero(f.Type()))
		return
	}
	f.Set(reflect.ValueOf(old.DeepCopyObject()).Elem().FieldByName(name))
}

func mustMeta(obj runtime.Object) metav1.Object {
	m, ok := obj.(metav1.Object)
	if !ok {
		panic(fmt.Sprintf("%T has no object metadata", obj))
	}
	return m
}

// FieldsFunc returns a kind's selectable fields beyond name and namespace.
type FieldsFunc func(obj runtime.Object) fields.Set

// GetAttrs returns labels and selectable fields for the store's predicate.
func GetAttrs(namespaced bool, extra FieldsFunc) func(runtime.Object) (labels.Set, fields.Set, error) {
	return func(obj runtime.Object) (labels.Set, fields.Set, error) {
		m, ok := obj.(metav1.Object)
		if !ok {
			return nil, nil, fmt.Errorf("%T has no object metadata", obj)
		}
		fs := fields.Set{"metadata.name": m.GetName()}
		if namespaced {
			fs["metadata.namespace"] = m.GetNamespace()
		}
		if extra != nil {
			fs = generic.MergeFieldsSets(fs, extra(obj))
		}
		return labels.Set(m.GetLabels()), fs, nil
	}
}

// Matcher returns the store's predicate for label and field selectors.
func Matcher(attrs func(runtime.Object) (labels.Set, fields.Set, error)) func(label labels.Selector, field fields.Selector) storage.SelectionPredicate {
	return func(label labels.Selector, field fields.Selector) storage.SelectionPredicate {
		return storage.SelectionPredicate{Label: label, Field: field, GetAttrs: attrs}
	}
}

// Options describes one resource's store.
type Options struct {
	NewFunc, NewListFunc func() runtime.Object
	Resource             string // plural, e.g. "services"
	Singular             string
	Group                string
	Strategy             *Strategy
	Fields               FieldsFunc
	Table                rest.TableConvertor
	ShortNames           []string
	Categories           []string
	// GracefulDelete, when set, makes deletion graceful: it sees the
	// DeleteOptions, settles their grace period and reports whether the
	// object should linger (deletionTimestamp set) until it is deleted
	// again with a zero grace period, as rest.RESTGracefulDeleteStrategy.
	GracefulDelete func(ctx context.Context, obj runtime.Object, options *metav1.DeleteOptions) bool
	// NoWatchCache serves reads and watches from etcd instead of a watch
	// cache: for resources written at a high rate and rarely read, where
	// decoding every write into a cache costs more than it saves.
	NoWatchCache bool
}

// undecorated returns the options of getter without a watch cache.
type undecorated struct{ generic.RESTOptionsGetter }

func (u undecorated) GetRESTOptions(resource schema.GroupResource, example runtime.Object) (generic.RESTOptions, error) {
	opts, err := u.RESTOptionsGetter.GetRESTOptions(resource, example)
	opts.Decorator = generic.UndecoratedStorage
	return opts, err
}

// gracefulStrategy is a Strategy whose deletions are graceful.
type gracefulStrategy struct {
	*Strategy
	check func(ctx context.Context, obj runtime.Object, options *metav1.DeleteOptions) bool
}

func (g gracefulStrategy) CheckGracefulDelete(ctx context.Context, obj runtime.Object, options *metav1.DeleteOptions) bool {
	return g.check(ctx, obj, options)
}

// Store is a registry store plus the discovery details kubectl uses.
type Store struct {
	*genericregistry.Store
	shortNames, categories []string
}

func (s *Store) ShortNames() []string { return s.shortNames }
func (s *Store) Categories() []string { return s.categories }

// NewStore builds the main resource store.
func NewStore(o Options, optsGetter generic.RESTOptionsGetter) (*Store, error) {
	attrs := GetAttrs(o.Strategy.Namespaced, o.Fields)
	if o.NoWatchCache {
		optsGetter = undecorated{optsGetter}
	}
	table := o.Table
	if table == nil {
		table = rest.NewDefaultTableConvertor(qualified(o.Group, o.Resource))
	}
	var deleteStrategy rest.RESTDeleteStrategy = o.Strategy
	if o.GracefulDelete != nil {
		deleteStrategy = gracefulStrategy{Strategy: o.Strategy, check: o.GracefulDelete}
	}
	s := &genericregistry.Store{
		NewFunc:                   o.NewFunc,
		NewListFunc:               o.NewListFunc,
		DefaultQualifiedResource:  qualified(o.Group, o.Resource),
		SingularQualifiedResource: qualified(o.Group, o.Singular),
		PredicateFunc:             Matcher(attrs),
		CreateStrategy:            o.Strategy,
		UpdateStrategy:            o.Strategy,
		DeleteStrategy:            deleteStrategy,
		ResetFieldsStrategy:       o.Strategy,
		TableConvertor:            table,
	}
	if err := s.CompleteWithOptions(&generic.StoreOptions{RESTOptions: optsGetter, AttrFunc: attrs}); err != nil {
		return nil, fmt.Errorf("building %s storage: %w", o.Resource, err)
	}
	return &Store{Store: s, shortNames: o.ShortNames, categories: o.Categories}, nil
}

// StatusStore is the status subresource of a store: get and update only.
type StatusStore struct{ store *genericregistry.Store }

// NewStatusStore derives the status subresource from a main store. The
// main store's hooks are left out: they act on what the main resource may
// change (a Service's cluster IPs and node ports), which a status write
// never changes, and they would run on the request as sent, before the
// status strategy resets its spec.
func NewStatusStore(main *Store, status *StatusStrategy) *StatusStore {
	s := *main.Store
	s.CreateStrategy = nil
	s.DeleteStrategy = nil
	s.UpdateStrategy = status
	s.ResetFieldsStrategy = status
	s.BeginCreate, s.BeginUpdate = nil, nil
	s.AfterCreate, s.AfterUpdate, s.AfterDelete = nil, nil, nil
	return &StatusStore{store: &s}
}

func (r *StatusStore) New() runtime.Object { return r.store.New() }
func (r *StatusStore) Destroy()            {}
func (r *StatusStore) Get(ctx context.Context, name string, options *metav1.GetOptions) (runtime.Object, error) {
	return r.store.Get(ctx, name, options)
}
func (r *StatusStore) Update(ctx context.Context, name string, objInfo rest.UpdatedObjectInfo, createValidation rest.ValidateObjectFunc, updateValidation rest.ValidateObjectUpdateFunc, forceAllowCreate bool, options *metav1.UpdateOptions) (runtime.Object, bool, error) {
	// Subresources never create.
	return r.store.Update(ctx, name, objInfo, createValidation, updateValidation, false, options)
}
func (r *StatusStore) GetResetFields() map[fieldpath.APIVersion]*fieldpath.Set {
	return r.store.GetResetFields()
}
func (r *StatusStore) ConvertToTable(ctx context.Context, object runtime.Object, tableOptions runtime.Object) (*metav1.Table, error) {
	return r.store.ConvertToTable(ctx, object, tableOptions)
}
