// Package e2e drives `duet up` clusters as a user would: as root, with the
// machine's kubectl, checking the kernel state of the node namespaces.
package e2e

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/duet-net/duet/internal/agent/sandbox"
	"github.com/duet-net/duet/internal/alloc"
	"github.com/duet-net/duet/internal/alloc/boltstore"
	"github.com/duet-net/duet/internal/cluster"
	"github.com/duet-net/duet/internal/testutil/roottest"
	"github.com/duet-net/duet/test/harness"
)

func TestMain(m *testing.M) {
	// Every test here runs duet up or makes namespaces: as roottest.Require
	// has it, without root the package is skipped with a message, unless
	// the run requires root tests (make test).
	if os.Geteuid() != 0 {
		if os.Getenv(roottest.RequireEnv) != "" {
			fmt.Fprintf(os.Stderr, "e2e: needs root (%s is set)\n", roottest.RequireEnv)
			os.Exit(1)
		}
		fmt.Println("e2e: skipped: every test here needs root (duet up, network namespaces); run as root (make test)")
		os.Exit(0)
	}
	os.Exit(harness.Main(m, "e2e"))
}

// up starts `duet up`; see harness.Up.
func up(t testing.TB, args ...string) (dataDir, kubeconfig string) {
	t.Helper()
	return harness.Up(t, args...)
}

