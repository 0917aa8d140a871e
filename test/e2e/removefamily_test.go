package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"

	"github.com/duet-net/duet/internal/agent/sandbox"
	"github.com/duet-net/duet/internal/cluster"
	"github.com/duet-net/duet/internal/netns"
)

// restartWithPrimaryOnly drops the cluster's second family the upstream
// way, as a user of duet up does: the server's range flags in
// server-args.json keep their first range, and the server is killed (duet
// up restarts it with them). The server then downgrades the Services and
// trims the Nodes' pod CIDRs itself.
func restartWithPrimaryOnly(t *testing.T, dataDir string, client kubernetes.Interface) {
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
		if args[i] == "--cluster-cidr" || args[i] == "--service-cluster-ip-range" {
			args[i+1], _, _ = strings.Cut(args[i+1], ",")
		}
	}
	data, _ = json.Marshal(args)
	if err := os.WriteFile(argsFile, data, 0o600); err != nil {
		t.Fatal(err)
	}
	serverPID := pidOf(t, dataDir, 0, "server")
	if err := syscall.Kill(serverPID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	err = wait.PollUntilContextTimeout(context.Background(), 200*time.Millisecond, 2*time.Minute, true, func(ctx context.Context) (bool, error) {
		pid, ok := pidIn(dataDir, 0)
		if !ok || pid == serverPID {
			return false, nil
		}
		_, err := client.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
		return err == nil, nil
	})
	if err != nil {
		t.Fatalf("the server did not come back with one family: %v", err)
	}
}

// globalV6 counts the global IPv6 addresses of a link in the namespace
// at path (-1 when it cannot be read).
func globalV6(path, link string) int {
	h, err := netns.NewHandle(path)
	if err != nil {
		return -1
	}
	defer h.Close()
	l, err := h.LinkByName(link)
	if err != nil {
		return -1
	}
	addrs, err := h.AddrList(l, netlink.FAMILY_V6)
	if err != nil {
		return -1
	}
	n := 0
	for _, a := range addrs {
		if a.Scope == unix.RT_SCOPE_UNIVERSE {
			n++
		}
	}
	return n
}

