package sandbox

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/duet-net/duet/internal/netns"
)

func TestEnsureNodeWiresTheBridgeIdempotently(t *testing.T) {
	node := newNode(t) // runs EnsureNode once
	h, err := netns.NewHandle(node)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	br, err := h.LinkByName("duet0")
	if err != nil {
		t.Fatal(err)
	}
	// A stale gateway from an earlier pod CIDR must go.
	stale := netip.MustParsePrefix("10.244.9.1/24")
	if err := h.AddrAdd(br, addrOf(stale)); err != nil {
		t.Fatal(err)
	}
	cfg := NodeConfig{Bridge: "duet0", PodCIDRs: []netip.Prefix{cidr4, cidr6}, MTU: 1500}
	if err := EnsureNode(node, cfg); err != nil {
		t.Fatalf("second EnsureNode: %v", err)
	}
	br2, err := h.LinkByName("duet0")
	if err != nil {
		t.Fatal(err)
	}
	if br2.Attrs().Index != br.Attrs().Index || br2.Attrs().HardwareAddr.String() != br.Attrs().HardwareAddr.String() {
		t.Errorf("second EnsureNode replaced the bridge or its MAC: %v %v -> %v %v",
			br.Attrs().Index, br.Attrs().HardwareAddr, br2.Attrs().Index, br2.Attrs().HardwareAddr)
	}
	if br2.Attrs().Flags&net.FlagUp == 0 || br2.Attrs().MTU != 1500 {
		t.Errorf("bridge flags %v MTU %d, want up with MTU 1500", br2.Attrs().Flags, br2.Attrs().MTU)
	}
	addrs, err := h.AddrList(br2, netlink.FAMILY_ALL)
	if err != nil {
		t.Fatal(err)
	}
	var global []string
	for _, a := range addrs {
		if a.Scope == unix.RT_SCOPE_UNIVERSE {
			global = append(global, a.IPNet.String())
			if a.Flags&unix.IFA_F_TENTATIVE != 0 {
				t.Errorf("gateway %s is tentative (duplicate address detection ran)", a.IPNet)
			}
		}
	}
	slices.Sort(global)
	if want := []string{"10.244.1.1/24", "fd00:10:244:1::1/64"}; !slices.Equal(global, want) {
		t.Errorf("bridge addresses %v, want exactly the gateways %v", global, want)
	}
	for name, want := range map[string]string{
		"net/ipv4/ip_forward":            "1",
		"net/ipv6/conf/all/forwarding":   "1",
		"net/ipv6/conf/duet0/accept_dad": "0",
	} {
		if got := readSysctl(t, node, name); got != want {
			t.Errorf("node sysctl %s = %s, want %s", name, got, want)
		}
	}
}

