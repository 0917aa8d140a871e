//lint:file-ignore SA1019 core/v1 Endpoints are served for compatibility although Kubernetes deprecates them.

// Package core holds the registries of the core/v1 resources Duet serves
// from k8s.io/api (Services have their own package): namespaces, nodes,
// pods, endpoints and events.
package core

import (
	"context"
	"fmt"
	"strings"

	corev1 "k8s.io/api/core/v1"
	apivalidation "k8s.io/apimachinery/pkg/api/validation"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/validation/field"
	"k8s.io/apiserver/pkg/registry/generic"
	"k8s.io/apiserver/pkg/registry/rest"
	"k8s.io/apiserver/pkg/storage/names"

	apicore "github.com/duet-net/duet/internal/apis/core"
	registry "github.com/duet-net/duet/internal/registry/generic"
)

// NewStorage returns the core/v1 stores, keyed by resource path.
func NewStorage(typer runtime.ObjectTyper, optsGetter generic.RESTOptionsGetter, opts ...Option) (map[string]rest.Storage, error) {
	var cfg options
	for _, opt := range opts {
		opt(&cfg)
	}
	out := map[string]rest.Storage{}
	add := func(o registry.Options, status *registry.StatusStrategy) error {
		o.Strategy.ObjectTyper = typer
		o.Strategy.NameGenerator = names.SimpleNameGenerator
		o.Strategy.APIVersion = "v1"
		s, err := registry.NewStore(o, optsGetter)
		if err != nil {
			return err
		}
		out[o.Resource] = s
		if status != nil {
			status.Strategy = o.Strategy
			out[o.Resource+"/status"] = registry.NewStatusStore(s, status)
		}
		return nil
	}

	// Whatever writes a Namespace, its status included, keeps its name
	// label and, until it is deleted, the finalizer that lets the
	// namespace controller empty it first.
	nsMeta := func(_ context.Context, obj, _ runtime.Object) {
		ns := obj.(*corev1.Namespace)
		if ns.Labels == nil {
			ns.Labels = map[string]string{}
		}
		ns.Labels[corev1.LabelMetadataName] = ns.Name
		if ns.DeletionTimestamp == nil {
			addFinalizer(ns)
		}
	}
	nsStrategy := &registry.Strategy{
		HasStatus:     true,
		NameValidator: apivalidation.ValidateNamespaceName,
		PrepareForCreateFunc: func(_ context.Context, obj runtime.Object) {
			ns := obj.(*corev1.Namespace)
			ns.Status.Phase = corev1.NamespaceActive
			addFinalizer(ns)
			if ns.Labels == nil {
				ns.Labels = map[string]string{}
			}
			ns.Labels[corev1.LabelMetadataName] = ns.Name
		},
		PrepareForUpdateFunc: nsMeta,
	}
	if err := add(registry.Options{
		NewFunc: func() runtime.Object { return &corev1.Namespace{} }, NewListFunc: func() runtime.Object { return &corev1.NamespaceList{} },
		Resource: "namespaces", Singular: "namespace", Strategy: nsStrategy, ShortNames: []string{"ns"},
		Fields: func(obj runtime.Object) fields.Set {
			return fields.Set{"status.phase": string(obj.(*corev1.Namespace).Status.Phase)}
		},
		Table: registry.NewTable(registry.Column{Name: "Status", Type: "string", Cell: func(o runtime.Object) any {
			return string(o.(*corev1.Namespace).Status.Phase)
		}}),
	}, &registry.StatusStrategy{PrepareForUpdateFunc: nsMeta}); err != nil {
		return nil, err
	}

	nodeStrategy := &registry.Strategy{
		HasStatus: true,
		PrepareForCreateFunc: func(_ context.Context, obj runtime.Object) {
			syncPodCIDR(obj.(*corev1.Node))
		},
		PrepareForUpdateFunc: func(_ context.Context, obj, _ runtime.Object) {
			syncPodCIDR(obj.(*corev1.Node))
		},
		ValidateFunc: func(_ context.Context, obj runtime.Object) field.ErrorList {
			return validateNodeSpec(obj.(*corev1.Node))
		},
		ValidateUpdateFunc: func(ctx context.Context, obj, old runtime.Object) field.ErrorList {
			node, was := obj.(*corev1.Node), old.(*corev1.Node)
			return validateNodeUpdate(node, was, podCIDRFamilyDrop(ctx, node, was, cfg.families()))
		},
	}
	if err := add(registry.Options{
		NewFunc: func() runtime.Object { return &corev1.Node{} }, NewListFunc: func() runtime.Object { return &corev1.NodeList{} },
		Resource: "nodes", Singular: "node", Strategy: nodeStrategy, ShortNames: []string{"no"},
		Fields: func(obj runtime.Object) fields.Set {
			return fields.Set{"spec.unschedulable": fmt.Sprint(obj.(*corev1.Node).Spec.Unschedulable)}
		},
		Table: nodeTable(),
	}, &registry.StatusStrategy{}); err != nil {
		return nil, err
	}

	podStrategy := &registry.Strategy{
		Namespaced: true,
		HasStatus:  true,
		PrepareForCreateFunc: func(_ context.Context, obj runtime.Object) {
			pod := obj.(*corev1.Pod)
			setPodDefaults(pod)
			pod.Status = corev1.PodStatus{Phase: corev1.PodPending, QOSClass: corev1.PodQOSBestEffort}
		},
		PrepareForUpdateFunc: func(_ context.Context, obj, old runtime.Object) {
			setPodDefaults(obj.(*corev1.Pod))
			markScheduled(obj.(*corev1.Pod), old.(*corev1.Pod))
		},
		ValidateFunc: func(_ context.Context, obj runtime.Object) field.ErrorList {
			return validatePodSpec(&obj.(*corev1.Pod).Spec)
		},
		ValidateUpdateFunc: func(_ context.Context, obj, old runtime.Object) field.ErrorList {
			return validatePodSpecUpdate(&obj.(*corev1.Pod).Spec, &old.(*corev1.Pod).Spec)
		},
	}
	podStatus := &registry.StatusStrategy{
		// As in Kubernetes: old kubelets corrupted owner references
		// through status writes, and only a delete sets deletionTimestamp.
		KeepMeta: []registry.MetaField{registry.MetaOwnerReferences, registry.MetaDeletionTimestamp},
		ValidateStatusUpdateFunc: func(_ context.Context, obj, _ runtime.Object) field.ErrorList {
			pod := obj.(*corev1.Pod)
			syncPodIP(pod)
			return validatePodIPs(pod)
		},
	}
	if err := add(registry.Options{
		NewFunc: func() runtime.Object { return &corev1.Pod{} }, NewListFunc: func() runtime.Object { return &corev1.PodList{} },
		Resource: "pods", Singular: "pod", Strategy: podStrategy, ShortNames: []string{"po"}, Categories: []string{"all"},
		Fields: podFields, Table: podTable(), GracefulDelete: podGracefulDelete,
	}, podStatus); err != nil {
		return nil, err
	}

	for _, o := range []registry.Options{
		{
			NewFunc: func() runtime.Object { return &corev1.Endpoints{} }, NewListFunc: func() runtime.Object { return &corev1.EndpointsList{} },
			Resource: "endpoints", Singular: "endpoints", ShortNames: []string{"ep"},
			Strategy: &registry.Strategy{Namespaced: true},
			Table: registry.NewTable(registry.Column{Name: "Endpoints", Type: "string", Cell: func(o runtime.Object) any {
				return formatEndpoints(o.(*corev1.Endpoints))
			}}),
		},
		{
			NewFunc: func() runtime.Object { return &corev1.Event{} }, NewListFunc: func() runtime.Object { return &corev1.EventList{} },
			Resource: "events", Singular: "event", ShortNames: []string{"ev"},
			Strategy: &registry.Strategy{Namespaced: true},
			Fields:   eventFields, Table: eventTable(),
		},
	} {
		if err := add(o, nil); err != nil {
			return nil, err
		}
	}
	return out, nil
}