// The cluster drops its second family live, the upstream way: the server
// restarts with IPv4 alone and itself downgrades the Services and shrinks
// the Nodes' pod CIDRs to IPv4; nothing else restarts. Running pods lose their IPv6 address in place while IPv4
// traffic flows without a single failure, and no trace of IPv6 is left in
// pods or nodes but the nodes' underlay addresses. node2's agent is
// killed with SIGKILL in the middle and converges once restarted.
func TestDroppingAFamilyLive(t *testing.T) {
	dataDir, kubeconfig := up(t)
	topo, _ := cluster.Plan(dataDir, 2)
	client := clientFor(t, kubeconfig)
	const perNode = 5

	var manifest strings.Builder
	var web []string
	for i, n := range topo.Nodes {
		for j := range perNode {
			name := fmt.Sprintf("web-%d-%d", i+1, j)
			web = append(web, name)
			fmt.Fprintf(&manifest, `---
apiVersion: v1
kind: Pod
metadata: {name: %s, labels: {app: web, node: %s}}
spec:
  nodeSelector: {kubernetes.io/hostname: %s}
  containers: [{name: netexec, image: ignored, command: [duet, netexec, --http-port, "8080"], ports: [{name: http, containerPort: 8080}]}]
`, name, n.Name, n.Name)
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
  nodeSelector: {kubernetes.io/hostname: node2}
  containers: [{name: netexec, image: ignored, command: [duet, netexec, --http-port, "8080"]}]
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  ipFamilyPolicy: PreferDualStack
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: http}]
---
apiVersion: v1
kind: Service
metadata: {name: web1}
spec:
  ipFamilyPolicy: PreferDualStack
  selector: {app: web, node: node1}
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
		if len(p.Status.PodIPs) != 2 || !netip.MustParseAddr(p.Status.PodIP).Is4() {
			t.Fatalf("pod %s has podIPs %v before the change; want IPv4 and IPv6", p.Name, p.Status.PodIPs)
		}
		before[p.Name] = p
	}
	nodeOf := func(name string) cluster.Node {
		i := slices.IndexFunc(topo.Nodes, func(n cluster.Node) bool { return n.Name == before[name].Spec.NodeName })
		return topo.Nodes[i]
	}
	nsOf := func(name string) string {
		path, err := sandbox.NetNSPath(cluster.NetNSPath(nodeOf(name).NetNS), string(before[name].UID))
		if err != nil {
			t.Fatal(err)
		}
		return path
	}
	c := &servicesCluster{dataDir: dataDir, kubeconfig: kubeconfig, pods: map[string][]string{}, topo: topo}
	for name, p := range before {
		for _, ip := range p.Status.PodIPs {
			c.pods[name] = append(c.pods[name], ip.IP)
		}
	}
	c.waitSlices(t, "web", web...)
	c.waitSlices(t, "web1", web[:perNode]...)
	svc4 := c.service(t, "web").Spec.ClusterIPs[0]
	web1 := c.service(t, "web1").Spec.ClusterIPs[0]
	remote := web[0] // a pod of node1; the client is on node2

	// The client loop over IPv4, from the client pod's namespace on node2
	// (whose agent is killed: its containers go with it, its namespaces
	// and its kernel's rules stay): new connections to web1's cluster IP
	// (node1's pods) and to a pod of node1, and one kept-alive connection
	// to that pod that must survive the change.
	fresh := podClient(t, nsOf("client"), false)
	loop := startClientLoop(t, nsOf("client"), []string{urlOf(web1, 80, "/hostname"), urlOf(before[remote].Status.PodIP, 8080, "/hostname")},
		urlOf(before[remote].Status.PodIP, 8080, "/clientip"))

	agentPID := pidOf(t, dataDir, 2, "node2")
	restartWithPrimaryOnly(t, dataDir, client)

	// The server trims the Nodes' pod CIDRs once it leads; node2's agent
	// is killed once it has begun to drop IPv6 from its pods.
	node2 := topo.Nodes[1]
	var node2Pods []string
	for _, name := range web {
		if nodeOf(name).Name == node2.Name {
			node2Pods = append(node2Pods, name)
		}
	}
	var changed time.Time
	var leftAtKill int
	err = wait.PollUntilContextTimeout(context.Background(), 10*time.Millisecond, 3*time.Minute, true, func(ctx context.Context) (bool, error) {
		if changed.IsZero() {
			nodes, err := client.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
			if err != nil {
				return false, nil
			}
			for _, n := range nodes.Items {
				if len(n.Spec.PodCIDRs) == 1 {
					changed = time.Now()
				}
			}
			if changed.IsZero() {
				return false, nil
			}
		}
		leftAtKill = 0
		for _, name := range node2Pods {
			if globalV6(nsOf(name), "eth0") != 0 {
				leftAtKill++
			}
		}
		return leftAtKill < len(node2Pods) || globalV6(cluster.NetNSPath(node2.NetNS), "duet0") == 0, nil
	})
	if err != nil {
		t.Fatalf("the Nodes' pod CIDRs were not trimmed (at %v), or node2's agent did not begin to drop IPv6, within 3 minutes of the restart", changed)
	}
	if err := syscall.Kill(agentPID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	killedAt := time.Now()
	t.Logf("node2's agent killed %v after the change, with %d of its %d pods still holding their IPv6 address", killedAt.Sub(changed).Round(time.Millisecond), leftAtKill, len(node2Pods))

	// Every pod's status.podIPs lists its IPv4 address alone: node1's
	// within 10 s, node2's once its agent is back.
	single := func(p corev1.Pod) bool {
		return len(p.Status.PodIPs) == 1 && p.Status.PodIP == before[p.Name].Status.PodIP && p.Status.PodIPs[0].IP == p.Status.PodIP &&
			len(p.Status.HostIPs) == 1 && p.Status.HostIPs[0].IP == p.Status.HostIP
	}
	lastOn := map[string]time.Time{}
	after := map[string]corev1.Pod{}
	err = wait.PollUntilContextTimeout(context.Background(), 50*time.Millisecond, 90*time.Second, true, func(ctx context.Context) (bool, error) {
		pods, err := client.CoreV1().Pods("default").List(ctx, metav1.ListOptions{})
		if err != nil {
			return false, nil
		}
		done := true
		for _, p := range pods.Items {
			if !single(p) {
				done = false
				continue
			}
			if _, ok := after[p.Name]; !ok {
				after[p.Name] = p
				if now := time.Now(); now.After(lastOn[p.Spec.NodeName]) {
					lastOn[p.Spec.NodeName] = now
				}
			}
		}
		return done, nil
	})
	if err != nil {
		t.Fatalf("not every pod lost its IPv6 address: %v\n%s", err, kubectl(t, kubeconfig, "get", "pods", "-o", "wide"))
	}
	t.Logf("%d pods on 2 nodes: node1's last pod lost IPv6 %v after the Nodes' change; node2's (agent killed and restarted) %v after",
		len(after), lastOn["node1"].Sub(changed).Round(time.Millisecond), lastOn["node2"].Sub(changed).Round(time.Millisecond))
	if d := lastOn["node1"].Sub(changed); d > 10*time.Second {
		t.Errorf("node1's pods took %v to lose IPv6; want within 10 s", d)
	}
	for name, p := range after {
		b := before[name]
		n := nodeOf(name)
		// node2's containers went with its agent (they die with it);
		// node1's pods are untouched.
		if b.UID != p.UID || n.Name == "node1" && (len(p.Status.ContainerStatuses) != 1 || p.Status.ContainerStatuses[0].RestartCount != 0 ||
			p.Status.ContainerStatuses[0].ContainerID != b.Status.ContainerStatuses[0].ContainerID) {
			t.Errorf("pod %s was restarted: container %+v, was %+v", name, p.Status.ContainerStatuses, b.Status.ContainerStatuses)
		}
		if want := []corev1.HostIP{{IP: n.IPv4.String()}}; !slices.Equal(p.Status.HostIPs, want) {
			t.Errorf("pod %s: hostIPs %v; want %v", name, p.Status.HostIPs, want)
		}
		if name == "hostnet" && p.Status.PodIP != n.IPv4.String() {
			t.Errorf("hostNetwork pod: podIPs %v; want %s alone", p.Status.PodIPs, n.IPv4)
		}
	}
	for _, n := range topo.Nodes {
		node, err := client.CoreV1().Nodes().Get(context.Background(), n.Name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		var internal []string
		for _, a := range node.Status.Addresses {
			if a.Type == corev1.NodeInternalIP {
				internal = append(internal, a.Address)
			}
		}
		if !slices.Equal(internal, []string{n.IPv4.String()}) {
			t.Errorf("%s's InternalIPs: %v; want %s alone", n.Name, internal, n.IPv4)
		}
	}

	// Every pod answers on its IPv4 address from the client, and the
	// Service by its IPv4 cluster IP reaches pods of both nodes.
	seen := map[string]bool{}
	err = wait.PollUntilContextTimeout(context.Background(), 50*time.Millisecond, 20*time.Second, true, func(context.Context) (bool, error) {
		if name, err := getBody(fresh, urlOf(svc4, 80, "/hostname")); err == nil && slices.Contains(web, name) {
			seen[nodeOf(name).Name] = true
		}
		return seen["node1"] && seen["node2"], nil
	})
	if err != nil {
		t.Errorf("web's cluster IP %s reached pods of %v; want both nodes'", svc4, seen)
	}
	for _, name := range web {
		u := urlOf(before[name].Status.PodIP, 8080, "/hostname")
		var got string
		err := wait.PollUntilContextTimeout(context.Background(), 100*time.Millisecond, 10*time.Second, true, func(context.Context) (bool, error) {
			got, err = getBody(fresh, u)
			return err == nil && got == name, nil
		})
		if err != nil {
			t.Errorf("%s answered %q, %v; want %s", u, got, err, name)
		}
	}
	loop.check(t, "the change", 50)

	// No trace of IPv6 in the kernel: in the pods no global address and no
	// route but the kernel's own (link-local, multicast); in the nodes
	// none on the bridge, no route into the IPv6 cluster CIDR, no ip6
	// table of the proxy or masquerading, no DNS socket on an IPv6
	// address, while the underlay keeps its address.
	podCIDR6 := "fd00:10:244:"
	for _, name := range append([]string{"client"}, web...) {
		if out := strings.TrimSpace(c.run(t, name, "ip -o -6 addr show scope global")); out != "" {
			t.Errorf("pod %s holds IPv6 addresses:\n%s", name, out)
		}
		for _, line := range strings.Split(strings.TrimSpace(c.run(t, name, "ip -6 route show table all")), "\n") {
			if line != "" && !kernelOwn(line) {
				t.Errorf("pod %s has an IPv6 route: %s", name, line)
			}
		}
	}
	for _, n := range topo.Nodes {
		w := "node:" + n.Name
		if out := strings.TrimSpace(c.run(t, w, "ip -o -6 addr show dev duet0 scope global")); out != "" {
			t.Errorf("%s's bridge holds IPv6 addresses:\n%s", n.Name, out)
		}
		if out := c.run(t, w, "ip -6 route show table all"); strings.Contains(out, podCIDR6) {
			t.Errorf("%s has routes into the IPv6 cluster CIDR:\n%s", n.Name, out)
		}
		if out := c.run(t, w, "ip -o -6 addr show dev eth0 scope global"); !strings.Contains(out, n.IPv6.String()+"/") {
			t.Errorf("%s's underlay lost %s:\n%s", n.Name, n.IPv6, out)
		}
		tables := c.run(t, w, "nft list tables")
		for _, tb := range []string{"ip6 duet-proxy", "ip6 duet-masq"} {
			if strings.Contains(tables, "table "+tb+"\n") {
				t.Errorf("%s still has table %s:\n%s", n.Name, tb, tables)
			}
		}
		for _, tb := range []string{"ip duet-proxy", "ip duet-masq"} {
			if !strings.Contains(tables, "table "+tb+"\n") {
				t.Errorf("%s lacks table %s:\n%s", n.Name, tb, tables)
			}
		}
		dns := c.run(t, w, "ss -Hlnut 'sport = :53'")
		if strings.Contains(dns, "[") || !strings.Contains(dns, n.IPv4.String()+":53") {
			t.Errorf("%s's DNS sockets are not those of %s alone:\n%s", n.Name, n.IPv4, dns)
		}
	}
	// In the API: the server made every Service SingleStack IPv4 (their
	// IPv4 cluster IPs unchanged), and no IPAddress or EndpointSlice of
	// IPv6 is left.
	for _, ns := range [][2]string{{"default", "web"}, {"default", "web1"}, {"kube-system", "kube-dns"}} {
		svc := c.serviceIn(t, ns[0], ns[1])
		if p := svc.Spec.IPFamilyPolicy; p == nil || *p != corev1.IPFamilyPolicySingleStack || len(svc.Spec.ClusterIPs) != 1 ||
			!slices.Equal(svc.Spec.IPFamilies, []corev1.IPFamily{corev1.IPv4Protocol}) {
			t.Errorf("Service %s/%s after the change: policy %v, families %v, cluster IPs %v; want SingleStack IPv4", ns[0], ns[1], p, svc.Spec.IPFamilies, svc.Spec.ClusterIPs)
		}
	}
	if svc := c.service(t, "web"); svc.Spec.ClusterIPs[0] != svc4 {
		t.Errorf("web's cluster IP changed: %v, was %s", svc.Spec.ClusterIPs, svc4)
	}
	addrs, err := client.NetworkingV1().IPAddresses().List(context.Background(), metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range addrs.Items {
		if netip.MustParseAddr(a.Name).Is6() {
			t.Errorf("IPAddress %s of the dropped family is left", a.Name)
		}
	}
	slicesLeft, err := client.DiscoveryV1().EndpointSlices("").List(context.Background(), metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, es := range slicesLeft.Items {
		if es.AddressType == discoveryv1.AddressTypeIPv6 {
			t.Errorf("EndpointSlice %s/%s of the dropped family is left", es.Namespace, es.Name)
		}
	}
	// The pods' files: kube-dns's IPv4 address alone, their IPv4 address.
	dns4 := c.serviceIn(t, "kube-system", "kube-dns").Spec.ClusterIPs
	for _, name := range []string{"client", remote} {
		files := string(kubectl(t, kubeconfig, "exec", name, "--", "cat", "/etc/resolv.conf", "/etc/hosts"))
		if len(dns4) != 1 || strings.Count(files, "nameserver ") != 1 || !strings.Contains(files, "nameserver "+dns4[0]+"\n") ||
			strings.Contains(files, podCIDR6) || !strings.Contains(files, before[name].Status.PodIP+"\t") {
			t.Errorf("pod %s's resolv.conf and hosts (kube-dns %v):\n%s", name, dns4, files)
		}
	}
	// Cluster DNS answers over IPv4 through the pods' resolv.conf.
	if out := string(kubectl(t, kubeconfig, "exec", "client", "--", "sh", "-c", "getent ahostsv4 web.default.svc.cluster.local || true")); !strings.Contains(out, svc4) {
		t.Errorf("web did not resolve to %s from the client:\n%s", svc4, out)
	}
}
