package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"

	"github.com/duet-net/duet/internal/agent/sandbox"
	"github.com/duet-net/duet/internal/cluster"
	"github.com/duet-net/duet/test/harness"
)

// addFamilyPodsPerNode is how many web pods each node runs in
// TestRestartingTheServerAddsAFamilyLive (DUET_ADDFAMILY_PODS overrides it,
// for the measurement at 110).
func addFamilyPodsPerNode(t *testing.T) int {
	if s := os.Getenv("DUET_ADDFAMILY_PODS"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 || n > 110 {
			t.Fatalf("DUET_ADDFAMILY_PODS=%q: want 1 to 110", s)
		}
		return n
	}
	return 5
}

// addedFamily is one direction of TestRestartingTheServerAddsAFamilyLive.
type addedFamily struct {
	single               string // --single-stack
	is6                  bool   // the added family is IPv6
	clusterCIDR, svcCIDR string // appended to the server's flags
	underlay             func(cluster.Node) netip.Prefix
	dnsType              string
	// live adds the family by kubectl apply of a ServiceCIDR and a
	// ClusterCIDR instead of a server restart, and ends by deleting them.
	live bool
}

// The upstream way to go dual-stack, live: a single-stack cluster's
// server is restarted with a range of the other family appended to
// --cluster-cidr and --service-cluster-ip-range (duet up restarts it with
// the arguments of server-args.json), and nothing else is restarted.
// Running pods gain an address of the new family in place while traffic
// of the first family flows without a single failure.
func TestRestartingTheServerAddsAFamilyLive(t *testing.T) {
	for _, tc := range []addedFamily{
		{"ipv4", true, "fd00:10:244::/56", "fd00:10:96::/108", func(n cluster.Node) netip.Prefix { return netip.PrefixFrom(n.IPv6, 64) }, "AAAA", false},
		{"ipv6", false, "10.244.0.0/16", "10.96.0.0/16", func(n cluster.Node) netip.Prefix { return netip.PrefixFrom(n.IPv4, 24) }, "A", false},
	} {
		t.Run(tc.single+" to dual-stack", func(t *testing.T) { addFamilyLive(t, tc) })
	}
}

// The live way there and back: on a running IPv4-only cluster, kubectl
// apply of an IPv6 ServiceCIDR and ClusterCIDR turns it dual-stack, and
// kubectl delete of them turns it back, with nothing restarted and the
// first family's traffic flowing throughout.
func TestApplyingRangesAddsAndDeletingRemovesAFamilyLive(t *testing.T) {
	addFamilyLive(t, addedFamily{"ipv4", true, "fd00:10:244::/56", "fd00:10:96::/108",
		func(n cluster.Node) netip.Prefix { return netip.PrefixFrom(n.IPv6, 64) }, "AAAA", true})
}

