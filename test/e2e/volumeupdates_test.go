package e2e

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/duet-net/duet/internal/testutil/roottest"
)

const liveVolumesManifest = `
apiVersion: v1
kind: ConfigMap
metadata: {name: live-config}
data: {value: c0}
---
apiVersion: v1
kind: Secret
metadata: {name: live-secret}
stringData: {value: s0}
---
apiVersion: v1
kind: Pod
metadata: {name: live-volumes, labels: {round: "0"}}
spec:
  nodeSelector: {kubernetes.io/hostname: node1}
  volumes:
  - {name: config, configMap: {name: live-config}}
  - {name: secret, secret: {secretName: live-secret}}
  - {name: later, configMap: {name: live-later, optional: true}}
  - name: info
    downwardAPI: {items: [{path: round, fieldRef: {fieldPath: "metadata.labels['round']"}}]}
  containers:
  - name: c
    image: ignored
    command: [sh, -c, 'last=; while :; do
      now="config=$(cat /live/config/value) secret=$(cat /live/secret/value) round=$(cat /live/info/round) later=$(cat /live/later/value 2>/dev/null) sub=$(cat /live/sub)";
      if [ "$now" != "$last" ]; then echo "$(date +%s.%N) $now"; last=$now; fi; sleep 0.02; done']
    volumeMounts:
    - {name: config, mountPath: /live/config}
    - {name: config, mountPath: /live/sub, subPath: value}
    - {name: secret, mountPath: /live/secret}
    - {name: later, mountPath: /live/later}
    - {name: info, mountPath: /live/info}
`

// observation is one line of the pod's log: what it read, and when.
type observation struct {
	at   time.Time
	vals map[string]string
}

// podReads follows the pod's log and sends each observation.
func podReads(ctx context.Context, t *testing.T, client kubernetes.Interface, ns, name string) <-chan observation {
	t.Helper()
	rc, err := client.CoreV1().Pods(ns).GetLogs(name, &corev1.PodLogOptions{Follow: true}).Stream(ctx)
	if err != nil {
		t.Fatalf("following the pod's log: %v", err)
	}
	out := make(chan observation, 100)
	go func() {
		defer close(out)
		defer rc.Close()
		s := bufio.NewScanner(rc)
		for s.Scan() {
			f := strings.Fields(s.Text())
			if len(f) == 0 {
				continue
			}
			secs, err := strconv.ParseFloat(f[0], 64)
			if err != nil {
				continue
			}
			o := observation{at: time.Unix(0, int64(secs*1e9)), vals: map[string]string{}}
			for _, kv := range f[1:] {
				k, v, _ := strings.Cut(kv, "=")
				o.vals[k] = v
			}
			select {
			case out <- o:
			case <-ctx.Done():
				return
			}
		}
	}()
	return out
}

// until waits for the pod to read key=want and returns that observation;
// every observation on the way must hold the keys of stay as they are.
func until(t *testing.T, reads <-chan observation, key, want string, stay map[string]string) observation {
	t.Helper()
	deadline := time.After(30 * time.Second)
	for {
		select {
		case o, ok := <-reads:
			if !ok {
				t.Fatalf("the pod's log ended before it read %s=%s", key, want)
			}
			for k, v := range stay {
				if o.vals[k] != v {
					t.Errorf("the pod read %s=%q, want %q still: %v", k, o.vals[k], v, o.vals)
				}
			}
			if o.vals[key] == want {
				return o
			}
		case <-deadline:
			t.Fatalf("the pod did not read %s=%s within 30 s", key, want)
		}
	}
}

func quantiles(ds []time.Duration) (p50, maxD time.Duration) {
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[(len(s)-1)/2], s[len(s)-1]
}

