package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/util/wait"

	"github.com/duet-net/duet/internal/cluster"
	"github.com/duet-net/duet/test/harness"
)

// servicesManifest follows Kubernetes' dual-stack e2e suite: three
// netexec endpoints spread over both nodes, a client pod, and Services of
// every family shape, reached through a named target port.
const servicesManifest = `
apiVersion: v1
kind: Pod
metadata: {name: web-0, labels: {app: web}}
spec:
  nodeSelector: {kubernetes.io/hostname: node1}
  containers: [{name: netexec, image: ignored, command: [duet, netexec, --http-port, "8080", --udp-port, "8081"],
    ports: [{name: http, containerPort: 8080}, {name: udp, containerPort: 8081, protocol: UDP}]}]
---
apiVersion: v1
kind: Pod
metadata: {name: web-1, labels: {app: web}}
spec:
  nodeSelector: {kubernetes.io/hostname: node2}
  containers: [{name: netexec, image: ignored, command: [duet, netexec, --http-port, "8080", --udp-port, "8081"],
    ports: [{name: http, containerPort: 8080}, {name: udp, containerPort: 8081, protocol: UDP}]}]
---
apiVersion: v1
kind: Pod
metadata: {name: web-2, labels: {app: web}}
spec:
  nodeSelector: {kubernetes.io/hostname: node2}
  containers: [{name: netexec, image: ignored, command: [duet, netexec, --http-port, "8080", --udp-port, "8081"],
    ports: [{name: http, containerPort: 8080}, {name: udp, containerPort: 8081, protocol: UDP}]}]
---
apiVersion: v1
kind: Pod
metadata: {name: client}
spec:
  nodeSelector: {kubernetes.io/hostname: node1}
  containers: [{name: netexec, image: ignored, command: [duet, netexec, --http-port, "8080", --udp-port, "8081"]}]
---
apiVersion: v1
kind: Service
metadata: {name: primary}
spec:
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: http}, {name: udp, port: 81, targetPort: udp, protocol: UDP}]
---
apiVersion: v1
kind: Service
metadata: {name: v4}
spec:
  ipFamilies: [IPv4]
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: http}, {name: udp, port: 81, targetPort: udp, protocol: UDP}]
---
apiVersion: v1
kind: Service
metadata: {name: v6}
spec:
  ipFamilies: [IPv6]
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: http}, {name: udp, port: 81, targetPort: udp, protocol: UDP}]
---
apiVersion: v1
kind: Service
metadata: {name: dual46}
spec:
  ipFamilyPolicy: RequireDualStack
  ipFamilies: [IPv4, IPv6]
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: http}, {name: udp, port: 81, targetPort: udp, protocol: UDP}]
---
apiVersion: v1
kind: Service
metadata: {name: dual64}
spec:
  ipFamilyPolicy: RequireDualStack
  ipFamilies: [IPv6, IPv4]
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: http}, {name: udp, port: 81, targetPort: udp, protocol: UDP}]
---
apiVersion: v1
kind: Service
metadata: {name: legacy6}
spec:
  ipFamily: IPv6
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: http}, {name: udp, port: 81, targetPort: udp, protocol: UDP}]
---
apiVersion: v1
kind: Service
metadata: {name: sticky}
spec:
  ipFamilyPolicy: RequireDualStack
  sessionAffinity: ClientIP
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: http}]
---
apiVersion: v1
kind: Service
metadata: {name: np}
spec:
  type: NodePort
  ipFamilyPolicy: RequireDualStack
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: http}]
---
apiVersion: v1
kind: Service
metadata: {name: lb}
spec:
  type: LoadBalancer
  ipFamilyPolicy: RequireDualStack
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: http}]
`

// servicesCluster is one duet up cluster with servicesManifest applied.
type servicesCluster struct {
	dataDir, kubeconfig string
	pods                map[string][]string // pod name → IPs, primary first
	topo                cluster.Topology
}

func (c *servicesCluster) service(t *testing.T, name string) corev1.Service {
	t.Helper()
	var svc corev1.Service
	if err := json.Unmarshal(kubectl(t, c.kubeconfig, "get", "svc", name, "-o", "json"), &svc); err != nil {
		t.Fatal(err)
	}
	return svc
}

