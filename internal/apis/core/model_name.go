package core

// OpenAPI model names: Duet's Service must not collide with k8s.io/api's
// io.k8s.api.core.v1.Service, which is generated beside it.

// OpenAPIModelName returns the OpenAPI model name for this type.
func (in Service) OpenAPIModelName() string { return "io.duet.core.v1.Service" }

// OpenAPIModelName returns the OpenAPI model name for this type.
func (in ServiceSpec) OpenAPIModelName() string { return "io.duet.core.v1.ServiceSpec" }

// OpenAPIModelName returns the OpenAPI model name for this type.
func (in ServiceList) OpenAPIModelName() string { return "io.duet.core.v1.ServiceList" }
