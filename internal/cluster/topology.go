// Package cluster is `duet up`: a dual-stack cluster on one host, whose
// nodes are network namespaces on an underlay network built in namespaces
// of its own, so nothing of the cluster's network touches the host's
// namespace.
package cluster

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"path/filepath"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/duet-net/duet/internal/agent/sandbox"
	"github.com/duet-net/duet/internal/netaddr"
	"github.com/duet-net/duet/internal/netns"
)

// Documentation ranges stand for the underlay and for the outside world.
var (
	underlay4 = netip.MustParsePrefix("203.0.113.0/24")
	underlay6 = netip.MustParsePrefix("2001:db8:0:1::/64")
	// External is the "Internet": addresses in the external namespace.
	External4 = netip.MustParsePrefix("198.51.100.0/24")
	External6 = netip.MustParsePrefix("2001:db8:ffff::/48")
)

// Node is one node of the topology.
type Node struct {
	Name  string // the Node object's name
	NetNS string // network namespace name (under /run/netns)
	IPv4  netip.Addr
	IPv6  netip.Addr
}

// Topology is the network a cluster lives on.
type Topology struct {
	ID       string // short hash of the data directory, in every name
	Underlay string // namespace holding the underlay bridge
	External string // namespace standing for the outside world
	Nodes    []Node
	// Servers are the control plane's namespaces when it has several
	// servers (duet up --servers N); none when its one server runs in
	// the host's namespace.
	Servers []Node
	ExtIPv4 netip.Addr // the external namespace's underlay addresses
	ExtIPv6 netip.Addr
	// Families are the cluster's; Create gives addresses and routes of
	// these only. Empty is dual-stack.
	Families []netaddr.Family
}

// Plan returns the topology of a cluster kept in dataDir. Names derive from
// the directory, so `duet down` finds them again after a crash and two
// clusters in two directories do not collide.
func Plan(dataDir string, nodes int) (Topology, error) {
	abs, err := filepath.Abs(dataDir)
	if err != nil {
		return Topology{}, err
	}
	if nodes < 1 || nodes > 200 {
		return Topology{}, fmt.Errorf("--nodes must be between 1 and 200, got %d", nodes)
	}
	sum := sha256.Sum256([]byte(abs))
	id := hex.EncodeToString(sum[:])[:6]
	t := Topology{
		ID: id, Underlay: "duet-" + id + "-ul", External: "duet-" + id + "-ext",
		ExtIPv4: addrAt(underlay4, 254), ExtIPv6: addrAt(underlay6, 0xfe),
	}
	for i := 1; i <= nodes; i++ {
		t.Nodes = append(t.Nodes, Node{
			Name:  fmt.Sprintf("node%d", i),
			NetNS: fmt.Sprintf("duet-%s-node%d", id, i),
			IPv4:  addrAt(underlay4, 10+i),
			IPv6:  addrAt(underlay6, 0x10+i),
		})
	}
	return t, nil
}

func addrAt(p netip.Prefix, n int) netip.Addr {
	a := p.Addr()
	for range n {
		a = a.Next()
	}
	return a
}

// NetNSPath is where a named namespace is mounted.
func NetNSPath(name string) string { return netns.Path(name) }

// Namespaces lists every namespace of the topology.
func (t Topology) Namespaces() []string {
	out := []string{t.Underlay, t.External}
	for _, n := range t.Nodes {
		out = append(out, n.NetNS)
	}
	for _, n := range t.Servers {
		out = append(out, n.NetNS)
	}
	return out
}

