package apps

import (
	"context"
	"fmt"

	appsv1 "k8s.io/api/apps/v1"
	apiequality "k8s.io/apimachinery/pkg/api/equality"
	metav1validation "k8s.io/apimachinery/pkg/apis/meta/v1/validation"
	"k8s.io/apimachinery/pkg/runtime"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	utilvalidation "k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/apimachinery/pkg/util/validation/field"
	utilfeature "k8s.io/apiserver/pkg/util/feature"
	"k8s.io/kubernetes/pkg/api/pod"
	"k8s.io/kubernetes/pkg/apis/apps"
	appsv1defaults "k8s.io/kubernetes/pkg/apis/apps/v1"
	appsvalidation "k8s.io/kubernetes/pkg/apis/apps/validation"
	api "k8s.io/kubernetes/pkg/apis/core"
	"k8s.io/kubernetes/pkg/features"
)

// convert holds Kubernetes' internal apps types and their conversions from
// and to apps/v1. Duet stores and serves apps/v1 objects; upstream's
// validation and its strategies' rules are written against the internal
// types, so each write passes through them as it does in kube-apiserver.
var convert = runtime.NewScheme()

func init() {
	utilruntime.Must(apps.AddToScheme(convert))
	utilruntime.Must(appsv1defaults.AddToScheme(convert))
}

// internal converts an apps/v1 object to Kubernetes' internal form.
func internal[T any](obj runtime.Object) (*T, error) {
	out := new(T)
	if err := convert.Convert(obj, out, nil); err != nil {
		return nil, fmt.Errorf("converting %T to the internal apps form: %w", obj, err)
	}
	return out, nil
}

// throughInternal converts obj to its internal form, lets prepare change
// it there and writes the result back into obj: kube-apiserver stores what
// the internal form converts back to (a DaemonSet's templateGeneration
// becomes its annotation, serviceAccountName is mirrored into
// serviceAccount), and Duet's objects must read the same.
func throughInternal[T any](obj runtime.Object, prepare func(*T)) {
	in, err := internal[T](obj)
	if err != nil {
		// Conversion from apps/v1 fails only on a malformed
		// deprecated annotation; validation reports it.
		return
	}
	prepare(in)
	utilruntime.Must(convert.Convert(in, obj, nil))
}

// conversionError reports an object whose conversion failed as invalid,
// which is what kube-apiserver answers when decoding it fails.
func conversionError(err error) field.ErrorList {
	return field.ErrorList{field.Invalid(field.NewPath("metadata", "annotations"), "", err.Error())}
}

// validate converts obj (and old, when not nil) and runs check on them.
func validate[T any](obj, old runtime.Object, check func(obj, old *T) field.ErrorList) field.ErrorList {
	in, err := internal[T](obj)
	if err != nil {
		return conversionError(err)
	}
	var oldIn *T
	if old != nil {
		if oldIn, err = internal[T](old); err != nil {
			return conversionError(err)
		}
	}
	return check(in, oldIn)
}

// nameWarning is the warning kube-apiserver gives a Deployment or
// ReplicaSet whose name is no DNS label: pods' names and hostnames start
// with it.
func nameWarning(name string) []string {
	if msgs := utilvalidation.IsDNS1123Label(name); len(msgs) != 0 {
		return []string{fmt.Sprintf("metadata.name: this is used in Pod names and hostnames, which can result in surprising behavior; a DNS label is recommended: %v", msgs)}
	}
	return nil
}

