package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/duet-net/duet/internal/cluster"
	"github.com/duet-net/duet/internal/netns"
	"github.com/duet-net/duet/internal/testutil/roottest"
)

// dnsManifest: three netexec pods behind Services of every shape DNS
// answers for (dual-stack, one family each, headless, ExternalName), the
// client pod "c" among them with hostname and subdomain, and a pod whose
// readiness the test flips behind a headless Service of its own.
const dnsManifest = `
apiVersion: v1
kind: Pod
metadata: {name: web1, labels: {app: web}}
spec:
  nodeSelector: {kubernetes.io/hostname: node1}
  containers: [{name: netexec, image: ignored, command: [duet, netexec, --http-port, "8080"]}]
---
apiVersion: v1
kind: Pod
metadata: {name: web2, labels: {app: web}}
spec:
  nodeSelector: {kubernetes.io/hostname: node2}
  containers: [{name: netexec, image: ignored, command: [duet, netexec, --http-port, "8080"]}]
---
apiVersion: v1
kind: Pod
metadata: {name: client, labels: {app: web}}
spec:
  nodeSelector: {kubernetes.io/hostname: node1}
  hostname: c
  subdomain: hl
  containers: [{name: netexec, image: ignored, command: [duet, netexec, --http-port, "8080"]}]
---
apiVersion: v1
kind: Pod
metadata: {name: flip, labels: {app: flip}}
spec:
  nodeSelector: {kubernetes.io/hostname: node2}
  containers:
  - name: sleep
    image: ignored
    command: [sleep, "3600"]
    readinessProbe: {exec: {command: [test, -e, /tmp/ready]}, periodSeconds: 1, failureThreshold: 1}
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  ipFamilyPolicy: RequireDualStack
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: web4}
spec:
  ipFamilies: [IPv4]
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: web6}
spec:
  ipFamilies: [IPv6]
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: hl}
spec:
  clusterIP: None
  ipFamilyPolicy: RequireDualStack
  selector: {app: web}
  ports: [{name: http, port: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: flips}
spec:
  clusterIP: None
  ipFamilyPolicy: RequireDualStack
  selector: {app: flip}
  ports: [{name: x, port: 1}]
---
apiVersion: v1
kind: Service
metadata: {name: ext}
spec: {type: ExternalName, externalName: outside.example}
`

// digResult is what dig printed for one question.
type digResult struct {
	status  string   // NOERROR, NXDOMAIN…
	answers []string // the data of each answer record ("10.96.0.20", "0 100 80 web…"), sorted
}

// digAll runs every question ("NAME TYPE", or "-x ADDR") with dig in pod
// pod (over TCP when tcp is set) in one exec, and returns the results by
// question.
func digAll(t *testing.T, kubeconfig, pod string, tcp bool, questions ...string) map[string]digResult {
	t.Helper()
	transport := "+notcp"
	if tcp {
		transport = "+tcp"
	}
	var script strings.Builder
	for _, q := range questions {
		fmt.Fprintf(&script, "echo '=== %s'; dig %s +tries=2 +time=3 +noall +comments +answer %s;\n", q, transport, q)
	}
	out := kubectl(t, kubeconfig, "exec", pod, "--", "sh", "-c", script.String())
	res := map[string]digResult{}
	var cur string
	for _, line := range strings.Split(string(out), "\n") {
		if q, ok := strings.CutPrefix(line, "=== "); ok {
			cur = q
			res[cur] = digResult{}
			continue
		}
		r := res[cur]
		if _, after, ok := strings.Cut(line, "status: "); ok {
			r.status, _, _ = strings.Cut(after, ",")
		} else if f := strings.Fields(line); len(f) >= 5 && !strings.HasPrefix(line, ";") {
			r.answers = append(r.answers, strings.Join(f[4:], " "))
			slices.Sort(r.answers)
		}
		res[cur] = r
	}
	return res
}

