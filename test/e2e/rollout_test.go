package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/duet-net/duet/internal/testutil/roottest"
	"github.com/duet-net/duet/test/harness"
)

// rolloutManifest: a 10-replica Deployment of agnhost netexec, readiness
// gated, whose pods keep serving for 5 s after SIGTERM (the time the
// proxies take to drop a terminating endpoint, with room), behind a
// RequireDualStack Service; and a DaemonSet.
const rolloutManifest = `
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 10
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      terminationGracePeriodSeconds: 10
      containers:
      - name: agnhost
        image: registry.k8s.io/e2e-test-images/agnhost:2.66.1
        args: [netexec, --http-port=8080, --delay-shutdown=5]
        ports: [{name: http, containerPort: 8080}]
        readinessProbe: {httpGet: {path: /readyz, port: http}, periodSeconds: 1}
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  ipFamilyPolicy: RequireDualStack
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: http}]
---
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: everywhere}
spec:
  selector: {matchLabels: {app: everywhere}}
  template:
    metadata: {labels: {app: everywhere}}
    spec:
      terminationGracePeriodSeconds: 1
      containers: [{name: pause, image: registry.k8s.io/e2e-test-images/agnhost:2.66.1, args: [pause]}]
`

// TestRollingUpdateServesThroughout: on `duet up --nodes 3`, a DaemonSet
// has one pod on each node, and a rolling update of a 10-replica
// Deployment behind a dual-stack Service loses no request of a client
// that asks both cluster IPs without pause the whole time.
func TestRollingUpdateServesThroughout(t *testing.T) {
	harness.Agnhost(t)
	_, kubeconfig := up(t, "--nodes", "3")
	manifest := filepath.Join(t.TempDir(), "rollout.yaml")
	if err := os.WriteFile(manifest, []byte(rolloutManifest), 0o600); err != nil {
		t.Fatal(err)
	}
	kubectl(t, kubeconfig, "apply", "-f", manifest)
	kubectl(t, kubeconfig, "rollout", "status", "deployment/web", "--timeout=240s")
	kubectl(t, kubeconfig, "rollout", "status", "daemonset/everywhere", "--timeout=120s")

	var ds corev1.PodList
	if err := json.Unmarshal(kubectl(t, kubeconfig, "get", "pods", "-l", "app=everywhere", "-o", "json"), &ds); err != nil {
		t.Fatal(err)
	}
	var nodes []string
	for _, p := range ds.Items {
		nodes = append(nodes, p.Spec.NodeName)
	}
	slices.Sort(nodes)
	if !slices.Equal(nodes, []string{"node1", "node2", "node3"}) {
		t.Errorf("the DaemonSet's pods are on %v, want one on each of node1, node2, node3", nodes)
	}

	var svc corev1.Service
	if err := json.Unmarshal(kubectl(t, kubeconfig, "get", "svc", "web", "-o", "json"), &svc); err != nil {
		t.Fatal(err)
	}
	if len(svc.Spec.ClusterIPs) != 2 {
		t.Fatalf("Service web has cluster IPs %v, want one per family", svc.Spec.ClusterIPs)
	}
	var urls []string
	for _, ip := range svc.Spec.ClusterIPs {
		urls = append(urls, urlOf(ip, 80, "/hostname"))
	}
	// The client asks each cluster IP in turn, one request at a time, and
	// logs each outcome; MARK lines let the test find what came after a
	// moment.
	loop := `while :; do for u in "$@"; do if curl -sS -g --max-time 3 -o /dev/null "$u"; then echo OK; else echo "FAIL $u"; fi; done; test -e /tmp/mark && rm /tmp/mark && echo MARK; done`
	kubectl(t, kubeconfig, "run", "client", "--image=busybox", "--restart=Never", "--command", "--",
		"sh", "-c", loop, "sh", urls[0], urls[1])
	kubectl(t, kubeconfig, "wait", "--for=condition=Ready", "pod/client", "--timeout=90s")
	logs := func() string { return string(kubectl(t, kubeconfig, "logs", "client")) }
	mark := func() {
		t.Helper()
		before := strings.Count(logs(), "MARK")
		kubectl(t, kubeconfig, "exec", "client", "--", "touch", "/tmp/mark")
		roottest.Eventually(t, 30*time.Second, "the client's mark", func() error {
			if strings.Count(logs(), "MARK") <= before {
				return fmt.Errorf("no new mark yet")
			}
			return nil
		})
	}
	mark()
	kubectl(t, kubeconfig, "rollout", "restart", "deployment/web")
	kubectl(t, kubeconfig, "rollout", "status", "deployment/web", "--timeout=300s")
	// Every old pod is gone, so the last one's endpoint was dropped while
	// it still served; the mark closes what the client saw of it.
	roottest.Eventually(t, 60*time.Second, "the old pods gone", func() error {
		if n := strings.Count(string(kubectl(t, kubeconfig, "get", "pods", "-l", "app=web", "-o", "name")), "pod/"); n != 10 {
			return fmt.Errorf("%d pods", n)
		}
		return nil
	})
	mark()
	out := logs()
	during := out[strings.Index(out, "MARK"):strings.LastIndex(out, "MARK")]
	ok, failed := strings.Count(during, "OK\n"), strings.Count(during, "FAIL")
	t.Logf("during the rollout: %d requests answered, %d failed", ok, failed)
	if failed > 0 || ok < 20 {
		var fails []string
		for _, l := range strings.Split(during, "\n") {
			if strings.HasPrefix(l, "FAIL") {
				fails = append(fails, l)
			}
		}
		t.Errorf("%d of %d requests failed during the rollout (want none of at least 20): %v", failed, ok+failed, fails)
	}
}
