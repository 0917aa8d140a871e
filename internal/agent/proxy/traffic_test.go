package proxy

import (
	"maps"
	"net"
	"net/netip"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"
)

// These tests program real tables in namespaces they make and send real
// TCP and UDP through them (root only).

type e2e struct {
	*testNet
	proxiers map[Family]*Proxier
}

var testClusterCIDRs = []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16"), netip.MustParsePrefix("fd00:10:244::/56")}

func newE2E(t *testing.T, pods ...string) *e2e {
	t.Helper()
	return newE2EWith(t, false, pods...)
}

func newE2EWith(t *testing.T, brNetfilter bool, pods ...string) *e2e {
	t.Helper()
	n := newTestNetWith(t, brNetfilter, pods...)
	e := &e2e{testNet: n, proxiers: map[Family]*Proxier{}}
	for _, f := range []Family{IPv4, IPv6} {
		p, err := NewProxier(f, Options{NetNS: nsPath(n.node), NodeIPs: []netip.Addr{nodeIP4, nodeIP6}, ClusterCIDRs: testClusterCIDRs})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { p.Close() })
		e.proxiers[f] = p
	}
	return e
}

// sync gives each proxier the ports of its family.
func (e *e2e) sync(t *testing.T, ports ...ServicePort) {
	t.Helper()
	for f, p := range e.proxiers {
		d := map[ServicePortName]ServicePort{}
		for _, sp := range ports {
			if f.Has(sp.ClusterIP) {
				d[sp.Name] = sp
			}
		}
		if _, err := p.Sync(d); err != nil {
			t.Fatalf("%s sync: %v", f, err)
		}
	}
}

// endpoints are the pods' addresses of the family of like, on port 8080.
func (e *e2e) endpoints(like netip.Addr, pods ...string) []Endpoint {
	var eps []Endpoint
	for _, p := range pods {
		a := e.pods[p].v4
		if like.Is6() {
			a = e.pods[p].v6
		}
		eps = append(eps, Endpoint{a, serverPort})
	}
	return eps
}

func gateway(f Family) string {
	if f == IPv4 {
		return "10.244.1.1"
	}
	return "fd00:10:244:1::1"
}

var (
	vip4 = netip.MustParseAddr("10.96.0.10")
	vip6 = netip.MustParseAddr("fd00:96::10")
)

func vip(f Family) netip.Addr {
	if f == IPv4 {
		return vip4
	}
	return vip6
}

func networks() []string { return []string{"tcp", "udp"} }

func protoOf(network string) Protocol {
	if network == "udp" {
		return UDP
	}
	return TCP
}

// seesAll asks until every pod in want has answered (and no other), and
// returns the client address each saw.
func seesAll(t *testing.T, from, network string, to netip.AddrPort, want ...string) map[string]string {
	t.Helper()
	seen := map[string]string{}
	deadline := time.Now().Add(15 * time.Second)
	var lastErr error
	for len(seen) < len(want) && time.Now().Before(deadline) {
		a, err := ask(from, network, to)
		if err != nil {
			lastErr = err
			continue
		}
		if !slices.Contains(want, podOf(a)) {
			t.Fatalf("%s %s from %s: answered by %q, want one of %v", network, to, from, a, want)
		}
		seen[podOf(a)] = sourceOf(a)
	}
	if len(seen) < len(want) {
		t.Fatalf("%s %s from %s: only %v answered of %v (last error %v)", network, to, from, slices.Sorted(maps.Keys(seen)), want, lastErr)
	}
	return seen
}

// A pod reaches every endpoint through the cluster IP, in both families
// and both protocols, itself included (hairpin); it is masqueraded to the
// gateway whenever the endpoint is on its own bridge, since the reply would
// otherwise not come back through the node.
func TestTrafficClusterIP(t *testing.T) {
	testTrafficClusterIP(t, newE2E(t, "a", "b", "c"))
}

// The same with br_netfilter passing bridged traffic to the ip hooks and
// hairpin mode on the bridge ports.
func TestTrafficClusterIPBrNetfilter(t *testing.T) {
	testTrafficClusterIP(t, newE2EWith(t, true, "a", "b", "c"))
}

