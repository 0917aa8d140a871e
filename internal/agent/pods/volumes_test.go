package pods

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"github.com/duet-net/duet/internal/agent/objwatch"
	"github.com/duet-net/duet/internal/agent/podroot"
)

// volumeModel is a pod's content volumes as its world's updates left
// them, from the spec the world was made with.
type volumeModel struct {
	e    *testEnv
	uid  string
	seen int // updates applied
	vols map[string]map[string]string
}

func (e *testEnv) volumeModel(t *testing.T, uid string) *volumeModel {
	t.Helper()
	e.worlds.mu.Lock()
	defer e.worlds.mu.Unlock()
	spec, ok := e.worlds.specs[uid]
	if !ok {
		t.Fatalf("no world for %s", uid)
	}
	m := &volumeModel{e: e, uid: uid, vols: map[string]map[string]string{}}
	for _, v := range spec.Volumes {
		m.vols[v.Name] = contents(v.Files)
	}
	return m
}

// wait applies the world's updates until the volumes named in want hold
// what it says (the agent may write a change in one update or several).
func (m *volumeModel) wait(t *testing.T, what string, want map[string]map[string]string) {
	t.Helper()
	m.e.eventually(t, what, func() error {
		m.e.worlds.mu.Lock()
		ups := m.e.worlds.updates[m.uid]
		for ; m.seen < len(ups); m.seen++ {
			for _, v := range ups[m.seen] {
				m.vols[v.Name] = contents(v.Files)
			}
		}
		m.e.worlds.mu.Unlock()
		for name, w := range want {
			if got := m.vols[name]; !maps.Equal(got, w) {
				return fmt.Errorf("volume %s holds %v, want %v", name, got, w)
			}
		}
		return nil
	})
}

func contents(files map[string]podroot.File) map[string]string {
	out := map[string]string{}
	for p, f := range files {
		out[p] = string(f.Data)
	}
	return out
}

