package e2e

import (
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/duet-net/duet/internal/testutil/roottest"
	"github.com/duet-net/duet/test/harness"
)

// imagesTable is the --images file: an image of its own whose program is
// the duet binary, with a default cmd (netexec on 8080) and an
// environment default; and one whose host file is not there.
const imagesTable = `images:
- image: example.test/duet-tools
  entrypoint: [/usr/local/bin/duet-tools]
  cmd: [netexec, --http-port=8080, --udp-port=0]
  env: {FROM_IMAGE: image-default, WEB_SERVICE_HOST: image-default}
  files: {/usr/local/bin/duet-tools: %s}
- image: example.test/gone
  entrypoint: [/gone]
  files: {/gone: %s}
`

// The Services exist before the pods, as service links need.
const imagesServices = `
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  ipFamilyPolicy: RequireDualStack
  ports: [{name: http, port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: web6}
spec:
  ipFamilyPolicy: RequireDualStack
  ipFamilies: [IPv6, IPv4]
  ports: [{port: 8443, protocol: UDP}]
`

// envScript prints what the test checks, one field per line: what the
// shell sees and what the agent expanded before it ($(VAR) in the
// command).
const envScript = `test -n "$WEB6_SERVICE_HOST" || exit 1; printf '%s\n' "$FROM_IMAGE" "$(GREETING)" "$GREETING" "$LEVEL" "$WEB_SERVICE_HOST" "$(WEB_SERVICE_HOST)" "$WEB_SERVICE_PORT_HTTP" "$WEB_PORT" "$WEB6_SERVICE_HOST" "$WEB6_PORT_8443_UDP" "$KUBERNETES_SERVICE_HOST" "$URL"; echo END; exec sleep 3600`

const imagesPods = `
apiVersion: v1
kind: Pod
metadata: {name: ag-args}
spec:
  containers: [{name: c, image: "registry.k8s.io/e2e-test-images/agnhost:2.66.1", args: [netexec, --http-port=8081, --udp-port=0]}]
---
apiVersion: v1
kind: Pod
metadata: {name: tools}
spec:
  containers: [{name: c, image: "example.test/duet-tools:1"}]
---
apiVersion: v1
kind: Pod
metadata: {name: env}
spec:
  containers:
  - name: c
    image: example.test/duet-tools
    command: [sh, -c, %q]
    env:
    - {name: GREETING, value: hello}
    - {name: LEVEL, value: "$(GREETING)-debug"}
    - {name: URL, value: "http://$(WEB_SERVICE_HOST):$(WEB_SERVICE_PORT)/"}
---
apiVersion: v1
kind: Pod
metadata: {name: nolinks}
spec:
  enableServiceLinks: false
  containers:
  - name: c
    image: busybox
    command: [sh, -c, 'echo "${WEB_SERVICE_HOST:-none}|$KUBERNETES_SERVICE_HOST|END"; exec sleep 3600']
---
apiVersion: v1
kind: Pod
metadata: {name: paused}
spec:
  terminationGracePeriodSeconds: 60
  containers: [{name: c, image: "registry.k8s.io/pause:3.10.2"}]
---
apiVersion: v1
kind: Pod
metadata: {name: missing}
spec:
  containers: [{name: c, image: "nginx:1.27"}]
---
apiVersion: v1
kind: Pod
metadata: {name: gone}
spec:
  containers: [{name: c, image: "example.test/gone:2"}]
`

func podObject(t *testing.T, kubeconfig, name string) corev1.Pod {
	t.Helper()
	var p corev1.Pod
	if err := json.Unmarshal(kubectl(t, kubeconfig, "get", "pod", name, "-o", "json"), &p); err != nil {
		t.Fatal(err)
	}
	return p
}

func waitingReason(p corev1.Pod) string {
	if len(p.Status.ContainerStatuses) == 1 && p.Status.ContainerStatuses[0].State.Waiting != nil {
		return p.Status.ContainerStatuses[0].State.Waiting.Reason
	}
	return ""
}

