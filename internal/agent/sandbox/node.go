package sandbox

import (
	"crypto/rand"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/duet-net/duet/internal/netns"
)

// NodeConfig is the pod network of one node.
type NodeConfig struct {
	// Bridge is the name of the bridge the node's pods attach to, e.g. "duet0".
	Bridge string
	// PodCIDRs are the node's pod CIDRs, at most one per family, primary
	// first. The bridge gets the first usable address of each: 10.244.1.1/24,
	// fd00:10:244:1::1/64.
	PodCIDRs []netip.Prefix
	// MTU of the bridge; 0 keeps the kernel's default (1500).
	MTU int
}

// Gateway is the node's gateway address in a pod CIDR: its first usable
// address, with the CIDR's prefix length.
func Gateway(podCIDR netip.Prefix) netip.Prefix {
	return netip.PrefixFrom(podCIDR.Masked().Addr().Next(), podCIDR.Bits())
}

func (c NodeConfig) validate() error {
	if err := validIfName(c.Bridge); err != nil {
		return fmt.Errorf("bridge name: %w", err)
	}
	if len(c.PodCIDRs) == 0 || len(c.PodCIDRs) > 2 {
		return fmt.Errorf("want one pod CIDR per family (one or two), got %d", len(c.PodCIDRs))
	}
	if len(c.PodCIDRs) == 2 && c.PodCIDRs[0].Addr().Is4() == c.PodCIDRs[1].Addr().Is4() {
		return fmt.Errorf("pod CIDRs %s and %s are of one family; want one per family", c.PodCIDRs[0], c.PodCIDRs[1])
	}
	for _, p := range c.PodCIDRs {
		if !p.IsValid() || p.Addr().Is4In6() || p.Addr().Zone() != "" {
			return fmt.Errorf("pod CIDR %s is not a valid IPv4 or IPv6 prefix", p)
		}
		if p != p.Masked() {
			return fmt.Errorf("pod CIDR %s has host bits set; did you mean %s?", p, p.Masked())
		}
		if p.Addr().BitLen()-p.Bits() < 2 {
			return fmt.Errorf("pod CIDR %s leaves no room for a gateway and a pod (at most /30 for IPv4, /126 for IPv6)", p)
		}
	}
	if c.MTU < 0 || c.MTU > 65535 {
		return fmt.Errorf("MTU %d out of range", c.MTU)
	}
	return nil
}

// EnsureNode makes the node namespace nodeNS ready for pods, idempotently: the
// bridge exists, is up, has the gateway address of each pod CIDR and no other
// global address, does no duplicate address detection, and the namespace
// forwards the families of the pod CIDRs. Nothing outside nodeNS is touched.
func EnsureNode(nodeNS string, cfg NodeConfig) error {
	if err := cfg.validate(); err != nil {
		return fmt.Errorf("node %s: %w", nodeNS, err)
	}
	if err := ensureNode(nodeNS, cfg); err != nil {
		return fmt.Errorf("node %s: bridge %s: %w", nodeNS, cfg.Bridge, err)
	}
	return nil
}

