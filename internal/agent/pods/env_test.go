package pods

import (
	"context"
	"net/netip"
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"

	"github.com/duet-net/duet/internal/agent/images"
)

func serviceLister(t *testing.T, services ...*corev1.Service) corelisters.ServiceLister {
	t.Helper()
	idx := cache.NewIndexer(cache.MetaNamespaceKeyFunc, cache.Indexers{cache.NamespaceIndex: cache.MetaNamespaceIndexFunc})
	for _, s := range services {
		if err := idx.Add(s); err != nil {
			t.Fatal(err)
		}
	}
	return corelisters.NewServiceLister(idx)
}

func dualStackService(ns, name string, port int32, ips ...string) *corev1.Service {
	return &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: corev1.ServiceSpec{ClusterIP: ips[0], ClusterIPs: ips,
			Ports: []corev1.ServicePort{{Name: "http", Port: port, Protocol: corev1.ProtocolTCP}}},
	}
}

// Where the Services' variables stand among a container's others, as
// the kubelet orders them: over the image's defaults, under envFrom and
// env, and usable in $(VAR) of env values, command and args.
func TestServiceLinkEnvPrecedence(t *testing.T) {
	client := fake.NewClientset(&corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: "app", Name: "cm"},
		Data: map[string]string{"WEB_SERVICE_PORT": "from-configmap"}})
	lister := serviceLister(t,
		dualStackService("default", "kubernetes", 443, "fd00:10:96::1", "10.96.0.1"),
		dualStackService("app", "web", 80, "10.96.0.20", "fd00:10:96::20"),
		dualStackService("other", "db", 5432, "10.96.0.30"),
	)
	m := &Manager{Client: client, NodeName: "n1", Services: lister, Images: images.New()}
	if err := m.Images.Set("example.com/img", images.Image{Entrypoint: []string{"/ep"},
		Env: map[string]string{"WEB_SERVICE_HOST": "from-image", "IMAGE_ONLY": "i"}}); err != nil {
		t.Fatal(err)
	}
	off := false
	for _, tc := range []struct {
		name    string
		links   *bool
		c       corev1.Container
		want    map[string]string // "" : must be absent
		argv    []string
		wantErr bool
	}{
		{
			name: "links on: the namespace's Services and the API server's, primary family",
			c:    corev1.Container{Image: "example.com/img"},
			want: map[string]string{
				"KUBERNETES_SERVICE_HOST": "fd00:10:96::1", "KUBERNETES_PORT": "tcp://[fd00:10:96::1]:443",
				"WEB_SERVICE_PORT": "80", "WEB_PORT_80_TCP_ADDR": "10.96.0.20", "DB_SERVICE_HOST": "", "IMAGE_ONLY": "i",
			},
		},
		{
			name: "a service variable wins over the image's default",
			c:    corev1.Container{Image: "example.com/img"},
			want: map[string]string{"WEB_SERVICE_HOST": "10.96.0.20"},
		},
		{
			name:  "enableServiceLinks false: only the API server's",
			links: &off,
			c:     corev1.Container{Image: "example.com/img"},
			want: map[string]string{"KUBERNETES_SERVICE_HOST": "fd00:10:96::1", "KUBERNETES_SERVICE_PORT_HTTP": "443",
				"WEB_SERVICE_HOST": "from-image", "WEB_SERVICE_PORT": ""},
		},
		{
			name: "explicit env wins over a service variable",
			c:    corev1.Container{Image: "example.com/img", Env: []corev1.EnvVar{{Name: "WEB_SERVICE_HOST", Value: "mine"}}},
			want: map[string]string{"WEB_SERVICE_HOST": "mine", "WEB_SERVICE_PORT": "80"},
		},
		{
			name: "envFrom wins over a service variable",
			c: corev1.Container{Image: "example.com/img", EnvFrom: []corev1.EnvFromSource{
				{ConfigMapRef: &corev1.ConfigMapEnvSource{LocalObjectReference: corev1.LocalObjectReference{Name: "cm"}}}}},
			want: map[string]string{"WEB_SERVICE_PORT": "from-configmap"},
		},
		{
			name: "$(VAR) in env, command and args reaches service variables",
			c: corev1.Container{Image: "example.com/img", Command: []string{"/bin/x", "$(WEB_SERVICE_HOST)"},
				Args: []string{"--api=$(KUBERNETES_SERVICE_HOST):$(KUBERNETES_SERVICE_PORT)", "$(URL)"},
				Env:  []corev1.EnvVar{{Name: "URL", Value: "http://$(WEB_SERVICE_HOST):$(WEB_SERVICE_PORT)/"}}},
			want: map[string]string{"URL": "http://10.96.0.20:80/"},
			argv: []string{"/bin/x", "10.96.0.20", "--api=fd00:10:96::1:443", "http://10.96.0.20:80/"},
		},
		{
			name:  "with links off, $(VAR) of another Service stays as written",
			links: &off,
			c:     corev1.Container{Image: "example.com/img", Env: []corev1.EnvVar{{Name: "U", Value: "$(WEB_SERVICE_PORT)"}}},
			want:  map[string]string{"U": "$(WEB_SERVICE_PORT)"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "app", Name: "p", UID: "u"},
				Spec: corev1.PodSpec{NodeName: "n1", EnableServiceLinks: tc.links, Containers: []corev1.Container{tc.c}}}
			argv, env, err := m.containerProcess(context.Background(), pod, tc.c, []netip.Addr{netip.MustParseAddr("10.244.0.5")})
			if err != nil {
				t.Fatal(err)
			}
			vars := map[string]string{}
			for _, kv := range env {
				k, v, _ := strings.Cut(kv, "=")
				if _, dup := vars[k]; dup {
					t.Errorf("%s is in the environment twice", k)
				}
				vars[k] = v
			}
			for k, want := range tc.want {
				got, ok := vars[k]
				if want == "" && ok {
					t.Errorf("%s = %q, want it absent", k, got)
				} else if want != "" && got != want {
					t.Errorf("%s = %q, want %q", k, got, want)
				}
			}
			if tc.argv != nil && !slices.Equal(argv, tc.argv) {
				t.Errorf("argv = %q, want %q", argv, tc.argv)
			}
		})
	}
}
