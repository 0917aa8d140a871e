//lint:file-ignore SA1019 spec.serviceAccount is the deprecated alias the server keeps in step.

package integration

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
)

// hasDefaults reports whether ns holds the default ServiceAccount and
// the root CA ConfigMap with the cluster CA.
func hasDefaults(t *testing.T, srv *Server, ns string, caPEM []byte) error {
	ctx := ctxT(t)
	if _, err := srv.Client.CoreV1().ServiceAccounts(ns).Get(ctx, "default", metav1.GetOptions{}); err != nil {
		return err
	}
	cm, err := srv.Client.CoreV1().ConfigMaps(ns).Get(ctx, "kube-root-ca.crt", metav1.GetOptions{})
	if err != nil {
		return err
	}
	if cm.Data["ca.crt"] != string(caPEM) || len(cm.Data) != 1 {
		return fmt.Errorf("kube-root-ca.crt holds %v, want only ca.crt with the cluster CA", cm.Data)
	}
	if cm.Annotations["kubernetes.io/description"] == "" {
		return fmt.Errorf("kube-root-ca.crt has no kubernetes.io/description: %v", cm.Annotations)
	}
	return nil
}

func createNamespace(t *testing.T, srv *Server, name string) {
	t.Helper()
	_, err := srv.Client.CoreV1().Namespaces().Create(ctxT(t), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{})
	fatalIf(t, err)
}

// TestNamespaceDefaults: a new Namespace has its default ServiceAccount
// and kube-root-ca.crt (the CA that verifies the server) within a second;
// deleted or edited, they come back; the system namespaces have them too;
// deleting the Namespace removes them with it.
func TestNamespaceDefaults(t *testing.T) {
	t.Parallel()
	srv := StartServer(t, ServerOptions{ServiceRanges: v4Range})
	ctx := ctxT(t)
	caPEM, err := os.ReadFile(filepath.Join(srv.DataDir, "pki", "ca.crt"))
	fatalIf(t, err)

	for _, ns := range []string{"default", "kube-system", "kube-public", "kube-node-lease"} {
		eventually(t, 30*time.Second, "defaults in "+ns, func() error { return hasDefaults(t, srv, ns, caPEM) })
	}

	start := time.Now()
	createNamespace(t, srv, "fresh")
	eventually(t, 10*time.Second, "defaults in a new namespace", func() error { return hasDefaults(t, srv, "fresh", caPEM) })
	if took := time.Since(start); took > time.Second {
		t.Errorf("a new namespace had its ServiceAccount and root CA after %v, want within 1s", took)
	}

	// The published CA verifies the server's certificate.
	cm, err := srv.Client.CoreV1().ConfigMaps("fresh").Get(ctx, "kube-root-ca.crt", metav1.GetOptions{})
	fatalIf(t, err)
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM([]byte(cm.Data["ca.crt"])) {
		t.Fatalf("ca.crt is not PEM: %q", cm.Data["ca.crt"])
	}
	u, err := url.Parse(srv.Config.Host)
	fatalIf(t, err)
	conn, err := tls.Dial("tcp", u.Host, &tls.Config{RootCAs: pool, ServerName: "localhost"})
	if err != nil {
		t.Errorf("the server's certificate does not verify with kube-root-ca.crt: %v", err)
	} else {
		conn.Close()
	}

	fatalIf(t, srv.Client.CoreV1().ServiceAccounts("fresh").Delete(ctx, "default", metav1.DeleteOptions{}))
	fatalIf(t, srv.Client.CoreV1().ConfigMaps("fresh").Delete(ctx, "kube-root-ca.crt", metav1.DeleteOptions{}))
	eventually(t, 10*time.Second, "deleted defaults back", func() error { return hasDefaults(t, srv, "fresh", caPEM) })

	cm, err = srv.Client.CoreV1().ConfigMaps("fresh").Get(ctx, "kube-root-ca.crt", metav1.GetOptions{})
	fatalIf(t, err)
	cm.Data["ca.crt"] = "not the CA"
	cm.Data["extra"] = "x"
	_, err = srv.Client.CoreV1().ConfigMaps("fresh").Update(ctx, cm, metav1.UpdateOptions{})
	fatalIf(t, err)
	eventually(t, 10*time.Second, "edited root CA repaired", func() error { return hasDefaults(t, srv, "fresh", caPEM) })

	// Namespace deletion takes them, and what users made, with it.
	_, err = srv.Client.CoreV1().Secrets("fresh").Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "s"}, StringData: map[string]string{"k": "v"}}, metav1.CreateOptions{})
	fatalIf(t, err)
	fatalIf(t, srv.Client.CoreV1().Namespaces().Delete(ctx, "fresh", metav1.DeleteOptions{}))
	eventually(t, 60*time.Second, "namespace fresh gone", func() error {
		_, err := srv.Client.CoreV1().Namespaces().Get(ctx, "fresh", metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return nil
		}
		return fmt.Errorf("still there: %v", err)
	})
	for what, list := range map[string]func() (int, error){
		"configmaps": func() (int, error) {
			l, err := srv.Client.CoreV1().ConfigMaps("fresh").List(ctx, metav1.ListOptions{})
			return len(l.Items), err
		},
		"secrets": func() (int, error) {
			l, err := srv.Client.CoreV1().Secrets("fresh").List(ctx, metav1.ListOptions{})
			return len(l.Items), err
		},
		"serviceaccounts": func() (int, error) {
			l, err := srv.Client.CoreV1().ServiceAccounts("fresh").List(ctx, metav1.ListOptions{})
			return len(l.Items), err
		},
	} {
		n, err := list()
		fatalIf(t, err)
		if n != 0 {
			t.Errorf("%d %s left in deleted namespace fresh", n, what)
		}
	}
}