func addFinalizer(ns *corev1.Namespace) {
	for _, f := range ns.Finalizers {
		if f == apicore.NamespaceFinalizer {
			return
		}
	}
	ns.Finalizers = append(ns.Finalizers, apicore.NamespaceFinalizer)
}

func podFields(obj runtime.Object) fields.Set {
	pod := obj.(*corev1.Pod)
	return fields.Set{
		"spec.nodeName":            pod.Spec.NodeName,
		"spec.restartPolicy":       string(pod.Spec.RestartPolicy),
		"spec.schedulerName":       pod.Spec.SchedulerName,
		"spec.serviceAccountName":  pod.Spec.ServiceAccountName,
		"spec.hostNetwork":         fmt.Sprint(pod.Spec.HostNetwork),
		"status.phase":             string(pod.Status.Phase),
		"status.podIP":             pod.Status.PodIP,
		"status.nominatedNodeName": pod.Status.NominatedNodeName,
	}
}

func eventFields(obj runtime.Object) fields.Set {
	ev := obj.(*corev1.Event)
	return fields.Set{
		"involvedObject.kind":            ev.InvolvedObject.Kind,
		"involvedObject.namespace":       ev.InvolvedObject.Namespace,
		"involvedObject.name":            ev.InvolvedObject.Name,
		"involvedObject.uid":             string(ev.InvolvedObject.UID),
		"involvedObject.apiVersion":      ev.InvolvedObject.APIVersion,
		"involvedObject.resourceVersion": ev.InvolvedObject.ResourceVersion,
		"involvedObject.fieldPath":       ev.InvolvedObject.FieldPath,
		"reason":                         ev.Reason,
		"reportingComponent":             ev.ReportingController,
		"source":                         ev.Source.Component,
		"type":                           ev.Type,
	}
}