func testTrafficClusterIP(t *testing.T, e *e2e) {
	var ports []ServicePort
	for _, f := range []Family{IPv4, IPv6} {
		for _, nw := range networks() {
			ports = append(ports, ServicePort{Name: ServicePortName{"ns", "web", nw, protoOf(nw)}, ClusterIP: vip(f), Port: 80,
				Endpoints: e.endpoints(vip(f), "a", "b", "c")})
		}
	}
	e.sync(t, ports...)
	for _, f := range []Family{IPv4, IPv6} {
		for _, nw := range networks() {
			t.Run(f.String()+"/"+nw, func(t *testing.T) {
				seen := seesAll(t, e.pods["a"].ns, nw, netip.AddrPortFrom(vip(f), 80), "a", "b", "c")
				for pod, src := range seen {
					if src != gateway(f) {
						t.Errorf("%s saw the client as %s, want the gateway %s (masqueraded)", pod, src, gateway(f))
					}
				}
			})
		}
	}
}

// The node itself reaches cluster IPs (output hook).
func TestTrafficFromTheNode(t *testing.T) {
	e := newE2E(t, "a", "b")
	e.sync(t,
		ServicePort{Name: ServicePortName{"ns", "web", "", TCP}, ClusterIP: vip4, Port: 80, Endpoints: e.endpoints(vip4, "a", "b")},
		ServicePort{Name: ServicePortName{"ns", "web", "", TCP}, ClusterIP: vip6, Port: 80, Endpoints: e.endpoints(vip6, "a", "b")},
	)
	for _, f := range []Family{IPv4, IPv6} {
		seesAll(t, e.node, "tcp", netip.AddrPortFrom(vip(f), 80), "a", "b")
	}
}

// From outside the cluster: node ports on the node's IPs, load balancer
// and external IPs; all masqueraded, so that replies come back through
// the node.
func TestTrafficFromOutside(t *testing.T) {
	e := newE2E(t, "a", "b")
	lb4, lb6 := netip.MustParseAddr("203.0.113.5"), netip.MustParseAddr("2001:db8:100::5")
	ext4, ext6 := netip.MustParseAddr("203.0.113.6"), netip.MustParseAddr("2001:db8:100::6")
	var ports []ServicePort
	for _, nw := range networks() {
		ports = append(ports,
			ServicePort{Name: ServicePortName{"ns", "lb", nw, protoOf(nw)}, ClusterIP: vip4, Port: 80, NodePort: 30080,
				ExternalIPs: []netip.Addr{lb4, ext4}, Endpoints: e.endpoints(vip4, "a", "b")},
			ServicePort{Name: ServicePortName{"ns", "lb", nw, protoOf(nw)}, ClusterIP: vip6, Port: 80, NodePort: 30080,
				ExternalIPs: []netip.Addr{lb6, ext6}, Endpoints: e.endpoints(vip6, "a", "b")})
	}
	e.sync(t, ports...)
	for _, nw := range networks() {
		for _, to := range []netip.AddrPort{
			netip.AddrPortFrom(nodeIP4, 30080), netip.AddrPortFrom(nodeIP6, 30080),
			netip.AddrPortFrom(lb4, 80), netip.AddrPortFrom(lb6, 80),
			netip.AddrPortFrom(ext4, 80), netip.AddrPortFrom(ext6, 80),
		} {
			t.Run(nw+"/"+to.String(), func(t *testing.T) {
				for pod, src := range seesAll(t, e.outside, nw, to, "a", "b") {
					if want := gateway(FamilyOf(to.Addr())); src != want {
						t.Errorf("%s saw the outside client as %s, want %s (masqueraded)", pod, src, want)
					}
				}
			})
		}
	}
}