// volumesPod mounts a ConfigMap whole and by subPath, a Secret, an
// optional ConfigMap that is not there yet, and its labels, in a projected
// volume and a downwardAPI one.
func volumesPod() *corev1.Pod {
	p := newPod("vols", corev1.RestartPolicyAlways, "c")
	p.Labels = map[string]string{"app": "one"}
	cm := func(name string, optional bool) corev1.VolumeSource {
		return corev1.VolumeSource{ConfigMap: &corev1.ConfigMapVolumeSource{LocalObjectReference: corev1.LocalObjectReference{Name: name}, Optional: ptr.To(optional)}}
	}
	labels := []corev1.DownwardAPIVolumeFile{{Path: "labels", FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.labels"}}}
	p.Spec.Volumes = []corev1.Volume{
		{Name: "config", VolumeSource: cm("app", false)},
		{Name: "sub", VolumeSource: cm("app", false)},
		{Name: "later", VolumeSource: cm("later", true)},
		{Name: "secret", VolumeSource: corev1.VolumeSource{Secret: &corev1.SecretVolumeSource{SecretName: "pw"}}},
		{Name: "info", VolumeSource: corev1.VolumeSource{DownwardAPI: &corev1.DownwardAPIVolumeSource{Items: labels}}},
		{Name: "all", VolumeSource: corev1.VolumeSource{Projected: &corev1.ProjectedVolumeSource{Sources: []corev1.VolumeProjection{
			{ConfigMap: &corev1.ConfigMapProjection{LocalObjectReference: corev1.LocalObjectReference{Name: "app"}, Items: []corev1.KeyToPath{{Key: "k", Path: "cm-k"}}}},
			{DownwardAPI: &corev1.DownwardAPIProjection{Items: labels}},
		}}}},
	}
	p.Spec.Containers[0].VolumeMounts = []corev1.VolumeMount{
		{Name: "config", MountPath: "/config"},
		{Name: "sub", MountPath: "/k", SubPath: "k"},
		{Name: "later", MountPath: "/later"},
		{Name: "secret", MountPath: "/secret"},
		{Name: "info", MountPath: "/info"},
		{Name: "all", MountPath: "/all"},
	}
	return p
}

// A running pod's volumes follow their sources: a ConfigMap's and a
// Secret's changes, an optional ConfigMap created and deleted, the pod's
// labels changed; a subPath mount's volume is not updated, and a
// ConfigMap deleted that the volume needs leaves the files as they were.
func TestVolumesFollowSources(t *testing.T) {
	e := newTestEnv(t)
	ctx := context.Background()
	cms, secrets := e.client.CoreV1().ConfigMaps("default"), e.client.CoreV1().Secrets("default")
	appCM := func(v string) *corev1.ConfigMap {
		return &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "app"}, Data: map[string]string{"k": v}}
	}
	if _, err := cms.Create(ctx, appCM("v1"), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	pwSecret := func(v string) *corev1.Secret {
		return &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "pw"}, Data: map[string][]byte{"password": []byte(v)}}
	}
	if _, err := secrets.Create(ctx, pwSecret("s1"), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	pod := e.create(t, volumesPod())
	uid := string(pod.UID)
	e.sync(t, "vols")
	model := e.volumeModel(t, uid)
	if got := model.vols["config"]; !maps.Equal(got, map[string]string{"k": "v1"}) {
		t.Fatalf("config at the start: %v", got)
	}
	if _, err := cms.Update(ctx, appCM("v2"), metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	model.wait(t, "the ConfigMap's change written", map[string]map[string]string{
		"config": {"k": "v2"},
		"all":    {"cm-k": "v2", "labels": `app="one"`},
	})

	if _, err := secrets.Update(ctx, pwSecret("s2"), metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	model.wait(t, "the Secret's change written", map[string]map[string]string{"secret": {"password": "s2"}})

	if _, err := cms.Create(ctx, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "later"}, Data: map[string]string{"x": "here"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	model.wait(t, "the optional ConfigMap's files written", map[string]map[string]string{"later": {"x": "here"}})
	if err := cms.Delete(ctx, "later", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	model.wait(t, "the optional ConfigMap's files removed", map[string]map[string]string{"later": {}})

	// The needed ConfigMap goes: its volumes keep their files, while the
	// labels' change is written.
	if err := cms.Delete(ctx, "app", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	e.eventually(t, "the agent sees the ConfigMap deleted", func() error {
		if cm, known := e.m.sources().ConfigMap("default", "app"); !known || cm != nil {
			return fmt.Errorf("known %v: %v", known, cm)
		}
		return nil
	})
	p := e.get(t, "vols")
	p.Labels["app"] = "two"
	if _, err := e.client.CoreV1().Pods("default").Update(ctx, p, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	e.sync(t, "vols")
	model.wait(t, "the labels' change written", map[string]map[string]string{"info": {"labels": `app="two"`}})
	// The volumes of the deleted ConfigMap keep what they had; the one
	// mounted by subPath was never written.
	for name, want := range map[string]map[string]string{
		"config": {"k": "v2"}, "all": {"cm-k": "v2", "labels": `app="one"`}, "sub": {"k": "v1"},
		"secret": {"password": "s2"}, "later": {},
	} {
		if got := model.vols[name]; !maps.Equal(got, want) {
			t.Errorf("volume %s holds %v, want %v", name, got, want)
		}
	}
}

// liveVolumes: the content volumes some container mounts whole.
func TestLiveVolumes(t *testing.T) {
	p := volumesPod()
	p.Spec.Volumes = append(p.Spec.Volumes,
		corev1.Volume{Name: "scratch", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}},
		corev1.Volume{Name: "unmounted", VolumeSource: corev1.VolumeSource{Secret: &corev1.SecretVolumeSource{SecretName: "x"}}},
		corev1.Volume{Name: "init", VolumeSource: corev1.VolumeSource{Secret: &corev1.SecretVolumeSource{SecretName: "y"}}})
	p.Spec.Containers[0].VolumeMounts = append(p.Spec.Containers[0].VolumeMounts, corev1.VolumeMount{Name: "scratch", MountPath: "/s"})
	p.Spec.InitContainers = []corev1.Container{{Name: "i", VolumeMounts: []corev1.VolumeMount{{Name: "init", MountPath: "/i"}}}}
	var got []string
	for _, v := range liveVolumes(p) {
		got = append(got, v.Name)
	}
	want := []string{"config", "later", "secret", "info", "all", "init"}
	if !slices.Equal(got, want) {
		t.Errorf("live volumes %v, want %v", got, want)
	}
}

// An immutable ConfigMap is read for the pod's start and not watched
// after: it cannot change.
func TestImmutableConfigMapNotWatched(t *testing.T) {
	e := newTestEnv(t)
	if _, err := e.client.CoreV1().ConfigMaps("default").Create(context.Background(), &corev1.ConfigMap{
		ObjectMeta: metav1.ObjectMeta{Name: "app"}, Data: map[string]string{"k": "v1"}, Immutable: ptr.To(true)}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	p := newPod("frozen", corev1.RestartPolicyAlways, "c")
	p.Spec.Volumes = []corev1.Volume{{Name: "config", VolumeSource: corev1.VolumeSource{ConfigMap: &corev1.ConfigMapVolumeSource{LocalObjectReference: corev1.LocalObjectReference{Name: "app"}}}}}
	p.Spec.Containers[0].VolumeMounts = []corev1.VolumeMount{{Name: "config", MountPath: "/config"}}
	e.create(t, p)
	e.sync(t, "frozen")
	ref := objwatch.Ref{Kind: objwatch.ConfigMaps, Namespace: "default", Name: "app"}
	e.eventually(t, "the immutable ConfigMap read and no longer watched", func() error {
		if cm, known := e.m.sources().ConfigMap("default", "app"); !known || cm == nil || e.m.sources().Watching(ref) {
			return fmt.Errorf("known %v, %v, watching %v", known, cm, e.m.sources().Watching(ref))
		}
		return nil
	})
}