// TestPodConfigKubectl drives ConfigMaps, Secrets and ServiceAccounts
// through kubectl: create, get with kubectl's columns, field selectors,
// and clear errors naming the field for bad input.
func TestPodConfigKubectl(t *testing.T) {
	t.Parallel()
	srv := StartServer(t, ServerOptions{ServiceRanges: v4Range})
	ctx := ctxT(t)
	createNamespace(t, srv, "app")
	k := func(args ...string) string { return srv.MustKubectl(t, "", append([]string{"-n", "app"}, args...)...) }

	k("create", "configmap", "settings", "--from-literal=mode=fast", "--from-literal=level=3")
	k("create", "secret", "generic", "password", "--from-literal=password=hunter2")
	k("create", "secret", "docker-registry", "registry", "--docker-server=registry.example.com", "--docker-username=u", "--docker-password=p")
	k("create", "serviceaccount", "builder")

	out := k("get", "cm")
	wantLine(t, out, `^NAME\s+DATA\s+AGE$`)
	wantLine(t, out, `^settings\s+2\s+\S+$`)
	wantLine(t, out, `^kube-root-ca.crt\s+1\s+\S+$`)
	out = k("get", "secrets")
	wantLine(t, out, `^NAME\s+TYPE\s+DATA\s+AGE$`)
	wantLine(t, out, `^password\s+Opaque\s+1\s+\S+$`)
	wantLine(t, out, `^registry\s+kubernetes.io/dockerconfigjson\s+1\s+\S+$`)
	out = k("get", "sa")
	wantLine(t, out, `^NAME\s+AGE$`)
	wantLine(t, out, `^builder\s+\S+$`)
	wantLine(t, out, `^default\s+\S+$`)
	out = k("get", "secrets", "--field-selector", "type=kubernetes.io/dockerconfigjson", "-o", "name")
	if strings.TrimSpace(out) != "secret/registry" {
		t.Errorf("secrets of type dockerconfigjson: %q, want only secret/registry", out)
	}
	if got := k("get", "secret", "password", "-o", "jsonpath={.data.password}"); got != "aHVudGVyMg==" {
		t.Errorf("password data %q, want base64 of hunter2", got)
	}

	for _, tc := range []struct {
		name, manifest string
		want           []string
	}{
		{"bad configmap key", "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: bad}\ndata: {\"a b\": x}\n",
			[]string{`ConfigMap "bad" is invalid`, "data[a b]", "a valid config key must consist of alphanumeric characters"}},
		{"key in data and binaryData", "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: dup}\ndata: {k: x}\nbinaryData: {k: eA==}\n",
			[]string{"data[k]", "duplicate of key present in binaryData"}},
		{"tls secret without its key", "apiVersion: v1\nkind: Secret\nmetadata: {name: cert}\ntype: kubernetes.io/tls\ndata: {tls.crt: eA==}\n",
			[]string{`Secret "cert" is invalid`, "data[tls.key]: Required value"}},
		{"bad service account name", "apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: Builder}\n",
			[]string{`ServiceAccount "Builder" is invalid`, "metadata.name: Invalid value"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, errOut, err := srv.Kubectl(tc.manifest, "-n", "app", "apply", "-f", "-")
			if err == nil {
				t.Fatalf("accepted %s", tc.manifest)
			}
			for _, w := range tc.want {
				if !strings.Contains(errOut, w) {
					t.Errorf("kubectl's error %q does not contain %q", errOut, w)
				}
			}
		})
	}

	// Too large: 1 MiB and a byte, through client-go for its Status.
	_, err := srv.Client.CoreV1().ConfigMaps("app").Create(ctx, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "big"},
		Data: map[string]string{"a": strings.Repeat("x", 1<<20+1)}}, metav1.CreateOptions{})
	wantInvalid(t, "an oversized ConfigMap", err, "data", "must total at most 1048576 bytes")

	// Immutable: the data stays.
	_, err = srv.Client.CoreV1().ConfigMaps("app").Create(ctx, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "frozen"},
		Data: map[string]string{"k": "v"}, Immutable: ptr(true)}, metav1.CreateOptions{})
	fatalIf(t, err)
	_, stderr, err := srv.Kubectl("", "-n", "app", "patch", "configmap", "frozen", "-p", `{"data":{"k":"w"}}`)
	if err == nil || !strings.Contains(stderr, "data: Forbidden: field is immutable when `immutable` is set") {
		t.Errorf("changing an immutable ConfigMap: %v %q", err, stderr)
	}
	_, stderr, err = srv.Kubectl("", "-n", "app", "patch", "secret", "password", "--type=merge", "-p", `{"type":"kubernetes.io/tls"}`)
	if err == nil || !strings.Contains(stderr, "type: Invalid value") || !strings.Contains(stderr, "field is immutable") {
		t.Errorf("changing a Secret's type: %v %q", err, stderr)
	}
}

