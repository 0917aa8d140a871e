package masq

import (
	"context"
	"io"
	"net"
	"path/filepath"
	"testing"
	"time"

	"github.com/duet-net/duet/internal/netns"
)

// inNS runs fn on a thread switched into the named namespace; sockets fn
// creates stay in that namespace.
func inNS(t testing.TB, name string, fn func() error) {
	t.Helper()
	if err := netns.Do(netns.Path(name), fn); err != nil {
		t.Fatalf("in namespace %s: %v", name, err)
	}
}

// serveRemoteAddr answers every connection with the source address it
// came from, as the server sees it.
func serveRemoteAddr(t *testing.T, ns, network, addr string) {
	var l net.Listener
	inNS(t, ns, func() (err error) {
		l, err = net.Listen(network, addr)
		return err
	})
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			_, _ = io.WriteString(c, c.RemoteAddr().(*net.TCPAddr).AddrPort().Addr().Unmap().String())
			c.Close()
		}
	}()
}

// seenFrom connects from the client namespace and returns the source
// address the server saw.
func seenFrom(t *testing.T, ns, addr string) string {
	t.Helper()
	var c net.Conn
	inNS(t, ns, func() (err error) {
		c, err = (&net.Dialer{Timeout: 5 * time.Second}).Dial("tcp", addr)
		return err
	})
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	b, err := io.ReadAll(c)
	if err != nil {
		t.Fatalf("reading from %s: %v", addr, err)
	}
	return string(b)
}

// TestTrafficMasquerade sends real TCP traffic from a pod through a node
// to the outside, in three namespaces:
//
//	client (a pod)          router (the node, with the rules)           server (outside)
//	c0 10.200.1.2/24     -- r0 10.200.1.1/24      r1 198.51.100.1/24     -- s0 198.51.100.2/24
//	   fd00:200:0:1::2/64     fd00:200:0:1::1/64     2001:db8:ffff::1/64       2001:db8:ffff::2/64
//	                                                 10.200.9.1/24             10.200.9.2/24 (a pod CIDR)
//	                                                 fd00:200:0:9::1/64        fd00:200:0:9::2/64
//
//	pod CIDRs 10.200.0.0/16 and fd00:200::/48
//
// The server has routes back to the client's prefixes, so it can answer
// the client's own address when that is what it sees.
func TestTrafficMasquerade(t *testing.T) {
	requireRoot(t)
	client, router, server := testNS(t, "pod"), testNS(t, "node"), testNS(t, "out")
	sh(t, "ip", "-n", client, "link", "add", "c0", "type", "veth", "peer", "name", "r0", "netns", router)
	sh(t, "ip", "-n", router, "link", "add", "r1", "type", "veth", "peer", "name", "s0", "netns", server)
	for _, a := range [][]string{
		{client, "c0", "10.200.1.2/24", "fd00:200:0:1::2/64"},
		{router, "r0", "10.200.1.1/24", "fd00:200:0:1::1/64"},
		{router, "r1", "198.51.100.1/24", "2001:db8:ffff::1/64", "10.200.9.1/24", "fd00:200:0:9::1/64"},
		{server, "s0", "198.51.100.2/24", "2001:db8:ffff::2/64", "10.200.9.2/24", "fd00:200:0:9::2/64"},
	} {
		for _, addr := range a[2:] {
			sh(t, "ip", "-n", a[0], "addr", "add", addr, "dev", a[1], "nodad")
		}
		sh(t, "ip", "-n", a[0], "link", "set", a[1], "up")
		sh(t, "ip", "-n", a[0], "link", "set", "lo", "up")
	}
	sh(t, "ip", "netns", "exec", router, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1")
	sh(t, "ip", "-n", client, "route", "add", "default", "via", "10.200.1.1")
	sh(t, "ip", "-n", client, "-6", "route", "add", "default", "via", "fd00:200:0:1::1")
	sh(t, "ip", "-n", server, "route", "add", "10.200.1.0/24", "via", "198.51.100.1")
	sh(t, "ip", "-n", server, "-6", "route", "add", "fd00:200:0:1::/64", "via", "2001:db8:ffff::1")

	serveRemoteAddr(t, server, "tcp4", ":8080")
	serveRemoteAddr(t, server, "tcp6", "[::]:8080")

	path := filepath.Join(t.TempDir(), "ip-masq-agent")
	o, applied, errs := reporting(Options{
		NetNS:        router,
		ConfigPath:   path,
		ClusterCIDRs: prefixes("10.200.0.0/16", "fd00:200::/48"),
		ServiceCIDRs: prefixes("10.96.0.0/16", "fd00:96::/108"),
	})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Run(ctx, o) }()
	stopped := false
	stop := func() {
		if !stopped {
			stopped = true
			cancel()
			if err := <-done; err != nil {
				t.Errorf("Run: %v", err)
			}
		}
	}
	t.Cleanup(stop)

	check := func(step string, want map[string]string) {
		t.Helper()
		for dst, src := range want {
			if got := seenFrom(t, client, dst); got != src {
				t.Errorf("%s: connecting to %s, the server saw %s, want %s", step, dst, got, src)
			}
		}
	}
	masqueraded := map[string]string{
		"198.51.100.2:8080":       "198.51.100.1",
		"[2001:db8:ffff::2]:8080": "2001:db8:ffff::1",
	}
	podToPod := map[string]string{
		"10.200.9.2:8080":        "10.200.1.2",
		"[fd00:200:0:9::2]:8080": "fd00:200:0:1::2",
	}

	// No file: the defaults, under which the documentation ranges are
	// outside and masqueraded.
	waitApplied(t, applied, errs, time.Now())
	check("with the defaults", masqueraded)
	check("with the defaults, to a pod CIDR", podToPod)

	start := time.Now()
	writeAtomically(t, path, "nonMasqueradeCIDRs: [198.51.100.0/24, 2001:db8:ffff::/48]\n")
	waitApplied(t, applied, errs, start)
	check("with the outside in nonMasqueradeCIDRs", map[string]string{
		"198.51.100.2:8080":       "10.200.1.2",
		"[2001:db8:ffff::2]:8080": "fd00:200:0:1::2",
	})

	// An empty list masquerades everything, except the pod CIDRs.
	start = time.Now()
	writeAtomically(t, path, "nonMasqueradeCIDRs: []\n")
	waitApplied(t, applied, errs, start)
	check("with nothing in nonMasqueradeCIDRs", masqueraded)
	check("with nothing in nonMasqueradeCIDRs, to a pod CIDR", podToPod)

	// A bad file leaves the rules as they were.
	writeAtomically(t, path, "nonMasqueradeCIDRs: [198.51.100.1/24]\n")
	waitError(t, applied, errs)
	check("after a bad file", masqueraded)

	// Run leaves the rules in place when it stops, as ip-masq-agent does.
	stop()
	check("after Run stopped", masqueraded)
	if err := Cleanup(router); err != nil {
		t.Fatal(err)
	}
	check("after Cleanup", map[string]string{
		"198.51.100.2:8080":       "10.200.1.2",
		"[2001:db8:ffff::2]:8080": "fd00:200:0:1::2",
	})
}