func TestEnsureNodeRejectsBadConfig(t *testing.T) {
	for _, tc := range []struct {
		name string
		cfg  NodeConfig
		want string
	}{
		{"host bits set", NodeConfig{Bridge: "duet0", PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.1.7/24")}}, "did you mean 10.244.1.0/24"},
		{"two of one family", NodeConfig{Bridge: "duet0", PodCIDRs: []netip.Prefix{cidr4, netip.MustParsePrefix("10.245.0.0/24")}}, "one per family"},
		{"no room for a pod", NodeConfig{Bridge: "duet0", PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.1.0/31")}}, "no room"},
		{"bridge name too long", NodeConfig{Bridge: "a-very-long-bridge", PodCIDRs: []netip.Prefix{cidr4}}, "interface name"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := EnsureNode("/run/netns/unused", tc.cfg)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("EnsureNode = %v, want an error saying %q", err, tc.want)
			}
		})
	}
}

func TestTwoPodsTalkOverIPv4AndIPv6(t *testing.T) {
	node := newNode(t)
	a := newPod(t, node, podReq("pod-a", 2))
	b := newPod(t, node, podReq("pod-b", 3))

	for _, sb := range []*Sandbox{a, b} {
		if !netns.IsNetNS(sb.NetNS) || !strings.HasPrefix(sb.NetNS, NetNSDir+"/duet-") {
			t.Errorf("%s: namespace %s is not a mounted namespace under %s", sb.ID, sb.NetNS, NetNSDir)
		}
		if want := macFor(sb.Addrs); sb.MAC.String() != want.String() {
			t.Errorf("%s: MAC %s, want %s", sb.ID, sb.MAC, want)
		}
		checkPodNS(t, node, sb)
	}
	for _, tc := range []struct {
		from, to *Sandbox
		fam      int
	}{{a, b, 0}, {a, b, 1}, {b, a, 0}, {b, a, 1}} {
		dst, src := tc.to.Addrs[tc.fam].Addr(), tc.from.Addrs[tc.fam].Addr()
		if err := ping(t, tc.from.NetNS, dst); err != nil {
			t.Errorf("ping %s -> %s: %v", tc.from.ID, dst, err)
		}
		if err := tcpExchange(t, tc.to.NetNS, dst, tc.from.NetNS, src); err != nil {
			t.Errorf("TCP %s -> %s: %v", tc.from.ID, dst, err)
		}
	}
	for _, sb := range []*Sandbox{a, b} {
		for _, gw := range []netip.Addr{gw4, gw6} {
			if err := ping(t, sb.NetNS, gw); err != nil {
				t.Errorf("gateway %s does not answer %s: %v", gw, sb.ID, err)
			}
		}
	}
}

// checkPodNS checks the kernel state Setup promises for sb.
func checkPodNS(t *testing.T, node string, sb *Sandbox) {
	t.Helper()
	nh, err := netns.NewHandle(node)
	if err != nil {
		t.Fatal(err)
	}
	defer nh.Close()
	host, err := nh.LinkByName(sb.HostVeth)
	if err != nil {
		t.Fatalf("%s: host veth: %v", sb.ID, err)
	}
	br, err := nh.LinkByName("duet0")
	if err != nil {
		t.Fatal(err)
	}
	if host.Attrs().MasterIndex != br.Attrs().Index || host.Attrs().Flags&net.FlagUp == 0 {
		t.Errorf("%s: host veth %s master %d flags %v, want on duet0 (%d) and up", sb.ID, sb.HostVeth, host.Attrs().MasterIndex, host.Attrs().Flags, br.Attrs().Index)
	}
	ph, err := netns.NewHandle(sb.NetNS)
	if err != nil {
		t.Fatal(err)
	}
	defer ph.Close()
	eth, err := ph.LinkByName("eth0")
	if err != nil {
		t.Fatalf("%s: eth0: %v", sb.ID, err)
	}
	if eth.Attrs().ParentIndex != host.Attrs().Index || eth.Attrs().MTU != br.Attrs().MTU {
		t.Errorf("%s: eth0 peer %d MTU %d, want peer %d MTU %d", sb.ID, eth.Attrs().ParentIndex, eth.Attrs().MTU, host.Attrs().Index, br.Attrs().MTU)
	}
	lo, err := ph.LinkByName("lo")
	if err != nil {
		t.Fatal(err)
	}
	if lo.Attrs().Flags&net.FlagUp == 0 {
		t.Errorf("%s: lo is down", sb.ID)
	}
	addrs, err := ph.AddrList(eth, netlink.FAMILY_ALL)
	if err != nil {
		t.Fatal(err)
	}
	var got []netip.Prefix
	for _, a := range addrs {
		if a.Scope != unix.RT_SCOPE_UNIVERSE {
			continue // the link-local address is briefly tentative while the kernel finishes bringing eth0 up
		}
		if a.Flags&unix.IFA_F_TENTATIVE != 0 {
			t.Errorf("%s: %s is tentative: not usable until duplicate address detection ends", sb.ID, a.IPNet)
		}
		p, _ := prefixOf(a.IPNet)
		got = append(got, p)
	}
	if !sameSet(got, sb.Addrs) {
		t.Errorf("%s: eth0 addresses %v, want %v", sb.ID, got, sb.Addrs)
	}
	routes, err := ph.RouteList(eth, netlink.FAMILY_ALL)
	if err != nil {
		t.Fatal(err)
	}
	var gws []netip.Addr
	for _, r := range routes {
		if ones, _ := maskOnes(r.Dst); ones == 0 && r.Gw != nil {
			gw, _ := netip.AddrFromSlice(r.Gw)
			gws = append(gws, gw.Unmap())
		}
	}
	if !sameSet(gws, sb.Gateways) {
		t.Errorf("%s: default routes via %v, want via %v", sb.ID, gws, sb.Gateways)
	}
	if v := readSysctl(t, sb.NetNS, "net/ipv6/conf/eth0/accept_dad"); v != "0" {
		t.Errorf("%s: accept_dad on eth0 = %s, want 0", sb.ID, v)
	}
}

func maskOnes(n *net.IPNet) (int, int) {
	if n == nil {
		return 0, 0
	}
	return n.Mask.Size()
}

func sameSet[T interface{ comparable }](a, b []T) bool {
	if len(a) != len(b) {
		return false
	}
	for _, x := range a {
		if !slices.Contains(b, x) {
			return false
		}
	}
	return true
}

func TestTeardownRemovesEverythingAndIsIdempotent(t *testing.T) {
	node := newNode(t)
	sb, err := Setup(context.Background(), node, podReq("pod-gone", 2))
	if err != nil {
		t.Fatal(err)
	}
	// A process holding the namespace open must not keep the veth alive.
	fd, err := netns.Open(sb.NetNS)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	if err := Teardown(node, "pod-gone"); err != nil {
		t.Fatalf("Teardown: %v", err)
	}
	assertGone(t, node, "pod-gone")
	if v := vethsOf(t, node); len(v) != 0 {
		t.Errorf("host veths left on the node: %v", v)
	}
	if err := Teardown(node, "pod-gone"); err != nil {
		t.Errorf("second Teardown: %v, want success", err)
	}
	if err := Teardown(node, "never-set-up"); err != nil {
		t.Errorf("Teardown of an unknown sandbox: %v, want success", err)
	}
	if l, err := List(node); err != nil || len(l) != 0 {
		t.Errorf("List after Teardown = %v, %v; want nothing", l, err)
	}
}

func TestSetupTwiceReturnsTheSameSandbox(t *testing.T) {
	node := newNode(t)
	req := podReq("pod-twice", 2)
	first := newPod(t, node, req)
	second, err := Setup(context.Background(), node, req)
	if err != nil {
		t.Fatalf("second Setup: %v", err)
	}
	if !reflect.DeepEqual(first, second) {
		t.Errorf("second Setup returned %+v, want %+v", second, first)
	}
	if v := vethsOf(t, node); len(v) != 1 || v[0] != first.HostVeth {
		t.Errorf("host veths %v, want just %s", v, first.HostVeth)
	}
	checkPodNS(t, node, second)
	if err := ping(t, second.NetNS, gw6); err != nil {
		t.Error(err)
	}
}

// Each case leaves a sandbox as a crash or a meddling admin would; Setup run
// again must make it whole.
func TestSetupRepairsABrokenSandbox(t *testing.T) {
	for _, tc := range []struct {
		name   string
		break_ func(t *testing.T, node string, sb *Sandbox)
	}{
		{"host veth deleted", func(t *testing.T, node string, sb *Sandbox) {
			withLink(t, node, sb.HostVeth, func(h *netlink.Handle, l netlink.Link) error { return h.LinkDel(l) })
		}},
		{"host veth off the bridge", func(t *testing.T, node string, sb *Sandbox) {
			withLink(t, node, sb.HostVeth, func(h *netlink.Handle, l netlink.Link) error { return h.LinkSetNoMaster(l) })
		}},
		{"host veth down", func(t *testing.T, node string, sb *Sandbox) {
			withLink(t, node, sb.HostVeth, func(h *netlink.Handle, l netlink.Link) error { return h.LinkSetDown(l) })
		}},
		{"pod interface down", func(t *testing.T, node string, sb *Sandbox) {
			withLink(t, sb.NetNS, "eth0", func(h *netlink.Handle, l netlink.Link) error { return h.LinkSetDown(l) })
		}},
		{"pod address replaced", func(t *testing.T, node string, sb *Sandbox) {
			withLink(t, sb.NetNS, "eth0", func(h *netlink.Handle, l netlink.Link) error {
				if err := h.AddrDel(l, addrOf(sb.Addrs[1])); err != nil {
					return err
				}
				return h.AddrAdd(l, addrOf(netip.MustParsePrefix("fd00:10:244:1::99/64")))
			})
		}},
		{"default route deleted", func(t *testing.T, node string, sb *Sandbox) {
			withLink(t, sb.NetNS, "eth0", func(h *netlink.Handle, l netlink.Link) error {
				return h.RouteDel(&netlink.Route{LinkIndex: l.Attrs().Index, Gw: gw4.AsSlice()})
			})
		}},
		{"MTU changed", func(t *testing.T, node string, sb *Sandbox) {
			withLink(t, node, sb.HostVeth, func(h *netlink.Handle, l netlink.Link) error { return h.LinkSetMTU(l, 1400) })
		}},
		{"killed before the namespace was mounted", func(t *testing.T, node string, sb *Sandbox) {
			withLink(t, node, sb.HostVeth, func(h *netlink.Handle, l netlink.Link) error { return h.LinkDel(l) })
			if err := netns.Unmount(sb.NetNS); err != nil {
				t.Fatal(err)
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			node := newNode(t)
			req := podReq("pod-repair", 2)
			sb := newPod(t, node, req)
			tc.break_(t, node, sb)
			again, err := Setup(context.Background(), node, req)
			if err != nil {
				t.Fatalf("Setup of the broken sandbox: %v", err)
			}
			if again.NetNS != sb.NetNS || again.HostVeth != sb.HostVeth {
				t.Errorf("repaired sandbox is %+v, want %+v", again, sb)
			}
			checkPodNS(t, node, again)
			for _, gw := range []netip.Addr{gw4, gw6} {
				if err := ping(t, again.NetNS, gw); err != nil {
					t.Errorf("after repair: %v", err)
				}
			}
		})
	}
}

func withLink(t *testing.T, ns, name string, fn func(*netlink.Handle, netlink.Link) error) {
	t.Helper()
	h, err := netns.NewHandle(ns)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	l, err := h.LinkByName(name)
	if err != nil {
		t.Fatal(err)
	}
	if err := fn(h, l); err != nil {
		t.Fatal(err)
	}
}

func TestSetupThatFailsLeavesNothingBehind(t *testing.T) {
	node := newNode(t)
	for _, stepName := range []string{"netns", "veth", "link-up", "addresses", "routes"} {
		for _, existing := range []bool{false, true} {
			name := "fresh sandbox, fails after " + stepName
			if existing {
				name = "existing sandbox, fails after " + stepName
			}
			t.Run(name, func(t *testing.T) {
				req := podReq("pod-fail", 2)
				if existing {
					if _, err := Setup(context.Background(), node, req); err != nil {
						t.Fatal(err)
					}
				}
				failStep = func(s string) error {
					if s == stepName {
						return errors.New("injected failure")
					}
					return nil
				}
				defer func() { failStep = nil }()
				if sb, err := Setup(context.Background(), node, req); err == nil || !strings.Contains(err.Error(), "injected failure") {
					t.Fatalf("Setup = %+v, %v; want the injected failure", sb, err)
				}
				assertGone(t, node, req.ID)
			})
		}
	}
	t.Run("the kernel refuses the pod interface name", func(t *testing.T) {
		req := podReq("pod-lo", 2)
		req.IfName = "lo" // exists in every namespace: the veth cannot be created
		if _, err := Setup(context.Background(), node, req); err == nil {
			t.Fatal("Setup with IfName lo succeeded")
		}
		assertGone(t, node, req.ID)
	})
	t.Run("cancelled context", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		if _, err := Setup(ctx, node, podReq("pod-cancel", 2)); !errors.Is(err, context.Canceled) {
			t.Fatalf("Setup = %v, want context.Canceled", err)
		}
		assertGone(t, node, "pod-cancel")
	})
	if v := vethsOf(t, node); len(v) != 0 {
		t.Errorf("host veths left on the node: %v", v)
	}
}

func TestSetupRefusesBadRequests(t *testing.T) {
	node := newNode(t)
	mod := func(f func(*Request)) Request { r := podReq("pod-bad", 2); f(&r); return r }
	for _, tc := range []struct {
		name string
		req  Request
		want string
	}{
		{"no ID", mod(func(r *Request) { r.ID = "" }), "sandbox ID"},
		{"two IPv4 addresses", mod(func(r *Request) { r.Addrs[1] = netip.MustParsePrefix("10.244.1.9/24") }), "one family"},
		{"gateway outside the pod prefix", mod(func(r *Request) { r.Gateways[0] = netip.MustParseAddr("10.9.9.9") }), "not another address"},
		{"gateway of a family without address", mod(func(r *Request) { r.Addrs = r.Addrs[:1] }), "no pod address of its family"},
		{"no bridge", mod(func(r *Request) { r.Bridge = "nosuchbr" }), "run EnsureNode first"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Setup(context.Background(), node, tc.req)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Setup = %v, want an error saying %q", err, tc.want)
			}
			assertGone(t, node, tc.req.ID)
		})
	}
}

