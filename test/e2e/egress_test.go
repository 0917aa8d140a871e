package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/duet-net/duet/internal/agent/sandbox"
	"github.com/duet-net/duet/internal/cluster"
	"github.com/duet-net/duet/internal/netns"
	"github.com/duet-net/duet/test/harness"
)

// podClient returns an HTTP client whose connections are made from inside
// the network namespace at nsPath: a socket stays in the namespace it was
// created in, whichever thread uses it later.
func podClient(t *testing.T, nsPath string, keepAlive bool) *http.Client {
	t.Helper()
	dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
		var c net.Conn
		err := netns.Do(nsPath, func() (err error) {
			d := net.Dialer{Timeout: 3 * time.Second}
			c, err = d.DialContext(ctx, network, addr)
			return err
		})
		return c, err
	}
	tr := &http.Transport{DialContext: dial, DisableKeepAlives: !keepAlive, MaxIdleConnsPerHost: 1}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 5 * time.Second}
}

// clientIP GETs /clientip and returns the address the server saw, and
// whether the request went over a reused connection.
func clientIP(c *http.Client, url string) (netip.Addr, bool, error) {
	var reused bool
	trace := &httptrace.ClientTrace{GotConn: func(i httptrace.GotConnInfo) { reused = i.Reused }}
	req, _ := http.NewRequestWithContext(httptrace.WithClientTrace(context.Background(), trace), http.MethodGet, url, nil)
	resp, err := c.Do(req)
	if err != nil {
		return netip.Addr{}, false, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return netip.Addr{}, false, err
	}
	ap, err := netip.ParseAddrPort(strings.TrimSpace(string(body)))
	if err != nil {
		return netip.Addr{}, false, fmt.Errorf("clientip answered %q: %w", body, err)
	}
	return ap.Addr().Unmap(), reused, nil
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	// Written beside and renamed, as editors and ConfigMap volumes do.
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

func TestEgressMasquerading(t *testing.T) {
	cfg := filepath.Join(t.TempDir(), "ip-masq-agent.yaml")
	writeFile(t, cfg, "# defaults\n")
	dataDir, kubeconfig := up(t, "--masq-config", cfg)
	topo, _ := cluster.Plan(dataDir, 2)
	node1 := topo.Nodes[0]

	// The outside world runs a netexec on its documentation addresses,
	// plus a link-local one.
	if out, err := exec.Command("ip", "-n", topo.External, "addr", "add", "169.254.169.254/32", "dev", "lo").CombinedOutput(); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	server := exec.Command("ip", "netns", "exec", topo.External, harness.Bin, "netexec", "--http-port", "8080", "--udp-port", "8081")
	if err := server.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = server.Process.Kill(); _ = server.Wait() })

	manifest := filepath.Join(t.TempDir(), "pod.yaml")
	writeFile(t, manifest, `
apiVersion: v1
kind: Pod
metadata: {name: client}
spec:
  nodeSelector: {kubernetes.io/hostname: node1}
  containers: [{name: c, image: ignored, command: [duet, netexec, --http-port, "8080"]}]
`)
	kubectl(t, kubeconfig, "apply", "-f", manifest)
	kubectl(t, kubeconfig, "wait", "--for=condition=Ready", "pod/client", "--timeout=60s")
	var pod corev1.Pod
	if err := json.Unmarshal(kubectl(t, kubeconfig, "get", "pod", "client", "-o", "json"), &pod); err != nil {
		t.Fatal(err)
	}
	podIPs := map[bool]netip.Addr{}
	for _, ip := range pod.Status.PodIPs {
		a := netip.MustParseAddr(ip.IP)
		podIPs[a.Is4()] = a
	}
	nsPath, err := sandbox.NetNSPath(cluster.NetNSPath(node1.NetNS), string(pod.UID))
	if err != nil {
		t.Fatal(err)
	}
	fresh := podClient(t, nsPath, false)
	urls := map[bool]string{true: "http://198.51.100.1:8080/clientip", false: "http://[2001:db8:ffff::1]:8080/clientip"}
	nodeIPs := map[bool]netip.Addr{true: node1.IPv4, false: node1.IPv6}

	// expect polls until every family's source seen outside is want[family],
	// and returns how long that took.
	expect := func(t *testing.T, what string, want map[bool]netip.Addr, within time.Duration) time.Duration {
		t.Helper()
		start := time.Now()
		got := map[bool]string{}
		for {
			ok := true
			for v4, url := range urls {
				ip, _, err := clientIP(fresh, url)
				got[v4] = fmt.Sprint(ip, err)
				ok = ok && err == nil && ip == want[v4]
			}
			if ok {
				return time.Since(start)
			}
			if time.Since(start) > within {
				t.Fatalf("%s: outside saw %v, want %v (after %v)", what, got, want, within)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}

	// Defaults: the outside is neither in the IPv4 private ranges nor the
	// cluster's own, so both families are masqueraded to node1.
	expect(t, "defaults", nodeIPs, 10*time.Second)

	// A connection established before the change.
	kept := podClient(t, nsPath, true)
	before, _, err := clientIP(kept, urls[true])
	if err != nil || before != node1.IPv4 {
		t.Fatalf("kept connection: %v %v", before, err)
	}

	writeFile(t, cfg, "nonMasqueradeCIDRs: [198.51.100.0/24, '2001:db8:ffff::/48']\nmasqLinkLocal: false\n")
	took := expect(t, "outside listed in nonMasqueradeCIDRs", podIPs, 5*time.Second)
	t.Logf("config change applied and seen from a pod within %v", took)
	if took > time.Second+500*time.Millisecond {
		t.Errorf("the change took %v to apply, want about a second at most", took)
	}
	after, reused, err := clientIP(kept, urls[true])
	if err != nil || !reused || after != node1.IPv4 {
		t.Errorf("established flow after the change: source %v, reused %v, err %v; want it kept, masqueraded as before", after, reused, err)
	}

	// A bad file changes nothing and says why on the Node.
	writeFile(t, cfg, "nonMasqueradeCIDRs: [10.0.0.1/8]\n")
	deadline := time.Now().Add(10 * time.Second)
	for {
		out, _ := exec.Command("kubectl", "--kubeconfig", kubeconfig, "get", "events", "-A",
			"--field-selector", "involvedObject.kind=Node,involvedObject.name=node1", "-o", "json").Output()
		if strings.Contains(string(out), "10.0.0.1/8") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no Node event about the bad config:\n%s", out)
		}
		time.Sleep(100 * time.Millisecond)
	}
	expect(t, "after a bad config", podIPs, time.Second)

	// Link-local: kept unmasqueraded by default, masqueraded on request.
	linkLocal := "http://169.254.169.254:8080/clientip"
	ll := func() netip.Addr {
		ip, _, err := clientIP(fresh, linkLocal)
		if err != nil {
			t.Fatal(err)
		}
		return ip
	}
	if ip := ll(); ip != podIPs[true] {
		t.Errorf("link-local with masqLinkLocal false: outside saw %v, want the pod's %v", ip, podIPs[true])
	}
	writeFile(t, cfg, "nonMasqueradeCIDRs: [198.51.100.0/24]\nmasqLinkLocal: true\n")
	urls = map[bool]string{true: linkLocal}
	expect(t, "masqLinkLocal: true", nodeIPs, 5*time.Second)
	v6, _ := exec.Command("ip", "netns", "exec", node1.NetNS, "nft", "list", "table", "ip6", "duet-masq").CombinedOutput()
	if !strings.Contains(string(v6), "fe80::/10") {
		t.Errorf("masqLinkLocalIPv6 false by default, but fe80::/10 is not exempt:\n%s", v6)
	}
	writeFile(t, cfg, "nonMasqueradeCIDRs: [198.51.100.0/24]\nmasqLinkLocalIPv6: true\n")
	deadline = time.Now().Add(5 * time.Second)
	for {
		v6, _ = exec.Command("ip", "netns", "exec", node1.NetNS, "nft", "list", "table", "ip6", "duet-masq").CombinedOutput()
		if !strings.Contains(string(v6), "fe80::/10") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("masqLinkLocalIPv6: true, but fe80::/10 is still exempt:\n%s", v6)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
