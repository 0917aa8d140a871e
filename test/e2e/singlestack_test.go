package e2e

import (
	"context"
	"encoding/json"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/wait"

	"github.com/duet-net/duet/internal/cluster"
)

// singleStackManifest: three endpoints over both nodes, a client, and a
// LoadBalancer Service that prefers dual-stack, which a single-stack
// cluster gives its one family.
const singleStackManifest = `
apiVersion: v1
kind: Pod
metadata: {name: web-0, labels: {app: web}}
spec:
  nodeSelector: {kubernetes.io/hostname: node1}
  containers: [{name: netexec, image: ignored, command: [duet, netexec, --http-port, "8080"], ports: [{name: http, containerPort: 8080}]}]
---
apiVersion: v1
kind: Pod
metadata: {name: web-1, labels: {app: web}}
spec:
  nodeSelector: {kubernetes.io/hostname: node2}
  containers: [{name: netexec, image: ignored, command: [duet, netexec, --http-port, "8080"], ports: [{name: http, containerPort: 8080}]}]
---
apiVersion: v1
kind: Pod
metadata: {name: web-2, labels: {app: web}}
spec:
  nodeSelector: {kubernetes.io/hostname: node2}
  containers: [{name: netexec, image: ignored, command: [duet, netexec, --http-port, "8080"], ports: [{name: http, containerPort: 8080}]}]
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
  type: LoadBalancer
  ipFamilyPolicy: PreferDualStack
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: http}]
`

const requireDualStackService = `
apiVersion: v1
kind: Service
metadata: {name: both}
spec:
  ipFamilyPolicy: RequireDualStack
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: http}]
`

