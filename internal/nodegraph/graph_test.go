package nodegraph

import (
	"context"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/duet-net/duet/internal/controller/fakeapi"
)

func testPod(name, node string, secrets ...string) *corev1.Pod {
	p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "ns1", Name: name, UID: types.UID("uid-" + name)},
		Spec: corev1.PodSpec{NodeName: node, ServiceAccountName: "default", Containers: []corev1.Container{{Name: "c",
			EnvFrom: []corev1.EnvFromSource{{ConfigMapRef: &corev1.ConfigMapEnvSource{LocalObjectReference: corev1.LocalObjectReference{Name: "settings"}}}}}}}}
	for _, s := range secrets {
		p.Spec.Volumes = append(p.Spec.Volumes, corev1.Volume{Name: s, VolumeSource: corev1.VolumeSource{Secret: &corev1.SecretVolumeSource{SecretName: s}}})
	}
	return p
}

func start(t *testing.T, client *fake.Clientset) (*Graph, context.Context) {
	t.Helper()
	g := New()
	ctx, cancel := context.WithCancel(context.Background())
	stop := fakeapi.Background(ctx, func(ctx context.Context) { g.Run(ctx, client) })
	t.Cleanup(func() { stop(); cancel() })
	if ok, _ := fakeapi.Eventually(ctx, 10*time.Second, func() (bool, string) {
		g.mu.Lock()
		defer g.mu.Unlock()
		return g.synced && fakeapi.Watching(client, "pods"), ""
	}); !ok {
		t.Fatal("graph never synced")
	}
	return g, ctx
}

func TestAllowed(t *testing.T) {
	client := fake.NewClientset(testPod("a", "n1", "tls", "shared"), testPod("b", "n2", "shared"), testPod("pending", "", "unbound"))
	g, ctx := start(t, client)
	for _, tc := range []struct {
		node string
		ref  Ref
		want bool
	}{
		{"n1", Ref{Secrets, "ns1", "tls"}, true},
		{"n1", Ref{Secrets, "ns1", "shared"}, true},
		{"n2", Ref{Secrets, "ns1", "shared"}, true},
		{"n2", Ref{Secrets, "ns1", "tls"}, false},
		{"n1", Ref{ConfigMaps, "ns1", "settings"}, true},
		{"n1", Ref{ServiceAccounts, "ns1", "default"}, true},
		{"n1", Ref{Secrets, "ns2", "tls"}, false},
		{"n1", Ref{ConfigMaps, "ns1", "tls"}, false},
		{"n1", Ref{Secrets, "ns1", "unbound"}, false},
		{"n3", Ref{ServiceAccounts, "ns1", "default"}, false},
	} {
		ok, why := g.Allowed(ctx, tc.node, tc.ref, 0)
		if ok != tc.want {
			t.Errorf("node %s, %s: allowed %v (%s), want %v", tc.node, tc.ref, ok, why, tc.want)
		}
		if !ok && !strings.Contains(why, "no relationship found between node") {
			t.Errorf("reason %q", why)
		}
	}

	// A pod deleted takes its references with it, but not those another
	// pod of the node still has.
	if err := client.CoreV1().Pods("ns1").Delete(ctx, "a", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	if ok, _ := fakeapi.Eventually(ctx, 10*time.Second, func() (bool, string) {
		ok, _ := g.Allowed(ctx, "n1", Ref{Secrets, "ns1", "tls"}, 0)
		return !ok, ""
	}); !ok {
		t.Error("n1 still reads tls after its pod went")
	}
	if ok, _ := g.Allowed(ctx, "n2", Ref{Secrets, "ns1", "shared"}, 0); !ok {
		t.Error("n2 lost shared when n1's pod went")
	}

	// A lookup waits for a pod bound a moment later.
	go func() {
		time.Sleep(50 * time.Millisecond) // lets the lookup start waiting first; the result does not depend on it
		_, _ = client.CoreV1().Pods("ns1").Create(context.Background(), testPod("late", "n3", "late"), metav1.CreateOptions{})
	}()
	if ok, why := g.Allowed(ctx, "n3", Ref{Secrets, "ns1", "late"}, 10*time.Second); !ok {
		t.Errorf("a pod bound during the wait: %s", why)
	}

	// Binding an existing pod (an update) adds its references.
	pending, err := client.CoreV1().Pods("ns1").Get(ctx, "pending", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	pending.Spec.NodeName = "n2"
	if _, err := client.CoreV1().Pods("ns1").Update(ctx, pending, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	if ok, why := g.Allowed(ctx, "n2", Ref{Secrets, "ns1", "unbound"}, 10*time.Second); !ok {
		t.Errorf("after binding: %s", why)
	}
}

func TestNotSynced(t *testing.T) {
	ok, why := New().Allowed(context.Background(), "n1", Ref{Secrets, "ns1", "x"}, 10*time.Millisecond)
	if ok || !strings.Contains(why, "not loaded") {
		t.Errorf("allowed %v (%s) before sync", ok, why)
	}
}
