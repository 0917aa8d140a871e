// Package proxy is Duet's service proxy: one nftables table per address
// family (`ip duet-proxy`, `ip6 duet-proxy`) in the node's network
// namespace. It keeps kube-proxy's nftables ideas (dispatch on daddr .
// l4proto . dport through sets and maps, numgen random endpoint choice,
// a mark and a postrouting masquerade, reject without endpoints, ClientIP
// affinity in dynamic sets), but a service port is elements of shared
// sets and maps rather than chains, so that the kernel never revalidates
// the table when services come and go (see layout.go).
//
// The package has two layers. The lower one, Proxier, needs no API: it is
// given the desired ServicePorts of its family, diffs them against what it
// programmed, and sends the difference in one netlink batch. The upper
// one, Run, watches Services and EndpointSlices and feeds one Proxier per
// family.
package proxy

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"
	"time"

	"github.com/duet-net/duet/internal/nft"
)

// Family is an address family; each has a proxier and a table of its own.
// It is the nftables layer's, shared with the masquerading.
type Family = nft.Family

// The families, numbered as their IP versions.
const (
	IPv4 = nft.IPv4
	IPv6 = nft.IPv6
)

// FamilyOf is the family of a.
func FamilyOf(a netip.Addr) Family { return nft.FamilyOf(a) }

// Protocol is an IP protocol number a service port can use.
type Protocol uint8

// The protocols Kubernetes services carry.
const (
	TCP  Protocol = 6
	UDP  Protocol = 17
	SCTP Protocol = 132
)

func (p Protocol) String() string {
	switch p {
	case TCP:
		return "tcp"
	case UDP:
		return "udp"
	case SCTP:
		return "sctp"
	}
	return fmt.Sprintf("proto-%d", uint8(p))
}

// ServicePortName names one port of one Service, as kube-proxy does:
// namespace, name, the port's name (empty for a single unnamed port) and
// protocol.
type ServicePortName struct {
	Namespace, Name, Port string
	Protocol              Protocol
}

// String is namespace/name/protocol/port, which is also how the port's
// chains are named: neither namespaces nor names hold a slash, so it is
// unambiguous.
func (n ServicePortName) String() string {
	return n.Namespace + "/" + n.Name + "/" + n.Protocol.String() + "/" + n.Port
}

func (n ServicePortName) compare(o ServicePortName) int {
	return cmp.Or(cmp.Compare(n.Namespace, o.Namespace), cmp.Compare(n.Name, o.Name),
		cmp.Compare(n.Port, o.Port), cmp.Compare(n.Protocol, o.Protocol))
}

// Endpoint is one backend of a service port.
type Endpoint struct {
	Addr netip.Addr
	Port uint16
}

func (e Endpoint) String() string { return netip.AddrPortFrom(e.Addr, e.Port).String() }

func (e Endpoint) compare(o Endpoint) int {
	return cmp.Or(e.Addr.Compare(o.Addr), cmp.Compare(e.Port, o.Port))
}

// ServicePort is what one family's proxier programs for one port of one
// Service. Every address in it is of the proxier's family.
type ServicePort struct {
	Name ServicePortName
	// ClusterIP is required: a port without one (headless, or no cluster
	// IP of this family) gets no rules.
	ClusterIP netip.Addr
	Port      uint16
	// NodePort, when not 0, is served on the node IPs of the family.
	NodePort uint16
	// ExternalIPs are spec.externalIPs and the load balancer's ingress IPs:
	// both are reached from outside the cluster, so both are masqueraded.
	ExternalIPs []netip.Addr
	// Affinity is the ClientIP session affinity timeout; 0 turns it off.
	Affinity time.Duration
	// Endpoints are the ready endpoints, sorted and without duplicates
	// (Normalize does that).
	Endpoints []Endpoint
}

// Normalize sorts and de-duplicates the lists in p, so that two equal
// ports compare equal.
func (p *ServicePort) Normalize() {
	slices.SortFunc(p.ExternalIPs, netip.Addr.Compare)
	p.ExternalIPs = slices.Compact(p.ExternalIPs)
	slices.SortFunc(p.Endpoints, Endpoint.compare)
	p.Endpoints = slices.Compact(p.Endpoints)
}

// normalized says Normalize would not change p.
func (p *ServicePort) normalized() bool {
	return sortedUnique(p.ExternalIPs, netip.Addr.Compare) && sortedUnique(p.Endpoints, Endpoint.compare)
}

func sortedUnique[T any](s []T, cmp func(a, b T) int) bool {
	for i := 1; i < len(s); i++ {
		if cmp(s[i-1], s[i]) >= 0 {
			return false
		}
	}
	return true
}

// same is equal for ports that share their slices, without reading them.
func (p *ServicePort) same(o *ServicePort) bool {
	return p.Name == o.Name && p.ClusterIP == o.ClusterIP && p.Port == o.Port && p.NodePort == o.NodePort &&
		p.Affinity == o.Affinity && sameSlice(p.ExternalIPs, o.ExternalIPs) && sameSlice(p.Endpoints, o.Endpoints)
}

func sameSlice[T any](a, b []T) bool {
	return len(a) == len(b) && (len(a) == 0 || &a[0] == &b[0])
}

func (p *ServicePort) equal(o *ServicePort) bool {
	return p.Name == o.Name && p.ClusterIP == o.ClusterIP && p.Port == o.Port && p.NodePort == o.NodePort &&
		p.Affinity == o.Affinity && slices.Equal(p.ExternalIPs, o.ExternalIPs) && slices.Equal(p.Endpoints, o.Endpoints)
}

func (p *ServicePort) clone() ServicePort {
	c := *p
	c.ExternalIPs = slices.Clone(p.ExternalIPs)
	c.Endpoints = slices.Clone(p.Endpoints)
	return c
}

// validate rejects a port the proxier cannot program, naming what is wrong.
func (p *ServicePort) validate(f Family) error {
	if !f.Has(p.ClusterIP) {
		return fmt.Errorf("cluster IP %v is not an %s address", p.ClusterIP, f)
	}
	if p.Port == 0 {
		return fmt.Errorf("port 0")
	}
	switch p.Name.Protocol {
	case TCP, UDP, SCTP:
	default:
		return fmt.Errorf("protocol %v is not TCP, UDP or SCTP", p.Name.Protocol)
	}
	for _, a := range p.ExternalIPs {
		if !f.Has(a) {
			return fmt.Errorf("external IP %v is not an %s address", a, f)
		}
	}
	for _, e := range p.Endpoints {
		if !f.Has(e.Addr) || e.Port == 0 {
			return fmt.Errorf("endpoint %v is not an %s address with a port", e, f)
		}
	}
	if p.Affinity < 0 || p.Affinity > 24*time.Hour*365 {
		return fmt.Errorf("affinity timeout %v out of range", p.Affinity)
	}
	return nil
}