// run runs a bash script in a pod (pod), a node (node:NAME) or the
// external namespace (external) and returns its output.
func (c *servicesCluster) run(t *testing.T, where, script string) string {
	t.Helper()
	args := []string{"exec", "--data-dir", c.dataDir}
	switch {
	case where == "external":
		args = append(args, "--external")
	case strings.HasPrefix(where, "node:"):
		args = append(args, "--node", strings.TrimPrefix(where, "node:"))
	default:
		args = append(args, where)
	}
	out, err := exec.Command(harness.Bin, append(args, "--", "bash", "-c", script)...).CombinedOutput()
	if err != nil {
		t.Fatalf("in %s: %s: %v\n%s", where, script, err, out)
	}
	return string(out)
}

// httpNames GETs url n times from where and returns the answers.
func (c *servicesCluster) httpNames(t *testing.T, where, url string, n int) []string {
	t.Helper()
	script := fmt.Sprintf(`for i in $(seq %d); do curl -sS --max-time 3 %q || echo FAILED; echo; done`, n, url)
	return strings.Fields(c.run(t, where, script))
}

// udpNames asks ip:port for its hostname over UDP n times.
func (c *servicesCluster) udpNames(t *testing.T, where string, ip string, port int, n int) []string {
	t.Helper()
	script := fmt.Sprintf(`for i in $(seq %d); do
  exec 3<>/dev/udp/%s/%d || { echo FAILED; continue; }
  printf hostname >&3
  timeout 3 dd bs=64 count=1 status=none <&3 || echo FAILED
  echo
  exec 3>&-
done`, n, ip, port)
	return strings.Fields(c.run(t, where, script))
}

func urlOf(ip string, port int32, path string) string {
	return "http://" + net.JoinHostPort(ip, fmt.Sprint(port)) + path
}

func setOf(names []string) []string {
	s := slices.Clone(names)
	slices.Sort(s)
	return slices.Compact(s)
}

func startServicesCluster(t *testing.T, args ...string) *servicesCluster {
	dataDir, kubeconfig := up(t, args...)
	c := &servicesCluster{dataDir: dataDir, kubeconfig: kubeconfig, pods: map[string][]string{}}
	c.topo, _ = cluster.Plan(dataDir, 2)
	manifest := filepath.Join(t.TempDir(), "services.yaml")
	if err := os.WriteFile(manifest, []byte(servicesManifest), 0o600); err != nil {
		t.Fatal(err)
	}
	kubectl(t, kubeconfig, "apply", "-f", manifest)
	kubectl(t, kubeconfig, "wait", "--for=condition=Ready", "pod/web-0", "pod/web-1", "pod/web-2", "pod/client", "--timeout=90s")
	var list corev1.PodList
	if err := json.Unmarshal(kubectl(t, kubeconfig, "get", "pods", "-o", "json"), &list); err != nil {
		t.Fatal(err)
	}
	for _, p := range list.Items {
		for _, ip := range p.Status.PodIPs {
			c.pods[p.Name] = append(c.pods[p.Name], ip.IP)
		}
	}
	return c
}

// waitSlices waits until the Service's EndpointSlices of each of its
// families list exactly the ready addresses of pods.
func (c *servicesCluster) waitSlices(t *testing.T, svc string, pods ...string) {
	t.Helper()
	s := c.service(t, svc)
	var last string
	err := wait.PollUntilContextTimeout(context.Background(), 200*time.Millisecond, 30*time.Second, true, func(context.Context) (bool, error) {
		var list discoveryv1.EndpointSliceList
		out, err := exec.Command("kubectl", "--kubeconfig", c.kubeconfig, "get", "endpointslices", "-l", "kubernetes.io/service-name="+svc, "-o", "json").Output()
		if err != nil || json.Unmarshal(out, &list) != nil {
			return false, nil
		}
		got := map[string][]string{}
		for _, sl := range list.Items {
			for _, e := range sl.Endpoints {
				if e.Conditions.Ready == nil || *e.Conditions.Ready {
					got[string(sl.AddressType)] = append(got[string(sl.AddressType)], e.Addresses...)
				}
			}
		}
		want := map[string][]string{}
		for _, fam := range s.Spec.IPFamilies {
			want[string(fam)] = []string{}
			for _, p := range pods {
				for _, ip := range c.pods[p] {
					if (fam == corev1.IPv4Protocol) == netip.MustParseAddr(ip).Is4() {
						want[string(fam)] = append(want[string(fam)], ip)
					}
				}
			}
		}
		for k := range got {
			got[k] = setOf(got[k])
		}
		for k := range want {
			want[k] = setOf(want[k])
		}
		last = fmt.Sprintf("got %v, want %v", got, want)
		return fmt.Sprint(got) == fmt.Sprint(want), nil
	})
	if err != nil {
		t.Fatalf("EndpointSlices of %s: %s", svc, last)
	}
}

