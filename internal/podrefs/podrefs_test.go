package podrefs

import (
	"slices"
	"testing"

	corev1 "k8s.io/api/core/v1"
)

func TestRefs(t *testing.T) {
	envFrom := []corev1.EnvFromSource{
		{SecretRef: &corev1.SecretEnvSource{LocalObjectReference: corev1.LocalObjectReference{Name: "s-envfrom"}}},
		{ConfigMapRef: &corev1.ConfigMapEnvSource{LocalObjectReference: corev1.LocalObjectReference{Name: "c-envfrom"}}},
	}
	env := []corev1.EnvVar{
		{Name: "A", ValueFrom: &corev1.EnvVarSource{SecretKeyRef: &corev1.SecretKeySelector{LocalObjectReference: corev1.LocalObjectReference{Name: "s-env"}, Key: "k"}}},
		{Name: "B", ValueFrom: &corev1.EnvVarSource{ConfigMapKeyRef: &corev1.ConfigMapKeySelector{LocalObjectReference: corev1.LocalObjectReference{Name: "c-env"}, Key: "k"}}},
		{Name: "C", Value: "plain"},
	}
	pod := &corev1.Pod{Spec: corev1.PodSpec{
		ImagePullSecrets: []corev1.LocalObjectReference{{Name: "s-pull"}},
		InitContainers:   []corev1.Container{{Name: "init", EnvFrom: envFrom}},
		Containers:       []corev1.Container{{Name: "main", Env: env}, {Name: "again", Env: env}},
		EphemeralContainers: []corev1.EphemeralContainer{{EphemeralContainerCommon: corev1.EphemeralContainerCommon{Name: "debug",
			Env: []corev1.EnvVar{{Name: "D", ValueFrom: &corev1.EnvVarSource{SecretKeyRef: &corev1.SecretKeySelector{LocalObjectReference: corev1.LocalObjectReference{Name: "s-ephemeral"}}}}}}}},
		Volumes: []corev1.Volume{
			{Name: "a", VolumeSource: corev1.VolumeSource{Secret: &corev1.SecretVolumeSource{SecretName: "s-vol"}}},
			{Name: "b", VolumeSource: corev1.VolumeSource{ConfigMap: &corev1.ConfigMapVolumeSource{LocalObjectReference: corev1.LocalObjectReference{Name: "c-vol"}}}},
			{Name: "c", VolumeSource: corev1.VolumeSource{Projected: &corev1.ProjectedVolumeSource{Sources: []corev1.VolumeProjection{
				{Secret: &corev1.SecretProjection{LocalObjectReference: corev1.LocalObjectReference{Name: "s-proj"}}},
				{ConfigMap: &corev1.ConfigMapProjection{LocalObjectReference: corev1.LocalObjectReference{Name: "c-proj"}}},
			}}}},
			{Name: "d", VolumeSource: corev1.VolumeSource{CSI: &corev1.CSIVolumeSource{Driver: "x", NodePublishSecretRef: &corev1.LocalObjectReference{Name: "s-csi"}}}},
			{Name: "e", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}},
		},
	}}
	if got, want := Secrets(pod), []string{"s-csi", "s-env", "s-envfrom", "s-ephemeral", "s-proj", "s-pull", "s-vol"}; !slices.Equal(got, want) {
		t.Errorf("Secrets = %v, want %v", got, want)
	}
	if got, want := ConfigMaps(pod), []string{"c-env", "c-envfrom", "c-proj", "c-vol"}; !slices.Equal(got, want) {
		t.Errorf("ConfigMaps = %v, want %v", got, want)
	}
	if HasServiceAccountToken(pod) {
		t.Error("HasServiceAccountToken without a token projection")
	}
	pod.Spec.Volumes = append(pod.Spec.Volumes, corev1.Volume{Name: "t", VolumeSource: corev1.VolumeSource{Projected: &corev1.ProjectedVolumeSource{
		Sources: []corev1.VolumeProjection{{ServiceAccountToken: &corev1.ServiceAccountTokenProjection{Path: "token"}}}}}})
	if !HasServiceAccountToken(pod) {
		t.Error("HasServiceAccountToken missed a token projection")
	}
	if Secrets(&corev1.Pod{}) != nil || ConfigMaps(&corev1.Pod{}) != nil {
		t.Error("an empty pod refers to something")
	}
}
