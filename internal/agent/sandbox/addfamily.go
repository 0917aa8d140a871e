package sandbox

import (
	"fmt"
	"net"
	"net/netip"
	"slices"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/duet-net/duet/internal/netns"
)

// AddFamily gives a running sandbox an address of a family it lacks, in
// place: the address goes on the pod's existing interface in its existing
// namespace, with a default route of that family via gw (the bridge's
// gateway of the new pod CIDR), so the pod's processes, its other address
// and its connections are untouched. It is how a pod gains the second
// family when the cluster turns dual-stack. Calling it again with the same
// address is a no-op; an address of the family already there is an error
// (a pod has one per family). It returns the sandbox with the address
// appended (the primary family stays first).
func AddFamily(nodeNS string, sb *Sandbox, addr netip.Prefix, gw netip.Addr) (*Sandbox, error) {
	if !addr.IsValid() || addr.Addr().Is4In6() || addr.Addr() == addr.Masked().Addr() {
		return nil, fmt.Errorf("sandbox %q: pod address %s is not a valid host address with a prefix length", sb.ID, addr)
	}
	if !addr.Masked().Contains(gw) || gw == addr.Addr() {
		return nil, fmt.Errorf("sandbox %q: gateway %s is not another address of the pod's prefix %s", sb.ID, gw, addr.Masked())
	}
	for _, a := range sb.Addrs {
		if a.Addr().Is4() == addr.Addr().Is4() {
			if a == addr {
				return sb, nil
			}
			return nil, fmt.Errorf("sandbox %q already has %s of the family of %s", sb.ID, a, addr)
		}
	}
	defer locks.lock(sb.NetNS)()
	if !netns.IsNetNS(sb.NetNS) {
		return nil, fmt.Errorf("sandbox %q: its namespace %s is gone", sb.ID, sb.NetNS)
	}
	fd, err := netns.Open(sb.NetNS)
	if err != nil {
		return nil, err
	}
	defer unix.Close(fd)
	h, err := netns.NewHandleFD(fd)
	if err != nil {
		return nil, fmt.Errorf("sandbox %q: netlink socket in %s: %w", sb.ID, sb.NetNS, err)
	}
	defer h.Close()
	link, err := h.LinkByName(sb.IfName)
	if err != nil {
		return nil, fmt.Errorf("sandbox %q: %s in the pod namespace: %w", sb.ID, sb.IfName, err)
	}
	if addr.Addr().Is6() {
		// IPv6 may never have been used in the namespace: no duplicate
		// address detection (as Setup does), IPv6 on.
		err := netns.DoFD(fd, func() error {
			return netns.WriteSysctls([]netns.Sysctl{
				{Name: "net/ipv6/conf/all/accept_dad", Value: "0"},
				{Name: "net/ipv6/conf/" + sb.IfName + "/accept_dad", Value: "0"},
				{Name: "net/ipv6/conf/" + sb.IfName + "/disable_ipv6", Value: "0"},
			})
		})
		if err != nil {
			return nil, fmt.Errorf("sandbox %q: IPv6 settings: %w", sb.ID, err)
		}
	}
	if err := h.AddrReplace(link, addrOf(addr)); err != nil {
		return nil, fmt.Errorf("sandbox %q: add %s to %s: %w", sb.ID, addr, sb.IfName, err)
	}
	r := &netlink.Route{LinkIndex: link.Attrs().Index, Gw: net.IP(gw.AsSlice())}
	if err := h.RouteReplace(r); err != nil {
		return nil, fmt.Errorf("sandbox %q: default route via %s: %w", sb.ID, gw, err)
	}
	out := *sb
	out.Addrs = append(slices.Clone(sb.Addrs), addr)
	out.Gateways = append(slices.Clone(sb.Gateways), gw)
	return &out, nil
}
