// Package podrefs lists what a pod refers to by name in its namespace:
// the Secrets, ConfigMaps and ServiceAccount it reads, which the node
// that runs it may read too and a mirror pod may not name.
package podrefs

import (
	"slices"

	corev1 "k8s.io/api/core/v1"
)

// Secrets returns, sorted and once each, the Secrets pod reads: image
// pull secrets, environment, Secret and projected volumes, and the
// secret references of volume plugins.
func Secrets(pod *corev1.Pod) []string {
	var out []string
	add := func(name string) {
		if name != "" {
			out = append(out, name)
		}
	}
	addRef := func(ref *corev1.LocalObjectReference) {
		if ref != nil {
			add(ref.Name)
		}
	}
	for _, r := range pod.Spec.ImagePullSecrets {
		add(r.Name)
	}
	eachContainer(pod, func(env []corev1.EnvVar, from []corev1.EnvFromSource) {
		for _, e := range from {
			if e.SecretRef != nil {
				add(e.SecretRef.Name)
			}
		}
		for _, e := range env {
			if e.ValueFrom != nil && e.ValueFrom.SecretKeyRef != nil {
				add(e.ValueFrom.SecretKeyRef.Name)
			}
		}
	})
	for _, v := range pod.Spec.Volumes {
		s := v.VolumeSource
		switch {
		case s.Secret != nil:
			add(s.Secret.SecretName)
		case s.Projected != nil:
			for _, p := range s.Projected.Sources {
				if p.Secret != nil {
					add(p.Secret.Name)
				}
			}
		case s.CSI != nil:
			addRef(s.CSI.NodePublishSecretRef)
		case s.AzureFile != nil:
			add(s.AzureFile.SecretName)
		case s.CephFS != nil:
			addRef(s.CephFS.SecretRef)
		case s.Cinder != nil:
			addRef(s.Cinder.SecretRef)
		case s.FlexVolume != nil:
			addRef(s.FlexVolume.SecretRef)
		case s.ISCSI != nil:
			addRef(s.ISCSI.SecretRef)
		case s.RBD != nil:
			addRef(s.RBD.SecretRef)
		case s.ScaleIO != nil:
			addRef(s.ScaleIO.SecretRef)
		case s.StorageOS != nil:
			addRef(s.StorageOS.SecretRef)
		}
	}
	return sortedSet(out)
}

// ConfigMaps returns, sorted and once each, the ConfigMaps pod reads:
// environment, ConfigMap and projected volumes.
func ConfigMaps(pod *corev1.Pod) []string {
	var out []string
	add := func(name string) {
		if name != "" {
			out = append(out, name)
		}
	}
	eachContainer(pod, func(env []corev1.EnvVar, from []corev1.EnvFromSource) {
		for _, e := range from {
			if e.ConfigMapRef != nil {
				add(e.ConfigMapRef.Name)
			}
		}
		for _, e := range env {
			if e.ValueFrom != nil && e.ValueFrom.ConfigMapKeyRef != nil {
				add(e.ValueFrom.ConfigMapKeyRef.Name)
			}
		}
	})
	for _, v := range pod.Spec.Volumes {
		switch s := v.VolumeSource; {
		case s.ConfigMap != nil:
			add(s.ConfigMap.Name)
		case s.Projected != nil:
			for _, p := range s.Projected.Sources {
				if p.ConfigMap != nil {
					add(p.ConfigMap.Name)
				}
			}
		}
	}
	return sortedSet(out)
}

// HasServiceAccountToken reports whether a projected volume of pod asks
// for a ServiceAccount token.
func HasServiceAccountToken(pod *corev1.Pod) bool {
	for _, v := range pod.Spec.Volumes {
		if v.Projected == nil {
			continue
		}
		for _, p := range v.Projected.Sources {
			if p.ServiceAccountToken != nil {
				return true
			}
		}
	}
	return false
}

// eachContainer calls f with the environment of every container, init
// and ephemeral ones included.
func eachContainer(pod *corev1.Pod, f func([]corev1.EnvVar, []corev1.EnvFromSource)) {
	for _, c := range pod.Spec.InitContainers {
		f(c.Env, c.EnvFrom)
	}
	for _, c := range pod.Spec.Containers {
		f(c.Env, c.EnvFrom)
	}
	for _, c := range pod.Spec.EphemeralContainers {
		f(c.Env, c.EnvFrom)
	}
}

func sortedSet(s []string) []string {
	slices.Sort(s)
	return slices.Compact(s)
}