// deployment holds the Deployment rules of Kubernetes' registry.
var deployment = kindRules{
	create: func(obj runtime.Object) {
		d := obj.(*appsv1.Deployment)
		appsv1defaults.SetObjectDefaults_Deployment(d)
		throughInternal(obj, func(d *apps.Deployment) {
			d.Status = apps.DeploymentStatus{}
			d.Generation = 1
			pod.DropDisabledTemplateFields(&d.Spec.Template, nil)
		})
	},
	update: func(obj, old runtime.Object) {
		appsv1defaults.SetObjectDefaults_Deployment(obj.(*appsv1.Deployment))
		prev, err := internal[apps.Deployment](old)
		if err != nil {
			return
		}
		throughInternal(obj, func(d *apps.Deployment) {
			d.Status = prev.Status
			pod.DropDisabledTemplateFields(&d.Spec.Template, &prev.Spec.Template)
			// Annotations count too: the controller copies them to
			// the ReplicaSets.
			if !apiequality.Semantic.DeepEqual(d.Spec, prev.Spec) || !apiequality.Semantic.DeepEqual(d.Annotations, prev.Annotations) {
				d.Generation = prev.Generation + 1
			}
		})
	},
	validate: func(obj runtime.Object) field.ErrorList {
		return validate(obj, nil, func(d, _ *apps.Deployment) field.ErrorList {
			return appsvalidation.ValidateDeployment(d, pod.GetValidationOptionsFromPodTemplate(&d.Spec.Template, nil))
		})
	},
	validateUpdate: func(obj, old runtime.Object) field.ErrorList {
		return validate(obj, old, func(d, prev *apps.Deployment) field.ErrorList {
			return appsvalidation.ValidateDeploymentUpdate(d, prev, pod.GetValidationOptionsFromPodTemplate(&d.Spec.Template, &prev.Spec.Template))
		})
	},
	validateStatus: func(obj, old runtime.Object) field.ErrorList {
		return validate(obj, old, appsvalidation.ValidateDeploymentStatusUpdate)
	},
	prepareStatus: func(obj, old runtime.Object) {
		n, o := obj.(*appsv1.Deployment), old.(*appsv1.Deployment)
		if !utilfeature.DefaultFeatureGate.Enabled(features.DeploymentReplicaSetTerminatingReplicas) && o.Status.TerminatingReplicas == nil {
			n.Status.TerminatingReplicas = nil
		}
	},
	warnings: func(obj runtime.Object) []string {
		d := obj.(*appsv1.Deployment)
		return append(nameWarning(d.Name), podTemplateWarnings(obj, func(d *apps.Deployment) *api.PodTemplateSpec { return &d.Spec.Template })...)
	},
}

// replicaSet holds the ReplicaSet rules of Kubernetes' registry.
var replicaSet = kindRules{
	create: func(obj runtime.Object) {
		appsv1defaults.SetObjectDefaults_ReplicaSet(obj.(*appsv1.ReplicaSet))
		throughInternal(obj, func(rs *apps.ReplicaSet) {
			rs.Status = apps.ReplicaSetStatus{}
			rs.Generation = 1
			pod.DropDisabledTemplateFields(&rs.Spec.Template, nil)
		})
	},
	update: func(obj, old runtime.Object) {
		appsv1defaults.SetObjectDefaults_ReplicaSet(obj.(*appsv1.ReplicaSet))
		prev, err := internal[apps.ReplicaSet](old)
		if err != nil {
			return
		}
		throughInternal(obj, func(rs *apps.ReplicaSet) {
			rs.Status = prev.Status
			pod.DropDisabledTemplateFields(&rs.Spec.Template, &prev.Spec.Template)
			if !apiequality.Semantic.DeepEqual(rs.Spec, prev.Spec) {
				rs.Generation = prev.Generation + 1
			}
		})
	},
	validate: func(obj runtime.Object) field.ErrorList {
		return validate(obj, nil, func(rs, _ *apps.ReplicaSet) field.ErrorList {
			return appsvalidation.ValidateReplicaSet(rs, pod.GetValidationOptionsFromPodTemplate(&rs.Spec.Template, nil))
		})
	},
	validateUpdate: func(obj, old runtime.Object) field.ErrorList {
		return validate(obj, old, func(rs, prev *apps.ReplicaSet) field.ErrorList {
			return appsvalidation.ValidateReplicaSetUpdate(rs, prev, pod.GetValidationOptionsFromPodTemplate(&rs.Spec.Template, &prev.Spec.Template))
		})
	},
	validateStatus: func(obj, old runtime.Object) field.ErrorList {
		return validate(obj, old, appsvalidation.ValidateReplicaSetStatusUpdate)
	},
	prepareStatus: func(obj, old runtime.Object) {
		n, o := obj.(*appsv1.ReplicaSet), old.(*appsv1.ReplicaSet)
		if !utilfeature.DefaultFeatureGate.Enabled(features.DeploymentReplicaSetTerminatingReplicas) && o.Status.TerminatingReplicas == nil {
			n.Status.TerminatingReplicas = nil
		}
	},
	warnings: func(obj runtime.Object) []string {
		rs := obj.(*appsv1.ReplicaSet)
		return append(nameWarning(rs.Name), podTemplateWarnings(obj, func(rs *apps.ReplicaSet) *api.PodTemplateSpec { return &rs.Spec.Template })...)
	},
}