func TestListFindsEachNodesSandboxesAfterACrash(t *testing.T) {
	n1, n2 := newNode(t), newNode(t)
	for _, id := range []string{"c", "a", "b"} {
		newPod(t, n1, podReq(id, 2+int(id[0]-'a')))
	}
	other := newPod(t, n2, podReq("a", 2)) // same ID, other node
	// A crash between creating the namespace file and mounting it leaves an
	// empty file: listed without an ID.
	tag, err := nodeTag(n1)
	if err != nil {
		t.Fatal(err)
	}
	orphan := namesFor(tag, "crashed")
	if err := os.WriteFile(orphan.netns, nil, 0o444); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.Remove(orphan.netns) })

	got, err := List(n1)
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, e := range got {
		ids = append(ids, e.ID)
		if e.ID != "" {
			if p, _ := NetNSPath(n1, e.ID); e.NetNS != p {
				t.Errorf("entry %+v: namespace, want %s", e, p)
			}
		}
	}
	if want := []string{"", "a", "b", "c"}; !slices.Equal(ids, want) {
		t.Fatalf("List(node 1) IDs = %q, want %q", ids, want)
	}
	if err := TeardownNetNS(n1, got[0].NetNS); err != nil {
		t.Fatalf("TeardownNetNS of the orphan: %v", err)
	}
	if _, err := os.Lstat(orphan.netns); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("orphan namespace file still there: %v", err)
	}
	if err := TeardownNetNS(n1, "/run/netns/duet-not-a-sandbox"); err == nil {
		t.Error("TeardownNetNS accepted a namespace that is not a sandbox of the node")
	}
	got2, err := List(n2)
	if err != nil {
		t.Fatal(err)
	}
	if len(got2) != 1 || got2[0].ID != "a" || got2[0].NetNS != other.NetNS || got2[0].HostVeth != other.HostVeth {
		t.Errorf("List(node 2) = %+v, want just %+v", got2, other)
	}
}

