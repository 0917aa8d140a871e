package pods

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/duet-net/duet/internal/agent/images"
	"github.com/duet-net/duet/internal/agent/podroot"
	"github.com/duet-net/duet/internal/agent/sandbox"
	"github.com/duet-net/duet/internal/agent/servicelinks"
)

// Worlds makes pods' own UTS and mount namespaces (hostname, /etc/hosts,
// /etc/resolv.conf, volumes, the image's files); tests give a fake.
type Worlds interface {
	Create(ctx context.Context, spec *podroot.Spec) (World, error)
	Remove(uid string) error
	List() ([]string, error)
}

// World is one pod's: EnterArgs are the nsenter arguments of a
// container's namespaces in it; Update writes new content of its content
// volumes (as podroot.Root.Update).
type World interface {
	EnterArgs(container string) []string
	Update(volumes []podroot.Volume) error
}

// PodRootWorlds keeps the worlds under the agent's state directory.
type PodRootWorlds struct{ StateDir string }

func (w PodRootWorlds) Create(ctx context.Context, spec *podroot.Spec) (World, error) {
	return podroot.Create(ctx, w.StateDir, spec)
}
func (w PodRootWorlds) Remove(uid string) error { return podroot.Remove(w.StateDir, uid) }
func (w PodRootWorlds) List() ([]string, error) { return podroot.List(w.StateDir) }

func (m *Manager) worlds() Worlds {
	if m.Worlds != nil {
		return m.Worlds
	}
	return PodRootWorlds{StateDir: m.StateDir}
}

func (m *Manager) images() *images.Table {
	m.imagesOnce.Do(func() {
		if m.Images == nil {
			m.Images = images.Builtin(m.Binary)
		}
	})
	return m.Images
}

// ContainerConfigError is a container that cannot be started as it is
// specified: its status shows Reason and the error.
type ContainerConfigError struct {
	Reason string
	Err    error
}

func (e *ContainerConfigError) Error() string { return e.Err.Error() }
func (e *ContainerConfigError) Unwrap() error { return e.Err }

// resolveImage applies Docker's rules for an image's entrypoint and
// command to a container's command and args, as Kubernetes documents
// them. A container with a command needs no table entry.
func (m *Manager) resolveImage(c corev1.Container) (argv []string, img images.Image, err error) {
	img, err = m.images().Lookup(c.Image)
	var nf *images.NotFoundError
	var fm *images.FileMissingError
	switch {
	case errors.As(err, &nf) && len(c.Command) > 0:
		return append(append([]string{}, c.Command...), c.Args...), images.Image{}, nil
	case errors.As(err, &nf):
		return nil, img, &ContainerConfigError{Reason: "ImageNotInTable", Err: fmt.Errorf(
			"image %q is not in duet's image table and the container has no command: add it to the file given to --images (duet up --images / duet agent --images), or give the container a command", c.Image)}
	case errors.As(err, &fm):
		return nil, img, &ContainerConfigError{Reason: "ImageFileMissing", Err: err}
	case err != nil:
		// The kubelet's reason for a reference it cannot parse.
		return nil, img, &ContainerConfigError{Reason: "InvalidImageName", Err: err}
	}
	switch {
	case len(c.Command) > 0:
		argv = append(append([]string{}, c.Command...), c.Args...)
	case len(c.Args) > 0:
		argv = append(append([]string{}, img.Entrypoint...), c.Args...)
	default:
		argv = append(append([]string{}, img.Entrypoint...), img.Cmd...)
	}
	if len(argv) == 0 {
		return nil, img, &ContainerConfigError{Reason: "NoCommand", Err: fmt.Errorf("image %q has no entrypoint or command in duet's image table and the container gives none", c.Image)}
	}
	return argv, img, nil
}