// ClientIP affinity pins a client to one endpoint; when that endpoint
// goes, the client is pinned to another.
func TestTrafficAffinity(t *testing.T) {
	e := newE2E(t, "a", "b", "c", "client")
	for _, f := range []Family{IPv4, IPv6} {
		t.Run(f.String(), func(t *testing.T) {
			sp := ServicePort{Name: ServicePortName{"ns", "sticky", "", TCP}, ClusterIP: vip(f), Port: 80,
				Affinity: time.Hour, Endpoints: e.endpoints(vip(f), "a", "b", "c")}
			e.sync(t, sp)
			to := netip.AddrPortFrom(vip(f), 80)
			got, err := answers(e.pods["client"].ns, "tcp", to, 20)
			if err != nil || len(got) != 1 {
				t.Fatalf("with affinity, 20 connections reached %v (errors: %v); want one endpoint", got, err)
			}
			pinned := slices.Collect(maps.Keys(got))[0]

			var rest []string
			for _, p := range []string{"a", "b", "c"} {
				if p != pinned {
					rest = append(rest, p)
				}
			}
			sp.Endpoints = e.endpoints(vip(f), rest...)
			e.sync(t, sp)
			got, err = answers(e.pods["client"].ns, "tcp", to, 20)
			if err != nil || len(got) != 1 || got[pinned] > 0 {
				t.Fatalf("after %s left, 20 connections reached %v (errors: %v); want one of %v", pinned, got, err, rest)
			}
		})
	}
}

// An endpoint removed gets no more new connections.
func TestTrafficEndpointRemoved(t *testing.T) {
	e := newE2E(t, "a", "b", "c", "client")
	for _, f := range []Family{IPv4, IPv6} {
		for _, nw := range networks() {
			t.Run(f.String()+"/"+nw, func(t *testing.T) {
				sp := ServicePort{Name: ServicePortName{"ns", "web", nw, protoOf(nw)}, ClusterIP: vip(f), Port: 80, Endpoints: e.endpoints(vip(f), "a", "b", "c")}
				e.sync(t, sp)
				to := netip.AddrPortFrom(vip(f), 80)
				seesAll(t, e.pods["client"].ns, nw, to, "a", "b", "c")
				sp.Endpoints = e.endpoints(vip(f), "a", "c")
				e.sync(t, sp)
				got, err := answers(e.pods["client"].ns, nw, to, 30)
				if err != nil || got["b"] > 0 || got["a"] == 0 || got["c"] == 0 {
					t.Fatalf("after b was removed, 30 connections reached %v (errors: %v)", got, err)
				}
			})
		}
	}
}

// A service without ready endpoints refuses connections at once instead
// of letting them time out.
func TestTrafficNoEndpointsRejects(t *testing.T) {
	e := newE2E(t, "client")
	var ports []ServicePort
	for _, f := range []Family{IPv4, IPv6} {
		for _, nw := range networks() {
			ports = append(ports, ServicePort{Name: ServicePortName{"ns", "empty", nw, protoOf(nw)}, ClusterIP: vip(f), Port: 80, NodePort: 30081})
		}
	}
	e.sync(t, ports...)
	for _, f := range []Family{IPv4, IPv6} {
		for _, nw := range networks() {
			for _, c := range []struct {
				from string
				to   netip.AddrPort
			}{
				{e.pods["client"].ns, netip.AddrPortFrom(vip(f), 80)},
				{e.node, netip.AddrPortFrom(vip(f), 80)},
				{e.outside, netip.AddrPortFrom(map[Family]netip.Addr{IPv4: nodeIP4, IPv6: nodeIP6}[f], 30081)},
			} {
				start := time.Now()
				_, err := ask(c.from, nw, c.to)
				want := "connection refused"
				if c.from == e.node && nw == "udp" {
					// Rejected in output, a datagram never leaves: the
					// sender gets EPERM, as with kube-proxy.
					want = "operation not permitted"
				}
				if err == nil || !strings.Contains(err.Error(), want) {
					t.Errorf("%s %s from %s: %v, want %s", nw, c.to, c.from, err, want)
				}
				if d := time.Since(start); d > 500*time.Millisecond {
					t.Errorf("%s %s from %s: refused after %v, want at once", nw, c.to, c.from, d)
				}
			}
		}
	}
}

func nftCmd(t *testing.T, ns string, args ...string) {
	t.Helper()
	run(t, "ip", append([]string{"netns", "exec", ns, "nft"}, args...)...)
}