func TestSetupLeavesAnotherSandboxsNamespaceAlone(t *testing.T) {
	node := newNode(t)
	// Make the namespace that ID "mine" would use belong to "theirs", as a
	// pod hash collision would.
	tag, err := nodeTag(node)
	if err != nil {
		t.Fatal(err)
	}
	n := namesFor(tag, "mine")
	ns, err := netns.Create(n.netns, netns.Prep{LoAlias: idAlias + "theirs"})
	if err != nil {
		t.Fatal(err)
	}
	ns.Close()
	t.Cleanup(func() { netns.Remove(n.netns) })
	_, err = Setup(context.Background(), node, podReq("mine", 2))
	if !errors.Is(err, errNotOurs) || !strings.Contains(err.Error(), `"theirs"`) {
		t.Fatalf("Setup = %v, want a refusal naming sandbox \"theirs\"", err)
	}
	if !netns.IsNetNS(n.netns) {
		t.Error("Setup removed the other sandbox's namespace")
	}
}

func TestNames(t *testing.T) {
	tag, err := nodeTag("/var/run/netns/node-1")
	if err != nil {
		t.Fatal(err)
	}
	if tag2, _ := nodeTag("/run/netns/node-1"); tag2 != tag {
		t.Errorf("/var/run/netns and /run/netns give tags %s and %s", tag, tag2)
	}
	n := namesFor(tag, "0b4f3a52-pod-uid")
	if len(n.veth) > 15 || !strings.HasPrefix(n.veth, vethPrefix) {
		t.Errorf("host veth name %q: want duet… within 15 bytes", n.veth)
	}
	hash, ok := parseNetNSName(tag, strings.TrimPrefix(n.netns, NetNSDir+"/"))
	if !ok || namesForHash(tag, hash) != n {
		t.Errorf("parseNetNSName(%s) = %s, %v", n.netns, hash, ok)
	}
	if _, ok := parseNetNSName(tag, "duet-smoke"); ok {
		t.Error("duet-smoke parsed as a sandbox namespace")
	}
	for addrs, want := range map[string]string{
		"10.244.1.5/24,fd00:10:244:1::5/64": "0a:58:0a:f4:01:05",
		"fd00:10:244:1::5/64,10.244.1.7/24": "0a:58:0a:f4:01:07",
		"fd00:10:244:1::1:2/64":             "0a:58:00:01:00:02",
	} {
		var ps []netip.Prefix
		for s := range strings.SplitSeq(addrs, ",") {
			ps = append(ps, netip.MustParsePrefix(s))
		}
		if got := macFor(ps).String(); got != want {
			t.Errorf("macFor(%s) = %s, want %s", addrs, got, want)
		}
	}
}

