package podroot

import (
	"maps"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func ptr[T any](v T) *T { return &v }

func sameFilesMap(a, b map[string]File) bool {
	return maps.EqualFunc(a, b, func(x, y File) bool { return string(x.Data) == string(y.Data) && x.Mode == y.Mode })
}

func TestKeyFiles(t *testing.T) {
	data := map[string][]byte{"a": []byte("1"), "b": []byte("2")}
	for _, tc := range []struct {
		name        string
		items       []corev1.KeyToPath
		defaultMode *int32
		optional    bool
		want        map[string]File
		bad         string
	}{
		{name: "every key, mode 0644", want: map[string]File{"a": {Data: []byte("1"), Mode: 0o644}, "b": {Data: []byte("2"), Mode: 0o644}}},
		{name: "defaultMode", defaultMode: ptr(int32(0o400)), want: map[string]File{"a": {Data: []byte("1"), Mode: 0o400}, "b": {Data: []byte("2"), Mode: 0o400}}},
		{name: "items pick keys, paths and modes", defaultMode: ptr(int32(0o440)),
			items: []corev1.KeyToPath{{Key: "a", Path: "dir/x"}, {Key: "b", Path: "y", Mode: ptr(int32(0o600))}},
			want:  map[string]File{"dir/x": {Data: []byte("1"), Mode: 0o440}, "y": {Data: []byte("2"), Mode: 0o600}}},
		{name: "a missing key fails", items: []corev1.KeyToPath{{Key: "c", Path: "c"}}, bad: `key "c" not found`},
		{name: "a missing key of an optional volume is left out", optional: true,
			items: []corev1.KeyToPath{{Key: "c", Path: "c"}, {Key: "a", Path: "a"}}, want: map[string]File{"a": {Data: []byte("1"), Mode: 0o644}}},
		{name: "a path out of the volume", items: []corev1.KeyToPath{{Key: "a", Path: "../x"}}, bad: "'..'"},
		{name: "an absolute path", items: []corev1.KeyToPath{{Key: "a", Path: "/x"}}, bad: "relative"},
		{name: "a bad mode", items: []corev1.KeyToPath{{Key: "a", Path: "a", Mode: ptr(int32(0o1777))}}, bad: "mode"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := KeyFiles(data, tc.items, tc.defaultMode, tc.optional)
			if tc.bad != "" {
				if err == nil || !strings.Contains(err.Error(), tc.bad) {
					t.Fatalf("got %v, %v; want an error about %s", got, err, tc.bad)
				}
				return
			}
			if err != nil || !sameFilesMap(got, tc.want) {
				t.Fatalf("got %v, %v; want %v", got, err, tc.want)
			}
		})
	}
}

// A token's file has the projected volume's mode, or 0600 when the pod's
// volume files get an owner, as the kubelet writes it.
func TestTokenFiles(t *testing.T) {
	user := func(u int64) *corev1.SecurityContext { return &corev1.SecurityContext{RunAsUser: ptr(u)} }
	for _, tc := range []struct {
		name        string
		spec        corev1.PodSpec
		path        string
		defaultMode *int32
		want        os.FileMode
		bad         string
	}{
		{name: "no owner: 0644", path: "token", spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "c"}}}, want: 0o644},
		{name: "the volume's defaultMode", path: "token", defaultMode: ptr(int32(0o440)), spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "c"}}}, want: 0o440},
		{name: "an fsGroup: 0600", path: "token", defaultMode: ptr(int32(0o644)),
			spec: corev1.PodSpec{SecurityContext: &corev1.PodSecurityContext{FSGroup: ptr(int64(2000))}, Containers: []corev1.Container{{Name: "c"}}}, want: 0o600},
		{name: "the pod's runAsUser: 0600", path: "token",
			spec: corev1.PodSpec{SecurityContext: &corev1.PodSecurityContext{RunAsUser: ptr(int64(1000))}, Containers: []corev1.Container{{Name: "c"}, {Name: "d"}}}, want: 0o600},
		{name: "one runAsUser in every container, init ones too: 0600", path: "token",
			spec: corev1.PodSpec{InitContainers: []corev1.Container{{Name: "i", SecurityContext: user(7)}}, Containers: []corev1.Container{{Name: "c", SecurityContext: user(7)}}}, want: 0o600},
		{name: "containers of different users: the volume's mode", path: "token",
			spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "c", SecurityContext: user(7)}, {Name: "d", SecurityContext: user(8)}}}, want: 0o644},
		{name: "a container overriding the pod's user: the volume's mode", path: "token",
			spec: corev1.PodSpec{SecurityContext: &corev1.PodSecurityContext{RunAsUser: ptr(int64(7))}, Containers: []corev1.Container{{Name: "c"}, {Name: "d", SecurityContext: user(8)}}}, want: 0o644},
		{name: "one container without a user: the volume's mode", path: "token",
			spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "c", SecurityContext: user(7)}, {Name: "d"}}}, want: 0o644},
		{name: "a path out of the volume", path: "../token", spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "c"}}}, bad: "'..'"},
		{name: "a bad mode", path: "token", defaultMode: ptr(int32(0o1000)), spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "c"}}}, bad: "defaultMode"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := TokenFiles(&corev1.Pod{Spec: tc.spec}, tc.path, "a.b.c", tc.defaultMode)
			if tc.bad != "" {
				if err == nil || !strings.Contains(err.Error(), tc.bad) {
					t.Fatalf("got %v, %v; want an error about %s", got, err, tc.bad)
				}
				return
			}
			want := map[string]File{tc.path: {Data: []byte("a.b.c"), Mode: tc.want}}
			if err != nil || !sameFilesMap(got, want) {
				t.Fatalf("got %v, %v; want %v", got, err, want)
			}
		})
	}
}

