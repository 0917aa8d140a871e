package pods

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	k8stesting "k8s.io/client-go/testing"
	"k8s.io/utils/ptr"

	"github.com/duet-net/duet/internal/agent/podroot"
)

// tokenAPI answers TokenRequests on the test's clock: token-N, expiring
// after the seconds asked for.
type tokenAPI struct {
	e    *testEnv
	mu   sync.Mutex
	reqs []*authenticationv1.TokenRequest
	fail bool
}

func newTokenAPI(e *testEnv) *tokenAPI {
	a := &tokenAPI{e: e}
	e.client.PrependReactor("create", "serviceaccounts", func(act k8stesting.Action) (bool, runtime.Object, error) {
		if act.GetSubresource() != "token" {
			return false, nil, nil
		}
		a.mu.Lock()
		defer a.mu.Unlock()
		if a.fail {
			return true, nil, errors.New(`serviceaccounts "default" is forbidden`)
		}
		req := act.(k8stesting.CreateAction).GetObject().(*authenticationv1.TokenRequest).DeepCopy()
		a.reqs = append(a.reqs, req)
		out := req.DeepCopy()
		out.Status.Token = fmt.Sprintf("token-%d", len(a.reqs))
		out.Status.ExpirationTimestamp = metav1.NewTime(e.clk.Now().Add(time.Duration(*req.Spec.ExpirationSeconds) * time.Second))
		return true, out, nil
	})
	return a
}

func (a *tokenAPI) last() *authenticationv1.TokenRequest {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.reqs[len(a.reqs)-1]
}

// apiAccessPod is a pod with the volume ServiceAccount admission adds.
func apiAccessPod(name string) *corev1.Pod {
	p := newPod(name, corev1.RestartPolicyAlways, "c")
	p.Spec.ServiceAccountName = "default"
	p.Spec.Volumes = []corev1.Volume{{Name: "kube-api-access-x1y2z", VolumeSource: corev1.VolumeSource{Projected: &corev1.ProjectedVolumeSource{
		DefaultMode: ptr.To[int32](0o644),
		Sources: []corev1.VolumeProjection{
			{ServiceAccountToken: &corev1.ServiceAccountTokenProjection{Path: "token", ExpirationSeconds: ptr.To[int64](3607)}},
			{ConfigMap: &corev1.ConfigMapProjection{LocalObjectReference: corev1.LocalObjectReference{Name: "kube-root-ca.crt"}, Items: []corev1.KeyToPath{{Key: "ca.crt", Path: "ca.crt"}}}},
			{DownwardAPI: &corev1.DownwardAPIProjection{Items: []corev1.DownwardAPIVolumeFile{{Path: "namespace", FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.namespace"}}}}},
		},
	}}}}
	p.Spec.Containers[0].VolumeMounts = []corev1.VolumeMount{{Name: "kube-api-access-x1y2z", MountPath: "/var/run/secrets/kubernetes.io/serviceaccount", ReadOnly: true}}
	return p
}

func volumeFiles(t *testing.T, vols []podroot.Volume, name string) map[string]podroot.File {
	t.Helper()
	for _, v := range vols {
		if v.Name == name {
			return v.Files
		}
	}
	t.Fatalf("no volume %s in %v", name, vols)
	return nil
}

// A kube-api-access volume gets a token bound to the pod, the cluster CA
// and the namespace; the token is replaced in the volume at 80% of its
// lifetime, and forgotten when the pod stops.
func TestServiceAccountTokenVolume(t *testing.T) {
	e := newTestEnv(t)
	api := newTokenAPI(e)
	e.worlds.updated = make(chan string, 10)
	if _, err := e.client.CoreV1().ConfigMaps("default").Create(context.Background(), &corev1.ConfigMap{
		ObjectMeta: metav1.ObjectMeta{Name: "kube-root-ca.crt"}, Data: map[string]string{"ca.crt": "CA PEM"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	pod := e.create(t, apiAccessPod("web"))
	e.sync(t, "web")

	e.worlds.mu.Lock()
	spec := e.worlds.specs[string(pod.UID)]
	e.worlds.mu.Unlock()
	files := volumeFiles(t, spec.Volumes, "kube-api-access-x1y2z")
	for path, want := range map[string]string{"token": "token-1", "ca.crt": "CA PEM", "namespace": "default"} {
		if f := files[path]; string(f.Data) != want || f.Mode != 0o644 {
			t.Errorf("%s = %q mode %#o, want %q mode 0644", path, f.Data, f.Mode, want)
		}
	}
	ref := api.last().Spec.BoundObjectRef
	if ref == nil || ref.Kind != "Pod" || ref.Name != "web" || ref.UID != pod.UID {
		t.Errorf("the token is bound to %+v, want the pod web with its UID", ref)
	}

	// 80% of 3607 s on, the volume gets a new token, the other files
	// again.
	due := 3607 * time.Second * 4 / 5
	e.clk.waitTimer(t, due)
	e.clk.Step(due)
	select {
	case uid := <-e.worlds.updated:
		if uid != string(pod.UID) {
			t.Fatalf("world %s updated", uid)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the token volume was not rewritten at 80% of the token's lifetime")
	}
	e.worlds.mu.Lock()
	ups := e.worlds.updates[string(pod.UID)]
	e.worlds.mu.Unlock()
	files = volumeFiles(t, ups[len(ups)-1], "kube-api-access-x1y2z")
	if string(files["token"].Data) != "token-2" || string(files["ca.crt"].Data) != "CA PEM" || len(files) != 3 {
		t.Errorf("rewritten volume %v, want token-2 with ca.crt and namespace", files)
	}
	// And the next refresh is planned for the new token.
	e.clk.waitTimer(t, due)

	if err := e.m.Sync(context.Background(), pod.UID, nil); err != nil {
		t.Fatal(err)
	}
	e.eventually(t, "the pod's tokens are forgotten", func() error {
		if _, ok := e.m.tokens().NextRefresh(pod.UID); ok {
			return errors.New("still cached")
		}
		return nil
	})
}

// A pod whose token cannot be had does not start; the error says why.
func TestServiceAccountTokenRefused(t *testing.T) {
	e := newTestEnv(t)
	api := newTokenAPI(e)
	api.fail = true
	if _, err := e.client.CoreV1().ConfigMaps("default").Create(context.Background(), &corev1.ConfigMap{
		ObjectMeta: metav1.ObjectMeta{Name: "kube-root-ca.crt"}, Data: map[string]string{"ca.crt": "CA PEM"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	pod := e.create(t, apiAccessPod("web"))
	err := e.m.Sync(context.Background(), pod.UID, pod)
	if err == nil || !strings.Contains(err.Error(), "serviceAccountToken") || !strings.Contains(err.Error(), "default/default") {
		t.Fatalf("Sync = %v, want an error about the pod's token", err)
	}
	if _, ok := e.net.sandbox(string(pod.UID)); ok {
		t.Error("the sandbox of a pod that did not start was left behind")
	}
}