// Example of the calls an agent makes for one pod.
func ExampleSetup() {
	node := "/run/netns/node-1"
	_ = EnsureNode(node, NodeConfig{
		Bridge:   "duet0",
		PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.1.0/24"), netip.MustParsePrefix("fd00:10:244:1::/64")},
	})
	sb, err := Setup(context.Background(), node, Request{
		ID:       "6b1c7d0e-pod-uid",
		Bridge:   "duet0",
		IfName:   "eth0",
		Addrs:    []netip.Prefix{netip.MustParsePrefix("10.244.1.5/24"), netip.MustParsePrefix("fd00:10:244:1::5/64")},
		Gateways: []netip.Addr{netip.MustParseAddr("10.244.1.1"), netip.MustParseAddr("fd00:10:244:1::1")},
	})
	if err == nil {
		fmt.Println(sb.NetNS, sb.HostVeth, sb.MAC)
		_ = Teardown(node, sb.ID)
	}
}

func TestTeardownAfterTheNodeIsGone(t *testing.T) {
	node := newNode(t)
	sb, err := Setup(context.Background(), node, podReq("pod-orphaned", 2))
	if err != nil {
		t.Fatal(err)
	}
	if err := netns.Remove(node); err != nil {
		t.Fatal(err)
	}
	if err := Teardown(node, sb.ID); err != nil {
		t.Fatalf("Teardown with the node namespace gone: %v", err)
	}
	if _, err := os.Lstat(sb.NetNS); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("pod namespace file still there: %v", err)
	}
}
