package integration

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
)

// tokenClient is a client that authenticates with token alone.
func tokenClient(t *testing.T, srv *Server, token string) *kubernetes.Clientset {
	t.Helper()
	cfg := &rest.Config{Host: srv.Config.Host, BearerToken: token, TLSClientConfig: rest.TLSClientConfig{CAData: srv.Config.CAData, CAFile: srv.Config.CAFile}}
	c, err := kubernetes.NewForConfig(cfg)
	fatalIf(t, err)
	return c
}

// whoIs reports who the server takes token for: a 403 names the user
// (ServiceAccounts may do nothing but discovery), a 401 says the token is
// not accepted.
func whoIs(ctx context.Context, c *kubernetes.Clientset) (string, error) {
	_, err := c.CoreV1().Pods("default").List(ctx, metav1.ListOptions{})
	if err == nil {
		return "", fmt.Errorf("a ServiceAccount listed pods")
	}
	if !apierrors.IsForbidden(err) {
		return "", err
	}
	msg := err.Error()
	if i := strings.Index(msg, `"system:serviceaccount:`); i >= 0 {
		return strings.SplitN(msg[i+1:], `"`, 2)[0], nil
	}
	return "", fmt.Errorf("403 without a ServiceAccount user: %v", err)
}

// TestServiceAccountTokens: `kubectl create token` issues a token the
// server accepts as the ServiceAccount (and only for discovery, as
// Kubernetes' default policy); a token bound to a pod dies with it; tokens
// outlive a server restart; pods get the kube-api-access volume unless
// they opt out; a node gets tokens only for its own pods.
func TestServiceAccountTokens(t *testing.T) {
	t.Parallel()
	srv := StartServer(t, ServerOptions{ServiceRanges: v4Range})
	ctx := ctxT(t)
	createNamespace(t, srv, "app")
	eventually(t, 10*time.Second, "default ServiceAccount", func() error {
		_, err := srv.Client.CoreV1().ServiceAccounts("app").Get(ctx, "default", metav1.GetOptions{})
		return err
	})

	token := strings.TrimSpace(srv.MustKubectl(t, "", "-n", "app", "create", "token", "default", "--duration=20m"))
	sa := tokenClient(t, srv, token)
	if _, err := sa.Discovery().ServerVersion(); err != nil {
		t.Fatalf("version with a token: %v", err)
	}
	if _, err := sa.Discovery().ServerGroups(); err != nil {
		t.Errorf("discovery with a token: %v", err)
	}
	who, err := whoIs(ctx, sa)
	if err != nil || who != "system:serviceaccount:app:default" {
		t.Errorf("token taken for %q (%v)", who, err)
	}
	if _, err := tokenClient(t, srv, token+"x").Discovery().ServerGroups(); !apierrors.IsUnauthorized(err) {
		t.Errorf("a tampered token: %v, want 401", err)
	}
	_, stderr, err := srv.Kubectl("", "-n", "app", "create", "token", "ghost")
	if err == nil || !strings.Contains(stderr, `serviceaccounts "ghost" not found`) {
		t.Errorf("a token for a missing ServiceAccount: %v %q", err, stderr)
	}

	// Pods get API credentials unless they opt out.
	pods := srv.Client.CoreV1().Pods("app")
	mk := func(name string, automount *bool, node string) *corev1.Pod {
		p, err := pods.Create(ctx, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: corev1.PodSpec{NodeName: node,
			AutomountServiceAccountToken: automount, Containers: []corev1.Container{{Name: "c", Image: "x"}}}}, metav1.CreateOptions{})
		fatalIf(t, err)
		return p
	}
	web := mk("web", nil, "n1")
	if len(web.Spec.Volumes) != 1 || !strings.HasPrefix(web.Spec.Volumes[0].Name, "kube-api-access-") || web.Spec.Volumes[0].Projected == nil ||
		len(web.Spec.Containers[0].VolumeMounts) != 1 || web.Spec.Containers[0].VolumeMounts[0].MountPath != "/var/run/secrets/kubernetes.io/serviceaccount" {
		t.Errorf("pod volumes %+v mounts %+v, want kube-api-access-* at /var/run/secrets/kubernetes.io/serviceaccount", web.Spec.Volumes, web.Spec.Containers[0].VolumeMounts)
	}
	if quiet := mk("quiet", ptr(false), ""); len(quiet.Spec.Volumes) != 0 {
		t.Errorf("automountServiceAccountToken=false got volumes %v", quiet.Spec.Volumes)
	}

	// A node has tokens for its pods, bound to them, and no others.
	n1, n2 := nodeClient(t, srv, "n1").CoreV1(), nodeClient(t, srv, "n2").CoreV1()
	bound := &authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{ExpirationSeconds: ptr(int64(3607)),
		BoundObjectRef: &authenticationv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: "web", UID: web.UID}}}
	tr, err := n1.ServiceAccounts("app").CreateToken(ctx, "default", bound, metav1.CreateOptions{})
	fatalIf(t, err)
	podToken := tr.Status.Token
	if _, err := n2.ServiceAccounts("app").CreateToken(ctx, "default", bound, metav1.CreateOptions{}); !apierrors.IsForbidden(err) {
		t.Errorf("n2 asking for a token of n1's pod: %v, want 403", err)
	}
	if _, err := n1.ServiceAccounts("app").CreateToken(ctx, "default", &authenticationv1.TokenRequest{}, metav1.CreateOptions{}); !apierrors.IsForbidden(err) ||
		!strings.Contains(err.Error(), "not bound to a pod") {
		t.Errorf("n1 asking for an unbound token: %v, want 403", err)
	}

	// Tokens outlive the server: the key is in etcd.
	fatalIf(t, srv.Stop())
	srv.Restart(t)
	for what, tok := range map[string]string{"kubectl's token": token, "the pod's token": podToken} {
		who, err := whoIs(ctx, tokenClient(t, srv, tok))
		if err != nil || who != "system:serviceaccount:app:default" {
			t.Errorf("%s after a restart: taken for %q (%v)", what, who, err)
		}
	}

	// Deleting the pod revokes its token; deleting the ServiceAccount
	// revokes every token of it.
	fatalIf(t, srv.Client.CoreV1().Pods("app").Delete(ctx, "web", metav1.DeleteOptions{GracePeriodSeconds: ptr(int64(0))}))
	eventually(t, 10*time.Second, "the pod's token refused", func() error {
		if _, err := whoIs(ctx, tokenClient(t, srv, podToken)); !apierrors.IsUnauthorized(err) {
			return fmt.Errorf("after its pod went: %v", err)
		}
		return nil
	})
	fatalIf(t, srv.Client.CoreV1().ServiceAccounts("app").Delete(ctx, "default", metav1.DeleteOptions{}))
	if _, err := whoIs(ctx, tokenClient(t, srv, token)); !apierrors.IsUnauthorized(err) {
		t.Errorf("a token of a deleted ServiceAccount: %v, want 401", err)
	}
}
