// Package trim shrinks the objects the in-process controllers' informers
// keep. Those informers hold every Pod of the cluster in the API server's
// own process, next to the watch cache's copy; keeping only what the
// controllers read is most of what the copies cost.
//
// Objects trimmed here must never be written back whole: an Update built
// from a trimmed Pod would erase what was trimmed. Controllers patch Pods;
// they may update other objects, whose managedFields alone are dropped (an
// update without managedFields keeps the stored ones).
package trim

import (
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/client-go/tools/cache"
)

// ForControllers is a cache.TransformFunc: it drops every object's
// managedFields and reduces Pods to what scheduling and endpoint
// controllers read (Pods).
func ForControllers(obj any) (any, error) {
	if pod, ok := obj.(*corev1.Pod); ok {
		return Pod(pod), nil
	}
	if m, err := meta.Accessor(obj); err == nil {
		m.SetManagedFields(nil)
	}
	return obj, nil
}

var _ cache.TransformFunc = ForControllers

// Pod keeps of pod its identity, labels, deletion state, where it runs
// and is meant to run, what the scheduler and the taint eviction read
// (affinity, tolerations, priority, gates, resource requests and
// limits), its hostname, its containers' names and ports, its phase,
// addresses and conditions. It reuses pod's fields, so pod must not
// be used afterwards; informers hand a transform objects of their own.
func Pod(pod *corev1.Pod) *corev1.Pod {
	out := &corev1.Pod{
		TypeMeta: pod.TypeMeta,
		Spec: corev1.PodSpec{
			NodeName:      pod.Spec.NodeName,
			NodeSelector:  pod.Spec.NodeSelector,
			SchedulerName: pod.Spec.SchedulerName,
			Hostname:      pod.Spec.Hostname,
			Subdomain:     pod.Spec.Subdomain,
			RestartPolicy: pod.Spec.RestartPolicy,
			HostNetwork:   pod.Spec.HostNetwork,
			// scheduling
			Affinity:        pod.Spec.Affinity,
			Tolerations:     pod.Spec.Tolerations,
			Priority:        pod.Spec.Priority,
			SchedulingGates: pod.Spec.SchedulingGates,
			Overhead:        pod.Spec.Overhead,
			Resources:       pod.Spec.Resources,
		},
		Status: corev1.PodStatus{
			Phase:      pod.Status.Phase,
			Conditions: pod.Status.Conditions,
			HostIP:     pod.Status.HostIP,
			HostIPs:    pod.Status.HostIPs,
			PodIP:      pod.Status.PodIP,
			PodIPs:     pod.Status.PodIPs,
		},
	}
	m := &out.ObjectMeta
	m.Name, m.Namespace, m.UID, m.ResourceVersion = pod.Name, pod.Namespace, pod.UID, pod.ResourceVersion
	m.GenerateName, m.Generation = pod.GenerateName, pod.Generation
	m.CreationTimestamp, m.DeletionTimestamp, m.DeletionGracePeriodSeconds = pod.CreationTimestamp, pod.DeletionTimestamp, pod.DeletionGracePeriodSeconds
	m.Labels, m.OwnerReferences, m.Finalizers = pod.Labels, pod.OwnerReferences, pod.Finalizers
	out.Spec.Containers = containers(pod.Spec.Containers)
	out.Spec.InitContainers = containers(pod.Spec.InitContainers)
	return out
}

// containers keeps the name, ports and resources of each container, and
// the restart policy that makes an init container a sidecar whose ports
// Services use.
func containers(in []corev1.Container) []corev1.Container {
	if len(in) == 0 {
		return nil
	}
	out := make([]corev1.Container, len(in))
	for i, c := range in {
		out[i] = corev1.Container{Name: c.Name, Ports: c.Ports, RestartPolicy: c.RestartPolicy,
			Resources: corev1.ResourceRequirements{Requests: c.Resources.Requests, Limits: c.Resources.Limits}}
	}
	return out
}
