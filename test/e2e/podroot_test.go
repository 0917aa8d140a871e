package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/duet-net/duet/internal/testutil/roottest"
)

const worldManifest = `
apiVersion: v1
kind: Pod
metadata: {name: world-0, labels: {app: world}}
spec:
  nodeSelector: {kubernetes.io/hostname: node1}
  hostname: h
  subdomain: sub
  hostAliases: [{ip: 198.51.100.7, hostnames: [outside.example]}]
  volumes:
  - {name: shared, emptyDir: {}}
  - {name: mem, emptyDir: {medium: Memory}}
  - name: info
    downwardAPI: {items: [{path: labels, fieldRef: {fieldPath: metadata.labels}}]}
  containers:
  - name: writer
    image: ignored
    command: [sh, -c, 'hostname; cat /etc/hosts /etc/resolv.conf /duet-e2e/info/labels; echo; stat -f -c %T /mem; echo hi > /shared/x; echo WRITER-DONE; exec sleep 3600']
    volumeMounts:
    - {name: shared, mountPath: /shared}
    - {name: mem, mountPath: /mem}
    - {name: info, mountPath: /duet-e2e/info, readOnly: true}
  - name: reader
    image: ignored
    workingDir: /data
    command: [sh, -c, 'until test -e x; do sleep 0.1; done; cat x; test -e /duet-e2e/info || echo NO-INFO; echo READER-DONE; exec sleep 3600']
    volumeMounts: [{name: shared, mountPath: /data}]
`

// TestPodWorld runs a pod through duet up whose containers see their own
// hostname, /etc/hosts and /etc/resolv.conf (the kube-dns Service's cluster
// IPs of both families), volumes at paths the host lacks, an emptyDir
// shared between them; the host sees none of it, and nothing of the
// pod's world is mounted after it is deleted or after the cluster stops.
func TestPodWorld(t *testing.T) {
	roottest.Require(t, "kubectl", "nsenter")
	hostName, _ := os.Hostname()
	var dataDir string
	t.Cleanup(func() { // runs after duet up stopped
		if dataDir != "" {
			if left := mountsUnder(t, dataDir); len(left) > 0 {
				t.Errorf("mounts left after duet up stopped:\n%s", strings.Join(left, "\n"))
			}
		}
	})
	dataDir, kubeconfig := up(t)
	manifest := filepath.Join(t.TempDir(), "world.yaml")
	if err := os.WriteFile(manifest, []byte(worldManifest), 0o600); err != nil {
		t.Fatal(err)
	}
	kubectl(t, kubeconfig, "apply", "-f", manifest)
	kubectl(t, kubeconfig, "wait", "--for=condition=Ready", "pod/world-0", "--timeout=60s")
	var pod corev1.Pod
	if err := json.Unmarshal(kubectl(t, kubeconfig, "get", "pod", "world-0", "-o", "json"), &pod); err != nil {
		t.Fatal(err)
	}
	var svc corev1.Service
	if err := json.Unmarshal(kubectl(t, kubeconfig, "get", "service", "-n", "kube-system", "kube-dns", "-o", "json"), &svc); err != nil {
		t.Fatal(err)
	}
	logOf := func(c, until string) string {
		var out string
		roottest.Eventually(t, 30*time.Second, c+"'s log", func() error {
			data, err := exec.Command("kubectl", "--kubeconfig", kubeconfig, "logs", "world-0", "-c", c).CombinedOutput()
			out = string(data)
			if err != nil || !strings.Contains(out, until) {
				return fmt.Errorf("%q so far (%v)", out, err)
			}
			return nil
		})
		return out
	}
	writer := logOf("writer", "WRITER-DONE")
	want := []string{"h\n", "\tlocalhost\n", "198.51.100.7\toutside.example\n", "app=\"world\"", "tmpfs\n",
		"search default.svc.cluster.local svc.cluster.local cluster.local", "options ndots:5"}
	for _, ip := range pod.Status.PodIPs {
		want = append(want, ip.IP+"\th.sub.default.svc.cluster.local\th\n")
	}
	for _, ip := range svc.Spec.ClusterIPs {
		want = append(want, "nameserver "+ip+"\n")
	}
	if len(pod.Status.PodIPs) != 2 || len(svc.Spec.ClusterIPs) != 2 {
		t.Fatalf("pod IPs %v, kube-dns cluster IPs %v: want two of each", pod.Status.PodIPs, svc.Spec.ClusterIPs)
	}
	for _, w := range want {
		if !strings.HasPrefix(writer, "h\n") || !strings.Contains(writer, w) {
			t.Errorf("the writer's world lacks %q:\n%s", w, writer)
		}
	}
	if reader := logOf("reader", "READER-DONE"); reader != "hi\nNO-INFO\nREADER-DONE\n" {
		t.Errorf("the reader saw %q, want the writer's file in its working directory and not the writer's volume", reader)
	}
	if h, _ := os.Hostname(); h != hostName {
		t.Errorf("the host's hostname changed from %q to %q", hostName, h)
	}
	for _, p := range []string{"/duet-e2e", "/shared", "/data", "/mem"} {
		if _, err := os.Lstat(p); err == nil {
			t.Errorf("%s appeared on the host", p)
		}
	}

	// Deleting the pod removes its world.
	kubectl(t, kubeconfig, "delete", "pod", "world-0", "--wait=true", "--timeout=60s")
	roottest.Eventually(t, 30*time.Second, "the pod's world removed", func() error {
		for _, m := range mountsUnder(t, dataDir) {
			if strings.Contains(m, string(pod.UID)) {
				return fmt.Errorf("still mounted: %s", m)
			}
		}
		return nil
	})

	// What a world adds to a pod's start, from node2's agent: 10 pods.
	for i := range 10 {
		kubectl(t, kubeconfig, "run", fmt.Sprintf("t%d", i), "--image=ignored", "--restart=Never",
			`--overrides={"spec":{"nodeSelector":{"kubernetes.io/hostname":"node2"}}}`, "--command", "--", "sleep", "3600")
	}
	kubectl(t, kubeconfig, "wait", "--for=condition=Ready", "pod", "--all", "--timeout=300s")
	m := agentMetrics(t, dataDir, "node2")
	for _, stage := range []string{"world", "sandbox", "total"} {
		t.Logf("node2, stage %s: %s", stage, histogramMedian(m, stage))
	}
	if !strings.Contains(m, `duet_agent_pod_setup_duration_seconds_count{stage="world"} 10`) {
		t.Errorf("node2 reports no world for its 10 pods:\n%s", m)
	}
}

