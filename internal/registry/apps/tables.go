package apps

import (
	"fmt"
	"strings"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"

	registry "github.com/duet-net/duet/internal/registry/generic"
)

// The tables have kubectl's columns for these kinds, wide ones (priority
// 1) included.

func deploymentTable() *registry.Table {
	d := func(o runtime.Object) *appsv1.Deployment { return o.(*appsv1.Deployment) }
	return registry.NewTable(
		registry.Column{Name: "Ready", Type: "string", Description: "Number of the pod with ready state", Cell: func(o runtime.Object) any {
			return fmt.Sprintf("%d/%d", d(o).Status.ReadyReplicas, replicas(d(o).Spec.Replicas))
		}},
		registry.Column{Name: "Up-to-date", Type: "integer", Description: "Total number of non-terminated pods targeted by this deployment that have the desired template spec", Cell: func(o runtime.Object) any {
			return int64(d(o).Status.UpdatedReplicas)
		}},
		registry.Column{Name: "Available", Type: "integer", Description: "Total number of available pods (ready for at least minReadySeconds) targeted by this deployment", Cell: func(o runtime.Object) any {
			return int64(d(o).Status.AvailableReplicas)
		}},
		registry.AgeColumn(),
		containersColumn(func(o runtime.Object) []corev1.Container { return d(o).Spec.Template.Spec.Containers }),
		imagesColumn(func(o runtime.Object) []corev1.Container { return d(o).Spec.Template.Spec.Containers }),
		selectorColumn(func(o runtime.Object) *metav1.LabelSelector { return d(o).Spec.Selector }),
	)
}

func replicaSetTable() *registry.Table {
	rs := func(o runtime.Object) *appsv1.ReplicaSet { return o.(*appsv1.ReplicaSet) }
	return registry.NewTable(
		registry.Column{Name: "Desired", Type: "integer", Description: "Number of desired pods", Cell: func(o runtime.Object) any {
			return int64(replicas(rs(o).Spec.Replicas))
		}},
		registry.Column{Name: "Current", Type: "integer", Description: "Number of actual pods", Cell: func(o runtime.Object) any {
			return int64(rs(o).Status.Replicas)
		}},
		registry.Column{Name: "Ready", Type: "integer", Description: "Number of the pods with ready state", Cell: func(o runtime.Object) any {
			return int64(rs(o).Status.ReadyReplicas)
		}},
		registry.AgeColumn(),
		containersColumn(func(o runtime.Object) []corev1.Container { return rs(o).Spec.Template.Spec.Containers }),
		imagesColumn(func(o runtime.Object) []corev1.Container { return rs(o).Spec.Template.Spec.Containers }),
		selectorColumn(func(o runtime.Object) *metav1.LabelSelector { return rs(o).Spec.Selector }),
	)
}

func daemonSetTable() *registry.Table {
	ds := func(o runtime.Object) *appsv1.DaemonSet { return o.(*appsv1.DaemonSet) }
	count := func(name, desc string, f func(s *appsv1.DaemonSetStatus) int32) registry.Column {
		return registry.Column{Name: name, Type: "integer", Description: desc, Cell: func(o runtime.Object) any { return int64(f(&ds(o).Status)) }}
	}
	return registry.NewTable(
		count("Desired", "The desired number of nodes that should be running the daemon pod", func(s *appsv1.DaemonSetStatus) int32 { return s.DesiredNumberScheduled }),
		count("Current", "The number of nodes that are running at least 1 daemon pod and are supposed to run the daemon pod", func(s *appsv1.DaemonSetStatus) int32 { return s.CurrentNumberScheduled }),
		count("Ready", "The number of nodes that should be running the daemon pod and have one or more of the daemon pod running and ready", func(s *appsv1.DaemonSetStatus) int32 { return s.NumberReady }),
		count("Up-to-date", "The total number of nodes that are running updated daemon pod", func(s *appsv1.DaemonSetStatus) int32 { return s.UpdatedNumberScheduled }),
		count("Available", "The number of nodes that should be running the daemon pod and have one or more of the daemon pod running and available", func(s *appsv1.DaemonSetStatus) int32 { return s.NumberAvailable }),
		registry.Column{Name: "Node Selector", Type: "string", Description: "NodeSelector is a selector which must be true for the pod to fit on a node", Cell: func(o runtime.Object) any {
			return labels.FormatLabels(ds(o).Spec.Template.Spec.NodeSelector)
		}},
		registry.AgeColumn(),
		containersColumn(func(o runtime.Object) []corev1.Container { return ds(o).Spec.Template.Spec.Containers }),
		imagesColumn(func(o runtime.Object) []corev1.Container { return ds(o).Spec.Template.Spec.Containers }),
		selectorColumn(func(o runtime.Object) *metav1.LabelSelector { return ds(o).Spec.Selector }),
	)
}

func controllerRevisionTable() *registry.Table {
	return registry.NewTable(
		registry.Column{Name: "Controller", Type: "string", Description: "The object this revision belongs to", Cell: func(o runtime.Object) any {
			return revisionController(o.(*appsv1.ControllerRevision))
		}},
		registry.Column{Name: "Revision", Type: "integer", Description: "The revision of the state the data represents", Cell: func(o runtime.Object) any {
			return o.(*appsv1.ControllerRevision).Revision
		}},
	)
}

// revisionController names a revision's controller as kubectl does:
// kind.group/name, or <none>.
func revisionController(cr *appsv1.ControllerRevision) string {
	ref := metav1.GetControllerOf(cr)
	if ref == nil {
		return "<none>"
	}
	gv, err := schema.ParseGroupVersion(ref.APIVersion)
	if err != nil {
		return "<none>"
	}
	gk := schema.GroupKind{Group: gv.Group, Kind: ref.Kind}
	return strings.ToLower(gk.String()) + "/" + ref.Name
}

func replicas(n *int32) int32 {
	if n == nil {
		return 1
	}
	return *n
}

func containersColumn(containers func(runtime.Object) []corev1.Container) registry.Column {
	return registry.Column{Name: "Containers", Type: "string", Priority: 1, Description: "Names of each container in the template.", Cell: func(o runtime.Object) any {
		var names []string
		for _, c := range containers(o) {
			names = append(names, c.Name)
		}
		return strings.Join(names, ",")
	}}
}

func imagesColumn(containers func(runtime.Object) []corev1.Container) registry.Column {
	return registry.Column{Name: "Images", Type: "string", Priority: 1, Description: "Images referenced by each container in the template.", Cell: func(o runtime.Object) any {
		var images []string
		for _, c := range containers(o) {
			images = append(images, c.Image)
		}
		return strings.Join(images, ",")
	}}
}

func selectorColumn(selector func(runtime.Object) *metav1.LabelSelector) registry.Column {
	return registry.Column{Name: "Selector", Type: "string", Priority: 1, Description: "Label selector for pods.", Cell: func(o runtime.Object) any {
		return metav1.FormatLabelSelector(selector(o))
	}}
}