func kubectl(t *testing.T, kubeconfig string, args ...string) []byte {
	t.Helper()
	out, err := exec.Command("kubectl", append([]string{"--kubeconfig", kubeconfig}, args...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("kubectl %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

func TestUpNodesAreDualStack(t *testing.T) {
	for _, tc := range []struct {
		name    string
		args    []string
		primary string // family of the first address and CIDR
	}{
		{"IPv4 primary", nil, "IPv4"},
		{"IPv6 primary", []string{"--ipv6-primary"}, "IPv6"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dataDir, kubeconfig := up(t, tc.args...)
			if kubeconfig != filepath.Join(dataDir, "admin.kubeconfig") {
				t.Fatalf("kubeconfig %s, want it in the data directory", kubeconfig)
			}
			var list corev1.NodeList
			if err := json.Unmarshal(kubectl(t, kubeconfig, "get", "nodes", "-o", "json"), &list); err != nil {
				t.Fatal(err)
			}
			if len(list.Items) != 2 {
				t.Fatalf("%d nodes, want 2", len(list.Items))
			}
			family := func(s string) string {
				if p, err := netip.ParsePrefix(s); err == nil {
					s = p.Addr().String()
				}
				if netip.MustParseAddr(s).Is4() {
					return "IPv4"
				}
				return "IPv6"
			}
			topo, _ := cluster.Plan(dataDir, 2)
			for i, n := range list.Items {
				var ips []string
				for _, a := range n.Status.Addresses {
					if a.Type == corev1.NodeInternalIP {
						ips = append(ips, a.Address)
					}
				}
				if len(ips) != 2 || family(ips[0]) != tc.primary || family(ips[0]) == family(ips[1]) {
					t.Errorf("%s InternalIPs %v: want one per family, %s first", n.Name, ips, tc.primary)
				}
				if c := n.Spec.PodCIDRs; len(c) != 2 || family(c[0]) != tc.primary || family(c[0]) == family(c[1]) || n.Spec.PodCIDR != c[0] {
					t.Errorf("%s podCIDRs %v (podCIDR %s): want one per family, %s first", n.Name, c, n.Spec.PodCIDR, tc.primary)
				}
				// The other node's pod CIDRs are routed via its address of the same family.
				other := list.Items[1-i]
				routes, err := exec.Command("sh", "-c", "ip -n "+topo.Nodes[i].NetNS+" route; ip -n "+topo.Nodes[i].NetNS+" -6 route").CombinedOutput()
				if err != nil {
					t.Fatalf("reading routes: %v\n%s", err, routes)
				}
				for _, c := range other.Spec.PodCIDRs {
					via := ""
					for _, a := range other.Status.Addresses {
						if a.Type == corev1.NodeInternalIP && family(a.Address) == family(c) {
							via = a.Address
						}
					}
					if want := c + " via " + via; !strings.Contains(string(routes), want) {
						t.Errorf("node %s lacks route %q:\n%s", n.Name, want, routes)
					}
				}
			}
			// Nothing of the cluster's network is in the host namespace.
			if out, _ := exec.Command("ip", "route").Output(); strings.Contains(string(out), "10.244.") {
				t.Errorf("host routes mention pod CIDRs:\n%s", out)
			}
		})
	}
}

const podsManifest = `
apiVersion: v1
kind: Pod
metadata: {name: a}
spec:
  nodeSelector: {kubernetes.io/hostname: node1}
  containers: [{name: netexec, image: ignored, command: [duet, netexec, --http-port, "8080", --udp-port, "8081"]}]
---
apiVersion: v1
kind: Pod
metadata: {name: b}
spec:
  nodeSelector: {kubernetes.io/hostname: node2}
  containers: [{name: netexec, image: ignored, command: [duet, netexec, --http-port, "8080", --udp-port, "8081"]}]
`

// TestPodsTalkOverBothFamilies runs a netexec pod on each node and checks
// that each reaches the other's two addresses over HTTP.
func TestPodsTalkOverBothFamilies(t *testing.T) {
	for _, tc := range []struct {
		name    string
		args    []string
		primary bool // true: IPv4 first
	}{
		{"IPv4 primary", nil, true},
		{"IPv6 primary", []string{"--ipv6-primary"}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dataDir, kubeconfig := up(t, tc.args...)
			manifest := filepath.Join(t.TempDir(), "pods.yaml")
			if err := os.WriteFile(manifest, []byte(podsManifest), 0o600); err != nil {
				t.Fatal(err)
			}
			kubectl(t, kubeconfig, "apply", "-f", manifest)
			kubectl(t, kubeconfig, "wait", "--for=condition=Ready", "pod/a", "pod/b", "--timeout=60s")
			var list corev1.PodList
			if err := json.Unmarshal(kubectl(t, kubeconfig, "get", "pods", "-o", "json"), &list); err != nil {
				t.Fatal(err)
			}
			ips := map[string][]string{}
			for _, p := range list.Items {
				if len(p.Status.PodIPs) != 2 || p.Status.PodIP != p.Status.PodIPs[0].IP {
					t.Fatalf("pod %s IPs %+v (podIP %s): want two, podIP first", p.Name, p.Status.PodIPs, p.Status.PodIP)
				}
				first, second := netip.MustParseAddr(p.Status.PodIPs[0].IP), netip.MustParseAddr(p.Status.PodIPs[1].IP)
				if first.Is4() != tc.primary || second.Is4() == first.Is4() {
					t.Fatalf("pod %s IPs %v: want one per family, primary family first", p.Name, p.Status.PodIPs)
				}
				ips[p.Name] = []string{first.String(), second.String()}
			}
			for from, to := range map[string]string{"a": "b", "b": "a"} {
				for _, ip := range ips[to] {
					url := "http://" + net.JoinHostPort(ip, "8080") + "/hostname"
					out, err := exec.Command(harness.Bin, "exec", "--data-dir", dataDir, from, "--", "curl", "-sS", "--max-time", "5", url).CombinedOutput()
					if err != nil || strings.TrimSpace(string(out)) != to {
						t.Errorf("from pod %s, GET %s = %q, %v; want %q", from, url, out, err, to)
					}
				}
			}
			// The agent that started pod a reports the stages of its setup.
			if m := agentMetrics(t, dataDir, "node1"); !strings.Contains(m, `duet_agent_pod_setup_duration_seconds_count{stage="total"} 1`) ||
				!strings.Contains(m, `duet_agent_pod_setup_duration_seconds_count{stage="ipam"} 1`) {
				t.Errorf("node1's metrics lack one pod's setup stages:\n%s", m)
			}
			// Deleting a pod removes its network namespace.
			topo, _ := cluster.Plan(dataDir, 2)
			before, _ := exec.Command("ip", "netns", "list").Output()
			kubectl(t, kubeconfig, "delete", "pod", "a", "--wait=true", "--timeout=60s")
			deadline := time.Now().Add(30 * time.Second)
			for {
				after, _ := exec.Command("ip", "netns", "list").Output()
				if strings.Count(string(after), "duet-") < strings.Count(string(before), "duet-") {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("pod a's namespace still present 30s after deletion (cluster %s):\n%s", topo.ID, after)
				}
				time.Sleep(200 * time.Millisecond)
			}
		})
	}
}

func TestDownCleansUpAfterACrash(t *testing.T) {
	dataDir := t.TempDir()
	cmd := exec.Command(harness.Bin, "up", "--data-dir", dataDir, "--nodes", "1")
	stdout, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	s := bufio.NewScanner(stdout)
	ready := false
	for s.Scan() {
		if strings.HasPrefix(s.Text(), "Cluster ready.") {
			ready = true
			break
		}
	}
	if !ready {
		t.Fatal("duet up never became ready")
	}
	_ = cmd.Process.Kill() // a crash: no teardown
	_ = cmd.Wait()
	topo, _ := cluster.Plan(dataDir, 1)
	out, err := exec.Command(harness.Bin, "down", "--data-dir", dataDir).CombinedOutput()
	if err != nil {
		t.Fatalf("duet down: %v\n%s", err, out)
	}
	if left, _ := exec.Command("ip", "netns", "list").Output(); strings.Contains(string(left), "duet-"+topo.ID) {
		t.Fatalf("namespaces left after duet down:\n%s", left)
	}
	if !strings.Contains(string(out), "deleting namespace") {
		t.Fatalf("duet down said nothing about what it removed:\n%s", out)
	}
}

// TestKill9DuringPodBurst kills an agent and the server with SIGKILL while
// 50 pods are being created; duet up restarts them, and every pod must end
// Running with addresses of its own, with no sandbox left over.
func TestKill9DuringPodBurst(t *testing.T) {
	dataDir, kubeconfig := up(t)
	var b strings.Builder
	for i := 0; i < 50; i++ {
		fmt.Fprintf(&b, "---\napiVersion: v1\nkind: Pod\nmetadata: {name: p%d}\nspec:\n  containers: [{name: c, image: ignored, command: [sleep, \"3600\"]}]\n", i)
	}
	manifest := filepath.Join(t.TempDir(), "burst.yaml")
	if err := os.WriteFile(manifest, []byte(b.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	apply := exec.Command("kubectl", "--kubeconfig", kubeconfig, "apply", "-f", manifest)
	if err := apply.Start(); err != nil {
		t.Fatal(err)
	}
	// Kill node1's agent and the server while the pods are being created.
	var st struct{ PIDs []int }
	data, err := os.ReadFile(filepath.Join(dataDir, "up.json"))
	if err != nil || json.Unmarshal(data, &st) != nil || len(st.PIDs) < 2 {
		t.Fatalf("reading up.json: %v %s", err, data)
	}
	for _, pid := range []int{st.PIDs[1], st.PIDs[0]} {
		if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
			t.Fatalf("kill -9 %d: %v", pid, err)
		}
	}
	_ = apply.Wait() // may fail while the server restarts: apply again
	deadline := time.Now().Add(4 * time.Minute)
	var list corev1.PodList
	for {
		out, err := exec.Command("kubectl", "--kubeconfig", kubeconfig, "apply", "-f", manifest).CombinedOutput()
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("kubectl apply after the restart: %v\n%s", err, out)
		}
		time.Sleep(time.Second)
	}
	for {
		out, err := exec.Command("kubectl", "--kubeconfig", kubeconfig, "get", "pods", "-o", "json").Output()
		running := 0
		if err == nil && json.Unmarshal(out, &list) == nil {
			for _, p := range list.Items {
				if p.Status.Phase == corev1.PodRunning && len(p.Status.PodIPs) == 2 {
					running++
				}
			}
		}
		if running == 50 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of 50 pods Running 4 minutes after the kills", running)
		}
		time.Sleep(time.Second)
	}
	seen := map[string]string{}
	for _, p := range list.Items {
		for _, ip := range p.Status.PodIPs {
			if other, dup := seen[ip.IP]; dup {
				t.Errorf("%s held by %s and %s", ip.IP, other, p.Name)
			}
			seen[ip.IP] = p.Name
		}
	}
	topo, _ := cluster.Plan(dataDir, 2)
	sandboxes := 0
	for _, n := range topo.Nodes {
		entries, err := sandbox.List(cluster.NetNSPath(n.NetNS))
		if err != nil {
			t.Fatal(err)
		}
		sandboxes += len(entries)
	}
	if sandboxes != 50 {
		t.Errorf("%d pod namespaces for 50 pods: sandboxes leaked or lost", sandboxes)
	}
	// No address is held for a pod that is not there: the nodes' IPAM
	// stores hold exactly two addresses per pod. Then deleting the pods
	// frees them all.
	held := func() int {
		total := 0
		for _, n := range topo.Nodes {
			st, err := boltstore.Open(filepath.Join(dataDir, "nodes", n.Name, "ipam"), "duet", 30*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			h, _, err := alloc.CountPodIPs(st)
			st.Close()
			if err != nil {
				t.Fatal(err)
			}
			total += h
		}
		return total
	}
	if h := held(); h != 100 {
		t.Errorf("the nodes' IPAM stores hold %d addresses for 50 pods, want 100", h)
	}
	kubectl(t, kubeconfig, "delete", "-f", manifest, "--wait=true", "--timeout=120s")
	if h := held(); h != 0 {
		t.Errorf("after deleting every pod the IPAM stores still hold %d addresses", h)
	}
}

// agentMetrics fetches a node agent's /metrics, at the address its log
// names.
func agentMetrics(t *testing.T, dataDir, node string) string {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(dataDir, "logs", node+".log"))
	if err != nil {
		t.Fatal(err)
	}
	_, rest, ok := strings.Cut(string(data), "msg=\"serving metrics\"")
	if !ok {
		t.Fatalf("%s's log names no metrics address", node)
	}
	_, url, _ := strings.Cut(rest, "url=")
	url, _, _ = strings.Cut(url, "\n")
	out, err := exec.Command("curl", "-sS", "--max-time", "5", strings.TrimSpace(url)).CombinedOutput()
	if err != nil {
		t.Fatalf("GET %s: %v\n%s", url, err, out)
	}
	return string(out)
}