// wantInvalid checks err is a 422 Invalid whose causes name field with
// detail.
func wantInvalid(t *testing.T, what string, err error, field, detail string) {
	t.Helper()
	if !apierrors.IsInvalid(err) {
		t.Errorf("%s: %v, want 422 Invalid", what, err)
		return
	}
	st := err.(apierrors.APIStatus).Status()
	for _, c := range st.Details.Causes {
		if c.Field == field && strings.Contains(c.Message, detail) {
			return
		}
	}
	t.Errorf("%s: causes %+v, want field %s with %q", what, st.Details.Causes, field, detail)
}

func wantLine(t *testing.T, out, pattern string) {
	t.Helper()
	re := regexp.MustCompile(pattern)
	for _, l := range strings.Split(out, "\n") {
		if re.MatchString(strings.TrimSpace(l)) {
			return
		}
	}
	t.Errorf("no line of\n%s\nmatches %s", out, pattern)
}

// TestPodServiceAccounts: pods run as `default` unless they name another
// ServiceAccount, which must exist.
func TestPodServiceAccounts(t *testing.T) {
	t.Parallel()
	srv := StartServer(t, ServerOptions{ServiceRanges: v4Range})
	ctx := ctxT(t)
	pods := srv.Client.CoreV1().Pods("default")
	pod := func(name, sa string) *corev1.Pod {
		return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name},
			Spec: corev1.PodSpec{ServiceAccountName: sa, Containers: []corev1.Container{{Name: "c", Image: "x"}}}}
	}
	p, err := pods.Create(ctx, pod("plain", ""), metav1.CreateOptions{})
	fatalIf(t, err)
	if p.Spec.ServiceAccountName != "default" || p.Spec.DeprecatedServiceAccount != "default" {
		t.Errorf("serviceAccountName %q serviceAccount %q, want default", p.Spec.ServiceAccountName, p.Spec.DeprecatedServiceAccount)
	}
	_, err = pods.Create(ctx, pod("ghostly", "ghost"), metav1.CreateOptions{})
	if !apierrors.IsForbidden(err) || !strings.Contains(err.Error(), `error looking up service account default/ghost: serviceaccount "ghost" not found`) {
		t.Errorf("a pod of a missing ServiceAccount: %v, want 403 naming default/ghost", err)
	}
	_, err = srv.Client.CoreV1().ServiceAccounts("default").Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "ghost"}}, metav1.CreateOptions{})
	fatalIf(t, err)
	p, err = pods.Create(ctx, pod("ghostly", "ghost"), metav1.CreateOptions{})
	fatalIf(t, err)
	if p.Spec.ServiceAccountName != "ghost" {
		t.Errorf("serviceAccountName %q, want ghost", p.Spec.ServiceAccountName)
	}
	// A pod in a namespace made a moment ago waits for its default
	// ServiceAccount rather than failing.
	createNamespace(t, srv, "quick")
	_, err = srv.Client.CoreV1().Pods("quick").Create(ctx, pod("first", ""), metav1.CreateOptions{})
	fatalIf(t, err)
}

