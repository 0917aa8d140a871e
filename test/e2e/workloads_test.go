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
	discoveryv1 "k8s.io/api/discovery/v1"

	"github.com/duet-net/duet/internal/agent/sandbox"
	"github.com/duet-net/duet/internal/alloc"
	"github.com/duet-net/duet/internal/alloc/boltstore"
	"github.com/duet-net/duet/internal/cluster"
	"github.com/duet-net/duet/internal/testutil/roottest"
	"github.com/duet-net/duet/test/harness"
)

// workloadManifest is a Deployment of upstream's agnhost serving HTTP,
// readiness-gated, behind a RequireDualStack Service, and a client pod.
const workloadManifest = `
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 3
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      terminationGracePeriodSeconds: 5
      containers:
      - name: agnhost
        image: registry.k8s.io/e2e-test-images/agnhost:2.66.1
        args: [netexec, --http-port=8080]
        ports: [{name: http, containerPort: 8080}]
        readinessProbe: {httpGet: {path: /hostname, port: http}, periodSeconds: 1}
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  ipFamilyPolicy: RequireDualStack
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: http}]
---
apiVersion: v1
kind: Pod
metadata: {name: client}
spec:
  terminationGracePeriodSeconds: 1
  containers: [{name: agnhost, image: registry.k8s.io/e2e-test-images/agnhost:2.66.1, args: [pause]}]
`

// TestDeploymentBehindDualStackService runs a Deployment of three agnhost
// pods on `duet up`: its Service answers over both families from exactly
// its pods, a rollout replaces them all and the Service follows, and
// deleting the Deployment leaves no ReplicaSet, pod, pod namespace, IP
// reservation or EndpointSlice entry behind.
func TestDeploymentBehindDualStackService(t *testing.T) {
	harness.Agnhost(t)
	dataDir, kubeconfig := up(t)
	c := &servicesCluster{dataDir: dataDir, kubeconfig: kubeconfig, pods: map[string][]string{}}
	c.topo, _ = cluster.Plan(dataDir, 2)
	manifest := filepath.Join(t.TempDir(), "workload.yaml")
	if err := os.WriteFile(manifest, []byte(workloadManifest), 0o600); err != nil {
		t.Fatal(err)
	}
	kubectl(t, kubeconfig, "apply", "-f", manifest)
	kubectl(t, kubeconfig, "rollout", "status", "deployment/web", "--timeout=180s")
	kubectl(t, kubeconfig, "wait", "--for=condition=Ready", "pod/client", "--timeout=90s")

	svc := c.service(t, "web")
	if len(svc.Spec.ClusterIPs) != 2 {
		t.Fatalf("Service web has cluster IPs %v, want one per family", svc.Spec.ClusterIPs)
	}
	// reachable checks that each cluster IP answers from exactly the
	// Deployment's ready pods.
	reachable := func(what string) {
		t.Helper()
		var last string
		roottest.Eventually(t, 60*time.Second, what, func() error {
			want := webPods(t, kubeconfig)
			for _, ip := range svc.Spec.ClusterIPs {
				got := setOf(c.httpNames(t, "client", urlOf(ip, 80, "/hostname"), 30))
				if !slices.Equal(got, want) {
					last = fmt.Sprintf("%s answered from %v, want %v", ip, got, want)
					return fmt.Errorf("%s", last)
				}
			}
			return nil
		})
	}
	reachable("the Service reaches the 3 pods over both families")
	first := webPods(t, kubeconfig)

	kubectl(t, kubeconfig, "set", "image", "deployment/web", "agnhost=registry.k8s.io/e2e-test-images/agnhost:2.67")
	kubectl(t, kubeconfig, "rollout", "status", "deployment/web", "--timeout=180s")
	reachable("after the rollout the Service reaches the 3 new pods over both families")
	for _, p := range webPods(t, kubeconfig) {
		if slices.Contains(first, p) {
			t.Errorf("pod %s survived the rollout", p)
		}
	}
	if out := string(kubectl(t, kubeconfig, "rollout", "history", "deployment/web")); !strings.Contains(out, "\n1 ") || !strings.Contains(out, "\n2 ") {
		t.Errorf("rollout history:\n%s", out)
	}

	kubectl(t, kubeconfig, "delete", "deployment", "web")
	roottest.Eventually(t, 90*time.Second, "the Deployment's ReplicaSets, pods and endpoints gone", func() error {
		if out := string(kubectl(t, kubeconfig, "get", "rs,pods", "-l", "app=web", "-o", "name")); out != "" {
			return fmt.Errorf("left: %s", out)
		}
		var list discoveryv1.EndpointSliceList
		if err := json.Unmarshal(kubectl(t, kubeconfig, "get", "endpointslices", "-l", "kubernetes.io/service-name=web", "-o", "json"), &list); err != nil {
			return err
		}
		for _, s := range list.Items {
			if len(s.Endpoints) > 0 {
				return fmt.Errorf("slice %s still has %d endpoints", s.Name, len(s.Endpoints))
			}
		}
		return nil
	})
	// Only the client's namespace and addresses are left on the nodes.
	sandboxes, held := 0, 0
	for _, n := range c.topo.Nodes {
		entries, err := sandbox.List(cluster.NetNSPath(n.NetNS))
		if err != nil {
			t.Fatal(err)
		}
		sandboxes += len(entries)
		st, err := boltstore.Open(filepath.Join(dataDir, "nodes", n.Name, "ipam"), "duet", 30*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		h, _, err := alloc.CountPodIPs(st)
		st.Close()
		if err != nil {
			t.Fatal(err)
		}
		held += h
	}
	if sandboxes != 1 || held != 2 {
		t.Errorf("after deleting the Deployment: %d pod namespaces and %d addresses held, want the client's 1 and 2", sandboxes, held)
	}
}

// webPods names the ready, not terminating pods of the Deployment.
func webPods(t *testing.T, kubeconfig string) []string {
	t.Helper()
	var list corev1.PodList
	if err := json.Unmarshal(kubectl(t, kubeconfig, "get", "pods", "-l", "app=web", "-o", "json"), &list); err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, p := range list.Items {
		for _, cond := range p.Status.Conditions {
			if cond.Type == corev1.PodReady && cond.Status == corev1.ConditionTrue && p.DeletionTimestamp == nil {
				names = append(names, p.Name)
			}
		}
	}
	slices.Sort(names)
	return names
}
