package pods

import (
	"context"
	"errors"
	"net/netip"
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/duet-net/duet/internal/agent/images"
)

func TestExpand(t *testing.T) {
	vars := map[string]string{"A": "x", "EMPTY": "", "IPS": "10.0.0.1,fd00::1"}
	for _, tc := range []struct{ in, want string }{
		{"plain", "plain"},
		{"$(A)", "x"},
		{"a-$(A)-b", "a-x-b"},
		{"$(A)$(A)", "xx"},
		{"$(EMPTY)", ""},
		{"$(MISSING)", "$(MISSING)"},
		{"$$(A)", "$(A)"},
		{"$$$(A)", "$x"},
		{"$", "$"},
		{"$A", "$A"},
		{"$(A", "$(A"},
		{"$(A $$ $(A)", "$(A $$ $(A)"}, // the first ")" closes one unknown name
		{"$(B $$", "$(B $"},
		{"a $( b", "a $( b"},
		{"--udp-listen-addresses=$(A),$(IPS)", "--udp-listen-addresses=x,10.0.0.1,fd00::1"},
	} {
		if got := expand(tc.in, vars); got != tc.want {
			t.Errorf("expand(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

func FuzzExpand(f *testing.F) {
	for _, s := range []string{"$(A)", "$$(A)", "$(", "a$b$(c)$$", "$(A)$(B"} {
		f.Add(s)
	}
	vars := map[string]string{"A": "x"}
	f.Fuzz(func(t *testing.T, s string) {
		out := expand(s, vars)
		// Without references to known variables nothing grows.
		if !strings.Contains(s, "$(A)") && len(out) > len(s) {
			t.Errorf("expand(%q) = %q grew", s, out)
		}
		// "$$" is how a value says "$": escaping every "$" gives the
		// text back, whatever it holds.
		if esc := strings.ReplaceAll(s, "$", "$$"); expand(esc, vars) != s {
			t.Errorf("expand(%q) = %q, want %q", esc, expand(esc, vars), s)
		}
	})
}

// Docker's rules for an image's ENTRYPOINT and CMD against a container's
// command and args, as Kubernetes documents them.
func TestResolveImage(t *testing.T) {
	table := images.New()
	if err := table.Set("example.com/img", images.Image{Entrypoint: []string{"/ep"}, Cmd: []string{"default"}}); err != nil {
		t.Fatal(err)
	}
	if err := table.Set("example.com/cmdonly", images.Image{Cmd: []string{"sh"}}); err != nil {
		t.Fatal(err)
	}
	m := &Manager{Images: table}
	for _, tc := range []struct {
		name          string
		image         string
		command, args []string
		want          []string
		reason        string
	}{
		{"neither: entrypoint and cmd", "example.com/img:1", nil, nil, []string{"/ep", "default"}, ""},
		{"args only: entrypoint and args", "example.com/img", nil, []string{"a"}, []string{"/ep", "a"}, ""},
		{"command only: command", "example.com/img", []string{"/c"}, nil, []string{"/c"}, ""},
		{"both: command and args", "example.com/img", []string{"/c"}, []string{"a"}, []string{"/c", "a"}, ""},
		{"no entrypoint, args only", "example.com/cmdonly", nil, []string{"-c", "true"}, []string{"-c", "true"}, ""},
		{"unknown image with a command", "example.com/unknown", []string{"/c"}, []string{"a"}, []string{"/c", "a"}, ""},
		{"unknown image without one", "example.com/unknown", nil, []string{"a"}, nil, "ImageNotInTable"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			argv, _, err := m.resolveImage(corev1.Container{Image: tc.image, Command: tc.command, Args: tc.args})
			if tc.reason != "" {
				var ce *ContainerConfigError
				if !errors.As(err, &ce) || ce.Reason != tc.reason {
					t.Fatalf("err = %v, want reason %s", err, tc.reason)
				}
				if !strings.Contains(err.Error(), "--images") || !strings.Contains(err.Error(), tc.image) {
					t.Errorf("error %q names neither the image nor --images", err)
				}
				return
			}
			if err != nil || !slices.Equal(argv, tc.want) {
				t.Errorf("argv = %v, %v; want %v", argv, err, tc.want)
			}
		})
	}
}

// A container's env: fieldRefs, ConfigMap and Secret keys, envFrom with a
// prefix, and $(VAR) references to earlier entries.
func TestContainerEnv(t *testing.T) {
	client := fake.NewClientset(
		&corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "cm"}, Data: map[string]string{"k": "cmv", "other": "o"}},
		&corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "sec"}, Data: map[string][]byte{"pw": []byte("s3")}},
	)
	m := &Manager{Client: client, NodeName: "node1", HostIPs: []netip.Addr{netip.MustParseAddr("203.0.113.11"), netip.MustParseAddr("2001:db8::11")}}
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "p", UID: "u1"}, Spec: corev1.PodSpec{NodeName: "node1"}}
	c := corev1.Container{
		EnvFrom: []corev1.EnvFromSource{{Prefix: "CM_", ConfigMapRef: &corev1.ConfigMapEnvSource{LocalObjectReference: corev1.LocalObjectReference{Name: "cm"}}}},
		Env: []corev1.EnvVar{
			{Name: "POD_IPS", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "status.podIPs"}}},
			{Name: "HOST_IP", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "status.hostIP"}}},
			{Name: "NODE", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "spec.nodeName"}}},
			{Name: "K", ValueFrom: &corev1.EnvVarSource{ConfigMapKeyRef: &corev1.ConfigMapKeySelector{LocalObjectReference: corev1.LocalObjectReference{Name: "cm"}, Key: "k"}}},
			{Name: "PW", ValueFrom: &corev1.EnvVarSource{SecretKeyRef: &corev1.SecretKeySelector{LocalObjectReference: corev1.LocalObjectReference{Name: "sec"}, Key: "pw"}}},
			{Name: "BOTH", Value: "$(HOST_IP)/$(K)/$(NOPE)"},
		},
	}
	podIPs := []netip.Addr{netip.MustParseAddr("10.244.0.5"), netip.MustParseAddr("fd00:10:244::5")}
	_, vars, err := m.containerEnv(context.Background(), pod, c, images.Image{}, podIPs)
	if err != nil {
		t.Fatal(err)
	}
	for k, want := range map[string]string{
		"POD_IPS": "10.244.0.5,fd00:10:244::5", "HOST_IP": "203.0.113.11", "NODE": "node1",
		"K": "cmv", "PW": "s3", "CM_k": "cmv", "CM_other": "o", "BOTH": "203.0.113.11/cmv/$(NOPE)", "HOSTNAME": "p",
	} {
		if vars[k] != want {
			t.Errorf("%s = %q, want %q", k, vars[k], want)
		}
	}

	// A missing key that is not optional is the container's config error.
	bad := corev1.Container{Env: []corev1.EnvVar{{Name: "X", ValueFrom: &corev1.EnvVarSource{
		ConfigMapKeyRef: &corev1.ConfigMapKeySelector{LocalObjectReference: corev1.LocalObjectReference{Name: "cm"}, Key: "absent"}}}}}
	if _, _, err := m.containerEnv(context.Background(), pod, bad, images.Image{}, podIPs); err == nil || !strings.Contains(err.Error(), "absent") {
		t.Errorf("missing key: err = %v", err)
	}
}
