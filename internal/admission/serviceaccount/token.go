package serviceaccount

import (
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apiserver/pkg/storage/names"
	"k8s.io/utils/ptr"
)

// Where API credentials appear in containers, and the prefix of the
// volume that holds them, as in Kubernetes.
const (
	TokenMountPath    = "/var/run/secrets/kubernetes.io/serviceaccount"
	TokenVolumePrefix = "kube-api-access-"
	// TokenExpirationSeconds is what the volume asks for: an hour and
	// seven seconds, the value by which Kubernetes recognises its own
	// volumes' tokens.
	TokenExpirationSeconds = 3607
	// RootCAConfigMap and RootCAKey are where the CA that verifies the
	// API server is published in every namespace.
	RootCAConfigMap = "kube-root-ca.crt"
	RootCAKey       = "ca.crt"
)

// TokenVolume mounts API credentials into the containers of pods that
// automount them: a projected volume of a ServiceAccount token, the
// cluster CA and the pod's namespace, read-only at TokenMountPath.
type TokenVolume struct {
	// GenerateName names a new volume from TokenVolumePrefix (random
	// suffix if nil).
	GenerateName func(prefix string) string
}

// mount adds the volume to pod, and its mount to every container that
// has nothing at TokenMountPath yet. A pod that already has a
// kube-api-access-* volume keeps it.
func (t *TokenVolume) mount(pod *corev1.Pod) {
	name := ""
	for _, v := range pod.Spec.Volumes {
		if strings.HasPrefix(v.Name, TokenVolumePrefix) {
			name = v.Name
			break
		}
	}
	hasVolume := name != ""
	if !hasVolume {
		gen := t.GenerateName
		if gen == nil {
			gen = names.SimpleNameGenerator.GenerateName
		}
		name = gen(TokenVolumePrefix)
	}
	mount := corev1.VolumeMount{Name: name, ReadOnly: true, MountPath: TokenMountPath}
	mounted := false
	for _, cs := range [][]corev1.Container{pod.Spec.InitContainers, pod.Spec.Containers} {
		for i := range cs {
			c := &cs[i]
			if !hasMountAt(c, TokenMountPath) {
				c.VolumeMounts = append(c.VolumeMounts, mount)
				mounted = true
			}
		}
	}
	if mounted && !hasVolume {
		pod.Spec.Volumes = append(pod.Spec.Volumes, corev1.Volume{Name: name, VolumeSource: corev1.VolumeSource{Projected: TokenVolumeSource()}})
	}
}

func hasMountAt(c *corev1.Container, path string) bool {
	for _, m := range c.VolumeMounts {
		if m.MountPath == path {
			return true
		}
	}
	return false
}

// TokenVolumeSource is the projected volume's content: token, ca.crt and
// namespace.
func TokenVolumeSource() *corev1.ProjectedVolumeSource {
	return &corev1.ProjectedVolumeSource{
		DefaultMode: ptr.To[int32](corev1.ProjectedVolumeSourceDefaultMode),
		Sources: []corev1.VolumeProjection{
			{ServiceAccountToken: &corev1.ServiceAccountTokenProjection{Path: "token", ExpirationSeconds: ptr.To[int64](TokenExpirationSeconds)}},
			{ConfigMap: &corev1.ConfigMapProjection{
				LocalObjectReference: corev1.LocalObjectReference{Name: RootCAConfigMap},
				Items:                []corev1.KeyToPath{{Key: RootCAKey, Path: RootCAKey}},
			}},
			{DownwardAPI: &corev1.DownwardAPIProjection{Items: []corev1.DownwardAPIVolumeFile{{
				Path: "namespace", FieldRef: &corev1.ObjectFieldSelector{APIVersion: "v1", FieldPath: "metadata.namespace"},
			}}}},
		},
	}
}
