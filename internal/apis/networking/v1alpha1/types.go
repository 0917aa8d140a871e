package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
)

// GroupName is the API group of Duet's networking objects.
const GroupName = "networking.duet.dev"

// SchemeGroupVersion is the group version ClusterCIDRs are served at.
var SchemeGroupVersion = schema.GroupVersion{Group: GroupName, Version: "v1alpha1"}

// Resource qualifies a resource name with the group.
func Resource(resource string) schema.GroupResource {
	return SchemeGroupVersion.WithResource(resource).GroupResource()
}

// ClusterCIDRConditionReady is the type of the condition that says whether
// node IPAM gives Nodes pod CIDRs from a ClusterCIDR.
const ClusterCIDRConditionReady = "Ready"

// Reasons of the Ready condition.
const (
	// ReasonDuplicate: another ClusterCIDR of the family is older; this
	// one gives nothing until that one is deleted.
	ReasonDuplicate = "Duplicate"
	// ReasonTerminating: the ClusterCIDR is being deleted.
	ReasonTerminating = "Terminating"
)

// ClusterCIDR is a range of pod addresses: node IPAM gives every Node a
// pod CIDR of nodeMaskSize bits from it. A cluster has at most one
// ClusterCIDR per IP family; the families of its ClusterCIDRs are the
// families its pods have.
type ClusterCIDR struct {
	metav1.TypeMeta `json:",inline"`
	// Standard object's metadata.
	// +optional
	metav1.ObjectMeta `json:"metadata,omitempty"`

	// spec is the range. It is immutable.
	Spec ClusterCIDRSpec `json:"spec"`

	// status says whether node IPAM uses the range.
	// +optional
	Status ClusterCIDRStatus `json:"status,omitempty"`
}

// ClusterCIDRSpec is a ClusterCIDR's range.
type ClusterCIDRSpec struct {
	// cidr is the range, in CIDR notation with no host bits set
	// ("10.244.0.0/16", "fd00:10:244::/56"). Immutable.
	CIDR string `json:"cidr"`

	// nodeMaskSize is the prefix length of each Node's pod CIDR from this
	// range: at least the range's own, at most 30 for IPv4 and 126 for
	// IPv6. Defaults to 24 for IPv4 and 64 for IPv6. Immutable.
	// +optional
	NodeMaskSize int32 `json:"nodeMaskSize,omitempty"`
}

// ClusterCIDRStatus is what the server observed of a ClusterCIDR.
type ClusterCIDRStatus struct {
	// conditions: Ready says whether node IPAM gives pod CIDRs from the
	// range.
	// +optional
	// +listType=map
	// +listMapKey=type
	// +patchStrategy=merge
	// +patchMergeKey=type
	Conditions []metav1.Condition `json:"conditions,omitempty" patchStrategy:"merge" patchMergeKey:"type"`
}

// ClusterCIDRList is a list of ClusterCIDRs.
type ClusterCIDRList struct {
	metav1.TypeMeta `json:",inline"`
	// Standard list metadata.
	// +optional
	metav1.ListMeta `json:"metadata,omitempty"`

	// items are the ClusterCIDRs.
	Items []ClusterCIDR `json:"items"`
}

// AddToScheme registers the types (with the meta types of the group
// version) in a scheme.
func AddToScheme(s *runtime.Scheme) error {
	s.AddKnownTypes(SchemeGroupVersion, &ClusterCIDR{}, &ClusterCIDRList{})
	metav1.AddToGroupVersion(s, SchemeGroupVersion)
	return nil
}