// TestClusterDNS asks the cluster's DNS from a pod, with dig (UDP and
// TCP) and the C library's resolver (getent, curl), for every kind of
// record over both families; checks that a Service is resolvable within
// a second of its creation and gone within a second of its deletion, that
// a headless Service's answer follows its pod's readiness, that names
// outside the cluster are forwarded to the node's resolvers, and that the
// API server's pods/proxy and services/proxy reach pods.
func TestClusterDNS(t *testing.T) {
	roottest.Require(t, "kubectl", "dig", "getent", "curl")
	// The nodes' resolvers: a fake in the namespace that plays the
	// outside world, on both of its addresses.
	resolvConf := filepath.Join(t.TempDir(), "resolv.conf")
	if err := os.WriteFile(resolvConf, []byte("nameserver 198.51.100.1\nnameserver 2001:db8:ffff::1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	dataDir, kubeconfig := up(t, "--resolv-conf", resolvConf)
	topo, err := cluster.Plan(dataDir, 2)
	if err != nil {
		t.Fatal(err)
	}
	upstreamQuestions := startFakeResolver(t, cluster.NetNSPath(topo.External), "198.51.100.1", "2001:db8:ffff::1")

	manifest := filepath.Join(t.TempDir(), "dns.yaml")
	if err := os.WriteFile(manifest, []byte(dnsManifest), 0o600); err != nil {
		t.Fatal(err)
	}
	kubectl(t, kubeconfig, "apply", "-f", manifest)
	kubectl(t, kubeconfig, "wait", "--for=condition=Ready", "pod/web1", "pod/web2", "pod/client", "--timeout=90s")
	podIPs := map[string][]string{}
	roottest.Eventually(t, 60*time.Second, "four pods with an address of each family", func() error {
		var pods corev1.PodList
		if err := json.Unmarshal(kubectl(t, kubeconfig, "get", "pods", "-o", "json"), &pods); err != nil {
			return err
		}
		clear(podIPs)
		for _, p := range pods.Items {
			for _, ip := range p.Status.PodIPs {
				podIPs[p.Name] = append(podIPs[p.Name], ip.IP)
			}
		}
		for _, name := range []string{"web1", "web2", "client", "flip"} {
			if len(podIPs[name]) != 2 {
				return fmt.Errorf("pods' addresses %v", podIPs)
			}
		}
		return nil
	})
	svcIPs := map[string][]string{}
	var svcs corev1.ServiceList
	if err := json.Unmarshal(kubectl(t, kubeconfig, "get", "services", "-o", "json"), &svcs); err != nil {
		t.Fatal(err)
	}
	for _, s := range svcs.Items {
		svcIPs[s.Name] = s.Spec.ClusterIPs
	}
	v4, v6 := func(ips []string) string { return ips[0] }, func(ips []string) string { return ips[1] }
	label := func(ip string) string { // 10-244-0-2, fd00-10-244--2
		a := netip.MustParseAddr(ip)
		if a.Is4() {
			return strings.ReplaceAll(ip, ".", "-")
		}
		return strings.ReplaceAll(a.String(), ":", "-")
	}
	sorted := func(ss ...string) []string { slices.Sort(ss); return ss }
	const zone = ".default.svc.cluster.local"

	// Asked until the headless Service's slices list the three pods.
	expect := map[string]digResult{
		"web" + zone + " A":              {"NOERROR", []string{v4(svcIPs["web"])}},
		"web" + zone + " AAAA":           {"NOERROR", []string{v6(svcIPs["web"])}},
		"web4" + zone + " A":             {"NOERROR", svcIPs["web4"]},
		"web4" + zone + " AAAA":          {"NOERROR", nil}, // the family it lacks: NODATA
		"web6" + zone + " A":             {"NOERROR", nil},
		"web6" + zone + " AAAA":          {"NOERROR", svcIPs["web6"]},
		"nope" + zone + " A":             {"NXDOMAIN", nil},
		"hl" + zone + " A":               {"NOERROR", sorted(v4(podIPs["web1"]), v4(podIPs["web2"]), v4(podIPs["client"]))},
		"hl" + zone + " AAAA":            {"NOERROR", sorted(v6(podIPs["web1"]), v6(podIPs["web2"]), v6(podIPs["client"]))},
		"c.hl" + zone + " A":             {"NOERROR", []string{v4(podIPs["client"])}},
		"c.hl" + zone + " AAAA":          {"NOERROR", []string{v6(podIPs["client"])}},
		"_http._tcp.web" + zone + " SRV": {"NOERROR", []string{"0 100 80 web" + zone + "."}},
		"ext" + zone + " CNAME":          {"NOERROR", []string{"outside.example."}},
		"ext" + zone + " A":              {"NOERROR", []string{"198.51.100.7", "outside.example."}},
		label(v4(podIPs["web2"])) + ".default.pod.cluster.local A":    {"NOERROR", []string{v4(podIPs["web2"])}},
		label(v6(podIPs["web2"])) + ".default.pod.cluster.local AAAA": {"NOERROR", []string{v6(podIPs["web2"])}},
		"-x " + v4(svcIPs["web"]):                                     {"NOERROR", []string{"web" + zone + "."}},
		"-x " + v6(svcIPs["web"]):                                     {"NOERROR", []string{"web" + zone + "."}},
		"-x " + v6(podIPs["client"]):                                  {"NOERROR", []string{"c.hl" + zone + "."}},
		"-x " + v4(podIPs["web2"]):                                    {"NOERROR", []string{label(v4(podIPs["web2"])) + ".hl" + zone + "."}},
		"outside.example A":                                           {"NOERROR", []string{"198.51.100.7"}},
		"outside.example AAAA":                                        {"NOERROR", []string{"2001:db8:ffff::7"}},
		"nope.example A":                                              {"NXDOMAIN", nil},
	}
	// Five SRV records of the headless port: c once (its hostname names
	// both families), web1 and web2 once per address.
	expect["_http._tcp.hl"+zone+" SRV"] = digResult{"NOERROR", sorted(
		"0 20 8080 c.hl"+zone+".",
		"0 20 8080 "+label(v4(podIPs["web1"]))+".hl"+zone+".", "0 20 8080 "+label(v6(podIPs["web1"]))+".hl"+zone+".",
		"0 20 8080 "+label(v4(podIPs["web2"]))+".hl"+zone+".", "0 20 8080 "+label(v6(podIPs["web2"]))+".hl"+zone+".")}
	var questions []string
	for q := range expect {
		questions = append(questions, q)
	}
	slices.Sort(questions)
	for _, tcp := range []bool{false, true} {
		var got map[string]digResult
		roottest.Eventually(t, 30*time.Second, fmt.Sprintf("dig from a pod (tcp %v)", tcp), func() error {
			got = digAll(t, kubeconfig, "client", tcp, questions...)
			var wrong []string
			for _, q := range questions {
				if g, w := got[q], expect[q]; g.status != w.status || !slices.Equal(g.answers, w.answers) {
					wrong = append(wrong, fmt.Sprintf("%s: %s %q, want %s %q", q, g.status, g.answers, w.status, w.answers))
				}
			}
			if len(wrong) > 0 {
				return fmt.Errorf("\n%s", strings.Join(wrong, "\n"))
			}
			return nil
		})
	}
	if upstreamQuestions() == 0 {
		t.Errorf("the fake upstream resolver got no questions")
	}

	// The C library's resolver: search path, both families, and HTTP to
	// the Service's name over each.
	out := string(kubectl(t, kubeconfig, "exec", "client", "--", "sh", "-c",
		"getent ahostsv4 web | sort -u; echo ---; getent ahostsv6 web | sort -u; echo ---; getent hosts c.hl; echo ---; "+
			"curl -sS -4 --max-time 5 http://web/hostname; echo; curl -sS -6 --max-time 5 http://web/hostname; echo; "+
			"curl -sS --max-time 5 http://web6.default/hostname; echo; curl -sS --max-time 5 http://web4.default.svc/hostname"))
	parts := strings.Split(out, "---\n")
	if len(parts) != 4 {
		t.Fatalf("getent and curl printed:\n%s", out)
	}
	for i, want := range []string{v4(svcIPs["web"]), v6(svcIPs["web"])} {
		if f := strings.Fields(parts[i]); len(f) == 0 || f[0] != want {
			t.Errorf("getent ahosts%s web: %q, want %s", []string{"v4", "v6"}[i], parts[i], want)
		}
	}
	if f := strings.Fields(parts[2]); len(f) < 2 || !slices.Contains(podIPs["client"], f[0]) || f[1] != "c.hl.default.svc.cluster.local" {
		t.Errorf("getent hosts c.hl: %q, want the client's address and its FQDN", parts[2])
	}
	names := strings.Fields(parts[3])
	if len(names) != 4 {
		t.Errorf("curl http://web/hostname over IPv4 and IPv6, web6 and web4: %q, want four pod names", parts[3])
	}
	for _, n := range names {
		if n != "web1" && n != "web2" && n != "c" {
			t.Errorf("curl through a Service's name answered %q, want web1, web2 or c", n)
		}
	}

	// Creation and deletion show within a second, asked from node1's
	// namespace through the kube-dns cluster IPs (either node answers).
	client := clientFor(t, kubeconfig)
	kubeDNS, err := client.CoreV1().Services("kube-system").Get(context.Background(), "kube-dns", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	ask := nodeAsker(t, cluster.NetNSPath(topo.Nodes[0].NetNS))
	for i := range 3 {
		name := fmt.Sprintf("fresh%d", i)
		svc := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: corev1.ServiceSpec{
			IPFamilyPolicy: ptrTo(corev1.IPFamilyPolicyRequireDualStack), Ports: []corev1.ServicePort{{Port: 80}}}}
		created, err := client.CoreV1().Services("default").Create(context.Background(), svc, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		for j, server := range kubeDNS.Spec.ClusterIPs {
			qtype := []uint16{dns.TypeA, dns.TypeAAAA}[j]
			roottest.Eventually(t, 5*time.Second, name+" resolvable", func() error {
				r := ask(server, name+zone+".", qtype)
				if r == nil || len(r.Answer) != 1 || !strings.HasSuffix(r.Answer[0].String(), created.Spec.ClusterIPs[j]) {
					return fmt.Errorf("answer %v", r)
				}
				return nil
			})
		}
		took := time.Since(start)
		if took > time.Second {
			t.Errorf("%s took %v to resolve over both families, want under 1s", name, took)
		}
		if err := client.CoreV1().Services("default").Delete(context.Background(), name, metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		start = time.Now()
		for _, server := range kubeDNS.Spec.ClusterIPs {
			roottest.Eventually(t, 5*time.Second, name+" gone", func() error {
				if r := ask(server, name+zone+".", dns.TypeA); r == nil || r.Rcode != dns.RcodeNameError {
					return fmt.Errorf("answer %v", r)
				}
				return nil
			})
		}
		gone := time.Since(start)
		if gone > time.Second {
			t.Errorf("%s took %v to go, want under 1s", name, gone)
		}
		t.Logf("%s: resolvable over both families %v after its create returned, gone %v after its delete returned", name, took.Round(time.Millisecond), gone.Round(time.Millisecond))
	}

	// A headless Service's answer follows its pod's readiness.
	flipAddrs := func() []string {
		var out []string
		for _, qtype := range []uint16{dns.TypeA, dns.TypeAAAA} {
			if r := ask(kubeDNS.Spec.ClusterIPs[0], "flips"+zone+".", qtype); r != nil {
				for _, rr := range r.Answer {
					f := strings.Fields(rr.String())
					out = append(out, f[len(f)-1])
				}
			}
		}
		return out
	}
	flipIPs := podIPs["flip"]
	for _, step := range []struct {
		cmd  string
		want []string
	}{
		{"", nil},
		{"touch /tmp/ready", flipIPs},
		{"rm /tmp/ready", nil},
	} {
		if step.cmd != "" {
			kubectl(t, kubeconfig, "exec", "flip", "--", "sh", "-c", step.cmd)
		}
		roottest.Eventually(t, 30*time.Second, "flips after "+step.cmd, func() error {
			if got := flipAddrs(); !slices.Equal(got, step.want) {
				return fmt.Errorf("flips has %v, want %v", got, step.want)
			}
			return nil
		})
	}

	// The agents' metrics count the questions.
	m := agentMetrics(t, dataDir, "node1") + agentMetrics(t, dataDir, "node2")
	for _, want := range []string{`duet_dns_requests_total{proto="udp",type="A",zone="cluster"}`, `duet_dns_requests_total{proto="tcp",type="SRV",zone="cluster"}`,
		`duet_dns_responses_total{rcode="NXDOMAIN",zone="cluster"}`, `duet_dns_responses_total{rcode="NOERROR",zone="forward"}`,
		`duet_dns_request_duration_seconds_bucket{zone="cluster",le=`, `duet_dns_index_objects{kind="services"}`} {
		if !strings.Contains(m, want) {
			t.Errorf("agent metrics lack %s", want)
		}
	}

	// The API server reaches pods: pods/proxy and services/proxy.
	if out := strings.TrimSpace(string(kubectl(t, kubeconfig, "get", "--raw", "/api/v1/namespaces/default/pods/web2:8080/proxy/hostname"))); out != "web2" {
		t.Errorf("pods/proxy to web2:8080/hostname: %q", out)
	}
	if out := strings.TrimSpace(string(kubectl(t, kubeconfig, "get", "--raw", "/api/v1/namespaces/default/services/web:http/proxy/hostname"))); out != "web1" && out != "web2" && out != "c" {
		t.Errorf("services/proxy to web:http/hostname: %q", out)
	}
}

func ptrTo[T any](v T) *T { return &v }

func clientFor(t *testing.T, kubeconfig string) kubernetes.Interface {
	t.Helper()
	cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	c, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// nodeAsker asks DNS questions from the network namespace at nsPath.
func nodeAsker(t *testing.T, nsPath string) func(server, name string, qtype uint16) *dns.Msg {
	return func(server, name string, qtype uint16) *dns.Msg {
		var conn net.Conn
		if err := netns.Do(nsPath, func() (err error) {
			conn, err = net.Dial("udp", net.JoinHostPort(server, "53"))
			return err
		}); err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		m := new(dns.Msg)
		m.SetQuestion(name, qtype)
		c := &dns.Client{Timeout: 2 * time.Second}
		r, _, err := c.ExchangeWithConn(m, &dns.Conn{Conn: conn})
		if err != nil {
			return nil
		}
		return r
	}
}

// startFakeResolver serves DNS on port 53 of addrs in the namespace at
// nsPath, as the nodes' upstream resolver: outside.example has
// 198.51.100.7 and 2001:db8:ffff::7; every other name is NXDOMAIN. It
// returns a count of the questions it got.
func startFakeResolver(t *testing.T, nsPath string, addrs ...string) func() int {
	var servers []*dns.Server
	var n atomic.Int64
	h := dns.HandlerFunc(func(w dns.ResponseWriter, req *dns.Msg) {
		n.Add(1)
		m := new(dns.Msg)
		m.SetReply(req)
		q := req.Question[0]
		hdr := dns.RR_Header{Name: q.Name, Rrtype: q.Qtype, Class: dns.ClassINET, Ttl: 30}
		switch {
		case strings.EqualFold(q.Name, "outside.example.") && q.Qtype == dns.TypeA:
			m.Answer = []dns.RR{&dns.A{Hdr: hdr, A: net.ParseIP("198.51.100.7")}}
		case strings.EqualFold(q.Name, "outside.example.") && q.Qtype == dns.TypeAAAA:
			m.Answer = []dns.RR{&dns.AAAA{Hdr: hdr, AAAA: net.ParseIP("2001:db8:ffff::7")}}
		case !strings.EqualFold(q.Name, "outside.example."):
			m.Rcode = dns.RcodeNameError
		}
		_ = w.WriteMsg(m)
	})
	err := netns.Do(nsPath, func() error {
		for _, a := range addrs {
			hp := net.JoinHostPort(a, "53")
			pc, err := net.ListenPacket("udp", hp)
			if err != nil {
				return err
			}
			l, err := net.Listen("tcp", hp)
			if err != nil {
				return err
			}
			servers = append(servers, &dns.Server{PacketConn: pc, Handler: h}, &dns.Server{Listener: l, Handler: h})
		}
		return nil
	})
	if err != nil {
		t.Fatalf("the fake upstream resolver: %v", err)
	}
	for _, s := range servers {
		go func() { _ = s.ActivateAndServe() }()
	}
	t.Cleanup(func() {
		for _, s := range servers {
			_ = s.Shutdown()
		}
	})
	return func() int { return int(n.Load()) }
}