// reachesAll checks that every cluster IP of svc answers from where, over
// HTTP and (when the Service has it) UDP, from every endpoint in want.
func (c *servicesCluster) reachesAll(t *testing.T, where, svc string, want []string) {
	t.Helper()
	s := c.service(t, svc)
	for _, ip := range s.Spec.ClusterIPs {
		got := setOf(c.httpNames(t, where, urlOf(ip, 80, "/hostname"), 30))
		if !slices.Equal(got, want) {
			t.Errorf("%s: HTTP via %s (%s) from %s reached %v, want %v", svc, ip, svc, where, got, want)
		}
		if len(s.Spec.Ports) > 1 {
			got := setOf(c.udpNames(t, where, ip, 81, 30))
			if !slices.Equal(got, want) {
				t.Errorf("%s: UDP via %s from %s reached %v, want %v", svc, ip, where, got, want)
			}
		}
	}
}

func TestServicesCarryTraffic(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []string
		v4   bool // primary family is IPv4
	}{
		{"IPv4 primary", nil, true},
		{"IPv6 primary", []string{"--ipv6-primary"}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := startServicesCluster(t, tc.args...)
			all := []string{"web-0", "web-1", "web-2"}

			families := map[string][]corev1.IPFamily{
				"v4": {corev1.IPv4Protocol}, "v6": {corev1.IPv6Protocol},
				"dual46": {corev1.IPv4Protocol, corev1.IPv6Protocol}, "dual64": {corev1.IPv6Protocol, corev1.IPv4Protocol},
				"legacy6": {corev1.IPv6Protocol},
			}
			if tc.v4 {
				families["primary"] = []corev1.IPFamily{corev1.IPv4Protocol}
			} else {
				families["primary"] = []corev1.IPFamily{corev1.IPv6Protocol}
			}
			for svc, fams := range families {
				s := c.service(t, svc)
				if !slices.Equal(s.Spec.IPFamilies, fams) || len(s.Spec.ClusterIPs) != len(fams) {
					t.Fatalf("%s: ipFamilies %v clusterIPs %v, want %v", svc, s.Spec.IPFamilies, s.Spec.ClusterIPs, fams)
				}
			}
			for svc := range families {
				c.waitSlices(t, svc, all...)
			}

			t.Run("from a pod", func(t *testing.T) {
				for _, svc := range []string{"primary", "v4", "v6", "dual46", "dual64", "legacy6"} {
					c.reachesAll(t, "client", svc, all)
				}
			})
			t.Run("from a node", func(t *testing.T) {
				c.reachesAll(t, "node:node1", "dual46", all)
			})
			t.Run("from an endpoint pod", func(t *testing.T) {
				c.reachesAll(t, "web-0", "dual64", all)
			})
			t.Run("a 2000-byte request round-trips", func(t *testing.T) {
				msg := strings.Repeat("0123456789", 200)
				for _, ip := range c.service(t, "dual46").Spec.ClusterIPs {
					out := c.run(t, "client", fmt.Sprintf("curl -sS --max-time 5 %q", urlOf(ip, 80, "/echo?msg="+msg)))
					if out != msg {
						t.Errorf("echo via %s returned %d bytes, want the 2000 sent", ip, len(out))
					}
				}
			})
			t.Run("ClientIP affinity pins one endpoint", func(t *testing.T) {
				c.waitSlices(t, "sticky", all...)
				for _, ip := range c.service(t, "sticky").Spec.ClusterIPs {
					if got := setOf(c.httpNames(t, "client", urlOf(ip, 80, "/hostname"), 20)); len(got) != 1 || got[0] == "FAILED" {
						t.Errorf("sticky via %s reached %v, want one endpoint", ip, got)
					}
				}
			})
			t.Run("NodePort on each family's node IP", func(t *testing.T) {
				c.waitSlices(t, "np", all...)
				np := c.service(t, "np").Spec.Ports[0].NodePort
				if np < 30000 || np > 32767 {
					t.Fatalf("nodePort %d", np)
				}
				for _, n := range c.topo.Nodes {
					for _, ip := range []netip.Addr{n.IPv4, n.IPv6} {
						got := setOf(c.httpNames(t, "external", urlOf(ip.String(), np, "/hostname"), 30))
						if !slices.Equal(got, all) {
							t.Errorf("NodePort %s:%d from outside reached %v, want %v", ip, np, got, all)
						}
					}
				}
			})
			t.Run("LoadBalancer IPs of both families answer from outside", func(t *testing.T) {
				c.waitSlices(t, "lb", all...)
				var ingress []corev1.LoadBalancerIngress
				if err := wait.PollUntilContextTimeout(context.Background(), 200*time.Millisecond, 30*time.Second, true, func(context.Context) (bool, error) {
					ingress = c.service(t, "lb").Status.LoadBalancer.Ingress
					return len(ingress) == 2, nil
				}); err != nil {
					t.Fatalf("lb ingress %v, want one address per family", ingress)
				}
				pools := []netip.Prefix{netip.MustParsePrefix("192.0.2.0/24"), netip.MustParsePrefix("2001:db8:0:2::/112")}
				for _, in := range ingress {
					ip := netip.MustParseAddr(in.IP)
					if !pools[0].Contains(ip) && !pools[1].Contains(ip) {
						t.Errorf("lb ingress %s is in no pool", ip)
					}
					got := setOf(c.httpNames(t, "external", urlOf(in.IP, 80, "/hostname"), 30))
					if !slices.Equal(got, all) {
						t.Errorf("LoadBalancer %s from outside reached %v, want %v", in.IP, got, all)
					}
				}
			})
			t.Run("a single-stack Service programs only its family's table", func(t *testing.T) {
				v4 := c.service(t, "v4").Spec.ClusterIPs[0]
				v6 := c.service(t, "v6").Spec.ClusterIPs[0]
				ns := c.topo.Nodes[0].NetNS
				t4, _ := exec.Command("ip", "netns", "exec", ns, "nft", "list", "table", "ip", "duet-proxy").CombinedOutput()
				t6, _ := exec.Command("ip", "netns", "exec", ns, "nft", "list", "table", "ip6", "duet-proxy").CombinedOutput()
				if !strings.Contains(string(t4), v4) || strings.Contains(string(t6), v4) {
					t.Errorf("IPv4 Service %s: in ip table %v, in ip6 table %v", v4, strings.Contains(string(t4), v4), strings.Contains(string(t6), v4))
				}
				if !strings.Contains(string(t6), v6) || strings.Contains(string(t4), v6) {
					t.Errorf("IPv6 Service %s: in ip6 table %v, in ip table %v", v6, strings.Contains(string(t6), v6), strings.Contains(string(t4), v6))
				}
			})
			t.Run("endpoints follow a deleted pod", func(t *testing.T) {
				kubectl(t, c.kubeconfig, "delete", "pod", "web-2", "--wait=true", "--timeout=60s")
				rest := []string{"web-0", "web-1"}
				c.waitSlices(t, "dual46", rest...)
				//lint:ignore SA1019 the legacy Endpoints object is what is checked here
				var ep corev1.Endpoints
				// stdout only: kubectl warns on stderr that v1 Endpoints is deprecated.
				out, err := exec.Command("kubectl", "--kubeconfig", c.kubeconfig, "get", "endpoints", "dual46", "-o", "json").Output()
				if err != nil {
					t.Fatal(err)
				}
				if err := json.Unmarshal(out, &ep); err != nil {
					t.Fatal(err)
				}
				if len(ep.Subsets) == 0 {
					t.Errorf("legacy Endpoints of dual46 are empty")
				}
				for _, ss := range ep.Subsets {
					for _, a := range ss.Addresses {
						if !netip.MustParseAddr(a.IP).Is4() {
							t.Errorf("legacy Endpoints of dual46 (IPv4 first) carry %s", a.IP)
						}
					}
				}
				for _, ip := range c.service(t, "dual46").Spec.ClusterIPs {
					if got := setOf(c.httpNames(t, "client", urlOf(ip, 80, "/hostname"), 20)); !slices.Equal(got, rest) {
						t.Errorf("after deleting web-2, %s reached %v, want %v", ip, got, rest)
					}
				}
			})
		})
	}
}
