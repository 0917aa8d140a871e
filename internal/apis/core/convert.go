package core

import (
	corev1 "k8s.io/api/core/v1"
)

// FromV1 returns the Service as Duet serves it, with ipFamily unset.
func FromV1(in *corev1.Service) *Service {
	out := &Service{TypeMeta: in.TypeMeta, Status: *in.Status.DeepCopy()}
	in.ObjectMeta.DeepCopyInto(&out.ObjectMeta)
	in.Spec.DeepCopyInto(&out.Spec.ServiceSpec)
	return out
}

// ToV1 returns the Service as k8s.io/api spells it, dropping ipFamily.
func (in *Service) ToV1() *corev1.Service {
	out := &corev1.Service{TypeMeta: in.TypeMeta, Status: *in.Status.DeepCopy()}
	in.ObjectMeta.DeepCopyInto(&out.ObjectMeta)
	in.Spec.ServiceSpec.DeepCopyInto(&out.Spec)
	return out
}