// Create builds the topology: the underlay bridge, every node's eth0 on
// it with an address of each family, and the external namespace with the
// outside world's addresses. Half-built topologies are destroyed.
func (t Topology) Create() (err error) {
	defer func() {
		if err != nil {
			_ = t.Destroy()
		}
	}()
	// Each namespace is prepared before it appears under /run/netns.
	forward := []netns.Sysctl{{Name: "net/ipv4/ip_forward", Value: "1"}, {Name: "net/ipv6/conf/all/forwarding", Value: "1"}}
	noDAD := []netns.Sysctl{{Name: "net/ipv6/conf/default/accept_dad", Value: "0"}, {Name: "net/ipv6/conf/all/accept_dad", Value: "0"}}
	sysctls := map[string][]netns.Sysctl{t.External: forward}
	for _, n := range t.Nodes {
		sysctls[n.NetNS] = append(forward[:len(forward):len(forward)], noDAD...)
	}
	for _, name := range t.Namespaces() {
		ns, err := netns.Create(NetNSPath(name), netns.Prep{Sysctls: sysctls[name]})
		if err != nil {
			return fmt.Errorf("creating namespace %s: %w", name, err)
		}
		ns.Close()
	}
	ul, err := handleIn(t.Underlay)
	if err != nil {
		return err
	}
	defer ul.Close()
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "br0"}}
	if err := ul.LinkAdd(br); err != nil {
		return fmt.Errorf("creating the underlay bridge: %w", err)
	}
	if err := ul.LinkSetUp(br); err != nil {
		return err
	}

	attach := func(ns, port string, v4, v6 netip.Prefix) error {
		if err := t.veth(ul, br, ns, port); err != nil {
			return err
		}
		h, err := handleIn(ns)
		if err != nil {
			return err
		}
		defer h.Close()
		eth, err := h.LinkByName("eth0")
		if err != nil {
			return err
		}
		for _, p := range []netip.Prefix{v4, v6} {
			if !t.has(netaddr.FamilyOf(p.Addr())) {
				continue
			}
			if err := addAddr(h, eth, p); err != nil {
				return fmt.Errorf("addressing eth0 in %s: %w", ns, err)
			}
		}
		return h.LinkSetUp(eth)
	}

	if err := attach(t.External, "ext", netip.PrefixFrom(t.ExtIPv4, 24), netip.PrefixFrom(t.ExtIPv6, 64)); err != nil {
		return err
	}
	ext, err := handleIn(t.External)
	if err != nil {
		return err
	}
	defer ext.Close()
	lo, err := ext.LinkByName("lo")
	if err != nil {
		return err
	}
	for _, p := range []netip.Prefix{netip.PrefixFrom(addrAt(External4, 1), 24), netip.PrefixFrom(addrAt(External6, 1), 48)} {
		if !t.has(netaddr.FamilyOf(p.Addr())) {
			continue
		}
		if err := addAddr(ext, lo, p); err != nil {
			return fmt.Errorf("adding the outside world's addresses: %w", err)
		}
	}

	for i, n := range t.Servers {
		if err := attach(n.NetNS, fmt.Sprintf("s%d", i+1), netip.PrefixFrom(n.IPv4, 24), netip.PrefixFrom(n.IPv6, 64)); err != nil {
			return err
		}
	}
	for i, n := range t.Nodes {
		if err := attach(n.NetNS, fmt.Sprintf("n%d", i+1), netip.PrefixFrom(n.IPv4, 24), netip.PrefixFrom(n.IPv6, 64)); err != nil {
			return err
		}
		// The outside world is reached through the external namespace.
		h, err := handleIn(n.NetNS)
		if err != nil {
			return err
		}
		for _, r := range []struct{ dst, via netip.Addr }{{netip.IPv4Unspecified(), t.ExtIPv4}, {netip.IPv6Unspecified(), t.ExtIPv6}} {
			if !t.has(netaddr.FamilyOf(r.dst)) {
				continue
			}
			bits := r.dst.BitLen()
			route := &netlink.Route{Dst: &net.IPNet{IP: r.dst.AsSlice(), Mask: net.CIDRMask(0, bits)}, Gw: r.via.AsSlice()}
			if err := h.RouteReplace(route); err != nil {
				h.Close()
				return fmt.Errorf("default route in %s: %w", n.NetNS, err)
			}
		}
		h.Close()
	}
	return nil
}