// mountsUnder lists the mounts of this mount namespace under dir.
func mountsUnder(t *testing.T, dir string) []string {
	t.Helper()
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, line := range strings.Split(string(data), "\n") {
		if f := strings.Fields(line); len(f) > 4 && strings.HasPrefix(f[4], dir) {
			out = append(out, line)
		}
	}
	return out
}

// histogramMedian reads a stage's setup histogram from the metrics: the
// mean, and the upper bound of the bucket holding the median.
func histogramMedian(metrics, stage string) string {
	var count, sum float64
	type bucket struct{ le, n float64 }
	var buckets []bucket
	for _, line := range strings.Split(metrics, "\n") {
		if !strings.Contains(line, `stage="`+stage+`"`) || !strings.HasPrefix(line, "duet_agent_pod_setup_duration_seconds") {
			continue
		}
		f := strings.Fields(line)
		v, _ := strconv.ParseFloat(f[len(f)-1], 64)
		switch {
		case strings.HasPrefix(line, "duet_agent_pod_setup_duration_seconds_count"):
			count = v
		case strings.HasPrefix(line, "duet_agent_pod_setup_duration_seconds_sum"):
			sum = v
		case strings.Contains(line, `le="`):
			_, le, _ := strings.Cut(line, `le="`)
			le, _, _ = strings.Cut(le, `"`)
			b, _ := strconv.ParseFloat(le, 64)
			buckets = append(buckets, bucket{b, v})
		}
	}
	sort.Slice(buckets, func(i, j int) bool { return buckets[i].le < buckets[j].le })
	median := "?"
	for _, b := range buckets {
		if b.n >= count/2 {
			median = fmt.Sprintf("≤%gms", b.le*1000)
			break
		}
	}
	if count == 0 {
		return "no pods"
	}
	return fmt.Sprintf("%v pods, mean %.1fms, median %s", count, sum/count*1000, median)
}
