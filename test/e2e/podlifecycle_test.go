package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/duet-net/duet/internal/cluster"
	"github.com/duet-net/duet/internal/testutil/roottest"
)

// podLifecycleManifest: a hostNetwork netexec behind a dual-stack Service;
// a netexec whose readiness probe passes only while the test's file
// exists (a hostPath volume, %s); a container that ignores SIGTERM and
// whose liveness probe always fails (after a delay that lets it set its
// trap); a container that crashes at once, whose readiness probe would
// pass only after 30 s of running; and a client pod.
const podLifecycleManifest = `
apiVersion: v1
kind: Pod
metadata: {name: hostweb, labels: {app: hostweb}}
spec:
  hostNetwork: true
  nodeSelector: {kubernetes.io/hostname: node1}
  containers: [{name: netexec, image: ignored, command: [duet, netexec, --http-port, "18080", --udp-port, "18081"],
    ports: [{name: http, containerPort: 18080}]}]
---
apiVersion: v1
kind: Pod
metadata: {name: gated, labels: {app: gated}}
spec:
  nodeSelector: {kubernetes.io/hostname: node2}
  volumes: [{name: gate, hostPath: {path: %s}}]
  containers: [{name: netexec, image: ignored, command: [duet, netexec, --http-port, "8080", --udp-port, "8081"],
    ports: [{name: http, containerPort: 8080}],
    volumeMounts: [{name: gate, mountPath: /gate}],
    readinessProbe: {exec: {command: [test, -f, /gate/ready]}, periodSeconds: 1}}]
---
apiVersion: v1
kind: Pod
metadata: {name: unlive}
spec:
  nodeSelector: {kubernetes.io/hostname: node1}
  terminationGracePeriodSeconds: 120
  containers: [{name: c, image: ignored, command: [bash, -c, 'trap "" TERM; while true; do sleep 0.1; done'],
    livenessProbe: {tcpSocket: {port: 9}, initialDelaySeconds: 2, periodSeconds: 1, failureThreshold: 1, terminationGracePeriodSeconds: 1}}]
---
apiVersion: v1
kind: Pod
metadata: {name: crashy}
spec:
  nodeSelector: {kubernetes.io/hostname: node2}
  containers: [{name: c, image: ignored, command: [sh, -c, 'exit 3'],
    readinessProbe: {exec: {command: ["true"]}, initialDelaySeconds: 30, periodSeconds: 1}}]
---
apiVersion: v1
kind: Pod
metadata: {name: client}
spec:
  nodeSelector: {kubernetes.io/hostname: node2}
  containers: [{name: netexec, image: ignored, command: [duet, netexec, --http-port, "8080", --udp-port, "8081"]}]
---
apiVersion: v1
kind: Service
metadata: {name: hostweb}
spec:
  ipFamilyPolicy: RequireDualStack
  selector: {app: hostweb}
  ports: [{name: http, port: 80, targetPort: http}]
---
apiVersion: v1
kind: Service
metadata: {name: gated}
spec:
  ipFamilyPolicy: RequireDualStack
  selector: {app: gated}
  ports: [{name: http, port: 80, targetPort: http}]
`