func addFamilyLive(t *testing.T, tc addedFamily) {
	dataDir, kubeconfig := up(t, "--single-stack", tc.single)
	topo, _ := cluster.Plan(dataDir, 2)
	client := clientFor(t, kubeconfig)
	perNode := addFamilyPodsPerNode(t)

	// The nodes' underlay gets addresses of the new family first, as an
	// operator gives hosts IPv6 before turning a cluster dual-stack.
	for _, n := range topo.Nodes {
		if out, err := exec.Command("ip", "-n", n.NetNS, "addr", "add", tc.underlay(n).String(), "dev", "eth0").CombinedOutput(); err != nil {
			t.Fatalf("adding %s to %s: %v\n%s", tc.underlay(n), n.Name, err, out)
		}
	}

	var manifest strings.Builder
	var web []string
	for i, n := range topo.Nodes {
		for j := range perNode {
			name := fmt.Sprintf("web-%d-%d", i+1, j)
			web = append(web, name)
			fmt.Fprintf(&manifest, `---
apiVersion: v1
kind: Pod
metadata: {name: %s, labels: {app: web}}
spec:
  nodeSelector: {kubernetes.io/hostname: %s}
  containers: [{name: netexec, image: ignored, command: [duet, netexec, --http-port, "8080"], ports: [{name: http, containerPort: 8080}]}]
`, name, n.Name)
		}
	}
	manifest.WriteString(`---
apiVersion: v1
kind: Pod
metadata: {name: hostnet}
spec:
  nodeSelector: {kubernetes.io/hostname: node2}
  hostNetwork: true
  containers: [{name: netexec, image: ignored, command: [duet, netexec, --http-port, "18080"]}]
---
apiVersion: v1
kind: Pod
metadata: {name: client}
spec:
  nodeSelector: {kubernetes.io/hostname: node1}
  containers: [{name: netexec, image: ignored, command: [duet, netexec, --http-port, "8080"]}]
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: http}]
`)
	file := filepath.Join(t.TempDir(), "web.yaml")
	if err := os.WriteFile(file, []byte(manifest.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	kubectl(t, kubeconfig, "apply", "-f", file)
	kubectl(t, kubeconfig, "wait", "--for=condition=Ready", "pod", "--all", "--timeout=900s")

	before := map[string]corev1.Pod{}
	pods, err := client.CoreV1().Pods("default").List(context.Background(), metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range pods.Items {
		if len(p.Status.PodIPs) != 1 || netip.MustParseAddr(p.Status.PodIPs[0].IP).Is6() == tc.is6 {
			t.Fatalf("pod %s has podIPs %v before the change; want one address of the first family", p.Name, p.Status.PodIPs)
		}
		before[p.Name] = p
	}
	nsOf := func(name string) string {
		p := before[name]
		i := slices.IndexFunc(topo.Nodes, func(n cluster.Node) bool { return n.Name == p.Spec.NodeName })
		path, err := sandbox.NetNSPath(cluster.NetNSPath(topo.Nodes[i].NetNS), string(p.UID))
		if err != nil {
			t.Fatal(err)
		}
		return path
	}
	c := &servicesCluster{dataDir: dataDir, kubeconfig: kubeconfig, pods: map[string][]string{}, topo: topo}
	for name, p := range before {
		c.pods[name] = []string{p.Status.PodIP}
	}
	c.waitSlices(t, "web", web...)
	svc4 := c.service(t, "web").Spec.ClusterIPs[0]
	remote := web[len(web)-1] // a pod of node2; the client is on node1

	// The client loop over IPv4, from the client pod: new connections to
	// the cluster IP and to a pod of the other node, and one kept-alive
	// connection to that pod that must survive the change.
	fresh := podClient(t, nsOf("client"), false)
	loop := startClientLoop(t, nsOf("client"), []string{urlOf(svc4, 80, "/hostname"), urlOf(before[remote].Status.PodIP, 8080, "/hostname")},
		urlOf(before[remote].Status.PodIP, 8080, "/clientip"))

	// The change, the upstream way: server-args.json gets the new ranges
	// appended, and the server is stopped; duet up restarts it with them.
	// The live way: kubectl apply of a ServiceCIDR and a ClusterCIDR.
	rangesFile := filepath.Join(t.TempDir(), "ranges.yaml")
	if err := os.WriteFile(rangesFile, []byte(fmt.Sprintf(`apiVersion: networking.k8s.io/v1
kind: ServiceCIDR
metadata: {name: added}
spec: {cidrs: [%q]}
---
apiVersion: networking.duet.dev/v1alpha1
kind: ClusterCIDR
metadata: {name: added}
spec: {cidr: %q}
`, tc.svcCIDR, tc.clusterCIDR)), 0o600); err != nil {
		t.Fatal(err)
	}
	if !tc.live {
		editServerArgs(t, dataDir, tc)
	}
	serverPID := pidOf(t, dataDir, 0, "server")
	changed := time.Now()
	if tc.live {
		kubectl(t, kubeconfig, "apply", "-f", rangesFile)
	} else if err := syscall.Kill(serverPID, syscall.SIGKILL); err != nil {
		// SIGKILL, not SIGTERM: a kill -9 in the middle of the server's
		// work must be survived too.
		t.Fatal(err)
	}

	// The Nodes get their IPv6 pod CIDRs once the server is back.
	var nodesAt time.Time
	err = wait.PollUntilContextTimeout(context.Background(), 100*time.Millisecond, 2*time.Minute, true, func(ctx context.Context) (bool, error) {
		nodes, err := client.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
		if err != nil {
			return false, nil // the server restarts
		}
		for _, n := range nodes.Items {
			if len(n.Spec.PodCIDRs) != 2 {
				return false, nil
			}
		}
		nodesAt = time.Now()
		return true, nil
	})
	if err != nil {
		t.Fatalf("the nodes did not get a pod CIDR of the new family: %v\n%s", err, kubectl(t, kubeconfig, "get", "nodes", "-o", "yaml"))
	}
	var lastAt time.Time
	after := map[string]corev1.Pod{}
	err = wait.PollUntilContextTimeout(context.Background(), 100*time.Millisecond, 10*time.Second, true, func(ctx context.Context) (bool, error) {
		pods, err := client.CoreV1().Pods("default").List(ctx, metav1.ListOptions{})
		if err != nil {
			return false, nil
		}
		for _, p := range pods.Items {
			if len(p.Status.PodIPs) != 2 {
				return false, nil
			}
			after[p.Name] = p
		}
		lastAt = time.Now()
		return true, nil
	})
	if err != nil {
		t.Fatalf("within 10 s of the nodes' new pod CIDRs, not every pod had an address of the new family: %v\n%s", err, kubectl(t, kubeconfig, "get", "pods", "-o", "wide"))
	}
	t.Logf("%d pods on 2 nodes: the change (server killed, or ranges applied) to the nodes' new pod CIDRs %v; to the last pod's new address %v (%v after the nodes' CIDRs)",
		len(after), nodesAt.Sub(changed).Round(time.Millisecond), lastAt.Sub(changed).Round(time.Millisecond), lastAt.Sub(nodesAt).Round(time.Millisecond))

	for name, p := range after {
		b := before[name]
		if p.Status.PodIPs[0].IP != b.Status.PodIP || p.Status.PodIP != b.Status.PodIP {
			t.Errorf("pod %s: podIPs %v; want its address %s kept first", name, p.Status.PodIPs, b.Status.PodIP)
		}
		if name == "hostnet" {
			want := []corev1.PodIP{{IP: topo.Nodes[1].IPv4.String()}, {IP: topo.Nodes[1].IPv6.String()}}
			if !tc.is6 {
				want[0], want[1] = want[1], want[0]
			}
			if !slices.Equal(p.Status.PodIPs, want) {
				t.Errorf("hostNetwork pod: podIPs %v; want node2's addresses %v", p.Status.PodIPs, want)
			}
		} else if a := netip.MustParseAddr(p.Status.PodIPs[1].IP); !netip.MustParsePrefix(tc.clusterCIDR).Contains(a) {
			t.Errorf("pod %s: second address %s is not of %s", name, a, tc.clusterCIDR)
		}
		if b.UID != p.UID || len(p.Status.ContainerStatuses) != 1 || p.Status.ContainerStatuses[0].RestartCount != 0 ||
			p.Status.ContainerStatuses[0].ContainerID != b.Status.ContainerStatuses[0].ContainerID {
			t.Errorf("pod %s was restarted: container %+v, was %+v", name, p.Status.ContainerStatuses, b.Status.ContainerStatuses)
		}
	}

	// Every pod answers on its IPv6 address across nodes: from the client
	// on node1 and from a pod on node2.
	from2 := podClient(t, nsOf(remote), false)
	for _, name := range web {
		u := urlOf(after[name].Status.PodIPs[1].IP, 8080, "/hostname")
		for _, cl := range []*http.Client{fresh, from2} {
			var got string
			err := wait.PollUntilContextTimeout(context.Background(), 100*time.Millisecond, 10*time.Second, true, func(context.Context) (bool, error) {
				got, err = getBody(cl, u)
				return err == nil && got == name, nil
			})
			if err != nil {
				t.Errorf("%s answered %q, %v; want %s", u, got, err, name)
			}
		}
	}

	// The Service, switched to PreferDualStack, answers on its new IPv6
	// cluster IP from pods of both nodes.
	kubectl(t, kubeconfig, "patch", "svc", "web", "-p", `{"spec":{"ipFamilyPolicy":"PreferDualStack"}}`)
	svc := c.service(t, "web")
	if len(svc.Spec.ClusterIPs) != 2 || svc.Spec.ClusterIPs[0] != svc4 || !netip.MustParsePrefix(tc.svcCIDR).Contains(netip.MustParseAddr(svc.Spec.ClusterIPs[1])) {
		t.Fatalf("the Service's clusterIPs after PreferDualStack: %v; want %s and one of the new family", svc.Spec.ClusterIPs, svc4)
	}
	u6 := urlOf(svc.Spec.ClusterIPs[1], 80, "/hostname")
	// The web pods are named web-<node>-<i>: a pod of each node answers.
	seen := map[string]bool{}
	err = wait.PollUntilContextTimeout(context.Background(), 50*time.Millisecond, 20*time.Second, true, func(context.Context) (bool, error) {
		if name, err := getBody(fresh, u6); err == nil && slices.Contains(web, name) {
			seen[name[:len("web-1")]] = true
		}
		return seen["web-1"] && seen["web-2"], nil
	})
	if err != nil {
		t.Errorf("the new cluster IP %s answered from the pods of nodes %v; want both nodes'", u6, seen)
	}

	// Cluster DNS answers on kube-dns's new IPv6 cluster IP (served by the
	// nodes' listeners on their new addresses) with the Service's IPv6
	// address.
	dns := c.serviceIn(t, "kube-system", "kube-dns")
	if len(dns.Spec.ClusterIPs) != 2 {
		t.Errorf("kube-dns clusterIPs %v; want one of the new family added", dns.Spec.ClusterIPs)
	} else {
		var out []byte
		err := wait.PollUntilContextTimeout(context.Background(), 200*time.Millisecond, 20*time.Second, true, func(context.Context) (bool, error) {
			out, _ = exec.Command(harness.Bin, "exec", "--data-dir", dataDir, "client", "--", "dig", "+short", "+tries=1", "+time=2",
				"@"+dns.Spec.ClusterIPs[1], "web.default.svc.cluster.local", tc.dnsType).CombinedOutput()
			return strings.TrimSpace(string(out)) == svc.Spec.ClusterIPs[1], nil
		})
		if err != nil {
			t.Errorf("dig @%s web %s answered %q; want %s", dns.Spec.ClusterIPs[1], tc.dnsType, out, svc.Spec.ClusterIPs[1])
		}
	}

	loop.check(t, "the change", 50)

	// kill -9 of node2's agent after the change (started with --node-ip
	// of the first family only): it comes back with the node's address of
	// the new family, and node2's pods keep both their addresses and are
	// reachable on the new one from node1.
	agentPID := pidOf(t, dataDir, 2, "node2")
	if err := syscall.Kill(agentPID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	err = wait.PollUntilContextTimeout(context.Background(), 200*time.Millisecond, 60*time.Second, true, func(ctx context.Context) (bool, error) {
		if pid, ok := pidIn(dataDir, 2); !ok || pid == agentPID {
			return false, nil
		}
		pods, err := client.CoreV1().Pods("default").List(ctx, metav1.ListOptions{})
		if err != nil {
			return false, nil
		}
		for _, p := range pods.Items {
			if p.Spec.NodeName != "node2" || p.Name == "hostnet" {
				continue
			}
			if !slices.Equal(p.Status.PodIPs, after[p.Name].Status.PodIPs) || p.Status.Phase != corev1.PodRunning {
				return false, nil
			}
			if _, err := getBody(fresh, urlOf(p.Status.PodIPs[1].IP, 8080, "/hostname")); err != nil {
				return false, nil
			}
		}
		return true, nil
	})
	if err != nil {
		t.Errorf("after kill -9 of node2's agent, its pods do not keep and answer on both addresses:\n%s", kubectl(t, kubeconfig, "get", "pods", "-o", "wide"))
	}
	n2, err := client.CoreV1().Nodes().Get(context.Background(), "node2", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var internal []string
	for _, a := range n2.Status.Addresses {
		if a.Type == corev1.NodeInternalIP {
			internal = append(internal, a.Address)
		}
	}
	if len(internal) != 2 {
		t.Errorf("node2's InternalIPs after its agent's restart: %v; want both families", internal)
	}
	if tc.live {
		deleteAddedFamilyLive(t, c, tc, client, rangesFile, svc4, before, web, nsOf("client"), remote)
	}
}

// deleteAddedFamilyLive is the way back of the live way: kubectl delete of
// the ServiceCIDR and ClusterCIDR that added tc's family, with the first
// family's traffic flowing throughout. Within 10 s of the Nodes' change
// every pod has its first address alone; the Service is SingleStack again
// with its address; nothing of the family is left in pods, nodes' tables
// or IPAddress objects.
func deleteAddedFamilyLive(t *testing.T, c *servicesCluster, tc addedFamily, client kubernetes.Interface, rangesFile, svc4 string,
	before map[string]corev1.Pod, web []string, clientNS, remote string) {
	loop := startClientLoop(t, clientNS, []string{urlOf(svc4, 80, "/hostname"), urlOf(before[remote].Status.PodIP, 8080, "/hostname")},
		urlOf(before[remote].Status.PodIP, 8080, "/clientip"))

	deleted := time.Now()
	kubectl(t, c.kubeconfig, "delete", "--wait=false", "-f", rangesFile)
	var nodesAt, lastAt time.Time
	err := wait.PollUntilContextTimeout(context.Background(), 50*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
		if nodesAt.IsZero() {
			nodes, err := client.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
			if err != nil {
				return false, nil
			}
			for _, n := range nodes.Items {
				if len(n.Spec.PodCIDRs) != 1 {
					return false, nil
				}
			}
			nodesAt = time.Now()
		}
		pods, err := client.CoreV1().Pods("default").List(ctx, metav1.ListOptions{})
		if err != nil {
			return false, nil
		}
		for _, p := range pods.Items {
			if len(p.Status.PodIPs) != 1 || p.Status.PodIP != before[p.Name].Status.PodIP {
				return false, nil
			}
		}
		lastAt = time.Now()
		return true, nil
	})
	if err != nil {
		t.Fatalf("after kubectl delete of the ranges, the Nodes (at %v) and pods did not lose the family within a minute:\n%s", nodesAt, kubectl(t, c.kubeconfig, "get", "pods", "-o", "wide"))
	}
	t.Logf("kubectl delete to the Nodes' single pod CIDR %v; to the last pod's single address %v (%v after the Nodes')",
		nodesAt.Sub(deleted).Round(time.Millisecond), lastAt.Sub(deleted).Round(time.Millisecond), lastAt.Sub(nodesAt).Round(time.Millisecond))
	if d := lastAt.Sub(nodesAt); d > 10*time.Second {
		t.Errorf("pods took %v after the Nodes' change to lose the family; want within 10 s", d)
	}
	if svc := c.service(t, "web"); len(svc.Spec.ClusterIPs) != 1 || svc.Spec.ClusterIPs[0] != svc4 {
		t.Errorf("the Service's clusterIPs after the delete: %v; want [%s]", svc.Spec.ClusterIPs, svc4)
	}
	loop.check(t, "the delete", 1)

	// No trace of the family: no global address of it in the pods, no
	// proxy or masquerading table of it in the nodes, no IPAddress of it.
	ipFlag, table := "-4", "ip"
	if tc.is6 {
		ipFlag, table = "-6", "ip6"
	}
	for _, name := range append([]string{"client"}, web...) {
		if out := strings.TrimSpace(c.run(t, name, "ip -o "+ipFlag+" addr show scope global")); out != "" {
			t.Errorf("pod %s holds addresses of the removed family:\n%s", name, out)
		}
	}
	for _, n := range c.topo.Nodes {
		tables := c.run(t, "node:"+n.Name, "nft list tables")
		for _, tb := range []string{table + " duet-proxy", table + " duet-masq"} {
			if strings.Contains(tables, "table "+tb+"\n") {
				t.Errorf("%s still has table %s:\n%s", n.Name, tb, tables)
			}
		}
	}
	err = wait.PollUntilContextTimeout(context.Background(), 100*time.Millisecond, 10*time.Second, true, func(ctx context.Context) (bool, error) {
		addrs, err := client.NetworkingV1().IPAddresses().List(ctx, metav1.ListOptions{})
		if err != nil {
			return false, nil
		}
		for _, a := range addrs.Items {
			if netip.MustParseAddr(a.Name).Is6() == tc.is6 {
				return false, nil
			}
		}
		return true, nil
	})
	if err != nil {
		t.Errorf("IPAddresses of the removed family are left")
	}
}

// pidIn is the PID duet up records at index i of up.json (0 the server,
// then the agents in node order).
func pidIn(dataDir string, i int) (int, bool) {
	data, err := os.ReadFile(filepath.Join(dataDir, "up.json"))
	if err != nil {
		return 0, false
	}
	var st struct {
		PIDs []int `json:"pids"`
	}
	if json.Unmarshal(data, &st) != nil || len(st.PIDs) <= i {
		return 0, false
	}
	return st.PIDs[i], true
}

// pidOf is pidIn checked: the process's command line names what.
func pidOf(t *testing.T, dataDir string, i int, what string) int {
	t.Helper()
	pid, ok := pidIn(dataDir, i)
	if !ok {
		t.Fatalf("up.json has no PID %d", i)
	}
	cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if !strings.Contains(string(cmdline), what) {
		t.Fatalf("process %d is not %s: %q", pid, what, cmdline)
	}
	return pid
}

func get(c *http.Client, url string) error {
	_, err := getBody(c, url)
	return err
}

func getBody(c *http.Client, url string) (string, error) {
	resp, err := c.Get(url)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("%s: %s", url, resp.Status)
	}
	return strings.TrimSpace(string(body)), nil
}

// editServerArgs appends tc's ranges to the server's range flags in
// server-args.json, which duet up starts the server with.
func editServerArgs(t *testing.T, dataDir string, tc addedFamily) {
	t.Helper()
	argsFile := filepath.Join(dataDir, cluster.ServerArgsFile)
	data, err := os.ReadFile(argsFile)
	if err != nil {
		t.Fatal(err)
	}
	var args []string
	if err := json.Unmarshal(data, &args); err != nil {
		t.Fatal(err)
	}
	for i := range args[:len(args)-1] {
		switch args[i] {
		case "--cluster-cidr":
			args[i+1] += "," + tc.clusterCIDR
		case "--service-cluster-ip-range":
			args[i+1] += "," + tc.svcCIDR
		}
	}
	data, _ = json.Marshal(args)
	if err := os.WriteFile(argsFile, data, 0o600); err != nil {
		t.Fatal(err)
	}
}
