package proxy

import (
	"fmt"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/duet-net/duet/internal/netns"
)

// A UDP "connection" lives in conntrack as long as packets keep coming:
// a client that keeps sending from one port (a DNS resolver, a stream)
// would keep reaching an endpoint that left, forever. As kube-proxy does,
// the proxier deletes those flows once the endpoint's removal is
// committed; the next packet then picks a live endpoint. TCP needs none of
// this: a connection to an endpoint that left is reset or times out, and
// the client's next one is new.

// flow is a UDP flow to drop: one frontend and one endpoint that left it.
type flow struct {
	frontend, endpoint netip.AddrPort
}

// staleFlows adds to into the flows old leaves behind when it becomes now
// (nil: removed): those from each of old's frontends to each endpoint now
// lacks.
func (l *layout) staleFlows(old, now *ServicePort, into map[flow]bool) {
	if old == nil || old.Name.Protocol != UDP || len(old.Endpoints) == 0 {
		return
	}
	var gone []Endpoint
	for _, e := range old.Endpoints {
		if now == nil || now.Name.Protocol != UDP || !containsEndpoint(now.Endpoints, e) {
			gone = append(gone, e)
		}
	}
	if len(gone) == 0 {
		return
	}
	fes := []netip.AddrPort{netip.AddrPortFrom(old.ClusterIP, old.Port)}
	for _, a := range old.ExternalIPs {
		fes = append(fes, netip.AddrPortFrom(a, old.Port))
	}
	if old.NodePort != 0 {
		for _, a := range l.nodeIPs {
			fes = append(fes, netip.AddrPortFrom(a, old.NodePort))
		}
	}
	for _, fe := range fes {
		for _, e := range gone {
			into[flow{fe, netip.AddrPortFrom(e.Addr, e.Port)}] = true
		}
	}
}

func containsEndpoint(eps []Endpoint, e Endpoint) bool {
	for _, x := range eps {
		if x == e {
			return true
		}
	}
	return false
}

// flowFilter matches the conntrack entries of a set of flows.
type flowFilter map[flow]bool

func (f flowFilter) MatchConntrackFlow(c *netlink.ConntrackFlow) bool {
	if c.Forward.Protocol != unix.IPPROTO_UDP {
		return false
	}
	fe, ok1 := netip.AddrFromSlice(c.Forward.DstIP)
	ep, ok2 := netip.AddrFromSlice(c.Reverse.SrcIP)
	return ok1 && ok2 && f[flow{netip.AddrPortFrom(fe.Unmap(), c.Forward.DstPort), netip.AddrPortFrom(ep.Unmap(), c.Reverse.SrcPort)}]
}

// deleteFlows deletes the conntrack entries of flows in the namespace at
// nsPath, for family fam.
func deleteFlows(nsPath string, fam Family, flows map[flow]bool) (uint, error) {
	var h *netlink.Handle
	var err error
	if nsPath == "" {
		h, err = netlink.NewHandle(unix.NETLINK_NETFILTER)
	} else {
		h, err = netns.NewHandle(nsPath, unix.NETLINK_NETFILTER)
	}
	if err != nil {
		return 0, fmt.Errorf("conntrack netlink socket: %w", err)
	}
	defer h.Close()
	af := netlink.InetFamily(unix.AF_INET)
	if fam == IPv6 {
		af = unix.AF_INET6
	}
	n, err := h.ConntrackDeleteFilters(netlink.ConntrackTable, af, flowFilter(flows))
	if err != nil {
		return n, fmt.Errorf("deleting conntrack entries of UDP flows to endpoints that left: %w", err)
	}
	return n, nil
}