// worldSpec is what the pod's world is made from: its names and
// addresses, DNS, volumes with their content resolved, and each
// container's mounts and image files.
func (m *Manager) worldSpec(ctx context.Context, pod *corev1.Pod, addrs []netip.Addr) (*podroot.Spec, error) {
	s := &podroot.Spec{
		UID: string(pod.UID), Namespace: pod.Namespace, Name: pod.Name,
		Hostname: pod.Spec.Hostname, Subdomain: pod.Spec.Subdomain,
		HostNetwork: pod.Spec.HostNetwork, NodeName: m.NodeName,
		Addrs: addrs, HostAliases: pod.Spec.HostAliases,
		DNSPolicy: pod.Spec.DNSPolicy, DNSConfig: pod.Spec.DNSConfig,
		ClusterDNS: m.ClusterDNS, ClusterDomain: m.ClusterDomain, HostResolvConf: m.ResolvConf,
	}
	if len(s.ClusterDNS) == 0 {
		dns, err := m.kubeDNS(ctx)
		if err != nil {
			return nil, err
		}
		s.ClusterDNS = dns
	}
	if pod.Spec.SetHostnameAsFQDN != nil {
		s.SetHostnameAsFQDN = *pod.Spec.SetHostnameAsFQDN
	}
	info := podroot.PodInfo{Pod: pod, PodIPs: addrs, HostIPs: m.HostIPs}
	for i, v := range pod.Spec.Volumes {
		vol, err := m.volume(ctx, pod, info, v)
		if err != nil {
			if m.Events != nil {
				// The kubelet's event for a volume it cannot set up; the
				// pod's start is tried again.
				m.Events.Eventf(objectRef(pod, ""), corev1.EventTypeWarning, EventFailedMount, "MountVolume.SetUp failed for volume %q: %v", v.Name, err)
			}
			return nil, &ContainerConfigError{Reason: "CreateContainerConfigError", Err: fmt.Errorf("spec.volumes[%d] (%s): %w", i, v.Name, err)}
		}
		s.Volumes = append(s.Volumes, vol)
	}
	for _, c := range pod.Spec.Containers {
		wc := podroot.Container{Name: c.Name, Mounts: c.VolumeMounts}
		if _, img, err := m.resolveImage(c); err == nil {
			for _, p := range sortedKeys(img.Files) {
				wc.ImageFiles = append(wc.ImageFiles, podroot.ImageFile{Path: p, Source: img.Files[p]})
			}
		}
		s.Containers = append(s.Containers, wc)
	}
	return s, nil
}

// volume resolves one pod volume to what podroot mounts.
func (m *Manager) volume(ctx context.Context, pod *corev1.Pod, info podroot.PodInfo, v corev1.Volume) (podroot.Volume, error) {
	out := podroot.Volume{Name: v.Name}
	var err error
	switch {
	case v.EmptyDir != nil:
		out.EmptyDir = &podroot.EmptyDir{Medium: v.EmptyDir.Medium}
		if v.EmptyDir.SizeLimit != nil {
			out.EmptyDir.SizeLimit = v.EmptyDir.SizeLimit.Value()
		}
	case v.HostPath != nil:
		out.HostPath = v.HostPath.Path
	case v.ConfigMap != nil:
		out.Files, err = m.configMapFiles(ctx, pod.Namespace, v.ConfigMap.Name, v.ConfigMap.Items, v.ConfigMap.DefaultMode, v.ConfigMap.Optional)
	case v.Secret != nil:
		out.Files, err = m.secretFiles(ctx, pod.Namespace, v.Secret.SecretName, v.Secret.Items, v.Secret.DefaultMode, v.Secret.Optional)
	case v.DownwardAPI != nil:
		out.Files, err = podroot.DownwardAPIFiles(info, v.DownwardAPI.Items, v.DownwardAPI.DefaultMode)
	case v.Projected != nil:
		var srcs []map[string]podroot.File
		for i, src := range v.Projected.Sources {
			var f map[string]podroot.File
			switch {
			case src.ConfigMap != nil:
				f, err = m.configMapFiles(ctx, pod.Namespace, src.ConfigMap.Name, src.ConfigMap.Items, v.Projected.DefaultMode, src.ConfigMap.Optional)
			case src.Secret != nil:
				f, err = m.secretFiles(ctx, pod.Namespace, src.Secret.Name, src.Secret.Items, v.Projected.DefaultMode, src.Secret.Optional)
			case src.DownwardAPI != nil:
				f, err = podroot.DownwardAPIFiles(info, src.DownwardAPI.Items, v.Projected.DefaultMode)
			case src.ServiceAccountToken != nil:
				f, err = m.tokenFiles(ctx, pod, src.ServiceAccountToken, v.Projected.DefaultMode)
			default:
				// clusterTrustBundle and podCertificate sources need APIs
				// Duet does not serve: the source is left out.
				continue
			}
			if err != nil {
				return out, fmt.Errorf("projected.sources[%d]: %w", i, err)
			}
			srcs = append(srcs, f)
		}
		out.Files, err = podroot.Project(srcs...)
	default:
		return out, errors.New("unsupported volume type: duet supports emptyDir, hostPath, configMap, secret, downwardAPI and projected volumes")
	}
	return out, err
}

