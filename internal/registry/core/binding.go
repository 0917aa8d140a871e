package core

import (
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// markScheduled sets PodScheduled=True on a pod that an update binds to a
// node (spec.nodeName from empty), in the same write, as Kubernetes' API
// server does for a Binding: a pod the scheduler once reported
// Unschedulable does not keep saying so until its node's agent reports.
func markScheduled(pod, old *corev1.Pod) {
	if old.Spec.NodeName != "" || pod.Spec.NodeName == "" {
		return
	}
	cond := corev1.PodCondition{Type: corev1.PodScheduled, Status: corev1.ConditionTrue, LastTransitionTime: metav1.Now()}
	for i, c := range pod.Status.Conditions {
		if c.Type == corev1.PodScheduled {
			if c.Status == corev1.ConditionTrue {
				return
			}
			pod.Status.Conditions[i] = cond
			return
		}
	}
	pod.Status.Conditions = append(pod.Status.Conditions, cond)
}
