package v1alpha1

// OpenAPI model names, in the reverse-domain form of the group.

// OpenAPIModelName returns the OpenAPI model name for this type.
func (in ClusterCIDR) OpenAPIModelName() string { return "dev.duet.networking.v1alpha1.ClusterCIDR" }

// OpenAPIModelName returns the OpenAPI model name for this type.
func (in ClusterCIDRSpec) OpenAPIModelName() string {
	return "dev.duet.networking.v1alpha1.ClusterCIDRSpec"
}

// OpenAPIModelName returns the OpenAPI model name for this type.
func (in ClusterCIDRStatus) OpenAPIModelName() string {
	return "dev.duet.networking.v1alpha1.ClusterCIDRStatus"
}

// OpenAPIModelName returns the OpenAPI model name for this type.
func (in ClusterCIDRList) OpenAPIModelName() string {
	return "dev.duet.networking.v1alpha1.ClusterCIDRList"
}