func (m *Manager) configMapFiles(ctx context.Context, ns, name string, items []corev1.KeyToPath, mode *int32, optional *bool) (map[string]podroot.File, error) {
	opt := optional != nil && *optional
	cm, err := m.configMap(ctx, ns, name)
	if apierrors.IsNotFound(err) && opt {
		return map[string]podroot.File{}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("configMap %q: %w", name, err)
	}
	return podroot.KeyFiles(podroot.ConfigMapData(cm), items, mode, opt)
}

func (m *Manager) secretFiles(ctx context.Context, ns, name string, items []corev1.KeyToPath, mode *int32, optional *bool) (map[string]podroot.File, error) {
	opt := optional != nil && *optional
	sec, err := m.secret(ctx, ns, name)
	if apierrors.IsNotFound(err) && opt {
		return map[string]podroot.File{}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("secret %q: %w", name, err)
	}
	return podroot.KeyFiles(sec.Data, items, mode, opt)
}

// containerEnv is a container's environment: the agent's, the image's
// defaults, the Services' (package servicelinks), the pod's identity,
// then the container's envFrom and env in order, each env value with
// $(VAR) references to earlier ones expanded.
func (m *Manager) containerEnv(ctx context.Context, pod *corev1.Pod, c corev1.Container, img images.Image, podIPs []netip.Addr) ([]string, map[string]string, error) {
	vars := map[string]string{}
	var order []string
	set := func(k, v string) {
		if _, ok := vars[k]; !ok {
			order = append(order, k)
		}
		vars[k] = v
	}
	for _, kv := range os.Environ() {
		if k, v, ok := strings.Cut(kv, "="); ok {
			set(k, v)
		}
	}
	for _, k := range sortedKeys(img.Env) {
		set(k, img.Env[k])
	}
	// The kubelet's Service variables: over the image's defaults (as a
	// runtime puts the kubelet's environment over an image's), under the
	// container's envFrom and env, and there for $(VAR) in both.
	links, err := m.serviceEnv(pod)
	if err != nil {
		return nil, nil, err
	}
	for _, k := range sortedKeys(links) {
		set(k, links[k])
	}
	hostname := pod.Name
	if pod.Spec.Hostname != "" {
		hostname = pod.Spec.Hostname
	}
	if pod.Spec.HostNetwork {
		hostname = m.NodeName
	}
	set("HOSTNAME", hostname)
	// Duet has always told containers who they are; Kubernetes leaves it
	// to env entries with fieldRefs, which come after and win.
	set("POD_NAME", pod.Name)
	set("POD_NAMESPACE", pod.Namespace)
	for _, from := range c.EnvFrom {
		var data map[string]string
		switch {
		case from.ConfigMapRef != nil:
			cm, err := m.Client.CoreV1().ConfigMaps(pod.Namespace).Get(ctx, from.ConfigMapRef.Name, metav1.GetOptions{})
			if err != nil {
				if apierrors.IsNotFound(err) && from.ConfigMapRef.Optional != nil && *from.ConfigMapRef.Optional {
					continue
				}
				return nil, nil, fmt.Errorf("envFrom configMap %q: %w", from.ConfigMapRef.Name, err)
			}
			data = cm.Data
		case from.SecretRef != nil:
			sec, err := m.Client.CoreV1().Secrets(pod.Namespace).Get(ctx, from.SecretRef.Name, metav1.GetOptions{})
			if err != nil {
				if apierrors.IsNotFound(err) && from.SecretRef.Optional != nil && *from.SecretRef.Optional {
					continue
				}
				return nil, nil, fmt.Errorf("envFrom secret %q: %w", from.SecretRef.Name, err)
			}
			data = map[string]string{}
			for k, v := range sec.Data {
				data[k] = string(v)
			}
		}
		for _, k := range sortedKeys(data) {
			set(from.Prefix+k, data[k])
		}
	}
	for i, e := range c.Env {
		if e.ValueFrom == nil {
			set(e.Name, expand(e.Value, vars))
			continue
		}
		v, ok, err := m.envSource(ctx, pod, e.ValueFrom, podIPs)
		if err != nil {
			return nil, nil, fmt.Errorf("env[%d] (%s): %w", i, e.Name, err)
		}
		if ok {
			set(e.Name, v)
		}
	}
	env := make([]string, 0, len(order))
	for _, k := range order {
		env = append(env, k+"="+vars[k])
	}
	return env, vars, nil
}