func TestDownwardAPIFiles(t *testing.T) {
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "p", Namespace: "ns", UID: "u-1", Labels: map[string]string{"b": "2", "a": `q"t`}, Annotations: map[string]string{"k": "v"}},
		Spec: corev1.PodSpec{NodeName: "node1", Containers: []corev1.Container{{Name: "c", Resources: corev1.ResourceRequirements{
			Limits:   corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("1500m")},
			Requests: corev1.ResourceList{corev1.ResourceMemory: resource.MustParse("64Mi")},
		}}}},
	}
	info := PodInfo{Pod: pod, PodIPs: []netip.Addr{netip.MustParseAddr("10.244.0.5"), netip.MustParseAddr("fd00:10:244::5")},
		NodeAllocatable: corev1.ResourceList{corev1.ResourceMemory: resource.MustParse("2Gi")}}
	field := func(p, f string) corev1.DownwardAPIVolumeFile {
		return corev1.DownwardAPIVolumeFile{Path: p, FieldRef: &corev1.ObjectFieldSelector{FieldPath: f}}
	}
	res := func(p, r, div string) corev1.DownwardAPIVolumeFile {
		f := corev1.DownwardAPIVolumeFile{Path: p, ResourceFieldRef: &corev1.ResourceFieldSelector{ContainerName: "c", Resource: r}}
		if div != "" {
			f.ResourceFieldRef.Divisor = resource.MustParse(div)
		}
		return f
	}
	got, err := DownwardAPIFiles(info, []corev1.DownwardAPIVolumeFile{
		field("name", "metadata.name"), field("ns", "metadata.namespace"), field("uid", "metadata.uid"),
		field("labels", "metadata.labels"), field("one", "metadata.annotations['k']"), field("node", "spec.nodeName"),
		field("ips", "status.podIPs"), field("ip", "status.podIP"),
		res("cpu", "limits.cpu", "1"), res("mcpu", "limits.cpu", "1m"), res("mem", "requests.memory", "1Mi"), res("memlimit", "limits.memory", "1Gi"),
	}, ptr(int32(0o444)))
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"name": "p", "ns": "ns", "uid": "u-1", "labels": "a=\"q\\\"t\"\nb=\"2\"", "one": "v", "node": "node1",
		"ips": "10.244.0.5,fd00:10:244::5", "ip": "10.244.0.5", "cpu": "2", "mcpu": "1500", "mem": "64", "memlimit": "2"}
	for p, v := range want {
		if string(got[p].Data) != v || got[p].Mode != 0o444 {
			t.Errorf("%s = %q mode %v, want %q mode 0444", p, got[p].Data, got[p].Mode, v)
		}
	}
	if _, err := DownwardAPIFiles(info, []corev1.DownwardAPIVolumeFile{field("x", "spec.nope")}, nil); err == nil {
		t.Error("an unknown field was accepted")
	}
	if _, err := DownwardAPIFiles(info, []corev1.DownwardAPIVolumeFile{{Path: "x", ResourceFieldRef: &corev1.ResourceFieldSelector{ContainerName: "d", Resource: "limits.cpu"}}}, nil); err == nil {
		t.Error("an unknown container was accepted")
	}
}

func TestProject(t *testing.T) {
	a := map[string]File{"token": {Data: []byte("t")}}
	b := map[string]File{"ca.crt": {Data: []byte("c")}}
	got, err := Project(a, b)
	if err != nil || len(got) != 2 {
		t.Fatalf("got %v, %v", got, err)
	}
	if _, err := Project(a, a); err == nil {
		t.Error("a path projected twice was accepted")
	}
}

// read returns what a reader of the volume sees: path → content, through
// the links.
func read(t *testing.T, dir string) map[string]string {
	t.Helper()
	out := map[string]string{}
	des, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, de := range des {
		if strings.HasPrefix(de.Name(), "..") {
			continue
		}
		err := filepath.Walk(filepath.Join(dir, de.Name())+"/", func(p string, fi os.FileInfo, err error) error {
			if err != nil || fi.IsDir() {
				return err
			}
			data, err := os.ReadFile(p)
			rel, _ := filepath.Rel(dir, p)
			out[rel] = string(data)
			return err
		})
		if err != nil {
			data, rerr := os.ReadFile(filepath.Join(dir, de.Name()))
			if rerr != nil {
				t.Fatal(rerr)
			}
			out[de.Name()] = string(data)
		}
	}
	return out
}