func ensureNode(nodeNS string, cfg NodeConfig) error {
	nsFD, err := netns.Open(nodeNS)
	if err != nil {
		return err
	}
	defer unix.Close(nsFD)
	h, err := netns.NewHandleFD(nsFD)
	if err != nil {
		return fmt.Errorf("netlink socket in %s: %w", nodeNS, err)
	}
	defer h.Close()

	br, err := h.LinkByName(cfg.Bridge)
	var notFound netlink.LinkNotFoundError
	switch {
	case errors.As(err, &notFound):
		// Created down: accept_dad is set before the link-local address exists.
		attrs := netlink.NewLinkAttrs()
		attrs.Name = cfg.Bridge
		attrs.MTU = cfg.MTU
		// A MAC of its own: otherwise the bridge takes the lowest MAC of its
		// ports, and the gateway's MAC changes under the pods' neighbour caches
		// as pods come and go.
		attrs.HardwareAddr = randomMAC()
		if err := h.LinkAdd(&netlink.Bridge{LinkAttrs: attrs}); err != nil {
			return fmt.Errorf("create: %w", err)
		}
		if br, err = h.LinkByName(cfg.Bridge); err != nil {
			return err
		}
	case err != nil:
		return err
	default:
		if br.Type() != "bridge" {
			return fmt.Errorf("a %s link of that name exists in the node namespace; remove it or choose another bridge name", br.Type())
		}
		if cfg.MTU != 0 && br.Attrs().MTU != cfg.MTU {
			if err := h.LinkSetMTU(br, cfg.MTU); err != nil {
				return fmt.Errorf("set MTU %d: %w", cfg.MTU, err)
			}
		}
	}

	var ss []netns.Sysctl
	for _, p := range cfg.PodCIDRs {
		if p.Addr().Is4() {
			ss = append(ss, netns.Sysctl{Name: "net/ipv4/ip_forward", Value: "1"})
		} else {
			ss = append(ss,
				netns.Sysctl{Name: "net/ipv6/conf/all/forwarding", Value: "1"},
				netns.Sysctl{Name: "net/ipv6/conf/" + cfg.Bridge + "/accept_dad", Value: "0"})
		}
	}
	if err := netns.DoFD(nsFD, func() error {
		if err := netns.WriteSysctls(ss); err != nil {
			return err
		}
		// Pods on the bridge are routed, not bridged, through the node: with
		// br_netfilter loaded, bridged frames would also cross the nat
		// hooks, and a pod reaching itself through a Service (hairpin)
		// would be DNATed twice. The knobs exist only with br_netfilter.
		for _, name := range []string{"net/bridge/bridge-nf-call-iptables", "net/bridge/bridge-nf-call-ip6tables"} {
			if _, err := os.Stat(filepath.Join("/proc/sys", name)); err == nil {
				if err := netns.WriteSysctls([]netns.Sysctl{{Name: name, Value: "0"}}); err != nil {
					return err
				}
			}
		}
		return nil
	}); err != nil {
		return err
	}

	want := map[netip.Prefix]bool{}
	for _, p := range cfg.PodCIDRs {
		gw := Gateway(p)
		want[gw] = true
		if err := h.AddrReplace(br, addrOf(gw)); err != nil {
			return fmt.Errorf("add gateway address %s: %w", gw, err)
		}
	}
	if err := pruneAddrs(h, br, want); err != nil {
		return err
	}
	if br.Attrs().Flags&net.FlagUp == 0 {
		if err := h.LinkSetUp(br); err != nil {
			return fmt.Errorf("set up: %w", err)
		}
	}
	return nil
}

// pruneAddrs deletes global addresses of link that are not wanted.
func pruneAddrs(h *netlink.Handle, link netlink.Link, want map[netip.Prefix]bool) error {
	addrs, err := h.AddrList(link, netlink.FAMILY_ALL)
	if err != nil && !errors.Is(err, netlink.ErrDumpInterrupted) {
		return fmt.Errorf("list addresses: %w", err)
	}
	for _, a := range addrs {
		if a.Scope != unix.RT_SCOPE_UNIVERSE {
			continue
		}
		p, ok := prefixOf(a.IPNet)
		if !ok || want[p] {
			continue
		}
		if err := h.AddrDel(link, &a); err != nil && !errors.Is(err, unix.EADDRNOTAVAIL) {
			return fmt.Errorf("delete stale address %s: %w", p, err)
		}
	}
	return nil
}

// addrOf is the netlink form of an interface address; IPv6 addresses are
// added without duplicate address detection (IFA_F_NODAD), so they are usable
// at once instead of a second or more later.
func addrOf(p netip.Prefix) *netlink.Addr {
	a := &netlink.Addr{IPNet: ipNet(p)}
	if p.Addr().Is6() {
		a.Flags = unix.IFA_F_NODAD
	}
	return a
}

func ipNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: net.IP(p.Addr().AsSlice()), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

func prefixOf(n *net.IPNet) (netip.Prefix, bool) {
	if n == nil {
		return netip.Prefix{}, false
	}
	a, ok := netip.AddrFromSlice(n.IP)
	if !ok {
		return netip.Prefix{}, false
	}
	a = a.Unmap()
	ones, _ := n.Mask.Size()
	return netip.PrefixFrom(a, ones), true
}

func randomMAC() net.HardwareAddr {
	m := make(net.HardwareAddr, 6)
	rand.Read(m)
	m[0] = m[0]&^0x01 | 0x02 // unicast, locally administered
	return m
}

func validIfName(name string) error {
	if name == "" || len(name) > 15 || name == "." || name == ".." {
		return fmt.Errorf("%q is not a valid interface name (1 to 15 characters)", name)
	}
	for _, c := range name {
		if c == '/' || c == ':' || c <= ' ' || c >= 0x7f {
			return fmt.Errorf("%q is not a valid interface name (no '/', ':', spaces or non-ASCII)", name)
		}
	}
	return nil
}
