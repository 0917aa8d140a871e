package podroot

import (
	"fmt"
	"math"
	"net/netip"
	"os"
	"path"
	"sort"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
)

// defaultFileMode is the mode of volume files whose volume and item say
// none (0644, Kubernetes' default for configMap, secret, downwardAPI and
// projected volumes).
const defaultFileMode os.FileMode = 0o644

// File is one file of a content volume.
type File struct {
	Data []byte
	// Mode is the file's permission bits (0 means 0644).
	Mode os.FileMode
}

// validFilePath checks a volume file's path as the API does: relative, no
// ".." element, not empty.
func validFilePath(p string) error {
	if p == "" || path.IsAbs(p) {
		return fmt.Errorf("path %q must be relative and not empty", p)
	}
	for _, el := range strings.Split(p, "/") {
		if el == ".." {
			return fmt.Errorf("path %q must not contain '..'", p)
		}
		if el == "" || el == "." {
			return fmt.Errorf("path %q has an empty or '.' element", p)
		}
	}
	if strings.HasPrefix(p, "..") {
		return fmt.Errorf("path %q must not start with '..'", p)
	}
	return nil
}

func fileMode(itemMode, defaultMode *int32) (os.FileMode, error) {
	m := defaultFileMode
	for _, v := range []*int32{defaultMode, itemMode} {
		if v == nil {
			continue
		}
		if *v < 0 || *v > 0o777 {
			return 0, fmt.Errorf("mode %#o is not between 0 and 0777", *v)
		}
		m = os.FileMode(*v)
	}
	return m, nil
}

// KeyFiles makes a configMap's or secret's files: every key as a file of
// its name, or with items only the keys they name at their paths. A key an
// item names that data lacks is an error unless optional. data holds
// configMap data and binaryData together, or a secret's data.
func KeyFiles(data map[string][]byte, items []corev1.KeyToPath, defaultMode *int32, optional bool) (map[string]File, error) {
	out := map[string]File{}
	if len(items) == 0 {
		for k, v := range data {
			if err := validFilePath(k); err != nil {
				return nil, fmt.Errorf("key %q: %w", k, err)
			}
			m, err := fileMode(nil, defaultMode)
			if err != nil {
				return nil, fmt.Errorf("defaultMode: %w", err)
			}
			out[k] = File{Data: v, Mode: m}
		}
		return out, nil
	}
	for i, it := range items {
		v, ok := data[it.Key]
		if !ok {
			if optional {
				continue
			}
			return nil, fmt.Errorf("items[%d]: key %q not found", i, it.Key)
		}
		if err := validFilePath(it.Path); err != nil {
			return nil, fmt.Errorf("items[%d].path: %w", i, err)
		}
		m, err := fileMode(it.Mode, defaultMode)
		if err != nil {
			return nil, fmt.Errorf("items[%d].mode: %w", i, err)
		}
		out[it.Path] = File{Data: v, Mode: m}
	}
	return out, nil
}

// ConfigMapData joins a configMap's data and binaryData as KeyFiles takes
// them.
func ConfigMapData(cm *corev1.ConfigMap) map[string][]byte {
	out := map[string][]byte{}
	for k, v := range cm.Data {
		out[k] = []byte(v)
	}
	for k, v := range cm.BinaryData {
		out[k] = v
	}
	return out
}

// PodInfo is what downwardAPI files are made of.
type PodInfo struct {
	Pod *corev1.Pod
	// PodIPs and HostIPs stand for status.podIPs and status.hostIPs, which
	// the pod's status may not show yet when its volumes are made.
	PodIPs, HostIPs []netip.Addr
	// NodeAllocatable stands for the limits a container does not set.
	NodeAllocatable corev1.ResourceList
}

// DownwardAPIFiles makes a downwardAPI volume's files.
func DownwardAPIFiles(info PodInfo, items []corev1.DownwardAPIVolumeFile, defaultMode *int32) (map[string]File, error) {
	out := map[string]File{}
	for i, it := range items {
		if err := validFilePath(it.Path); err != nil {
			return nil, fmt.Errorf("items[%d].path: %w", i, err)
		}
		m, err := fileMode(it.Mode, defaultMode)
		if err != nil {
			return nil, fmt.Errorf("items[%d].mode: %w", i, err)
		}
		var v string
		switch {
		case it.FieldRef != nil:
			v, err = fieldValue(info, it.FieldRef.FieldPath)
		case it.ResourceFieldRef != nil:
			v, err = resourceValue(info, it.ResourceFieldRef)
		default:
			err = fmt.Errorf("neither fieldRef nor resourceFieldRef")
		}
		if err != nil {
			return nil, fmt.Errorf("items[%d]: %w", i, err)
		}
		out[it.Path] = File{Data: []byte(v), Mode: m}
	}
	return out, nil
}