// TestPodLifecycle runs pods through duet up whose status follows the
// kubelet's: a hostNetwork pod has its node's InternalIPs and is reached
// through a dual-stack Service; a readiness probe decides Ready and the
// EndpointSlice condition; a failing liveness probe restarts its container
// after the probe's grace period; a crash-looping container shows
// CrashLoopBackOff, its restarts and last exit code, and is never Ready.
func TestPodLifecycle(t *testing.T) {
	roottest.Require(t, "kubectl", "nsenter")
	dataDir, kubeconfig := up(t)
	c := &servicesCluster{dataDir: dataDir, kubeconfig: kubeconfig, pods: map[string][]string{}}
	c.topo, _ = cluster.Plan(dataDir, 2)
	gate := t.TempDir()
	manifest := filepath.Join(t.TempDir(), "pods.yaml")
	if err := os.WriteFile(manifest, fmt.Appendf(nil, podLifecycleManifest, gate), 0o600); err != nil {
		t.Fatal(err)
	}
	// The crash-looping pod is watched from before it exists: a Ready
	// that lasted a moment is seen too.
	crashy := watchPod(t, kubeconfig, "crashy")
	kubectl(t, kubeconfig, "apply", "-f", manifest)
	kubectl(t, kubeconfig, "wait", "--for=condition=Ready", "pod/hostweb", "pod/client", "--timeout=90s")
	kubectl(t, kubeconfig, "wait", "--for=jsonpath={.status.phase}=Running", "pod/gated", "--timeout=90s")
	for _, name := range []string{"hostweb", "gated", "client"} {
		for _, ip := range getPod(t, kubeconfig, name).Status.PodIPs {
			c.pods[name] = append(c.pods[name], ip.IP)
		}
	}

	t.Run("hostNetwork pod behind a dual-stack Service", func(t *testing.T) {
		var node corev1.Node
		if err := json.Unmarshal(kubectl(t, kubeconfig, "get", "node", "node1", "-o", "json"), &node); err != nil {
			t.Fatal(err)
		}
		var internal []string
		for _, a := range node.Status.Addresses {
			if a.Type == corev1.NodeInternalIP {
				internal = append(internal, a.Address)
			}
		}
		if len(internal) != 2 || !slices.Equal(c.pods["hostweb"], internal) {
			t.Fatalf("hostweb has pod IPs %v, want node1's InternalIPs %v", c.pods["hostweb"], internal)
		}
		c.waitSlices(t, "hostweb", "hostweb")
		ips := c.service(t, "hostweb").Spec.ClusterIPs
		if len(ips) != 2 {
			t.Fatalf("hostweb's cluster IPs %v, want one per family", ips)
		}
		for _, ip := range ips {
			// A hostNetwork pod's hostname is its node's.
			if got := setOf(c.httpNames(t, "client", urlOf(ip, 80, "/hostname"), 5)); !slices.Equal(got, []string{"node1"}) {
				t.Errorf("the hostNetwork pod's Service at %s answered %v, want node1", ip, got)
			}
		}
	})

	t.Run("readiness probe gates Ready and the endpoint", func(t *testing.T) {
		c.waitEndpointsReady(t, "gated", "gated", false)
		p := getPod(t, kubeconfig, "gated")
		if cs := p.Status.ContainerStatuses; len(cs) != 1 || cs[0].Ready || cs[0].State.Running == nil || podCondition(p, corev1.PodReady) != corev1.ConditionFalse {
			t.Fatalf("gated %+v, Ready %s: want running and not Ready while its readiness probe fails", cs, podCondition(p, corev1.PodReady))
		}
		ready := filepath.Join(gate, "ready")
		if err := os.WriteFile(ready, nil, 0o600); err != nil {
			t.Fatal(err)
		}
		kubectl(t, kubeconfig, "wait", "--for=condition=Ready", "pod/gated", "--timeout=30s")
		c.waitEndpointsReady(t, "gated", "gated", true)
		if err := os.Remove(ready); err != nil {
			t.Fatal(err)
		}
		kubectl(t, kubeconfig, "wait", "--for=condition=Ready=false", "pod/gated", "--timeout=30s")
		c.waitEndpointsReady(t, "gated", "gated", false)
	})

	t.Run("liveness probe restarts", func(t *testing.T) {
		var p *corev1.Pod
		roottest.Eventually(t, 60*time.Second, "unlive restarted", func() error {
			p = getPod(t, kubeconfig, "unlive")
			if cs := p.Status.ContainerStatuses; len(cs) != 1 || cs[0].RestartCount < 1 || cs[0].LastTerminationState.Terminated == nil {
				return fmt.Errorf("container statuses %+v", cs)
			}
			return nil
		})
		last := p.Status.ContainerStatuses[0].LastTerminationState.Terminated
		// It ignores SIGTERM: SIGKILL after the probe's 1 s, not the pod's 120 s.
		if ran := last.FinishedAt.Sub(last.StartedAt.Time); last.ExitCode != 137 || ran > 30*time.Second {
			t.Errorf("last state %+v (ran %s): want killed by SIGKILL (137) after the probe's grace period", last, ran)
		}
	})

	t.Run("crash loop", func(t *testing.T) {
		var p *corev1.Pod
		roottest.Eventually(t, 60*time.Second, "crashy in CrashLoopBackOff after two restarts", func() error {
			p = getPod(t, kubeconfig, "crashy")
			cs := p.Status.ContainerStatuses
			if len(cs) != 1 || cs[0].RestartCount < 2 || cs[0].State.Waiting == nil || cs[0].State.Waiting.Reason != "CrashLoopBackOff" {
				return fmt.Errorf("container statuses %+v", cs)
			}
			return nil
		})
		cs := p.Status.ContainerStatuses[0]
		if last := cs.LastTerminationState.Terminated; last == nil || last.ExitCode != 3 || last.Reason != "Error" {
			t.Errorf("last state %+v, want terminated with 3 (Error)", cs.LastTerminationState)
		}
		if p.Status.Phase != corev1.PodRunning || cs.Ready || podCondition(p, corev1.PodReady) != corev1.ConditionFalse || podCondition(p, corev1.ContainersReady) != corev1.ConditionFalse {
			t.Errorf("phase %s, container ready %v, Ready %s, ContainersReady %s; want Running and not ready",
				p.Status.Phase, cs.Ready, podCondition(p, corev1.PodReady), podCondition(p, corev1.ContainersReady))
		}
		seen, ready, err := crashy()
		if err != nil {
			t.Fatal(err)
		}
		if seen < 3 {
			t.Errorf("the watch saw %d versions of crashy; the test cannot tell whether it was ever Ready", seen)
		}
		if ready != "" {
			t.Errorf("crashy was Ready at some point: %s", ready)
		}
	})
}