// What is deleted or changed behind the proxy's back breaks traffic until
// the periodic check repairs it; an untouched table needs no repair, and a
// proxier restarted on it changes nothing.
func TestTrafficRepair(t *testing.T) {
	e := newE2E(t, "a", "b", "client")
	sticky := ServicePort{Name: ServicePortName{"ns", "sticky", "", TCP}, ClusterIP: vip6, Port: 80, Affinity: time.Minute,
		Endpoints: e.endpoints(vip6, "a", "b")}
	np := ServicePort{Name: ServicePortName{"ns", "np", "", UDP}, ClusterIP: netip.MustParseAddr("fd00:96::11"), Port: 53,
		NodePort: 30053, Endpoints: e.endpoints(vip6, "a")}
	web := ServicePort{Name: ServicePortName{"ns", "web", "", TCP}, ClusterIP: vip4, Port: 80, Endpoints: e.endpoints(vip4, "a", "b")}
	e.sync(t, web, sticky, np)
	for f, p := range e.proxiers {
		if n, err := p.Repair(); err != nil || n != 0 {
			t.Fatalf("%s: Repair right after Sync = %d changes, %v; want 0\n%s", f, n, err, nftList(t, e.node, f))
		}
		again, err := NewProxier(f, Options{NetNS: nsPath(e.node), NodeIPs: []netip.Addr{nodeIP4, nodeIP6}, ClusterCIDRs: testClusterCIDRs})
		if err != nil {
			t.Fatal(err)
		}
		d := map[ServicePortName]ServicePort{}
		for _, sp := range []ServicePort{web, sticky, np} {
			if f.Has(sp.ClusterIP) {
				d[sp.Name] = sp
			}
		}
		if n, err := again.Sync(d); err != nil || n != 0 {
			t.Errorf("%s: a restarted proxier's first Sync = %d changes, %v; want 0", f, n, err)
		}
		again.Close()
	}
	to := netip.AddrPortFrom(vip4, 80)
	seesAll(t, e.pods["client"].ns, "tcp", to, "a", "b")

	for _, tamper := range [][]string{
		{"delete", "element", "ip", TableName, "random-2", "{ 10.96.0.10 . tcp . 80 }"},
		{"flush", "chain", "ip", TableName, chainServices},
		{"flush", "chain", "ip", TableName, chainNATPrerouting},
		{"delete", "table", "ip", TableName},
	} {
		t.Run(strings.Join(tamper[:2], " "), func(t *testing.T) {
			nftCmd(t, e.node, tamper...)
			if a, err := ask(e.pods["client"].ns, "tcp", to); err == nil {
				t.Fatalf("after nft %s, the service still answers (%s): the test tampers with nothing", strings.Join(tamper, " "), a)
			}
			n, err := e.proxiers[IPv4].Repair()
			if err != nil || n == 0 {
				t.Fatalf("Repair = %d changes, %v; want some", n, err)
			}
			seesAll(t, e.pods["client"].ns, "tcp", to, "a", "b")
			if n, err := e.proxiers[IPv4].Repair(); err != nil || n != 0 {
				t.Fatalf("second Repair = %d changes, %v; want 0", n, err)
			}
		})
	}

	// The IPv6 side, tampered with in ways that do not break traffic at
	// once, is repaired too.
	nftCmd(t, e.node, "add", "rule", "ip6", TableName, chainServices, "counter")
	nftCmd(t, e.node, "delete", "element", "ip6", TableName, setExternalFrontends, "{ 2001:db8::1 . udp . 30053 }")
	nftCmd(t, e.node, "add", "chain", "ip6", TableName, "intruder")
	if n, err := e.proxiers[IPv6].Repair(); err != nil || n == 0 {
		t.Fatalf("IPv6 Repair = %d changes, %v; want some", n, err)
	}
	if n, err := e.proxiers[IPv6].Repair(); err != nil || n != 0 {
		t.Fatalf("second IPv6 Repair = %d changes, %v; want 0\n%s", n, err, nftList(t, e.node, IPv6))
	}
	if l := nftList(t, e.node, IPv6); strings.Contains(l, "intruder") || strings.Contains(l, "counter") || !strings.Contains(l, "2001:db8::1 . udp . 30053") {
		t.Errorf("IPv6 table after repair:\n%s", l)
	}
	seesAll(t, e.outside, "udp", netip.AddrPortFrom(nodeIP6, 30053), "a")
}

// Remove deletes the table, and only the proxier's.
func TestRemove(t *testing.T) {
	e := newE2E(t)
	nftCmd(t, e.node, "add", "table", "ip", "someone-else")
	e.sync(t)
	for f, p := range e.proxiers {
		if err := p.Remove(); err != nil {
			t.Fatalf("%s Remove: %v", f, err)
		}
		if err := p.Remove(); err != nil {
			t.Fatalf("%s Remove of a removed table: %v", f, err)
		}
	}
	out := run(t, "ip", "netns", "exec", e.node, "nft", "list", "tables")
	if strings.Contains(out, TableName) || !strings.Contains(out, "someone-else") {
		t.Errorf("tables after Remove:\n%s", out)
	}
}

