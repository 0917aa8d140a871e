package integration

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// The GA manifest: a dual-stack-if-possible Service, a headless one
// without selector and an ExternalName.
const kubectlManifest = `apiVersion: v1
kind: Service
metadata:
  name: web
spec:
  ipFamilyPolicy: PreferDualStack
  selector:
    app: web
  ports:
  - port: 80
---
apiVersion: v1
kind: Service
metadata:
  name: hl
spec:
  clusterIP: None
  ports:
  - port: 53
    protocol: UDP
---
apiVersion: v1
kind: Service
metadata:
  name: ext
spec:
  type: ExternalName
  externalName: db.example.com
`

// legacyManifest is a 1.16 manifest: the singular spec.ipFamily.
func legacyManifest(name string, fam corev1.IPFamily) string {
	return fmt.Sprintf(`apiVersion: v1
kind: Service
metadata:
  name: %s
spec:
  ipFamily: %s
  selector:
    app: %s
  ports:
  - port: 8080
    targetPort: 80
`, name, fam, name)
}

func writeManifest(t *testing.T, name, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	fatalIf(t, os.WriteFile(p, []byte(content), 0o600))
	return p
}

// testKubectl drives a representative subset of the matrix through the
// machine's kubectl with its default (strict, server-side) validation.
func testKubectl(t *testing.T, srv *Server, sh shape) {
	ga := writeManifest(t, "ga.yaml", kubectlManifest)
	getSvc := func(t *testing.T, name string) *corev1.Service {
		t.Helper()
		svc, err := srv.Client.CoreV1().Services("default").Get(ctxT(t), name, metav1.GetOptions{})
		fatalIf(t, err)
		return svc
	}
	var web *corev1.Service

	t.Run("apply GA manifest", func(t *testing.T) {
		out := srv.MustKubectl(t, "", "apply", "-f", ga)
		for _, n := range []string{"web", "hl", "ext"} {
			if !strings.Contains(out, "service/"+n+" created") {
				t.Errorf("kubectl apply output %q lacks service/%s created", out, n)
			}
		}
		web = getSvc(t, "web")
		checkService(t, srv, sh, web, accept(prefer, sh.families()...))
		hl := accept(require, sh.primary(), sh.other())
		hl.ips = []string{none}
		checkService(t, srv, sh, getSvc(t, "hl"), hl)
		checkService(t, srv, sh, getSvc(t, "ext"), want{external: true})
	})
	if web == nil {
		return
	}

	t.Run("re-apply keeps IPs", func(t *testing.T) {
		out := srv.MustKubectl(t, "", "apply", "-f", ga)
		if !strings.Contains(out, "service/web unchanged") {
			t.Errorf("second kubectl apply: %q, want service/web unchanged", out)
		}
		changed := strings.Replace(kubectlManifest, "  name: web\n", "  name: web\n  labels:\n    tier: front\n", 1)
		out = srv.MustKubectl(t, changed, "apply", "-f", "-")
		if !strings.Contains(out, "service/web configured") {
			t.Errorf("kubectl apply of a changed manifest: %q, want service/web configured", out)
		}
		srv.MustKubectl(t, changed, "apply", "--server-side", "--force-conflicts", "-f", "-")
		got := getSvc(t, "web")
		if !slices.Equal(got.Spec.ClusterIPs, web.Spec.ClusterIPs) || got.Labels["tier"] != "front" {
			t.Errorf("after re-applying: clusterIPs %v labels %v, want %v and tier=front", got.Spec.ClusterIPs, got.Labels, web.Spec.ClusterIPs)
		}
	})

	t.Run("1.16 ipFamily manifest", func(t *testing.T) {
		for _, verb := range []string{"apply", "create"} {
			name := "legacy-v6-" + verb
			out, errOut, err := srv.Kubectl(legacyManifest(name, corev1.IPv6Protocol), verb, "-f", "-")
			if !sh.has(corev1.IPv6Protocol) {
				msg := fmt.Sprintf(`The Service "%s" is invalid: spec.ipFamily: Invalid value: "IPv6": only the following families are allowed: IPv4`, name)
				if err == nil || !strings.Contains(errOut, msg) {
					t.Errorf("kubectl %s of an IPv6 1.16 manifest on %s: err %v, stderr %q; want %q", verb, sh.name, err, errOut, msg)
				}
				continue
			}
			if err != nil {
				t.Errorf("kubectl %s of an IPv6 1.16 manifest: %v\n%s%s", verb, err, out, errOut)
				continue
			}
			checkService(t, srv, sh, getSvc(t, name), accept(single, corev1.IPv6Protocol))
		}
		// The primary family works everywhere; jsonpath reads the field back.
		name := "legacy-primary"
		srv.MustKubectl(t, legacyManifest(name, sh.primary()), "create", "-f", "-")
		fam := srv.MustKubectl(t, "", "get", "svc", name, "-o", "jsonpath={.spec.ipFamily} {.spec.ipFamilies[0]} {.spec.ipFamilyPolicy}")
		if want := fmt.Sprintf("%s %s SingleStack", sh.primary(), sh.primary()); fam != want {
			t.Errorf("kubectl get -o jsonpath: %q, want %q", fam, want)
		}
	})

	t.Run("clusterIP already allocated", func(t *testing.T) {
		m := fmt.Sprintf("apiVersion: v1\nkind: Service\nmetadata:\n  name: taken\nspec:\n  clusterIP: %s\n  ports:\n  - port: 80\n", web.Spec.ClusterIP)
		_, errOut, err := srv.Kubectl(m, "create", "-f", "-")
		msg := fmt.Sprintf("failed to allocate IP %s: provided IP is already allocated", web.Spec.ClusterIP)
		if err == nil || !strings.Contains(errOut, msg) {
			t.Errorf("kubectl create with web's clusterIP: err %v stderr %q, want %q", err, errOut, msg)
		}
	})

	t.Run("get -o wide", func(t *testing.T) {
		out := srv.MustKubectl(t, "", "get", "svc", "-o", "wide")
		lines := strings.Split(strings.TrimSpace(out), "\n")
		header := strings.Fields(lines[0])
		wantCols := []string{"NAME", "TYPE", "CLUSTER-IP", "EXTERNAL-IP", "PORT(S)", "AGE", "SELECTOR"}
		if len(header) < len(wantCols) || !slices.Equal(header[:len(wantCols)], wantCols) {
			t.Fatalf("kubectl get svc -o wide header %v, want it to start with %v", header, wantCols)
		}
		rows := map[string]map[string]string{}
		for _, l := range lines[1:] {
			f := strings.Fields(l)
			if len(f) < len(header) {
				t.Errorf("row %q has fewer columns than the header %v", l, header)
				continue
			}
			row := map[string]string{}
			for i, h := range header {
				row[h] = f[i]
			}
			rows[f[0]] = row
		}
		age := regexp.MustCompile(`^[0-9]+[smhd]`)
		check := func(name, typ, clusterIP, external, ports, selector string) {
			r, found := rows[name]
			if !found {
				t.Errorf("no row for %s in\n%s", name, out)
				return
			}
			want := map[string]string{"TYPE": typ, "CLUSTER-IP": clusterIP, "EXTERNAL-IP": external, "PORT(S)": ports, "SELECTOR": selector}
			for col, v := range want {
				if r[col] != v {
					t.Errorf("%s: %s = %q, want %q\n%s", name, col, r[col], v, out)
				}
			}
			if !age.MatchString(r["AGE"]) {
				t.Errorf("%s: AGE = %q", name, r["AGE"])
			}
		}
		// CLUSTER-IP lists every cluster IP, primary first (Kubernetes shows
		// only the primary; Duet adds the secondary).
		check("web", "ClusterIP", strings.Join(web.Spec.ClusterIPs, ","), "<none>", "80/TCP", "app=web")
		check("hl", "ClusterIP", "None", "<none>", "53/UDP", "<none>")
		check("ext", "ExternalName", "<none>", "db.example.com", "<none>", "<none>")
		check("kubernetes", "ClusterIP", static(sh.primary(), 1), "<none>", "443/TCP", "<none>")
	})

	t.Run("delete releases", func(t *testing.T) {
		srv.MustKubectl(t, "", "delete", "-f", ga)
		for _, ip := range web.Spec.ClusterIPs {
			recordGone(t, srv, ip)
		}
	})
}