// TestImages runs pods by image as upstream's manifests do: agnhost with
// args only (the built-in table's /agnhost, here the duet binary found
// on PATH as agnhost), an image from --images with its default cmd, a
// command over an image's entrypoint with $(VAR) expansion, the
// Services' variables of both families, enableServiceLinks false, the
// pause image, and images that cannot run, with the reason in the
// status and an Event.
func TestImages(t *testing.T) {
	dir := t.TempDir()
	// A stand-in for upstream's agnhost: duet's netexec answers
	// /hostname as agnhost's does. The agents inherit PATH.
	stand := filepath.Join(dir, "path")
	if err := os.MkdirAll(stand, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(harness.Bin, filepath.Join(stand, "agnhost")); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PATH", stand+string(os.PathListSeparator)+os.Getenv("PATH"))

	table := filepath.Join(dir, "images.yaml")
	goneFile := filepath.Join(dir, "not-built")
	if err := os.WriteFile(table, fmt.Appendf(nil, imagesTable, harness.Bin, goneFile), 0o600); err != nil {
		t.Fatal(err)
	}
	dataDir, kubeconfig := up(t, "--nodes", "1", "--images", table)
	apply := func(name, manifest string) {
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, []byte(manifest), 0o600); err != nil {
			t.Fatal(err)
		}
		kubectl(t, kubeconfig, "apply", "-f", path)
	}
	apply("services.yaml", imagesServices)
	var web, web6, api corev1.Service
	for name, s := range map[string]*corev1.Service{"web": &web, "web6": &web6, "kubernetes": &api} {
		if err := json.Unmarshal(kubectl(t, kubeconfig, "get", "service", name, "-o", "json"), s); err != nil {
			t.Fatal(err)
		}
		if len(s.Spec.ClusterIPs) == 0 {
			t.Fatalf("Service %s has no cluster IPs", name)
		}
	}
	if len(web.Spec.ClusterIPs) != 2 || len(web6.Spec.ClusterIPs) != 2 || !netip.MustParseAddr(web6.Spec.ClusterIPs[0]).Is6() {
		t.Fatalf("cluster IPs: web %v, web6 %v; want both families, web6 IPv6 first", web.Spec.ClusterIPs, web6.Spec.ClusterIPs)
	}
	// A container gets the Services its agent has seen when it starts;
	// the env pod exits, and is restarted, while web6 is not among them
	// (the kubelet's race, and the workaround it documents).
	apply("pods.yaml", fmt.Sprintf(imagesPods, envScript))
	if out, err := exec.Command("kubectl", "--kubeconfig", kubeconfig, "wait", "--for=condition=Ready",
		"pod/ag-args", "pod/tools", "pod/env", "pod/nolinks", "pod/paused", "--timeout=90s").CombinedOutput(); err != nil {
		pods, _ := exec.Command("kubectl", "--kubeconfig", kubeconfig, "get", "pods", "-o", "wide").CombinedOutput()
		t.Fatalf("pods not Ready: %v\n%s\n%s\nagent log:\n%s", err, out, pods, harness.Tail(filepath.Join(dataDir, "logs", "node1.log")))
	}

	get := func(from, url string) string {
		out, err := exec.Command(harness.Bin, "exec", "--data-dir", dataDir, from, "--",
			"curl", "-sS", "--max-time", "5", url).CombinedOutput()
		if err != nil {
			return fmt.Sprintf("error %v: %s", err, out)
		}
		return strings.TrimSpace(string(out))
	}
	t.Run("agnhost with args only runs /agnhost with them", func(t *testing.T) {
		ip := podObject(t, kubeconfig, "ag-args").Status.PodIP
		url := "http://" + net.JoinHostPort(ip, "8081") + "/hostname"
		roottest.Eventually(t, 30*time.Second, "GET "+url, func() error {
			if got := get("tools", url); got != "ag-args" {
				return fmt.Errorf("answer %q, want ag-args", got)
			}
			return nil
		})
	})
	t.Run("an --images entry runs its entrypoint and default cmd", func(t *testing.T) {
		p := podObject(t, kubeconfig, "tools")
		for _, ip := range p.Status.PodIPs {
			url := "http://" + net.JoinHostPort(ip.IP, "8080") + "/hostname"
			roottest.Eventually(t, 30*time.Second, "GET "+url, func() error {
				if got := get("ag-args", url); got != "tools" {
					return fmt.Errorf("answer %q, want tools", got)
				}
				return nil
			})
		}
	})

	logLines := func(t *testing.T, pod string) []string {
		t.Helper()
		var lines []string
		roottest.Eventually(t, 30*time.Second, "pod "+pod+"'s output", func() error {
			out, err := exec.Command("kubectl", "--kubeconfig", kubeconfig, "logs", pod).CombinedOutput()
			if err != nil || !strings.Contains(string(out), "END") {
				return fmt.Errorf("logs: %v: %q", err, out)
			}
			lines = strings.Split(strings.TrimSpace(string(out)), "\n")
			return nil
		})
		return lines
	}
	t.Run("command over the entrypoint, $(VAR) and the Services' variables", func(t *testing.T) {
		got := logLines(t, "env")
		web4, web6IP, apiIP := web.Spec.ClusterIPs[0], web6.Spec.ClusterIPs[0], api.Spec.ClusterIPs[0]
		want := []string{
			"image-default", // the image's env under a command of the pod's
			"hello",         // $(GREETING) in the command, expanded by the agent
			"hello",         // $GREETING, by the shell
			"hello-debug",   // $(GREETING) in a later env value
			web4,            // the Service's variable over the image's default, primary family
			web4,            // $(WEB_SERVICE_HOST) in the command
			"80",            // a named port
			"tcp://" + net.JoinHostPort(web4, "80"),
			web6IP, // a Service whose first family is IPv6: its primary
			"udp://" + net.JoinHostPort(web6IP, "8443"), // bracketed
			apiIP,                     // the API server's Service
			"http://" + web4 + ":80/", // $(VAR) of Service variables in env
			"END",
		}
		if strings.Join(got, "\n") != strings.Join(want, "\n") {
			t.Errorf("pod env printed\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
		}
	})
	t.Run("enableServiceLinks false keeps only the API server's", func(t *testing.T) {
		got := logLines(t, "nolinks")
		if want := "none|" + api.Spec.ClusterIPs[0] + "|END"; len(got) != 1 || got[0] != want {
			t.Errorf("pod nolinks printed %q, want %q", got, want)
		}
	})

	t.Run("the pause image stops on SIGTERM", func(t *testing.T) {
		// Its grace period is 60 s: a pause that ignored SIGTERM would
		// be killed only after the timeout below.
		start := time.Now()
		kubectl(t, kubeconfig, "delete", "pod", "paused", "--wait=true", "--timeout=30s")
		if d := time.Since(start); d > 30*time.Second {
			t.Errorf("deleting the pause pod took %v", d)
		}
	})
	t.Run("an image not in the table", func(t *testing.T) {
		roottest.Eventually(t, 30*time.Second, "pod missing waiting with ImageNotInTable", func() error {
			p := podObject(t, kubeconfig, "missing")
			if waitingReason(p) != "ImageNotInTable" || p.Status.Phase != corev1.PodPending {
				return fmt.Errorf("phase %s, statuses %+v", p.Status.Phase, p.Status.ContainerStatuses)
			}
			if msg := p.Status.ContainerStatuses[0].State.Waiting.Message; !strings.Contains(msg, `"nginx:1.27"`) || !strings.Contains(msg, "--images") {
				return fmt.Errorf("message %q names neither the image nor --images", msg)
			}
			return nil
		})
		roottest.Eventually(t, 30*time.Second, "a Warning event naming the image and --images", func() error {
			var events corev1.EventList
			if err := json.Unmarshal(kubectl(t, kubeconfig, "get", "events", "--field-selector", "involvedObject.name=missing", "-o", "json"), &events); err != nil {
				return err
			}
			for _, e := range events.Items {
				if e.Type == corev1.EventTypeWarning && e.Reason == "Failed" && e.InvolvedObject.FieldPath == "spec.containers{c}" &&
					strings.Contains(e.Message, `"nginx:1.27"`) && strings.Contains(e.Message, "--images") {
					return nil
				}
			}
			return fmt.Errorf("events %+v", events.Items)
		})
	})
	t.Run("an image whose host file is missing", func(t *testing.T) {
		roottest.Eventually(t, 30*time.Second, "pod gone waiting with ImageFileMissing", func() error {
			p := podObject(t, kubeconfig, "gone")
			if waitingReason(p) != "ImageFileMissing" {
				return fmt.Errorf("statuses %+v", p.Status.ContainerStatuses)
			}
			if msg := p.Status.ContainerStatuses[0].State.Waiting.Message; !strings.Contains(msg, goneFile) {
				return fmt.Errorf("message %q does not name %s", msg, goneFile)
			}
			return nil
		})
	})
}