func TestSCTP(t *testing.T) {
	requireRoot(t)
	ns := newNS(t, "sctp")
	if err := exec.Command("ip", "netns", "exec", ns, "nft", "add table ip t; add chain ip t c; add rule ip t c meta l4proto sctp sctp dport 1 accept").Run(); err != nil {
		t.Skip("the kernel has no SCTP match")
	}
	p, err := NewProxier(IPv4, Options{NetNS: nsPath(ns), NodeIPs: []netip.Addr{nodeIP4}})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	sp := ServicePort{Name: ServicePortName{"ns", "s", "", SCTP}, ClusterIP: vip4, Port: 9, Endpoints: []Endpoint{{netip.MustParseAddr("10.244.1.11"), 9}}}
	if _, err := p.Sync(map[ServicePortName]ServicePort{sp.Name: sp}); err != nil {
		t.Fatal(err)
	}
	if l := nftList(t, ns, IPv4); !strings.Contains(l, "10.96.0.10 . sctp . 9") {
		t.Errorf("SCTP port not programmed:\n%s", l)
	}
}

// nft, which operators read the table with, can list everything the
// proxy writes.
func TestNftListsTheTable(t *testing.T) {
	e := newE2E(t)
	var ports []ServicePort
	for _, f := range []Family{IPv4, IPv6} {
		a := vip(f)
		ep := Endpoint{a.Next(), 8080}
		ports = append(ports,
			ServicePort{Name: ServicePortName{"ns", "all", "", TCP}, ClusterIP: a, Port: 80, NodePort: 30080, Affinity: time.Minute,
				ExternalIPs: []netip.Addr{a.Next().Next()}, Endpoints: []Endpoint{ep}},
			ServicePort{Name: ServicePortName{"ns", "empty", "", UDP}, ClusterIP: a, Port: 53, NodePort: 30053})
	}
	e.sync(t, ports...)
	for _, f := range []Family{IPv4, IPv6} {
		if l := nftList(t, e.node, f); strings.HasPrefix(l, "(nft list") {
			t.Errorf("%s: %s", f, l)
		} else {
			t.Logf("%s", l)
		}
	}
}

// A UDP client that keeps its socket keeps its conntrack entry: when its
// endpoint leaves, the entry is deleted and its next datagram reaches
// another endpoint.
func TestTrafficUDPFlowLeavesWithItsEndpoint(t *testing.T) {
	e := newE2E(t, "a", "b", "client")
	for _, f := range []Family{IPv4, IPv6} {
		t.Run(f.String(), func(t *testing.T) {
			sp := ServicePort{Name: ServicePortName{"ns", "dns", "", UDP}, ClusterIP: vip(f), Port: 53, Endpoints: e.endpoints(vip(f), "a", "b")}
			e.sync(t, sp)
			var c net.Conn
			if err := inNamespace(nsPath(e.pods["client"].ns), func() (err error) {
				c, err = net.Dial("udp", netip.AddrPortFrom(vip(f), 53).String())
				return err
			}); err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			exchange := func() string {
				t.Helper()
				buf := make([]byte, 64)
				for range 20 { // datagrams may be lost; the flow is the same
					_ = c.SetDeadline(time.Now().Add(500 * time.Millisecond))
					if _, err := c.Write([]byte("who?")); err != nil {
						t.Fatal(err)
					}
					if n, err := c.Read(buf); err == nil {
						return podOf(string(buf[:n]))
					}
				}
				t.Fatal("no answer over UDP")
				return ""
			}
			first := exchange()
			for range 5 {
				if got := exchange(); got != first {
					t.Fatalf("one UDP flow answered by %s then %s: conntrack should keep it on one endpoint", first, got)
				}
			}
			other := map[string]string{"a": "b", "b": "a"}[first]
			sp.Endpoints = e.endpoints(vip(f), other)
			e.sync(t, sp)
			if got := exchange(); got != other {
				t.Fatalf("after %s left, the flow's next datagram reached %s, want %s", first, got, other)
			}
		})
	}
}