// serviceEnv is the service-link variables of the pod's containers
// (enableServiceLinks unset means true, the API's default).
func (m *Manager) serviceEnv(pod *corev1.Pod) (map[string]string, error) {
	if m.Services == nil {
		return nil, nil
	}
	links := pod.Spec.EnableServiceLinks == nil || *pod.Spec.EnableServiceLinks
	env, err := servicelinks.Env(m.Services, pod.Namespace, links)
	if err != nil {
		return nil, fmt.Errorf("service environment variables: %w", err)
	}
	return env, nil
}

// envSource is the value of an env entry's valueFrom; ok is false for an
// optional key that is missing.
func (m *Manager) envSource(ctx context.Context, pod *corev1.Pod, src *corev1.EnvVarSource, podIPs []netip.Addr) (string, bool, error) {
	switch {
	case src.FieldRef != nil:
		info := podroot.PodInfo{Pod: pod, PodIPs: podIPs, HostIPs: m.HostIPs}
		files, err := podroot.DownwardAPIFiles(info, []corev1.DownwardAPIVolumeFile{{Path: "v", FieldRef: src.FieldRef}}, nil)
		if err != nil {
			return "", false, err
		}
		return string(files["v"].Data), true, nil
	case src.ConfigMapKeyRef != nil:
		ref := src.ConfigMapKeyRef
		opt := ref.Optional != nil && *ref.Optional
		cm, err := m.Client.CoreV1().ConfigMaps(pod.Namespace).Get(ctx, ref.Name, metav1.GetOptions{})
		if err != nil {
			if apierrors.IsNotFound(err) && opt {
				return "", false, nil
			}
			return "", false, fmt.Errorf("configMap %q: %w", ref.Name, err)
		}
		v, ok := cm.Data[ref.Key]
		if !ok && !opt {
			return "", false, fmt.Errorf("configMap %q has no key %q", ref.Name, ref.Key)
		}
		return v, ok, nil
	case src.SecretKeyRef != nil:
		ref := src.SecretKeyRef
		opt := ref.Optional != nil && *ref.Optional
		sec, err := m.Client.CoreV1().Secrets(pod.Namespace).Get(ctx, ref.Name, metav1.GetOptions{})
		if err != nil {
			if apierrors.IsNotFound(err) && opt {
				return "", false, nil
			}
			return "", false, fmt.Errorf("secret %q: %w", ref.Name, err)
		}
		v, ok := sec.Data[ref.Key]
		if !ok && !opt {
			return "", false, fmt.Errorf("secret %q has no key %q", ref.Name, ref.Key)
		}
		return string(v), ok, nil
	case src.ResourceFieldRef != nil:
		info := podroot.PodInfo{Pod: pod, PodIPs: podIPs, HostIPs: m.HostIPs}
		files, err := podroot.DownwardAPIFiles(info, []corev1.DownwardAPIVolumeFile{{Path: "v", ResourceFieldRef: src.ResourceFieldRef}}, nil)
		if err != nil {
			return "", false, err
		}
		return string(files["v"].Data), true, nil
	}
	return "", false, errors.New("valueFrom names no source")
}

