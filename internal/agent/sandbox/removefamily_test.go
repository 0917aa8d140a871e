package sandbox

import (
	"bufio"
	"errors"
	"net"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/duet-net/duet/internal/netns"
)

// A dual-stack pod loses one family in place: the same namespace and
// veth, no address or default route of that family left, the other
// family's address kept, and a TCP connection over it open before the
// change still carries data after it. Both directions: the secondary
// IPv6 of an IPv4-primary pod, and the secondary IPv4 of an IPv6-primary
// one.
func TestRemoveFamilyTakesTheSecondFamilyAway(t *testing.T) {
	requireRoot(t)
	for _, tc := range []struct {
		name       string
		v6primary  bool
		removeIPv4 bool
	}{
		{"IPv4 primary loses IPv6", false, false},
		{"IPv6 primary loses IPv4", true, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			node := newNode(t)
			req := podReq("rmfam-a", 2)
			peerReq := podReq("rmfam-b", 3)
			if tc.v6primary {
				for _, r := range []*Request{&req, &peerReq} {
					slices.Reverse(r.Addrs)
					slices.Reverse(r.Gateways)
				}
			}
			sb := newPod(t, node, req)
			peer := newPod(t, node, peerReq)
			kept, gone := peer.Addrs[0].Addr(), peer.Addrs[1].Addr()

			conn := openConn(t, peer.NetNS, kept, sb.NetNS)
			if err := conn.roundTrip("before"); err != nil {
				t.Fatalf("the kept family's connection before the change: %v", err)
			}

			got, err := RemoveFamily(node, sb, tc.removeIPv4)
			if err != nil {
				t.Fatalf("RemoveFamily: %v", err)
			}
			if len(got.Addrs) != 1 || got.Addrs[0] != req.Addrs[0] || !slices.Equal(got.Gateways, req.Gateways[:1]) ||
				got.NetNS != sb.NetNS || got.HostVeth != sb.HostVeth {
				t.Fatalf("RemoveFamily returned %+v; want the same sandbox with only %v via %v", got, req.Addrs[0], req.Gateways[0])
			}
			checkPodNS(t, node, got)
			if err := conn.roundTrip("after"); err != nil {
				t.Errorf("the kept family's connection broke: %v", err)
			}
			if err := ping(t, sb.NetNS, kept); err != nil {
				t.Errorf("ping %s after the change: %v", kept, err)
			}
			if err := ping(t, sb.NetNS, gone); err == nil {
				t.Errorf("the pod still reaches %s of the removed family", gone)
			}
			if left := familyTrace(t, sb.NetNS, sb.IfName, tc.removeIPv4); len(left) > 0 {
				t.Errorf("the pod's %s keeps, of the removed family: %v", sb.IfName, left)
			}
			// The node's side is the bridge's (EnsureNode), not touched here.
			if err := ping(t, peer.NetNS, got.Addrs[0].Addr()); err != nil {
				t.Errorf("the peer cannot reach the pod's kept address: %v", err)
			}

			// Again: a no-op. The last family: refused, nothing touched.
			if again, err := RemoveFamily(node, got, tc.removeIPv4); err != nil || !slices.Equal(again.Addrs, got.Addrs) {
				t.Errorf("RemoveFamily again = %+v, %v; want the sandbox unchanged", again, err)
			}
			if _, err := RemoveFamily(node, got, !tc.removeIPv4); err == nil {
				t.Errorf("RemoveFamily of the pod's only family succeeded")
			}
			checkPodNS(t, node, got)
		})
	}
}

// familyTrace lists what the interface ifName of the namespace at path
// has of a family besides what a pod wired single-stack has too (IPv6
// link-local addresses and their routes): global addresses and routes.
func familyTrace(t testing.TB, path, ifName string, is4 bool) []string {
	t.Helper()
	h, err := netns.NewHandle(path)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	link, err := h.LinkByName(ifName)
	if err != nil {
		t.Fatal(err)
	}
	fam := netlink.FAMILY_V6
	if is4 {
		fam = netlink.FAMILY_V4
	}
	var out []string
	addrs, err := h.AddrList(link, fam)
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range addrs {
		if a.Scope == unix.RT_SCOPE_UNIVERSE {
			out = append(out, "address "+a.IPNet.String())
		}
	}
	routes, err := h.RouteList(link, fam)
	if err != nil && !errors.Is(err, netlink.ErrDumpInterrupted) {
		t.Fatal(err)
	}
	for _, r := range routes {
		if r.Dst != nil && r.Dst.IP.IsLinkLocalUnicast() {
			continue
		}
		out = append(out, "route "+r.String())
	}
	return out
}

// conn is a TCP connection from a pod to an echo server in another.
type conn struct {
	t testing.TB
	c net.Conn
	r *bufio.Reader
}

// openConn starts an echo server on addr in the namespace server and
// connects to it from the namespace client; both close when the test ends.
func openConn(t testing.TB, server string, addr netip.Addr, client string) *conn {
	t.Helper()
	var ln net.Listener
	if err := inNS(t, server, func() (err error) {
		ln, err = net.Listen("tcp", netip.AddrPortFrom(addr, 0).String())
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		r := bufio.NewReader(c)
		for {
			line, err := r.ReadBytes('\n')
			if err != nil {
				return
			}
			if _, err := c.Write(line); err != nil {
				return
			}
		}
	}()
	var c net.Conn
	if err := inNS(t, client, func() (err error) {
		c, err = net.DialTimeout("tcp", ln.Addr().String(), 5*time.Second)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return &conn{t: t, c: c, r: bufio.NewReader(c)}
}

// roundTrip sends a line and reads it back.
func (c *conn) roundTrip(s string) error {
	_ = c.c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.c.Write([]byte(s + "\n")); err != nil {
		return err
	}
	got, err := c.r.ReadString('\n')
	if err != nil {
		return err
	}
	if got != s+"\n" {
		return errors.New("echoed " + got)
	}
	return nil
}