// TestNodeReadsItsPodsObjects: with its own credentials a node reads the
// Secrets, ConfigMaps and ServiceAccount its pods refer to, by name or by
// a metadata.name watch, and none of anyone else's.
func TestNodeReadsItsPodsObjects(t *testing.T) {
	t.Parallel()
	srv := StartServer(t, ServerOptions{ServiceRanges: v4Range})
	ctx := ctxT(t)
	createNamespace(t, srv, "app")
	admin := srv.Client.CoreV1()
	for _, name := range []string{"mine", "theirs"} {
		_, err := admin.Secrets("app").Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: name}, StringData: map[string]string{"k": "v"}}, metav1.CreateOptions{})
		fatalIf(t, err)
		_, err = admin.ConfigMaps("app").Create(ctx, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{})
		fatalIf(t, err)
	}
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "web"}, Spec: corev1.PodSpec{NodeName: "n1",
		Containers: []corev1.Container{{Name: "c", Image: "x", EnvFrom: []corev1.EnvFromSource{
			{ConfigMapRef: &corev1.ConfigMapEnvSource{LocalObjectReference: corev1.LocalObjectReference{Name: "mine"}}}}}},
		Volumes: []corev1.Volume{{Name: "s", VolumeSource: corev1.VolumeSource{Secret: &corev1.SecretVolumeSource{SecretName: "mine"}}}}}}
	_, err := admin.Pods("app").Create(ctx, pod, metav1.CreateOptions{})
	fatalIf(t, err)

	n1, n2 := nodeClient(t, srv, "n1").CoreV1(), nodeClient(t, srv, "n2").CoreV1()
	_, err = n1.Secrets("app").Get(ctx, "mine", metav1.GetOptions{})
	fatalIf(t, err)
	_, err = n1.ConfigMaps("app").Get(ctx, "mine", metav1.GetOptions{})
	fatalIf(t, err)
	_, err = n1.ServiceAccounts("app").Get(ctx, "default", metav1.GetOptions{})
	fatalIf(t, err)
	l, err := n1.Secrets("app").List(ctx, metav1.ListOptions{FieldSelector: fields.OneTermEqualSelector("metadata.name", "mine").String()})
	fatalIf(t, err)
	if len(l.Items) != 1 {
		t.Errorf("listing its secret by name: %d items", len(l.Items))
	}
	w, err := n1.ConfigMaps("app").Watch(ctx, metav1.ListOptions{FieldSelector: fields.OneTermEqualSelector("metadata.name", "mine").String()})
	fatalIf(t, err)
	w.Stop()

	for what, err := range map[string]error{
		"n1 gets another secret": func() error { _, err := n1.Secrets("app").Get(ctx, "theirs", metav1.GetOptions{}); return err }(),
		"n1 gets another configmap": func() error {
			_, err := n1.ConfigMaps("app").Get(ctx, "theirs", metav1.GetOptions{})
			return err
		}(),
		"n1 lists all secrets": func() error { _, err := n1.Secrets("app").List(ctx, metav1.ListOptions{}); return err }(),
		"n1 changes its secret": func() error {
			_, err := n1.Secrets("app").Update(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "mine"}}, metav1.UpdateOptions{})
			return err
		}(),
		"n2 gets n1's pod's secret": func() error { _, err := n2.Secrets("app").Get(ctx, "mine", metav1.GetOptions{}); return err }(),
	} {
		if !apierrors.IsForbidden(err) {
			t.Errorf("%s: %v, want 403 Forbidden", what, err)
		}
	}

	// Once the pod is gone, so is the node's access.
	fatalIf(t, admin.Pods("app").Delete(ctx, "web", metav1.DeleteOptions{GracePeriodSeconds: ptr(int64(0))}))
	eventually(t, 30*time.Second, "n1 refused its former pod's secret", func() error {
		_, err := n1.Secrets("app").Get(ctx, "mine", metav1.GetOptions{})
		if apierrors.IsForbidden(err) {
			return nil
		}
		return fmt.Errorf("get: %v", err)
	})
}
