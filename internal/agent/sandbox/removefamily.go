package sandbox

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/duet-net/duet/internal/netns"
)

// RemoveFamily takes a running sandbox's address of one family (IPv4 when
// is4) away in place, the reverse of AddFamily: the pod's interface loses
// its global addresses of that family and its default routes of that
// family, in its existing namespace, so the pod's processes, its other
// address and the connections over it are untouched. It is how a pod
// loses the second family when the cluster drops it. A sandbox without an
// address of the family is returned as it is (a second call is a no-op);
// taking a sandbox's last family away is refused: a pod keeps its
// primary address. It returns the sandbox without the family's address
// and gateway.
func RemoveFamily(nodeNS string, sb *Sandbox, is4 bool) (*Sandbox, error) {
	ofFamily := func(a netip.Addr) bool { return a.Is4() == is4 }
	if !slices.ContainsFunc(sb.Addrs, func(p netip.Prefix) bool { return !ofFamily(p.Addr()) }) {
		return nil, fmt.Errorf("sandbox %q: %v would lose its only family; a pod keeps its primary address", sb.ID, sb.Addrs)
	}
	out := *sb
	out.Addrs = slices.DeleteFunc(slices.Clone(sb.Addrs), func(p netip.Prefix) bool { return ofFamily(p.Addr()) })
	out.Gateways = slices.DeleteFunc(slices.Clone(sb.Gateways), ofFamily)
	defer locks.lock(sb.NetNS)()
	if !netns.IsNetNS(sb.NetNS) {
		return nil, fmt.Errorf("sandbox %q: its namespace %s is gone", sb.ID, sb.NetNS)
	}
	h, err := netns.NewHandle(sb.NetNS)
	if err != nil {
		return nil, fmt.Errorf("sandbox %q: netlink socket in %s: %w", sb.ID, sb.NetNS, err)
	}
	defer h.Close()
	link, err := h.LinkByName(sb.IfName)
	if err != nil {
		return nil, fmt.Errorf("sandbox %q: %s in the pod namespace: %w", sb.ID, sb.IfName, err)
	}
	fam := netlink.FAMILY_V6
	if is4 {
		fam = netlink.FAMILY_V4
	}
	// Routes first: the default route goes before the address it leaves by,
	// so the pod never has a route of the family without a source.
	routes, err := h.RouteList(link, fam)
	if err != nil && !errors.Is(err, netlink.ErrDumpInterrupted) {
		return nil, fmt.Errorf("sandbox %q: listing routes: %w", sb.ID, err)
	}
	for _, r := range routes {
		if r.Dst != nil {
			if ones, _ := r.Dst.Mask.Size(); ones != 0 {
				continue
			}
		}
		if err := h.RouteDel(&r); err != nil && !errors.Is(err, unix.ESRCH) {
			return nil, fmt.Errorf("sandbox %q: delete default route via %s: %w", sb.ID, r.Gw, err)
		}
	}
	addrs, err := h.AddrList(link, fam)
	if err != nil && !errors.Is(err, netlink.ErrDumpInterrupted) {
		return nil, fmt.Errorf("sandbox %q: listing addresses: %w", sb.ID, err)
	}
	for _, a := range addrs {
		// Link-local addresses stay: a pod wired with one family has them too.
		if a.Scope != unix.RT_SCOPE_UNIVERSE {
			continue
		}
		if err := h.AddrDel(link, &a); err != nil && !errors.Is(err, unix.EADDRNOTAVAIL) {
			return nil, fmt.Errorf("sandbox %q: delete %s from %s: %w", sb.ID, a.IPNet, sb.IfName, err)
		}
	}
	return &out, nil
}