func fieldValue(info PodInfo, fp string) (string, error) {
	p := info.Pod
	if p == nil {
		return "", fmt.Errorf("fieldRef %s: no pod given", fp)
	}
	if inner, ok := subscript(fp, "metadata.labels"); ok {
		return p.Labels[inner], nil
	}
	if inner, ok := subscript(fp, "metadata.annotations"); ok {
		return p.Annotations[inner], nil
	}
	switch fp {
	case "metadata.name":
		return p.Name, nil
	case "metadata.namespace":
		return p.Namespace, nil
	case "metadata.uid":
		return string(p.UID), nil
	case "metadata.labels":
		return formatMap(p.Labels), nil
	case "metadata.annotations":
		return formatMap(p.Annotations), nil
	case "spec.nodeName":
		return p.Spec.NodeName, nil
	case "spec.serviceAccountName":
		return p.Spec.ServiceAccountName, nil
	case "status.podIP":
		return first(info.PodIPs), nil
	case "status.podIPs":
		return joinAddrs(info.PodIPs), nil
	case "status.hostIP":
		return first(info.HostIPs), nil
	case "status.hostIPs":
		return joinAddrs(info.HostIPs), nil
	}
	return "", fmt.Errorf("fieldRef %q is not supported", fp)
}

// subscript returns k of field['k'].
func subscript(fp, field string) (string, bool) {
	rest, ok := strings.CutPrefix(fp, field+"['")
	if !ok {
		return "", false
	}
	return strings.CutSuffix(rest, "']")
}

// formatMap writes labels or annotations as Kubernetes does: key="value"
// lines in key order, values quoted as Go strings.
func formatMap(m map[string]string) string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	lines := make([]string, len(keys))
	for i, k := range keys {
		lines[i] = fmt.Sprintf("%s=%q", k, m[k])
	}
	return strings.Join(lines, "\n")
}

func first(as []netip.Addr) string {
	if len(as) == 0 {
		return ""
	}
	return as[0].String()
}

func joinAddrs(as []netip.Addr) string {
	s := make([]string, len(as))
	for i, a := range as {
		s[i] = a.String()
	}
	return strings.Join(s, ",")
}

// resourceValue is a container's request or limit in units of the divisor,
// rounded up; a limit the container does not set is the node's
// allocatable amount.
func resourceValue(info PodInfo, ref *corev1.ResourceFieldSelector) (string, error) {
	if info.Pod == nil {
		return "", fmt.Errorf("resourceFieldRef: no pod given")
	}
	var c *corev1.Container
	for i := range info.Pod.Spec.Containers {
		if info.Pod.Spec.Containers[i].Name == ref.ContainerName {
			c = &info.Pod.Spec.Containers[i]
		}
	}
	if c == nil {
		return "", fmt.Errorf("resourceFieldRef: no container %q in the pod", ref.ContainerName)
	}
	kind, name, ok := strings.Cut(ref.Resource, ".")
	if !ok || kind != "limits" && kind != "requests" {
		return "", fmt.Errorf("resourceFieldRef: resource %q is not limits.* or requests.*", ref.Resource)
	}
	list := c.Resources.Limits
	if kind == "requests" {
		list = c.Resources.Requests
	}
	q, ok := list[corev1.ResourceName(name)]
	if !ok && kind == "limits" {
		q, ok = info.NodeAllocatable[corev1.ResourceName(name)]
	}
	if !ok {
		q = resource.Quantity{}
	}
	divisor := ref.Divisor
	if divisor.IsZero() {
		divisor = resource.MustParse("1")
	}
	if name == string(corev1.ResourceCPU) {
		return fmt.Sprint(int64(math.Ceil(float64(q.MilliValue()) / float64(divisor.MilliValue())))), nil
	}
	return fmt.Sprint(int64(math.Ceil(float64(q.Value()) / float64(divisor.Value())))), nil
}

// Project joins the files of a projected volume's sources; two sources
// with one path are an error.
func Project(sources ...map[string]File) (map[string]File, error) {
	out := map[string]File{}
	for i, src := range sources {
		for p, f := range src {
			if _, dup := out[p]; dup {
				return nil, fmt.Errorf("sources[%d]: path %q is projected twice", i, p)
			}
			out[p] = f
		}
	}
	return out, nil
}

// TokenFiles makes a serviceAccountToken projection's one file: token at
// path, with the projected volume's defaultMode, or 0600 when the pod's
// volume files get an owner (an fsGroup, or a runAsUser all its containers
// share), as the kubelet writes it, so that only that owner reads it.
func TokenFiles(pod *corev1.Pod, path, token string, defaultMode *int32) (map[string]File, error) {
	if err := validFilePath(path); err != nil {
		return nil, fmt.Errorf("path: %w", err)
	}
	m, err := fileMode(nil, defaultMode)
	if err != nil {
		return nil, fmt.Errorf("defaultMode: %w", err)
	}
	if fsGroup(pod) != nil || fsUser(pod) != nil {
		m = 0o600
	}
	return map[string]File{path: {Data: []byte(token), Mode: m}}, nil
}

func fsGroup(pod *corev1.Pod) *int64 {
	if pod.Spec.SecurityContext == nil {
		return nil
	}
	return pod.Spec.SecurityContext.FSGroup
}

// fsUser is the user every container (init ones included) runs as, by its
// own securityContext or the pod's; nil when they differ or one has none.
func fsUser(pod *corev1.Pod) *int64 {
	var podUser *int64
	if pod.Spec.SecurityContext != nil {
		podUser = pod.Spec.SecurityContext.RunAsUser
	}
	var user *int64
	for _, cs := range [][]corev1.Container{pod.Spec.InitContainers, pod.Spec.Containers} {
		for _, c := range cs {
			u := podUser
			if c.SecurityContext != nil && c.SecurityContext.RunAsUser != nil {
				u = c.SecurityContext.RunAsUser
			}
			switch {
			case u == nil:
				return nil
			case user == nil:
				user = u
			case *user != *u:
				return nil
			}
		}
	}
	return user
}
