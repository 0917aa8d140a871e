package core

import (
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Service is a named abstraction of software service (for example, mysql)
// consisting of local port (for example 3306) that the proxy listens on, and
// the selector that determines which pods will answer requests sent through
// the proxy.
type Service struct {
	metav1.TypeMeta `json:",inline"`
	// Standard object's metadata.
	// +optional
	metav1.ObjectMeta `json:"metadata,omitempty"`

	// Spec defines the behavior of a service.
	// +optional
	Spec ServiceSpec `json:"spec,omitempty"`

	// Most recently observed status of the service.
	// +optional
	Status corev1.ServiceStatus `json:"status,omitempty"`
}

// ServiceSpec is core/v1 ServiceSpec plus the 1.16 ipFamily field.
type ServiceSpec struct {
	corev1.ServiceSpec `json:",inline"`

	// ipFamily is the IP family of a Service as the original (1.16)
	// dual-stack design spelled it: "IPv4" or "IPv6". It is the primary
	// family, kept in step with ipFamilies[0]: setting it without an
	// ipFamilyPolicy requests a SingleStack Service of that family (its 1.16
	// meaning); with PreferDualStack or RequireDualStack it is the first of
	// the Service's families. Every Service read back reports it. Immutable
	// once set, except when the Service becomes or stops being an
	// ExternalName.
	// +optional
	IPFamily *corev1.IPFamily `json:"ipFamily,omitempty"`
}

// ServiceList holds a list of services.
type ServiceList struct {
	metav1.TypeMeta `json:",inline"`
	// Standard list metadata.
	// +optional
	metav1.ListMeta `json:"metadata,omitempty"`

	// List of services
	Items []Service `json:"items"`
}