// setPodDefaults is the subset of Kubernetes' pod defaulting that clients
// see in what they read back.
func setPodDefaults(pod *corev1.Pod) {
	s := &pod.Spec
	if s.RestartPolicy == "" {
		s.RestartPolicy = corev1.RestartPolicyAlways
	}
	if s.DNSPolicy == "" {
		s.DNSPolicy = corev1.DNSClusterFirst
	}
	if s.SchedulerName == "" {
		s.SchedulerName = corev1.DefaultSchedulerName
	}
	if s.TerminationGracePeriodSeconds == nil {
		g := int64(corev1.DefaultTerminationGracePeriodSeconds)
		s.TerminationGracePeriodSeconds = &g
	}
	if s.SecurityContext == nil {
		s.SecurityContext = &corev1.PodSecurityContext{}
	}
	if s.EnableServiceLinks == nil {
		t := true
		s.EnableServiceLinks = &t
	}
	for _, cs := range [][]corev1.Container{s.InitContainers, s.Containers} {
		for i := range cs {
			c := &cs[i]
			if c.TerminationMessagePath == "" {
				c.TerminationMessagePath = corev1.TerminationMessagePathDefault
			}
			if c.TerminationMessagePolicy == "" {
				c.TerminationMessagePolicy = corev1.TerminationMessageReadFile
			}
			if c.ImagePullPolicy == "" {
				c.ImagePullPolicy = corev1.PullIfNotPresent
				if img := c.Image; img != "" && (!strings.Contains(lastSegment(img), ":") || strings.HasSuffix(img, ":latest")) && !strings.Contains(img, "@") {
					c.ImagePullPolicy = corev1.PullAlways
				}
			}
			for j := range c.Ports {
				if c.Ports[j].Protocol == "" {
					c.Ports[j].Protocol = corev1.ProtocolTCP
				}
			}
		}
	}
}

func lastSegment(image string) string {
	if i := strings.LastIndex(image, "/"); i >= 0 {
		return image[i+1:]
	}
	return image
}

// formatEndpoints is kubectl's ENDPOINTS column: up to three addresses.
func formatEndpoints(ep *corev1.Endpoints) string {
	var list []string
	more := 0
	for _, ss := range ep.Subsets {
		for _, a := range ss.Addresses {
			if len(ss.Ports) == 0 {
				if len(list) < 3 {
					list = append(list, a.IP)
				} else {
					more++
				}
				continue
			}
			for _, p := range ss.Ports {
				if len(list) < 3 {
					list = append(list, hostPort(a.IP, p.Port))
				} else {
					more++
				}
			}
		}
	}
	if len(list) == 0 {
		return "<none>"
	}
	s := strings.Join(list, ",")
	if more > 0 {
		s += fmt.Sprintf(" + %d more...", more)
	}
	return s
}

func hostPort(ip string, port int32) string {
	if strings.Contains(ip, ":") {
		return fmt.Sprintf("[%s]:%d", ip, port)
	}
	return fmt.Sprintf("%s:%d", ip, port)
}

// podGracefulDelete settles a pod deletion's grace period as Kubernetes
// does: the request's, else the pod's terminationGracePeriodSeconds. A pod
// that no node runs (unscheduled, or finished) goes at once; any other
// lingers, Terminating, while its node's agent stops the containers
// (SIGTERM, then SIGKILL when the period ends), removes the sandbox and
// deletes it for good with a zero period.
func podGracefulDelete(_ context.Context, obj runtime.Object, options *metav1.DeleteOptions) bool {
	if options == nil {
		return false
	}
	pod := obj.(*corev1.Pod)
	period := int64(0)
	switch {
	case options.GracePeriodSeconds != nil:
		period = *options.GracePeriodSeconds
	case pod.Spec.TerminationGracePeriodSeconds != nil:
		period = *pod.Spec.TerminationGracePeriodSeconds
	}
	if pod.Spec.NodeName == "" || pod.Status.Phase == corev1.PodFailed || pod.Status.Phase == corev1.PodSucceeded {
		period = 0
	}
	if period < 0 {
		period = 1 // Kubernetes' rule: a negative period means as soon as possible, not at once
	}
	options.GracePeriodSeconds = &period
	return true
}
