//lint:file-ignore SA1019 core/v1 Endpoints are served for compatibility although Kubernetes deprecates them.

package apiserver

import (
	appsv1 "k8s.io/api/apps/v1"
	authenticationv1 "k8s.io/api/authentication/v1"
	autoscalingv1 "k8s.io/api/autoscaling/v1"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metainternalversion "k8s.io/apimachinery/pkg/apis/meta/internalversion"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/runtime/serializer"

	"github.com/duet-net/duet/internal/apis/core"
	netv1alpha1 "github.com/duet-net/duet/internal/apis/networking/v1alpha1"
)

// Scheme holds every type Duet serves. k8s.io/api has only external (v1)
// types, so each one is registered twice: under its version and under the
// internal version the generic API server converts through. The two being
// the same Go type, conversion is a copy.
var (
	Scheme = runtime.NewScheme()
	Codecs = serializer.NewCodecFactory(Scheme)
	// OpenAPIScheme has only the versioned registrations, so that the
	// OpenAPI namer never sees the internal version.
	OpenAPIScheme = runtime.NewScheme()
)

// servedTypes lists, per group version, the kinds Duet serves.
func servedTypes() map[schema.GroupVersion][]runtime.Object {
	return map[schema.GroupVersion][]runtime.Object{
		corev1.SchemeGroupVersion: {
			&corev1.Namespace{}, &corev1.NamespaceList{},
			&corev1.Node{}, &corev1.NodeList{},
			&corev1.Pod{}, &corev1.PodList{},
			&core.Service{}, &core.ServiceList{},
			&corev1.Endpoints{}, &corev1.EndpointsList{},
			&corev1.Event{}, &corev1.EventList{},
			&corev1.ConfigMap{}, &corev1.ConfigMapList{},
			&corev1.Secret{}, &corev1.SecretList{},
			&corev1.ServiceAccount{}, &corev1.ServiceAccountList{},
		},
		discoveryv1.SchemeGroupVersion: {&discoveryv1.EndpointSlice{}, &discoveryv1.EndpointSliceList{}},
		// Only as the body of serviceaccounts/token.
		authenticationv1.SchemeGroupVersion: {&authenticationv1.TokenRequest{}},
		coordinationv1.SchemeGroupVersion:   {&coordinationv1.Lease{}, &coordinationv1.LeaseList{}},
		networkingv1.SchemeGroupVersion: {
			&networkingv1.ServiceCIDR{}, &networkingv1.ServiceCIDRList{},
			&networkingv1.IPAddress{}, &networkingv1.IPAddressList{},
		},
		appsv1.SchemeGroupVersion: {
			&appsv1.Deployment{}, &appsv1.DeploymentList{},
			&appsv1.ReplicaSet{}, &appsv1.ReplicaSetList{},
			&appsv1.DaemonSet{}, &appsv1.DaemonSetList{},
			&appsv1.ControllerRevision{}, &appsv1.ControllerRevisionList{},
		},
		// The scale subresource of Deployments and ReplicaSets.
		autoscalingv1.SchemeGroupVersion: {&autoscalingv1.Scale{}},
		netv1alpha1.SchemeGroupVersion:   {&netv1alpha1.ClusterCIDR{}, &netv1alpha1.ClusterCIDRList{}},
	}
}

func init() {
	for _, s := range []*runtime.Scheme{Scheme, OpenAPIScheme} {
		for gv, types := range servedTypes() {
			s.AddKnownTypes(gv, types...)
			metav1.AddToGroupVersion(s, gv)
		}
		// The generic server wants the option types in the empty group too.
		metav1.AddToGroupVersion(s, schema.GroupVersion{Version: "v1"})
		s.AddUnversionedTypes(schema.GroupVersion{Version: "v1"},
			&metav1.Status{}, &metav1.APIVersions{}, &metav1.APIGroupList{}, &metav1.APIGroup{}, &metav1.APIResourceList{})
	}
	for gv, types := range servedTypes() {
		internal := schema.GroupVersion{Group: gv.Group, Version: runtime.APIVersionInternal}
		Scheme.AddKnownTypes(internal, types...)
	}
	utilruntimeMust(metainternalversion.AddToScheme(Scheme))
	utilruntimeMust(addFieldLabelConversions(Scheme))
}

// selectableFields are the field selectors each kind supports beyond
// metadata.name and metadata.namespace (agents watch pods by node, kubectl
// lists events by involved object).
var selectableFields = map[schema.GroupVersionKind][]string{
	corev1.SchemeGroupVersion.WithKind("Pod"):     {"spec.nodeName", "spec.restartPolicy", "spec.schedulerName", "spec.serviceAccountName", "spec.hostNetwork", "status.phase", "status.podIP", "status.nominatedNodeName"},
	corev1.SchemeGroupVersion.WithKind("Node"):    {"spec.unschedulable"},
	corev1.SchemeGroupVersion.WithKind("Service"): {"spec.clusterIP", "spec.type"},
	corev1.SchemeGroupVersion.WithKind("Event"): {"involvedObject.kind", "involvedObject.namespace", "involvedObject.name", "involvedObject.uid",
		"involvedObject.apiVersion", "involvedObject.resourceVersion", "involvedObject.fieldPath", "reason", "reportingComponent", "source", "type"},
	corev1.SchemeGroupVersion.WithKind("Namespace"):       {"status.phase"},
	corev1.SchemeGroupVersion.WithKind("Secret"):          {"type"},
	networkingv1.SchemeGroupVersion.WithKind("IPAddress"): {"spec.parentRef.resource", "spec.parentRef.namespace", "spec.parentRef.name"},
	appsv1.SchemeGroupVersion.WithKind("ReplicaSet"):      {"status.replicas"},
}

func addFieldLabelConversions(s *runtime.Scheme) error {
	for gv, types := range servedTypes() {
		for _, obj := range types {
			gvks, _, err := s.ObjectKinds(obj)
			if err != nil {
				return err
			}
			for _, gvk := range gvks {
				if gvk.Version == runtime.APIVersionInternal || gvk.GroupVersion() != gv {
					continue
				}
				allowed := map[string]bool{"metadata.name": true, "metadata.namespace": true}
				for _, f := range selectableFields[gvk] {
					allowed[f] = true
				}
				kind := gvk
				if err := s.AddFieldLabelConversionFunc(kind, func(label, value string) (string, string, error) {
					if allowed[label] {
						return label, value, nil
					}
					return "", "", fieldLabelError(kind, label)
				}); err != nil {
					return err
				}
			}
		}
	}
	return nil
}