func TestWriteAtomic(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "vol")
	changed, err := writeAtomic(dir, map[string]File{"key": {Data: []byte("v1")}, "sub/x": {Data: []byte("x1"), Mode: 0o600}})
	if err != nil || !changed {
		t.Fatalf("first write: %v, %v", changed, err)
	}
	if got := read(t, dir); !maps.Equal(got, map[string]string{"key": "v1", "sub/x": "x1"}) {
		t.Fatalf("read %v", got)
	}
	if fi, err := os.Stat(filepath.Join(dir, "sub/x")); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("sub/x: %v, %v; want mode 0600", fi, err)
	}
	first, _ := os.Readlink(filepath.Join(dir, dataLink))

	changed, err = writeAtomic(dir, map[string]File{"key": {Data: []byte("v1")}, "sub/x": {Data: []byte("x1"), Mode: 0o600}})
	if err != nil || changed {
		t.Fatalf("same content again: changed %v, %v", changed, err)
	}
	// A crash left a generation and a temporary link: they go with the update.
	if err := os.Mkdir(filepath.Join(dir, "..2020_01_01_00_00_00.1"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("nowhere", filepath.Join(dir, dataLinkTmp)); err != nil {
		t.Fatal(err)
	}
	changed, err = writeAtomic(dir, map[string]File{"key": {Data: []byte("v2")}, "new": {Data: []byte("n")}})
	if err != nil || !changed {
		t.Fatalf("update: %v, %v", changed, err)
	}
	if got := read(t, dir); !maps.Equal(got, map[string]string{"key": "v2", "new": "n"}) {
		t.Fatalf("after the update read %v", got)
	}
	des, _ := os.ReadDir(dir)
	var names []string
	for _, de := range des {
		names = append(names, de.Name())
	}
	second, _ := os.Readlink(filepath.Join(dir, dataLink))
	if second == first || len(names) != 4 { // ..data, the generation, key, new
		t.Errorf("entries after the update %v (..data %s, was %s)", names, second, first)
	}
	if _, err := writeAtomic(dir, map[string]File{"../x": {}}); err == nil {
		t.Error("a path out of the volume was written")
	}
	changed, err = writeAtomic(dir, nil)
	if err != nil || !changed || len(read(t, dir)) != 0 {
		t.Errorf("emptying: %v, %v, %v", changed, err, read(t, dir))
	}
}

func TestValidate(t *testing.T) {
	ok := func() *Spec {
		return &Spec{UID: "u", Name: "p", Volumes: []Volume{{Name: "v"}}, Containers: []Container{{Name: "c",
			Mounts: []corev1.VolumeMount{{Name: "v", MountPath: "/x"}}}}}
	}
	if err := ok().validate(); err != nil {
		t.Fatalf("a good spec: %v", err)
	}
	for _, tc := range []struct {
		name   string
		change func(*Spec)
		bad    string
	}{
		{"a UID with a slash", func(s *Spec) { s.UID = "a/b" }, "metadata.uid"},
		{"no containers", func(s *Spec) { s.Containers = nil }, "spec.containers"},
		{"a mount of no volume", func(s *Spec) { s.Containers[0].Mounts[0].Name = "w" }, `no volume "w"`},
		{"a mount on /", func(s *Spec) { s.Containers[0].Mounts[0].MountPath = "/" }, "mountPath"},
		{"a relative mount path", func(s *Spec) { s.Containers[0].Mounts[0].MountPath = "x" }, "mountPath"},
		{"a subPath out of the volume", func(s *Spec) { s.Containers[0].Mounts[0].SubPath = "a/../.." }, "subPath"},
		{"an unexpanded subPathExpr", func(s *Spec) { s.Containers[0].Mounts[0].SubPathExpr = "$(X)" }, "subPathExpr"},
		{"two volumes of one name", func(s *Spec) { s.Volumes = append(s.Volumes, Volume{Name: "v"}) }, "used twice"},
		{"a relative hostPath", func(s *Spec) { s.Volumes[0].HostPath = "tmp" }, "hostPath"},
		{"a bad host alias", func(s *Spec) { s.HostAliases = []corev1.HostAlias{{IP: "x"}} }, "hostAliases[0].ip"},
		{"a relative image file", func(s *Spec) { s.Containers[0].ImageFiles = []ImageFile{{Path: "bin", Source: "/bin/sh"}} }, "image file"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := ok()
			tc.change(s)
			if err := s.validate(); err == nil || !strings.Contains(err.Error(), tc.bad) {
				t.Fatalf("got %v, want an error about %s", err, tc.bad)
			}
		})
	}
}
