package pods

import (
	"bytes"
	"context"
	"maps"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/duet-net/duet/internal/agent/objwatch"
	"github.com/duet-net/duet/internal/agent/podroot"
)

// A running pod's configMap, secret, downwardAPI and projected volumes
// follow their sources, as the kubelet keeps them: a ConfigMap or Secret
// they name is watched (package objwatch) and a change is written within
// the watch's latency, where the kubelet's sync period takes up to a
// minute; a change of the pod's labels or annotations rewrites its
// downwardAPI files; ServiceAccount tokens are replaced when due. Each
// write swaps the volume's files at once (podroot.Root.Update).
//
// As in Kubernetes, a source that cannot be read (a ConfigMap deleted that
// the volume does not mark optional) leaves the files as they were, an
// optional one that goes empties them, and a volume only mounted by
// subPath is not updated (a subPath mount is of the file or directory
// there at the start).

// tokenRetry is the least time between two refreshes of a pod's tokens
// that did not get a new one: how soon a failed refresh is tried again.
const tokenRetry = 10 * time.Second

// volumeUpdater keeps one running pod's content volumes current.
type volumeUpdater struct {
	uid types.UID
	// live are the volumes to keep current; tokens tells whether one of
	// them holds a ServiceAccount token.
	live   []corev1.Volume
	tokens bool
	refs   []objwatch.Ref
	wake   chan struct{}

	mu  sync.Mutex
	pod *corev1.Pod // the latest seen

	// Owned by the update loop: the files of each live volume as last
	// written, and the last error of each that could not be made.
	written map[string]map[string]podroot.File
	failed  map[string]string
}

func (m *Manager) sources() *objwatch.Watcher {
	m.sourcesOnce.Do(func() {
		if m.Sources == nil {
			m.Sources = &objwatch.Watcher{Client: m.Client}
		}
	})
	return m.Sources
}

// startVolumeUpdates keeps the pod's content volumes current until ctx
// ends with the pod; spec is what its world was made from. It returns nil
// when the pod has no volume to keep current.
func (m *Manager) startVolumeUpdates(ctx context.Context, pod *corev1.Pod, run *podRun, spec *podroot.Spec) *volumeUpdater {
	u := &volumeUpdater{uid: pod.UID, pod: pod.DeepCopy(), wake: make(chan struct{}, 1),
		written: map[string]map[string]podroot.File{}, failed: map[string]string{}}
	for _, v := range liveVolumes(pod) {
		u.live = append(u.live, v)
		u.refs = append(u.refs, volumeRefs(pod.Namespace, v)...)
		if v.Projected != nil {
			for _, src := range v.Projected.Sources {
				u.tokens = u.tokens || src.ServiceAccountToken != nil
			}
		}
	}
	if len(u.live) == 0 {
		return nil
	}
	for _, v := range spec.Volumes {
		u.written[v.Name] = v.Files
	}
	go m.updateVolumes(ctx, u, run)
	return u
}

// liveVolumes are the pod's configMap, secret, downwardAPI and projected
// volumes that a container mounts whole.
func liveVolumes(pod *corev1.Pod) []corev1.Volume {
	whole := map[string]bool{}
	for _, cs := range [][]corev1.Container{pod.Spec.InitContainers, pod.Spec.Containers} {
		for _, c := range cs {
			for _, vm := range c.VolumeMounts {
				if vm.SubPath == "" && vm.SubPathExpr == "" {
					whole[vm.Name] = true
				}
			}
		}
	}
	var out []corev1.Volume
	for _, v := range pod.Spec.Volumes {
		content := v.ConfigMap != nil || v.Secret != nil || v.DownwardAPI != nil || v.Projected != nil
		if content && whole[v.Name] {
			out = append(out, v)
		}
	}
	return out
}

// volumeRefs are the ConfigMaps and Secrets a volume's files come from.
func volumeRefs(ns string, v corev1.Volume) []objwatch.Ref {
	var out []objwatch.Ref
	switch {
	case v.ConfigMap != nil:
		out = append(out, objwatch.Ref{Kind: objwatch.ConfigMaps, Namespace: ns, Name: v.ConfigMap.Name})
	case v.Secret != nil:
		out = append(out, objwatch.Ref{Kind: objwatch.Secrets, Namespace: ns, Name: v.Secret.SecretName})
	case v.Projected != nil:
		for _, src := range v.Projected.Sources {
			switch {
			case src.ConfigMap != nil:
				out = append(out, objwatch.Ref{Kind: objwatch.ConfigMaps, Namespace: ns, Name: src.ConfigMap.Name})
			case src.Secret != nil:
				out = append(out, objwatch.Ref{Kind: objwatch.Secrets, Namespace: ns, Name: src.Secret.Name})
			}
		}
	}
	return out
}

