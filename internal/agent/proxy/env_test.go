package proxy

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/duet-net/duet/internal/netns"
	"github.com/duet-net/duet/internal/testutil/roottest"
)

// testPrefix starts the name of every namespace these tests make; TestMain
// fails the run if one is left behind.
const testPrefix = "duetproxytest-"

func TestMain(m *testing.M) {
	code := m.Run()
	if out, err := exec.Command("ip", "netns", "list").Output(); err == nil {
		var left []string
		for line := range strings.Lines(string(out)) {
			if name, _, _ := strings.Cut(strings.TrimSpace(line), " "); strings.HasPrefix(name, testPrefix+runTag) {
				left = append(left, name)
			}
		}
		if len(left) > 0 {
			fmt.Fprintf(os.Stderr, "FAIL: namespaces left behind: %s\n", strings.Join(left, ", "))
			code = 1
		}
	}
	os.Exit(code)
}

// runTag tells this run's namespaces from those of runs beside it.
var runTag = func() string {
	b := make([]byte, 3)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}()

func requireRoot(t testing.TB) {
	t.Helper()
	roottest.Require(t, "ip")
}

func run(t testing.TB, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

var nsSeq struct {
	sync.Mutex
	n int
}

// newNS makes a network namespace with lo up, deleted when the test ends.
func newNS(t testing.TB, role string) string {
	t.Helper()
	nsSeq.Lock()
	nsSeq.n++
	name := fmt.Sprintf("%s%s-%d-%s", testPrefix, runTag, nsSeq.n, role)
	nsSeq.Unlock()
	run(t, "ip", "netns", "add", name)
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", name).Run() })
	run(t, "ip", "-n", name, "link", "set", "lo", "up")
	return name
}

func nsPath(ns string) string { return "/run/netns/" + ns }

// testNet is a node like Duet's: a namespace with a bridge duet0 holding
// the pods' gateways, pods on veths on that bridge, and an "outside"
// namespace on the node's uplink, standing for a client off the cluster.
type testNet struct {
	node, outside string
	pods          map[string]testPod // by name
}

type testPod struct {
	ns     string
	v4, v6 netip.Addr
}

var (
	nodeIP4    = netip.MustParseAddr("192.0.2.1")
	nodeIP6    = netip.MustParseAddr("2001:db8::1")
	outsideIP4 = netip.MustParseAddr("192.0.2.2")
	outsideIP6 = netip.MustParseAddr("2001:db8::2")
	podCIDR4   = netip.MustParsePrefix("10.244.1.0/24")
	podCIDR6   = netip.MustParsePrefix("fd00:10:244:1::/64")
	// Load balancer and external IPs are routed to the node by the outside.
	lbRange4 = netip.MustParsePrefix("203.0.113.0/24")
	lbRange6 = netip.MustParsePrefix("2001:db8:100::/64")
)

const serverPort = 8080

// newTestNet wires a node with the given pods, each running TCP and UDP
// servers on port 8080 of both families that answer with the pod's name.
// Bridged traffic skips netfilter (bridge-nf-call-ip*tables=0), as Duet's
// node should have it.
func newTestNet(t *testing.T, pods ...string) *testNet {
	return newTestNetWith(t, false, pods...)
}

// newTestNetWith, with brNetfilter, leaves bridged traffic to netfilter
// (br_netfilter's default) and turns hairpin mode on for the pods' bridge
// ports instead: the other way a node can serve a pod its own service.
func newTestNetWith(t *testing.T, brNetfilter bool, pods ...string) *testNet {
	t.Helper()
	requireRoot(t)
	n := &testNet{node: newNS(t, "node"), outside: newNS(t, "out"), pods: map[string]testPod{}}
	ipn := func(ns string, args ...string) { t.Helper(); run(t, "ip", append([]string{"-n", ns}, args...)...) }
	run(t, "ip", "netns", "exec", n.node, "sysctl", "-qw", "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1")
	_, err := os.Stat("/proc/sys/net/bridge")
	switch {
	case brNetfilter && err != nil:
		t.Skip("br_netfilter is not loaded")
	case brNetfilter:
		run(t, "ip", "netns", "exec", n.node, "sysctl", "-qw", "net.bridge.bridge-nf-call-iptables=1", "net.bridge.bridge-nf-call-ip6tables=1")
	case err == nil:
		// br_netfilter is loaded: bridged traffic between pods would go
		// through the ip hooks too. Duet's node does not need that.
		run(t, "ip", "netns", "exec", n.node, "sysctl", "-qw", "net.bridge.bridge-nf-call-iptables=0", "net.bridge.bridge-nf-call-ip6tables=0")
	}
	ipn(n.node, "link", "add", "duet0", "type", "bridge")
	ipn(n.node, "addr", "add", "10.244.1.1/24", "dev", "duet0")
	ipn(n.node, "addr", "add", "fd00:10:244:1::1/64", "dev", "duet0", "nodad")
	ipn(n.node, "link", "set", "duet0", "up")

	ipn(n.node, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", n.outside)
	ipn(n.node, "addr", "add", nodeIP4.String()+"/24", "dev", "eth0")
	ipn(n.node, "addr", "add", nodeIP6.String()+"/64", "dev", "eth0", "nodad")
	ipn(n.node, "link", "set", "eth0", "up")
	ipn(n.outside, "addr", "add", outsideIP4.String()+"/24", "dev", "eth0")
	ipn(n.outside, "addr", "add", outsideIP6.String()+"/64", "dev", "eth0", "nodad")
	ipn(n.outside, "link", "set", "eth0", "up")
	// The node reaches the rest of the world (and so the service CIDR,
	// which nobody routes) through the outside; the outside sends load
	// balancer IPs to the node.
	ipn(n.node, "route", "add", "default", "via", outsideIP4.String())
	ipn(n.node, "-6", "route", "add", "default", "via", outsideIP6.String())
	ipn(n.outside, "route", "add", lbRange4.String(), "via", nodeIP4.String())
	ipn(n.outside, "-6", "route", "add", lbRange6.String(), "via", nodeIP6.String())

	for i, name := range pods {
		p := testPod{ns: newNS(t, name), v4: podCIDR4.Addr().Next(), v6: podCIDR6.Addr().Next()}
		for range 10 + i {
			p.v4, p.v6 = p.v4.Next(), p.v6.Next()
		}
		port := fmt.Sprintf("veth%d", i)
		ipn(n.node, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", p.ns)
		ipn(n.node, "link", "set", port, "master", "duet0", "up")
		if brNetfilter {
			ipn(n.node, "link", "set", port, "type", "bridge_slave", "hairpin", "on")
		}
		ipn(p.ns, "addr", "add", p.v4.String()+"/24", "dev", "eth0")
		ipn(p.ns, "addr", "add", p.v6.String()+"/64", "dev", "eth0", "nodad")
		ipn(p.ns, "link", "set", "eth0", "up")
		ipn(p.ns, "route", "add", "default", "via", "10.244.1.1")
		ipn(p.ns, "-6", "route", "add", "default", "via", "fd00:10:244:1::1")
		serve(t, p.ns, name)
		n.pods[name] = p
	}
	return n
}

// serve answers TCP and UDP on port 8080, both families, with name and
// the address the connection came from.
func serve(t *testing.T, ns, name string) {
	t.Helper()
	var tl net.Listener
	var ul net.PacketConn
	err := inNamespace(nsPath(ns), func() error {
		var err error
		if tl, err = net.Listen("tcp", fmt.Sprintf("[::]:%d", serverPort)); err != nil {
			return err
		}
		ul, err = net.ListenPacket("udp", fmt.Sprintf("[::]:%d", serverPort))
		return err
	})
	if err != nil {
		t.Fatalf("servers in %s: %v", ns, err)
	}
	t.Cleanup(func() { tl.Close(); ul.Close() })
	go func() {
		for {
			c, err := tl.Accept()
			if err != nil {
				return
			}
			_, _ = c.Write([]byte(name + " " + remoteIP(c.RemoteAddr())))
			c.Close()
		}
	}()
	go func() {
		buf := make([]byte, 512)
		for {
			_, from, err := ul.ReadFrom(buf)
			if err != nil {
				return
			}
			_, _ = ul.WriteTo([]byte(name+" "+remoteIP(from)), from)
		}
	}()
}

func remoteIP(a net.Addr) string {
	ap, err := netip.ParseAddrPort(a.String())
	if err != nil {
		return a.String()
	}
	return ap.Addr().Unmap().String()
}

// podOf is the pod that gave an answer; sourceOf, the client address it
// saw.
func podOf(answer string) string    { p, _, _ := strings.Cut(answer, " "); return p }
func sourceOf(answer string) string { _, s, _ := strings.Cut(answer, " "); return s }

// ask connects from namespace ns to addr over network ("tcp" or "udp")
// and returns the answer: the name of the pod that served and the client
// address it saw.
func ask(ns, network string, addr netip.AddrPort) (string, error) {
	var answer string
	err := inNamespace(nsPath(ns), func() error {
		d := net.Dialer{Timeout: time.Second}
		c, err := d.Dial(network, addr.String())
		if err != nil {
			return err
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(time.Second))
		if network == "udp" {
			if _, err := c.Write([]byte("who?")); err != nil {
				return err
			}
			buf := make([]byte, 512)
			n, err := c.Read(buf)
			answer = string(buf[:n])
			return err
		}
		b, err := io.ReadAll(c)
		answer = string(b)
		return err
	})
	return answer, err
}

// eventually polls try until ok accepts its answer, or fails the test
// after a deadline with the last outcome.
func eventually(t *testing.T, what string, try func() (string, error), ok func(string) bool) string {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	var last string
	var lastErr error
	for time.Now().Before(deadline) {
		last, lastErr = try()
		if lastErr == nil && ok(last) {
			return last
		}
		time.Sleep(20 * time.Millisecond) // poll interval, not a synchronisation
	}
	t.Fatalf("%s: last answer %q, error %v", what, last, lastErr)
	return ""
}

// answers asks n times and counts the answering pods.
func answers(ns, network string, addr netip.AddrPort, n int) (map[string]int, error) {
	got := map[string]int{}
	var errs []error
	for range n {
		a, err := ask(ns, network, addr)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		got[podOf(a)]++
	}
	return got, errors.Join(errs...)
}

// nftList is the table as nft prints it (for failure messages and for
// checks that a port is absent).
func nftList(t *testing.T, ns string, fam Family) string {
	t.Helper()
	kw := "ip"
	if fam == IPv6 {
		kw = "ip6"
	}
	out, err := exec.Command("ip", "netns", "exec", ns, "nft", "list", "table", kw, TableName).CombinedOutput()
	if err != nil {
		return fmt.Sprintf("(nft list: %v: %s)", err, out)
	}
	return string(out)
}

// inNamespace runs fn on a thread in the namespace at path ("" for the
// test's own).
func inNamespace(path string, fn func() error) error {
	if path == "" {
		return fn()
	}
	return netns.Do(path, fn)
}