func TestSingleStackClusters(t *testing.T) {
	for _, tc := range []struct {
		name   string
		args   []string
		family corev1.IPFamily
		pool   netip.Prefix
	}{
		{"IPv6 only by ranges", []string{"--cluster-cidr", "fd00:10:244::/56", "--service-cluster-ip-range", "fd00:10:96::/108"},
			corev1.IPv6Protocol, netip.MustParsePrefix("2001:db8:0:2::/112")},
		{"IPv4 only by --single-stack", []string{"--single-stack", "ipv4"},
			corev1.IPv4Protocol, netip.MustParsePrefix("192.0.2.0/24")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dataDir, kubeconfig := up(t, tc.args...)
			c := &servicesCluster{dataDir: dataDir, kubeconfig: kubeconfig, pods: map[string][]string{}}
			c.topo, _ = cluster.Plan(dataDir, 2)
			ofFamily := func(s string) bool {
				p, err := netip.ParsePrefix(s)
				if err != nil {
					a, aerr := netip.ParseAddr(s)
					if aerr != nil {
						t.Fatalf("%q is neither an address nor a prefix", s)
					}
					p = netip.PrefixFrom(a, a.BitLen())
				}
				return p.Addr().Is6() == (tc.family == corev1.IPv6Protocol)
			}

			manifest := filepath.Join(t.TempDir(), "web.yaml")
			if err := os.WriteFile(manifest, []byte(singleStackManifest), 0o600); err != nil {
				t.Fatal(err)
			}
			kubectl(t, kubeconfig, "apply", "-f", manifest)
			kubectl(t, kubeconfig, "wait", "--for=condition=Ready", "pod/web-0", "pod/web-1", "pod/web-2", "pod/client", "--timeout=90s")

			t.Run("the API holds one family", func(t *testing.T) {
				var nodes corev1.NodeList
				if err := json.Unmarshal(kubectl(t, kubeconfig, "get", "nodes", "-o", "json"), &nodes); err != nil {
					t.Fatal(err)
				}
				for _, n := range nodes.Items {
					if len(n.Spec.PodCIDRs) != 1 || !ofFamily(n.Spec.PodCIDRs[0]) || n.Spec.PodCIDR != n.Spec.PodCIDRs[0] {
						t.Errorf("node %s: podCIDRs %v, want one %s CIDR", n.Name, n.Spec.PodCIDRs, tc.family)
					}
					for _, a := range n.Status.Addresses {
						if a.Type == corev1.NodeInternalIP && !ofFamily(a.Address) {
							t.Errorf("node %s has InternalIP %s", n.Name, a.Address)
						}
					}
				}
				var pods corev1.PodList
				if err := json.Unmarshal(kubectl(t, kubeconfig, "get", "pods", "-o", "json"), &pods); err != nil {
					t.Fatal(err)
				}
				for _, p := range pods.Items {
					if len(p.Status.PodIPs) != 1 || !ofFamily(p.Status.PodIPs[0].IP) {
						t.Errorf("pod %s: podIPs %v, want one %s address", p.Name, p.Status.PodIPs, tc.family)
					}
					for _, ip := range p.Status.PodIPs {
						c.pods[p.Name] = append(c.pods[p.Name], ip.IP)
					}
				}
				var svcs corev1.ServiceList
				if err := json.Unmarshal(kubectl(t, kubeconfig, "get", "svc", "-A", "-o", "json"), &svcs); err != nil {
					t.Fatal(err)
				}
				seen := map[string]bool{}
				for _, s := range svcs.Items {
					seen[s.Namespace+"/"+s.Name] = true
					if !slices.Equal(s.Spec.IPFamilies, []corev1.IPFamily{tc.family}) || len(s.Spec.ClusterIPs) != 1 || !ofFamily(s.Spec.ClusterIPs[0]) {
						t.Errorf("Service %s/%s: ipFamilies %v clusterIPs %v, want one %s", s.Namespace, s.Name, s.Spec.IPFamilies, s.Spec.ClusterIPs, tc.family)
					}
				}
				for _, want := range []string{"default/kubernetes", "kube-system/kube-dns", "default/web"} {
					if !seen[want] {
						t.Errorf("no Service %s", want)
					}
				}
				dns := c.serviceIn(t, "kube-system", "kube-dns")
				if p := dns.Spec.IPFamilyPolicy; p == nil || *p != corev1.IPFamilyPolicySingleStack {
					t.Errorf("kube-dns ipFamilyPolicy %v, want SingleStack", p)
				}
				if p := c.service(t, "web").Spec.IPFamilyPolicy; p == nil || *p != corev1.IPFamilyPolicyPreferDualStack {
					t.Errorf("web ipFamilyPolicy %v, want PreferDualStack kept", p)
				}
			})

			t.Run("RequireDualStack is refused naming the field", func(t *testing.T) {
				f := filepath.Join(t.TempDir(), "both.yaml")
				if err := os.WriteFile(f, []byte(requireDualStackService), 0o600); err != nil {
					t.Fatal(err)
				}
				out, err := exec.Command("kubectl", "--kubeconfig", kubeconfig, "create", "-f", f).CombinedOutput()
				if err == nil {
					t.Fatalf("a RequireDualStack Service was created on a %s-only cluster:\n%s", tc.family, out)
				}
				if !strings.Contains(string(out), "spec.ipFamilyPolicy") || !strings.Contains(string(out), "RequireDualStack") {
					t.Errorf("refusal does not name spec.ipFamilyPolicy: %s", out)
				}
			})

			all := []string{"web-0", "web-1", "web-2"}
			c.waitSlices(t, "web", all...)
			web := c.service(t, "web")

			t.Run("pods reach pods across nodes and the cluster IP", func(t *testing.T) {
				for _, p := range all {
					for _, ip := range c.pods[p] {
						if got := c.httpNames(t, "client", urlOf(ip, 8080, "/hostname"), 1); !slices.Equal(got, []string{p}) {
							t.Errorf("client to %s (%s) got %v", p, ip, got)
						}
					}
				}
				c.reachesAll(t, "client", "web", all)
			})

			t.Run("cluster DNS answers through the pods' resolv.conf", func(t *testing.T) {
				out := string(kubectl(t, kubeconfig, "exec", "client", "--", "sh", "-c",
					"cat /etc/resolv.conf; getent ahosts web; for i in $(seq 40); do curl -sS --max-time 3 http://web/hostname || echo FAILED; echo; done"))
				dnsIP := c.serviceIn(t, "kube-system", "kube-dns").Spec.ClusterIPs[0]
				if !strings.Contains(out, "nameserver "+dnsIP+"\n") || strings.Count(out, "nameserver ") != 1 {
					t.Errorf("resolv.conf does not name kube-dns %s alone:\n%s", dnsIP, out)
				}
				if !strings.Contains(out, web.Spec.ClusterIPs[0]+" ") {
					t.Errorf("web did not resolve to %s:\n%s", web.Spec.ClusterIPs[0], out)
				}
				// 40 random picks of 3 backends miss one with odds of 3·(2/3)^40,
				// about 3 in 10 million (12 missed one in 40 runs).
				for _, p := range all {
					if !slices.Contains(strings.Fields(out), p) {
						t.Errorf("http://web/ never reached %s:\n%s", p, out)
					}
				}
				if strings.Contains(out, "FAILED") {
					t.Errorf("requests by name failed:\n%s", out)
				}
			})

			t.Run("the LoadBalancer answers from outside", func(t *testing.T) {
				var ingress []corev1.LoadBalancerIngress
				if err := wait.PollUntilContextTimeout(context.Background(), 200*time.Millisecond, 30*time.Second, true, func(context.Context) (bool, error) {
					ingress = c.service(t, "web").Status.LoadBalancer.Ingress
					return len(ingress) > 0, nil
				}); err != nil {
					t.Fatalf("web has no ingress IP: %v", err)
				}
				if len(ingress) != 1 || !tc.pool.Contains(netip.MustParseAddr(ingress[0].IP)) {
					t.Fatalf("ingress %v, want one address from %s", ingress, tc.pool)
				}
				if got := setOf(c.httpNames(t, "external", urlOf(ingress[0].IP, 80, "/hostname"), 30)); !slices.Equal(got, all) {
					t.Errorf("LoadBalancer %s from outside reached %v, want %v", ingress[0].IP, got, all)
				}
			})

			t.Run("the kernel holds nothing of the other family", func(t *testing.T) {
				other := "-4"
				otherTable := "ip"
				if tc.family == corev1.IPv4Protocol {
					other, otherTable = "-6", "ip6"
				}
				where := []string{"client", "web-1"}
				for _, n := range c.topo.Nodes {
					where = append(where, "node:"+n.Name)
				}
				for _, w := range where {
					// Global addresses only: loopback and IPv6 link-local
					// addresses are the kernel's own.
					if out := strings.TrimSpace(c.run(t, w, "ip -o "+other+" addr show scope global")); out != "" {
						t.Errorf("%s holds addresses of the other family:\n%s", w, out)
					}
					for _, line := range strings.Split(strings.TrimSpace(c.run(t, w, "ip "+other+" route show table all")), "\n") {
						if line == "" || kernelOwn(line) {
							continue
						}
						t.Errorf("%s has a route of the other family: %s", w, line)
					}
					for _, line := range strings.Split(c.run(t, w, "nft list tables"), "\n") {
						if f := strings.Fields(line); len(f) == 3 && f[1] == otherTable {
							t.Errorf("%s has nftables table %q of the other family", w, line)
						}
					}
				}
				// The node's tables of the cluster's family exist: the
				// check above is not vacuous.
				tables := c.run(t, "node:node1", "nft list tables")
				for _, want := range []string{"duet-proxy", "duet-masq"} {
					if !strings.Contains(tables, want) {
						t.Errorf("node1 lacks the %s table:\n%s", want, tables)
					}
				}
			})
		})
	}
}

func (c *servicesCluster) serviceIn(t *testing.T, ns, name string) corev1.Service {
	t.Helper()
	var svc corev1.Service
	if err := json.Unmarshal(kubectl(t, c.kubeconfig, "get", "svc", "-n", ns, name, "-o", "json"), &svc); err != nil {
		t.Fatal(err)
	}
	return svc
}

// kernelOwn reports whether a line of `ip route show table all` is a
// route the kernel makes by itself: to loopback, link-local and
// multicast destinations.
func kernelOwn(line string) bool {
	f := strings.Fields(line)
	if len(f) > 1 && slices.Contains([]string{"local", "anycast", "multicast", "broadcast"}, f[0]) {
		f = f[1:]
	}
	if len(f) == 0 {
		return true
	}
	dst, _, _ := strings.Cut(f[0], "/")
	a, err := netip.ParseAddr(dst)
	if err != nil {
		return false // default and anything unexpected count
	}
	return a.IsLoopback() || a.IsLinkLocalUnicast() || a.IsMulticast() || (a.Is4() && netip.MustParsePrefix("127.0.0.0/8").Contains(a))
}