func (u *volumeUpdater) poke() {
	select {
	case u.wake <- struct{}{}:
	default: // a wake-up is pending; it reads the latest
	}
}

// podChanged takes the pod as the API has it now: new labels or
// annotations are written to its downwardAPI files.
func (u *volumeUpdater) podChanged(pod *corev1.Pod) {
	if u == nil {
		return
	}
	u.mu.Lock()
	changed := !maps.Equal(u.pod.Labels, pod.Labels) || !maps.Equal(u.pod.Annotations, pod.Annotations)
	if changed {
		u.pod = pod.DeepCopy()
	}
	u.mu.Unlock()
	if changed {
		u.poke()
	}
}

func (u *volumeUpdater) currentPod() *corev1.Pod {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.pod
}

// updateVolumes writes the volumes anew whenever a source changed, a token
// is due, or a write failed and is retried.
func (m *Manager) updateVolumes(ctx context.Context, u *volumeUpdater, run *podRun) {
	uid := u.uid
	defer m.tokens().Forget(uid) // a refresh racing the pod's stop
	defer m.sources().Watch(u.refs, u.poke)()
	clk := m.clock()
	var lastSync time.Time
	retry := false
	for {
		var timer <-chan time.Time
		wait := time.Duration(-1)
		if retry {
			wait = tokenRetry
		}
		if u.tokens {
			w := tokenRetry
			// A token due since the last write, or soon, is replaced now
			// or then; one that the last write did not replace is tried
			// again after tokenRetry.
			if at, ok := m.tokens().NextRefresh(uid); ok && at.After(lastSync) {
				w = max(at.Sub(clk.Now()), 0)
			}
			if wait < 0 || w < wait {
				wait = w
			}
		}
		switch {
		case wait == 0:
			timer = closedTimer
		case wait > 0:
			timer = clk.After(wait)
		}
		select {
		case <-ctx.Done():
			return
		case <-u.wake:
		case <-timer:
		}
		lastSync = clk.Now()
		retry = !m.syncVolumes(ctx, u, run)
	}
}

var closedTimer = func() <-chan time.Time {
	ch := make(chan time.Time)
	close(ch)
	return ch
}()

// syncVolumes writes the live volumes whose files changed; false means a
// write failed.
func (m *Manager) syncVolumes(ctx context.Context, u *volumeUpdater, run *podRun) bool {
	pod := u.currentPod()
	info := podroot.PodInfo{Pod: pod, PodIPs: run.addrs(), HostIPs: m.HostIPs}
	var changed []podroot.Volume
	for _, v := range u.live {
		vol, err := m.volume(ctx, pod, info, v)
		if err != nil {
			if ctx.Err() != nil {
				return true
			}
			// The files stay as they are; the error is told once.
			if msg := err.Error(); u.failed[v.Name] != msg {
				u.failed[v.Name] = msg
				m.Log.Warn("updating a volume", "pod", pod.Namespace+"/"+pod.Name, "volume", v.Name, "err", err)
				if m.Events != nil {
					m.Events.Eventf(objectRef(pod, ""), corev1.EventTypeWarning, EventFailedMount, "MountVolume.SetUp failed for volume %q: %v", v.Name, err)
				}
			}
			continue
		}
		delete(u.failed, v.Name)
		if !sameFiles(u.written[v.Name], vol.Files) {
			changed = append(changed, vol)
		}
	}
	if len(changed) == 0 {
		return true
	}
	if err := run.world.Update(changed); err != nil {
		if ctx.Err() == nil {
			m.Log.Warn("updating volumes", "pod", pod.Namespace+"/"+pod.Name, "err", err)
		}
		return false
	}
	for _, v := range changed {
		u.written[v.Name] = v.Files
	}
	return true
}

func sameFiles(a, b map[string]podroot.File) bool {
	return maps.EqualFunc(a, b, func(x, y podroot.File) bool { return x.Mode == y.Mode && bytes.Equal(x.Data, y.Data) })
}

// configMap is a ConfigMap as its watch has it, or else from the API.
func (m *Manager) configMap(ctx context.Context, ns, name string) (*corev1.ConfigMap, error) {
	if cm, known := m.sources().ConfigMap(ns, name); known {
		if cm == nil {
			return nil, apierrors.NewNotFound(corev1.Resource("configmaps"), name)
		}
		return cm, nil
	}
	return m.Client.CoreV1().ConfigMaps(ns).Get(ctx, name, metav1.GetOptions{})
}

// secret is a Secret as its watch has it, or else from the API.
func (m *Manager) secret(ctx context.Context, ns, name string) (*corev1.Secret, error) {
	if sec, known := m.sources().Secret(ns, name); known {
		if sec == nil {
			return nil, apierrors.NewNotFound(corev1.Resource("secrets"), name)
		}
		return sec, nil
	}
	return m.Client.CoreV1().Secrets(ns).Get(ctx, name, metav1.GetOptions{})
}
