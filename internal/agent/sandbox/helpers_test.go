package sandbox

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/duet-net/duet/internal/netns"
	"github.com/duet-net/duet/internal/testutil/roottest"
)

// testNSPrefix names the node namespaces tests make; TestMain checks that none
// is left, nor any pod namespace of theirs.
const testNSPrefix = "duettest-"

func TestMain(m *testing.M) {
	code := m.Run()
	if left := leftovers(); len(left) > 0 {
		fmt.Fprintf(os.Stderr, "FAIL: `ip netns list` still shows namespaces of these tests: %s\n", strings.Join(left, ", "))
		code = 1
	}
	os.Exit(code)
}

var testNodeTags = map[string]bool{}

// leftovers are the namespaces in `ip netns list` that these tests made.
func leftovers() []string {
	out, err := exec.Command("ip", "netns", "list").Output()
	if err != nil {
		return []string{"(ip netns list: " + err.Error() + ")"}
	}
	var left []string
	for line := range strings.Lines(string(out)) {
		name, _, _ := strings.Cut(strings.TrimSpace(line), " ")
		if strings.HasPrefix(name, testNSPrefix) {
			left = append(left, name)
		}
		for tag := range testNodeTags {
			if strings.HasPrefix(name, nsPrefix+tag+"-") {
				left = append(left, name)
			}
		}
	}
	return left
}

func requireRoot(t testing.TB) {
	t.Helper()
	roottest.Require(t, "ip")
}

var nodeSeq atomic.Int64

// testCIDRs are the pod CIDRs of test nodes.
var (
	cidr4 = netip.MustParsePrefix("10.244.1.0/24")
	cidr6 = netip.MustParsePrefix("fd00:10:244:1::/64")
	gw4   = Gateway(cidr4).Addr()
	gw6   = Gateway(cidr6).Addr()
)

// newNode makes a node namespace with a ready bridge, removed when the test
// ends (after the pods' cleanups, which are registered later).
func newNode(t testing.TB) string {
	t.Helper()
	requireRoot(t)
	path := filepath.Join(NetNSDir, fmt.Sprintf("%s%d-%d", testNSPrefix, os.Getpid(), nodeSeq.Add(1)))
	ns, err := netns.Create(path, netns.Prep{LoAlias: "duet-test-node"})
	if err != nil {
		t.Fatalf("create node namespace: %v", err)
	}
	ns.Close()
	tag, err := nodeTag(path)
	if err != nil {
		t.Fatal(err)
	}
	testNodeTags[tag] = true
	t.Cleanup(func() {
		if err := netns.Remove(path); err != nil {
			t.Errorf("remove node namespace: %v", err)
		}
	})
	if err := EnsureNode(path, NodeConfig{Bridge: "duet0", PodCIDRs: []netip.Prefix{cidr4, cidr6}, MTU: 1500}); err != nil {
		t.Fatalf("EnsureNode: %v", err)
	}
	return path
}

// podReq is the request for the i-th pod (i ≥ 2) of a test node.
func podReq(id string, i int) Request {
	a4 := netip.AddrFrom4([4]byte{10, 244, 1, byte(i)})
	b6 := cidr6.Addr().As16()
	binary.BigEndian.PutUint16(b6[14:], uint16(i))
	return Request{
		ID:       id,
		Bridge:   "duet0",
		IfName:   "eth0",
		Addrs:    []netip.Prefix{netip.PrefixFrom(a4, 24), netip.PrefixFrom(netip.AddrFrom16(b6), 64)},
		Gateways: []netip.Addr{gw4, gw6},
	}
}

// newPod sets a pod up and tears it down when the test ends.
func newPod(t testing.TB, node string, req Request) *Sandbox {
	t.Helper()
	sb, err := Setup(context.Background(), node, req)
	if err != nil {
		t.Fatalf("Setup: %v", err)
	}
	t.Cleanup(func() {
		if err := Teardown(node, req.ID); err != nil {
			t.Errorf("Teardown: %v", err)
		}
	})
	return sb
}

// inNS runs fn on a thread in the namespace at path.
func inNS(t testing.TB, path string, fn func() error) error {
	t.Helper()
	fd, err := netns.Open(path)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	return netns.DoFD(fd, fn)
}

