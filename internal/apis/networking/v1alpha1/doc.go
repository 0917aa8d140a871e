// Package v1alpha1 is Duet's networking.duet.dev/v1alpha1 API: ClusterCIDR,
// a cluster pod CIDR as an object. The cluster has at most one per family;
// node IPAM gives every Node a pod CIDR (a /nodeMaskSize) of each, so that
// creating the ClusterCIDR of a second family turns a running cluster
// dual-stack and deleting it turns it back. The server keeps the ones
// --cluster-cidr names as default-ipv4 and default-ipv6.
//
// +k8s:openapi-gen=true
// +k8s:openapi-model-package=dev.duet.networking.v1alpha1
// +groupName=networking.duet.dev
package v1alpha1
