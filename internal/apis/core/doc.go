// Package core holds the core/v1 types Duet serves differently from
// k8s.io/api: Service, which keeps the 1.16-era spec.ipFamily field that
// Kubernetes removed in 1.20, so that manifests written for the original
// dual-stack design still apply with strict field validation. Every other
// core/v1 type is served from k8s.io/api unchanged.
//
// +k8s:openapi-gen=true
// +k8s:openapi-model-package=io.duet.core.v1
package core
