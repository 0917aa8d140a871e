package e2e

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/duet-net/duet/internal/testutil/roottest"
)

const credentialsManifest = `
apiVersion: v1
kind: Namespace
metadata: {name: creds}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: app-config, namespace: creds}
data: {greeting: hello-from-configmap}
---
apiVersion: v1
kind: Secret
metadata: {name: app-secret, namespace: creds}
stringData: {password: s3cret-from-secret}
---
apiVersion: v1
kind: Pod
metadata: {name: creds, namespace: creds}
spec:
  nodeSelector: {kubernetes.io/hostname: node1}
  volumes:
  - {name: config, configMap: {name: app-config}}
  - {name: secret, secret: {secretName: app-secret, defaultMode: 0400}}
  containers:
  - name: c
    image: ignored
    env:
    - {name: GREETING, valueFrom: {configMapKeyRef: {name: app-config, key: greeting}}}
    - {name: PASSWORD, valueFrom: {secretKeyRef: {name: app-secret, key: password}}}
    command: [sh, -c, 'cd /var/run/secrets/kubernetes.io/serviceaccount;
      echo "config=$(cat /etc/app/config/greeting) env=$GREETING";
      echo "secret=$(cat /etc/app/secret/password) mode=$(stat -L -c %a /etc/app/secret/password) env=$PASSWORD";
      echo "namespace=$(cat namespace) tokenmode=$(stat -L -c %a token)";
      head -1 ca.crt; echo "token=$(cat token)"; echo CREDS-DONE; exec sleep 3600']
    volumeMounts:
    - {name: config, mountPath: /etc/app/config}
    - {name: secret, mountPath: /etc/app/secret}
`