// veth connects namespace ns (as eth0) to the underlay bridge (as port),
// creating both ends directly in their namespaces.
func (t Topology) veth(ul *netlink.Handle, br netlink.Link, ns, port string) error {
	target, err := netns.Open(NetNSPath(ns))
	if err != nil {
		return err
	}
	defer unix.Close(target)
	v := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: port, MasterIndex: br.Attrs().Index}, PeerName: "eth0", PeerNamespace: netlink.NsFd(target)}
	if err := ul.LinkAdd(v); err != nil {
		return fmt.Errorf("connecting %s to the underlay: %w", ns, err)
	}
	l, err := ul.LinkByName(port)
	if err != nil {
		return err
	}
	return ul.LinkSetUp(l)
}

// Destroy deletes every namespace of the topology (which deletes the links
// in them); absent ones are fine.
func (t Topology) Destroy() error {
	errs := []error{t.removeSandboxes()}
	for _, name := range t.Namespaces() {
		errs = append(errs, destroyOne(name))
	}
	return errors.Join(errs...)
}

// removeSandboxes removes the pods' namespaces of every node, which live
// beside the nodes' own in /run/netns.
func (t Topology) removeSandboxes() error {
	var errs []error
	for _, n := range t.Nodes {
		entries, err := sandbox.List(NetNSPath(n.NetNS))
		if err != nil {
			errs = append(errs, err)
			continue
		}
		for _, e := range entries {
			errs = append(errs, sandbox.TeardownNetNS(NetNSPath(n.NetNS), e.NetNS))
		}
	}
	return errors.Join(errs...)
}

// destroyOne deletes a namespace; absent is fine, and so are mounts of it
// that earlier versions left hidden under a second mount of /run/netns.
func destroyOne(name string) error {
	if err := netns.Remove(NetNSPath(name)); err != nil {
		return fmt.Errorf("deleting namespace %s: %w", name, err)
	}
	return nil
}

func handleIn(name string) (*netlink.Handle, error) {
	return netns.NewHandle(NetNSPath(name))
}

func addAddr(h *netlink.Handle, l netlink.Link, p netip.Prefix) error {
	a := &netlink.Addr{IPNet: &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}}
	if p.Addr().Is6() {
		a.Flags = unix.IFA_F_NODAD
	}
	return h.AddrReplace(l, a)
}

// RouteExternal gives the external namespace (the outside world) its routes
// into the cluster: each node's pod CIDRs via that node, so that traffic
// left unmasqueraded finds its way back, and the LoadBalancer pools via
// every node (equal-cost multipath: any node's proxy answers for them).
func (t Topology) RouteExternal(podCIDRs map[string][]netip.Prefix, lbPools []netip.Prefix) error {
	h, err := handleIn(t.External)
	if err != nil {
		return err
	}
	defer h.Close()
	ipnet := func(p netip.Prefix) *net.IPNet {
		return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
	}
	via := func(n Node, p netip.Prefix) netip.Addr {
		if p.Addr().Is4() {
			return n.IPv4
		}
		return n.IPv6
	}
	for _, n := range t.Nodes {
		for _, p := range podCIDRs[n.Name] {
			if err := h.RouteReplace(&netlink.Route{Dst: ipnet(p), Gw: via(n, p).AsSlice()}); err != nil {
				return fmt.Errorf("routing %s via %s in the external namespace: %w", p, n.Name, err)
			}
		}
	}
	for _, p := range lbPools {
		route := &netlink.Route{Dst: ipnet(p)}
		for _, n := range t.Nodes {
			route.MultiPath = append(route.MultiPath, &netlink.NexthopInfo{Gw: via(n, p).AsSlice()})
		}
		if len(t.Nodes) == 1 {
			route.MultiPath, route.Gw = nil, via(t.Nodes[0], p).AsSlice()
		}
		if err := h.RouteReplace(route); err != nil {
			return fmt.Errorf("routing load balancer pool %s to the nodes in the external namespace: %w", p, err)
		}
	}
	return nil
}