// ping sends ICMP echo requests from the namespace at from to dst until one
// is answered (at most three, each waiting a second).
func ping(t testing.TB, from string, dst netip.Addr) error {
	t.Helper()
	network, typ, replyType := "ip4:icmp", byte(8), byte(0)
	if dst.Is6() {
		network, typ, replyType = "ip6:ipv6-icmp", 128, 129
	}
	var c net.PacketConn
	if err := inNS(t, from, func() (err error) { c, err = net.ListenPacket(network, ""); return err }); err != nil {
		return err
	}
	defer c.Close()
	id := uint16(os.Getpid())
	buf := make([]byte, 1500)
	var lastErr error
	for seq := uint16(1); seq <= 3; seq++ {
		msg := []byte{typ, 0, 0, 0, byte(id >> 8), byte(id), byte(seq >> 8), byte(seq), 'd', 'u', 'e', 't'}
		if dst.Is4() { // the kernel computes ICMPv6 checksums itself
			binary.BigEndian.PutUint16(msg[2:], icmpChecksum(msg))
		}
		if _, err := c.WriteTo(msg, &net.IPAddr{IP: dst.AsSlice()}); err != nil {
			return fmt.Errorf("send echo request to %s: %w", dst, err)
		}
		c.SetReadDeadline(time.Now().Add(time.Second))
		for {
			n, peer, err := c.ReadFrom(buf)
			if err != nil {
				lastErr = err
				break
			}
			p := buf[:n]
			if len(p) >= 8 && p[0] == replyType && binary.BigEndian.Uint16(p[4:]) == id &&
				binary.BigEndian.Uint16(p[6:]) == seq && peer.(*net.IPAddr).IP.Equal(dst.AsSlice()) {
				return nil
			}
		}
	}
	return fmt.Errorf("no echo reply from %s: %v", dst, lastErr)
}

func icmpChecksum(b []byte) uint16 {
	var s uint32
	for i := 0; i+1 < len(b); i += 2 {
		s += uint32(b[i])<<8 | uint32(b[i+1])
	}
	if len(b)%2 == 1 {
		s += uint32(b[len(b)-1]) << 8
	}
	for s > 0xffff {
		s = s>>16 + s&0xffff
	}
	return ^uint16(s)
}

// tcpExchange listens on addr in the namespace server, connects from the
// namespace client, and checks that a line goes there and back and that the
// server saw the client's address clientAddr.
func tcpExchange(t testing.TB, server string, addr netip.Addr, client string, clientAddr netip.Addr) error {
	t.Helper()
	var ln net.Listener
	if err := inNS(t, server, func() (err error) {
		ln, err = net.Listen("tcp", netip.AddrPortFrom(addr, 0).String())
		return err
	}); err != nil {
		return err
	}
	defer ln.Close()
	seen := make(chan error, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			seen <- err
			return
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		if got := c.RemoteAddr().(*net.TCPAddr).AddrPort().Addr().Unmap(); got != clientAddr {
			seen <- fmt.Errorf("server saw the client as %s, want %s", got, clientAddr)
			return
		}
		line, err := bufio.NewReader(c).ReadBytes('\n')
		if err == nil {
			_, err = c.Write(line)
		}
		seen <- err
	}()
	var c net.Conn
	if err := inNS(t, client, func() (err error) {
		c, err = net.DialTimeout("tcp", ln.Addr().String(), 5*time.Second)
		return err
	}); err != nil {
		return fmt.Errorf("connect to %s: %w", ln.Addr(), err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	want := []byte("hello over " + addr.String() + "\n")
	if _, err := c.Write(want); err != nil {
		return err
	}
	got := make([]byte, len(want))
	if _, err := io.ReadFull(c, got); err != nil {
		return fmt.Errorf("read echo: %w", err)
	}
	if !bytes.Equal(got, want) {
		return fmt.Errorf("echo %q, want %q", got, want)
	}
	return <-seen
}

// assertGone fails unless nothing of the sandbox id is left on node: no
// namespace file, no mount, no host veth.
func assertGone(t testing.TB, node, id string) {
	t.Helper()
	tag, err := nodeTag(node)
	if err != nil {
		t.Fatal(err)
	}
	n := namesFor(tag, id)
	if _, err := os.Lstat(n.netns); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("namespace file %s is still there (%v)", n.netns, err)
	}
	mi, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(mi, []byte(" "+n.netns+" ")) {
		t.Errorf("%s is still mounted", n.netns)
	}
	for _, l := range nodeLinks(t, node) {
		if l.Attrs().Name == n.veth {
			t.Errorf("host veth %s is still in the node namespace", n.veth)
		}
	}
}

// nodeLinks lists the links of a namespace.
func nodeLinks(t testing.TB, path string) []netlink.Link {
	t.Helper()
	h, err := netns.NewHandle(path)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	for {
		links, err := h.LinkList()
		if errors.Is(err, netlink.ErrDumpInterrupted) {
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		return links
	}
}

// vethsOf lists the host veths (duet*) on a node.
func vethsOf(t testing.TB, node string) []string {
	t.Helper()
	var names []string
	for _, l := range nodeLinks(t, node) {
		if l.Type() == "veth" && strings.HasPrefix(l.Attrs().Name, vethPrefix) {
			names = append(names, l.Attrs().Name)
		}
	}
	return names
}

// readSysctl reads /proc/sys/name inside the namespace at path.
func readSysctl(t testing.TB, path, name string) string {
	t.Helper()
	var v []byte
	if err := inNS(t, path, func() (err error) {
		v, err = os.ReadFile(filepath.Join("/proc/sys", name))
		return err
	}); err != nil {
		t.Fatalf("read %s: %v", name, err)
	}
	return strings.TrimSpace(string(v))
}
