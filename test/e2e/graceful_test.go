package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestGracefulPodDeletion: a deleted pod's containers get SIGTERM and the
// pod's grace period to finish (SIGKILL after it), and the pod object stays
// Terminating until its node's agent has stopped it.
func TestGracefulPodDeletion(t *testing.T) {
	_, kubeconfig := up(t, "--nodes", "1")
	dir := t.TempDir()
	marker := filepath.Join(dir, "got-term")
	manifest := filepath.Join(dir, "pods.yaml")
	// A container writes into its own root file system; a hostPath volume
	// lets it leave a file where the test reads it.
	writeFile(t, manifest, fmt.Sprintf(`
apiVersion: v1
kind: Pod
metadata: {name: polite}
spec:
  volumes: [{name: out, hostPath: {path: %s}}]
  containers:
  - name: c
    image: ignored
    command: [bash, -c, 'trap "echo TERM > /out/got-term; exit 0" TERM; while true; do sleep 0.1; done']
    volumeMounts: [{name: out, mountPath: /out}]
---
apiVersion: v1
kind: Pod
metadata: {name: stubborn}
spec:
  terminationGracePeriodSeconds: 2
  containers: [{name: c, image: ignored, command: [bash, -c, 'trap "" TERM; while true; do sleep 0.1; done']}]
`, dir))
	kubectl(t, kubeconfig, "apply", "-f", manifest)
	kubectl(t, kubeconfig, "wait", "--for=condition=Ready", "pod/polite", "pod/stubborn", "--timeout=60s")

	start := time.Now()
	kubectl(t, kubeconfig, "delete", "pod", "polite", "--wait=true", "--timeout=30s")
	if data, err := os.ReadFile(marker); err != nil || strings.TrimSpace(string(data)) != "TERM" {
		t.Errorf("polite pod's container did not see SIGTERM before it went: %q, %v", data, err)
	}
	if took := time.Since(start); took > 10*time.Second {
		t.Errorf("a pod that exits on SIGTERM took %v to delete", took)
	}

	start = time.Now()
	kubectl(t, kubeconfig, "delete", "pod", "stubborn", "--wait=false")
	// Terminating, still there, while its grace period runs.
	out := string(kubectl(t, kubeconfig, "get", "pod", "stubborn", "-o", "jsonpath={.metadata.deletionTimestamp}"))
	if out == "" {
		t.Errorf("stubborn pod is not Terminating right after delete")
	}
	kubectl(t, kubeconfig, "wait", "--for=delete", "pod/stubborn", "--timeout=30s")
	if took := time.Since(start); took < 2*time.Second || took > 15*time.Second {
		t.Errorf("a pod ignoring SIGTERM with a 2 s grace period went after %v", took)
	}
}
