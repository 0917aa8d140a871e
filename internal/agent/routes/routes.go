// Package routes computes and programs the routes a node needs to reach
// every other node's pods: each other node's pod CIDR of a family via that
// node's InternalIP of the same family. Routes Duet programs carry a
// protocol number of their own, so a sync touches only them.
package routes

import (
	"fmt"
	"net"
	"net/netip"
	"sort"

	"github.com/vishvananda/netlink"
	corev1 "k8s.io/api/core/v1"

	"github.com/duet-net/duet/internal/netns"
)

// Protocol marks Duet's routes (RTPROT values above 4 are free for
// routing daemons; 0x44 is "D").
const Protocol = netlink.RouteProtocol(0x44)

// Route is one desired route.
type Route struct {
	Dst netip.Prefix
	Via netip.Addr
}

func (r Route) String() string { return r.Dst.String() + " via " + r.Via.String() }

// Desired returns the routes node self needs to the other nodes' pods,
// sorted. A node CIDR without an InternalIP of its family is skipped:
// there is no next hop for it.
func Desired(self string, nodes []*corev1.Node) []Route {
	var out []Route
	for _, n := range nodes {
		if n.Name == self {
			continue
		}
		ips := map[bool]netip.Addr{} // is4 -> address
		for _, a := range n.Status.Addresses {
			if a.Type != corev1.NodeInternalIP {
				continue
			}
			ip, err := netip.ParseAddr(a.Address)
			if err != nil {
				continue
			}
			if _, ok := ips[ip.Is4()]; !ok {
				ips[ip.Is4()] = ip
			}
		}
		for _, c := range n.Spec.PodCIDRs {
			p, err := netip.ParsePrefix(c)
			if err != nil {
				continue
			}
			if via, ok := ips[p.Addr().Is4()]; ok {
				out = append(out, Route{Dst: p.Masked(), Via: via})
			}
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Dst.String() < out[j].Dst.String() })
	return out
}

// Programmer applies routes in one network namespace.
type Programmer struct {
	handle *netlink.Handle
}

// NewProgrammer returns a programmer for the namespace at nsPath ("" for
// the caller's own).
func NewProgrammer(nsPath string) (*Programmer, error) {
	if nsPath == "" {
		h, err := netlink.NewHandle()
		return &Programmer{handle: h}, err
	}
	h, err := netns.NewHandle(nsPath)
	if err != nil {
		return nil, fmt.Errorf("netlink in %s: %w", nsPath, err)
	}
	return &Programmer{handle: h}, nil
}

// Close releases the netlink sockets.
func (p *Programmer) Close() { p.handle.Close() }

// Sync makes Duet's routes in the namespace exactly want: adds or replaces
// what is missing or different, deletes what is no longer wanted, and
// leaves every other route alone. It reports what it changed.
func (p *Programmer) Sync(want []Route) (added, deleted int, err error) {
	have := map[netip.Prefix]netlink.Route{}
	for _, fam := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
		routes, err := p.handle.RouteListFiltered(fam, &netlink.Route{Protocol: Protocol}, netlink.RT_FILTER_PROTOCOL)
		if err != nil {
			return 0, 0, fmt.Errorf("listing routes: %w", err)
		}
		for _, r := range routes {
			if r.Dst == nil {
				continue
			}
			if dst, ok := prefixFromIPNet(r.Dst); ok {
				have[dst] = r
			}
		}
	}
	wanted := map[netip.Prefix]bool{}
	for _, w := range want {
		wanted[w.Dst] = true
		if r, ok := have[w.Dst]; ok && r.Gw != nil && r.Gw.Equal(net.IP(w.Via.AsSlice())) {
			continue
		}
		route := &netlink.Route{
			Dst:      &net.IPNet{IP: w.Dst.Addr().AsSlice(), Mask: net.CIDRMask(w.Dst.Bits(), w.Dst.Addr().BitLen())},
			Gw:       w.Via.AsSlice(),
			Protocol: Protocol,
		}
		if err := p.handle.RouteReplace(route); err != nil {
			return added, deleted, fmt.Errorf("adding route %s: %w", w, err)
		}
		added++
	}
	for dst, r := range have {
		if wanted[dst] {
			continue
		}
		if err := p.handle.RouteDel(&r); err != nil {
			return added, deleted, fmt.Errorf("deleting route to %s: %w", dst, err)
		}
		deleted++
	}
	return added, deleted, nil
}

func prefixFromIPNet(n *net.IPNet) (netip.Prefix, bool) {
	a, ok := netip.AddrFromSlice(n.IP)
	if !ok {
		return netip.Prefix{}, false
	}
	ones, _ := n.Mask.Size()
	return netip.PrefixFrom(a.Unmap(), ones), true
}