// daemonSet holds the DaemonSet rules of Kubernetes' registry, whose
// spec.templateGeneration (the deprecated.daemonset.template.generation
// annotation in apps/v1) counts template changes.
var daemonSet = kindRules{
	create: func(obj runtime.Object) {
		appsv1defaults.SetObjectDefaults_DaemonSet(obj.(*appsv1.DaemonSet))
		throughInternal(obj, func(ds *apps.DaemonSet) {
			ds.Status = apps.DaemonSetStatus{}
			ds.Generation = 1
			if ds.Spec.TemplateGeneration < 1 {
				ds.Spec.TemplateGeneration = 1
			}
			pod.DropDisabledTemplateFields(&ds.Spec.Template, nil)
		})
	},
	update: func(obj, old runtime.Object) {
		appsv1defaults.SetObjectDefaults_DaemonSet(obj.(*appsv1.DaemonSet))
		prev, err := internal[apps.DaemonSet](old)
		if err != nil {
			return
		}
		throughInternal(obj, func(ds *apps.DaemonSet) {
			pod.DropDisabledTemplateFields(&ds.Spec.Template, &prev.Spec.Template)
			ds.Status = prev.Status
			ds.Spec.TemplateGeneration = prev.Spec.TemplateGeneration
			switch {
			case !apiequality.Semantic.DeepEqual(prev.Spec.Template, ds.Spec.Template):
				ds.Spec.TemplateGeneration = prev.Spec.TemplateGeneration + 1
				ds.Generation = prev.Generation + 1
			case !apiequality.Semantic.DeepEqual(prev.Spec, ds.Spec):
				ds.Generation = prev.Generation + 1
			}
		})
	},
	validate: func(obj runtime.Object) field.ErrorList {
		return validate(obj, nil, func(ds, _ *apps.DaemonSet) field.ErrorList {
			return appsvalidation.ValidateDaemonSet(ds, pod.GetValidationOptionsFromPodTemplate(&ds.Spec.Template, nil))
		})
	},
	validateUpdate: func(obj, old runtime.Object) field.ErrorList {
		return validate(obj, old, func(ds, prev *apps.DaemonSet) field.ErrorList {
			opts := pod.GetValidationOptionsFromPodTemplate(&ds.Spec.Template, &prev.Spec.Template)
			// A selector stored before its label values were checked
			// stays updatable.
			opts.AllowInvalidLabelValueInSelector = opts.AllowInvalidLabelValueInSelector || metav1validation.LabelSelectorHasInvalidLabelValue(prev.Spec.Selector)
			return appsvalidation.ValidateDaemonSetUpdate(ds, prev, opts)
		})
	},
	validateStatus: func(obj, old runtime.Object) field.ErrorList {
		return validate(obj, old, appsvalidation.ValidateDaemonSetStatusUpdate)
	},
	warnings: func(obj runtime.Object) []string {
		return podTemplateWarnings(obj, func(ds *apps.DaemonSet) *api.PodTemplateSpec { return &ds.Spec.Template })
	},
}

// controllerRevision holds the ControllerRevision rules: data and
// revision are set once.
var controllerRevision = kindRules{
	create: func(runtime.Object) {},
	update: func(runtime.Object, runtime.Object) {},
	validate: func(obj runtime.Object) field.ErrorList {
		return validate(obj, nil, func(cr, _ *apps.ControllerRevision) field.ErrorList {
			return appsvalidation.ValidateControllerRevisionCreate(cr)
		})
	},
	validateUpdate: func(obj, old runtime.Object) field.ErrorList {
		return validate(obj, old, appsvalidation.ValidateControllerRevisionUpdate)
	},
}

// kindRules are one kind's hooks into Duet's generic strategy.
type kindRules struct {
	create         func(obj runtime.Object)
	update         func(obj, old runtime.Object)
	validate       func(obj runtime.Object) field.ErrorList
	validateUpdate func(obj, old runtime.Object) field.ErrorList
	validateStatus func(obj, old runtime.Object) field.ErrorList
	prepareStatus  func(obj, old runtime.Object)
	warnings       func(obj runtime.Object) []string
}

// podTemplateWarnings are kube-apiserver's warnings about a pod template
// (deprecated fields, dubious values).
func podTemplateWarnings[T any](obj runtime.Object, template func(*T) *api.PodTemplateSpec) []string {
	in, err := internal[T](obj)
	if err != nil {
		return nil
	}
	return pod.GetWarningsForPodTemplate(context.Background(), field.NewPath("spec", "template"), template(in), nil)
}