// TestVolumesFollowSources runs a pod through duet up that reads its
// configMap, secret, optional configMap and downwardAPI volumes in a loop:
// changes made with kubectl patch, apply, create, delete and label reach
// its files within seconds (the kubelet takes up to a minute), swapped in
// the kubelet's layout; the file it mounts by subPath keeps its first
// content. It reports how long ten changes of each source took, from the
// API call to the pod's read.
func TestVolumesFollowSources(t *testing.T) {
	roottest.Require(t, "kubectl")
	_, kubeconfig := up(t)
	dir := t.TempDir()
	manifest := filepath.Join(dir, "live.yaml")
	if err := os.WriteFile(manifest, []byte(liveVolumesManifest), 0o600); err != nil {
		t.Fatal(err)
	}
	kubectl(t, kubeconfig, "apply", "-f", manifest)
	kubectl(t, kubeconfig, "wait", "--for=condition=Ready", "pod/live-volumes", "--timeout=60s")
	cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	client := kubernetes.NewForConfigOrDie(cfg)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	reads := podReads(ctx, t, client, "default", "live-volumes")
	sub := map[string]string{"sub": "c0"}
	until(t, reads, "config", "c0", sub)

	// What a user does, with kubectl.
	kubectl(t, kubeconfig, "patch", "configmap", "live-config", "-p", `{"data":{"value":"patched"}}`)
	until(t, reads, "config", "patched", sub)
	secretFile := filepath.Join(dir, "secret.yaml")
	if err := os.WriteFile(secretFile, []byte("apiVersion: v1\nkind: Secret\nmetadata: {name: live-secret}\nstringData: {value: applied}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	kubectl(t, kubeconfig, "apply", "-f", secretFile)
	until(t, reads, "secret", "applied", sub)
	kubectl(t, kubeconfig, "create", "configmap", "live-later", "--from-literal=value=appeared")
	until(t, reads, "later", "appeared", sub)
	kubectl(t, kubeconfig, "delete", "configmap", "live-later")
	until(t, reads, "later", "", sub)
	kubectl(t, kubeconfig, "label", "pod", "live-volumes", "round=labelled", "--overwrite")
	until(t, reads, "round", "labelled", sub)
	// The kubelet's layout: value -> ..data/value -> ..<time>/value.
	layout := string(kubectl(t, kubeconfig, "exec", "live-volumes", "--", "sh", "-c",
		"readlink /live/config/value /live/config/..data; cat /live/config/..data/value"))
	if lines := strings.Split(layout, "\n"); len(lines) < 3 || lines[0] != "..data/value" || !strings.HasPrefix(lines[1], "..20") || lines[2] != "patched" {
		t.Errorf("the configMap volume's layout:\n%s\nwant value -> ..data/value, ..data -> ..<time>", layout)
	}

	// Ten changes of each source, timed from the API call to the read.
	const rounds = 10
	latency := map[string][]time.Duration{}
	for i := 1; i <= rounds; i++ {
		v := fmt.Sprintf("r%d", i)
		start := time.Now()
		if _, err := client.CoreV1().ConfigMaps("default").Patch(ctx, "live-config", types.MergePatchType,
			fmt.Appendf(nil, `{"data":{"value":%q}}`, v), metav1.PatchOptions{}); err != nil {
			t.Fatal(err)
		}
		latency["ConfigMap"] = append(latency["ConfigMap"], until(t, reads, "config", v, sub).at.Sub(start))

		start = time.Now()
		if _, err := client.CoreV1().Secrets("default").Patch(ctx, "live-secret", types.MergePatchType,
			fmt.Appendf(nil, `{"stringData":{"value":%q}}`, v), metav1.PatchOptions{}); err != nil {
			t.Fatal(err)
		}
		latency["Secret"] = append(latency["Secret"], until(t, reads, "secret", v, sub).at.Sub(start))

		start = time.Now()
		if _, err := client.CoreV1().Pods("default").Patch(ctx, "live-volumes", types.MergePatchType,
			fmt.Appendf(nil, `{"metadata":{"labels":{"round":%q}}}`, v), metav1.PatchOptions{}); err != nil {
			t.Fatal(err)
		}
		latency["label"] = append(latency["label"], until(t, reads, "round", v, sub).at.Sub(start))
	}
	for _, what := range []string{"ConfigMap", "Secret", "label"} {
		p50, mx := quantiles(latency[what])
		t.Logf("%s change to the pod's read, %d changes: p50 %s, max %s", what, rounds, p50.Round(time.Millisecond), mx.Round(time.Millisecond))
		if mx > 5*time.Second {
			t.Errorf("a %s change took %s to reach the pod, want a few seconds at most: %v", what, mx, latency[what])
		}
	}
}