func getPod(t *testing.T, kubeconfig, name string) *corev1.Pod {
	t.Helper()
	var p corev1.Pod
	if err := json.Unmarshal(kubectl(t, kubeconfig, "get", "pod", name, "-o", "json"), &p); err != nil {
		t.Fatal(err)
	}
	return &p
}

func podCondition(p *corev1.Pod, ct corev1.PodConditionType) corev1.ConditionStatus {
	for _, c := range p.Status.Conditions {
		if c.Type == ct {
			return c.Status
		}
	}
	return ""
}

// watchPod watches the pod name in default from now on. The returned stop
// ends the watch and says how many versions of the pod it saw, and the
// first that was Ready (its Ready or ContainersReady condition True, or a
// container ready), if any.
func watchPod(t *testing.T, kubeconfig, name string) (stop func() (seen int, ready string, err error)) {
	t.Helper()
	cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	w, err := cs.CoreV1().Pods("default").Watch(ctx, metav1.ListOptions{FieldSelector: "metadata.name=" + name})
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	var (
		mu    sync.Mutex
		seen  int
		ready string
		ended bool
	)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for ev := range w.ResultChan() {
			p, ok := ev.Object.(*corev1.Pod)
			if !ok {
				continue
			}
			mu.Lock()
			seen++
			for _, c := range p.Status.ContainerStatuses {
				if c.Ready && ready == "" {
					ready = fmt.Sprintf("container %s ready in version %s", c.Name, p.ResourceVersion)
				}
			}
			for _, c := range p.Status.Conditions {
				if (c.Type == corev1.PodReady || c.Type == corev1.ContainersReady) && c.Status == corev1.ConditionTrue && ready == "" {
					ready = fmt.Sprintf("%s True in version %s", c.Type, p.ResourceVersion)
				}
			}
			mu.Unlock()
		}
		mu.Lock()
		ended = ctx.Err() == nil
		mu.Unlock()
	}()
	t.Cleanup(func() { cancel(); w.Stop(); <-done })
	return func() (int, string, error) {
		mu.Lock()
		defer mu.Unlock()
		if ended {
			return seen, ready, fmt.Errorf("the watch of %s ended early, after %d versions", name, seen)
		}
		return seen, ready, nil
	}
}

// waitEndpointsReady waits until svc's EndpointSlices list exactly the
// addresses of pod, each with the ready condition ready.
func (c *servicesCluster) waitEndpointsReady(t *testing.T, svc, pod string, ready bool) {
	t.Helper()
	want := map[string]bool{}
	for _, ip := range c.pods[pod] {
		want[ip] = ready
	}
	var last string
	err := wait.PollUntilContextTimeout(context.Background(), 200*time.Millisecond, 30*time.Second, true, func(context.Context) (bool, error) {
		out, err := exec.Command("kubectl", "--kubeconfig", c.kubeconfig, "get", "endpointslices", "-l", "kubernetes.io/service-name="+svc, "-o", "json").Output()
		var list discoveryv1.EndpointSliceList
		if err != nil || json.Unmarshal(out, &list) != nil {
			return false, nil
		}
		got := map[string]bool{}
		for _, sl := range list.Items {
			for _, e := range sl.Endpoints {
				for _, a := range e.Addresses {
					got[a] = e.Conditions.Ready == nil || *e.Conditions.Ready
				}
			}
		}
		last = fmt.Sprintf("got %v, want %v", got, want)
		return maps.Equal(got, want), nil
	})
	if err != nil {
		t.Fatalf("EndpointSlices of %s: %s", svc, last)
	}
}