// TestPodCredentials runs a pod through duet up that reads a ConfigMap and
// a Secret (as volumes and env) and its ServiceAccount's API credentials
// (the kube-api-access volume admission adds): only node1, where it runs,
// may read them; the token names the pod and the API server accepts it as
// the pod's ServiceAccount.
func TestPodCredentials(t *testing.T) {
	roottest.Require(t, "kubectl")
	dataDir, kubeconfig := up(t)
	manifest := filepath.Join(t.TempDir(), "creds.yaml")
	if err := os.WriteFile(manifest, []byte(credentialsManifest), 0o600); err != nil {
		t.Fatal(err)
	}
	// The pod is created right after its namespace: admission waits for
	// the namespace's default ServiceAccount.
	kubectl(t, kubeconfig, "apply", "-f", manifest)
	kubectl(t, kubeconfig, "wait", "-n", "creds", "--for=condition=Ready", "pod/creds", "--timeout=60s")
	var pod corev1.Pod
	if err := json.Unmarshal(kubectl(t, kubeconfig, "get", "-n", "creds", "pod", "creds", "-o", "json"), &pod); err != nil {
		t.Fatal(err)
	}
	if pod.Spec.ServiceAccountName != "default" || len(pod.Spec.Volumes) != 3 || !strings.HasPrefix(pod.Spec.Volumes[2].Name, "kube-api-access-") {
		t.Fatalf("admission gave the pod ServiceAccount %q and volumes %v, want default and a kube-api-access volume", pod.Spec.ServiceAccountName, pod.Spec.Volumes)
	}

	var out string
	roottest.Eventually(t, 30*time.Second, "the pod's log", func() error {
		data, err := exec.Command("kubectl", "--kubeconfig", kubeconfig, "logs", "-n", "creds", "creds").CombinedOutput()
		out = string(data)
		if err != nil || !strings.Contains(out, "CREDS-DONE") {
			return fmt.Errorf("%q so far (%v)", out, err)
		}
		return nil
	})
	for _, want := range []string{
		"config=hello-from-configmap env=hello-from-configmap\n",
		"secret=s3cret-from-secret mode=400 env=s3cret-from-secret\n",
		"namespace=creds tokenmode=644\n",
		"-----BEGIN CERTIFICATE-----\n",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("the pod's output lacks %q:\n%s", want, out)
		}
	}
	_, token, _ := strings.Cut(out, "token=")
	token, _, _ = strings.Cut(token, "\n")

	// The token is a JWT of the pod's ServiceAccount, bound to the pod.
	claims := jwtClaims(t, token)
	if claims.Subject != "system:serviceaccount:creds:default" || claims.K8s.Namespace != "creds" ||
		claims.K8s.ServiceAccount.Name != "default" || claims.K8s.Pod.Name != "creds" || claims.K8s.Pod.UID != string(pod.UID) ||
		claims.K8s.Node.Name != "node1" {
		t.Errorf("token claims %+v, want the ServiceAccount creds/default bound to pod creds (%s) on node1", claims, pod.UID)
	}

	// The API server takes it as the ServiceAccount: discovery answers,
	// and what it may not do is refused naming it.
	cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	asToken := func(tok string) *rest.Config {
		return &rest.Config{Host: cfg.Host, BearerToken: tok, TLSClientConfig: rest.TLSClientConfig{CAData: cfg.CAData, CAFile: cfg.CAFile}}
	}
	saClient := kubernetes.NewForConfigOrDie(asToken(token))
	ctx := context.Background()
	if _, err := saClient.Discovery().ServerGroups(); err != nil {
		t.Errorf("discovery with the pod's token: %v", err)
	}
	_, err = saClient.CoreV1().Secrets("creds").List(ctx, metav1.ListOptions{})
	if !apierrors.IsForbidden(err) || !strings.Contains(err.Error(), "system:serviceaccount:creds:default") {
		t.Errorf("listing Secrets with the pod's token: %v, want Forbidden for system:serviceaccount:creds:default", err)
	}
	forged := token[:len(token)-4] + "AAAA"
	if forged == token {
		forged = token[:len(token)-4] + "BBBB"
	}
	if _, err := kubernetes.NewForConfigOrDie(asToken(forged)).CoreV1().Secrets("creds").List(ctx, metav1.ListOptions{}); !apierrors.IsUnauthorized(err) {
		t.Errorf("a token with a forged signature: %v, want Unauthorized", err)
	}

	// node1 reads what its pod refers to; node2, which runs no pod of
	// creds, reads none of it.
	for _, tc := range []struct {
		node  string
		allow bool
	}{{"node1", true}, {"node2", false}} {
		nodeCfg, err := clientcmd.BuildConfigFromFlags("", filepath.Join(dataDir, "nodes", tc.node+".kubeconfig"))
		if err != nil {
			t.Fatal(err)
		}
		nc := kubernetes.NewForConfigOrDie(nodeCfg)
		_, errCM := nc.CoreV1().ConfigMaps("creds").Get(ctx, "app-config", metav1.GetOptions{})
		_, errSec := nc.CoreV1().Secrets("creds").Get(ctx, "app-secret", metav1.GetOptions{})
		for what, err := range map[string]error{"ConfigMap": errCM, "Secret": errSec} {
			if tc.allow && err != nil || !tc.allow && !apierrors.IsForbidden(err) {
				t.Errorf("%s reading the pod's %s: %v, want allowed=%v", tc.node, what, err, tc.allow)
			}
		}
	}
}

type tokenClaims struct {
	Subject string `json:"sub"`
	K8s     struct {
		Namespace      string `json:"namespace"`
		ServiceAccount struct{ Name, UID string }
		Pod            struct{ Name, UID string }
		Node           struct{ Name, UID string }
	} `json:"kubernetes.io"`
}

// jwtClaims decodes a JWT's claims without checking its signature (the
// API server's acceptance checks that).
func jwtClaims(t *testing.T, token string) tokenClaims {
	t.Helper()
	parts := strings.Split(token, ".")
	if len(parts) != 3 {
		t.Fatalf("the token %q is not a JWT (header.claims.signature)", token)
	}
	data, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		t.Fatalf("the token's claims are not base64url: %v", err)
	}
	var c tokenClaims
	if err := json.Unmarshal(data, &c); err != nil {
		t.Fatalf("the token's claims %s: %v", data, err)
	}
	return c
}