// expand replaces $(VAR) with VAR's value where vars has it, as
// Kubernetes expands env values, commands and args: $$ is a literal $,
// and a reference to an unknown variable stays as written.
func expand(s string, vars map[string]string) string {
	if !strings.Contains(s, "$") {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] != '$' || i+1 >= len(s) {
			b.WriteByte(s[i])
			continue
		}
		switch s[i+1] {
		case '$':
			b.WriteByte('$')
			i++
		case '(':
			end := strings.IndexByte(s[i+2:], ')')
			if end < 0 {
				// Not a reference: "$(" stays, and what follows is
				// read on (a "$$" in it is still one "$").
				b.WriteString("$(")
				i++
				continue
			}
			name := s[i+2 : i+2+end]
			if v, ok := vars[name]; ok {
				b.WriteString(v)
			} else {
				b.WriteString(s[i : i+3+end])
			}
			i += 2 + end
		default:
			b.WriteByte('$')
		}
	}
	return b.String()
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

// makeWorld makes a pod's world, with its addresses in /etc/hosts, and
// returns the spec it was made from.
func (m *Manager) makeWorld(ctx context.Context, pod *corev1.Pod, addrs []netip.Addr) (World, *podroot.Spec, error) {
	spec, err := m.worldSpec(ctx, pod, addrs)
	if err != nil {
		return nil, nil, err
	}
	w, err := m.worlds().Create(ctx, spec)
	return w, spec, err
}

// addrs are the pod's addresses, primary family first.
func (r *podRun) addrs() []netip.Addr {
	var out []netip.Addr
	for _, p := range r.sandbox.Addrs {
		out = append(out, p.Addr())
	}
	return out
}

// hostSandbox is where a hostNetwork pod runs: the node's own network
// namespace, whose InternalIPs are the pod's addresses. It has no veth,
// and no reservation in the pod-IP store.
func (m *Manager) hostSandbox(pod *corev1.Pod) *sandbox.Sandbox {
	sb := &sandbox.Sandbox{ID: string(pod.UID), NetNS: m.NodeNS}
	for _, a := range m.HostIPs {
		sb.Addrs = append(sb.Addrs, netip.PrefixFrom(a, a.BitLen()))
	}
	return sb
}

// kubeDNS are the cluster IPs of the kube-system/kube-dns Service, primary
// family first, or none when there is no such Service (ClusterFirst pods
// then get the node's resolvers, as the kubelet gives them without
// --cluster-dns).
func (m *Manager) kubeDNS(ctx context.Context) ([]netip.Addr, error) {
	svc, err := m.Client.CoreV1().Services(metav1.NamespaceSystem).Get(ctx, "kube-dns", metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("the kube-dns Service: %w", err)
	}
	var out []netip.Addr
	for _, ip := range svc.Spec.ClusterIPs {
		if a, err := netip.ParseAddr(ip); err == nil {
			out = append(out, a)
		}
	}
	return out, nil
}
