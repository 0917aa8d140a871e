package alloc

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"

	"github.com/duet-net/duet/internal/netaddr"
)

// Attachment is what holds pod addresses: one interface of one container,
// as CNI names an attachment. The Duet agent uses the pod's UID as the
// container ID.
type Attachment struct {
	ContainerID string
	IfName      string
}

func (a Attachment) String() string { return a.ContainerID + "/" + a.IfName }

// PodRange is one subnet, the part of it handed out and its gateway, as
// host-local's range is. All fields are set.
type PodRange struct {
	Subnet  netip.Prefix
	Start   netip.Addr // first address handed out, inclusive
	End     netip.Addr // last address handed out, inclusive
	Gateway netip.Addr // never handed out
}

// PodRangeSet is host-local's range set: ranges of one family, tried in
// order, of which an attachment gets one address.
type PodRangeSet []PodRange

// MinPodSubnetBits is the shortest prefix a pod subnet may have, in both
// families. Nothing larger than a /8 is one network: for IPv4 a /8 is the
// old class A and 10.0.0.0/8 the largest private range; for IPv6 fd00::/8
// is the whole locally assigned ULA space, the largest block a private
// cluster can draw from. A shorter prefix is a slice of the address space
// (0.0.0.0/0 and ::/0 being the extreme), not a node's subnet, and can only
// be a mistake.
const MinPodSubnetBits = 8

// notPodSubnets are the ranges no pod address may come from, with what they
// are. A pod subnet must not overlap any of them.
var notPodSubnets = []struct {
	prefix netip.Prefix
	what   string
}{
	{netip.MustParsePrefix("0.0.0.0/8"), "unspecified (\"this network\")"},
	{netip.MustParsePrefix("127.0.0.0/8"), "loopback"},
	{netip.MustParsePrefix("169.254.0.0/16"), "link-local"},
	{netip.MustParsePrefix("224.0.0.0/4"), "multicast"},
	{netip.MustParsePrefix("255.255.255.255/32"), "limited broadcast"},
	{netip.MustParsePrefix("::/128"), "unspecified"},
	{netip.MustParsePrefix("::1/128"), "loopback"},
	{netip.MustParsePrefix("::ffff:0:0/96"), "IPv4-mapped"},
	{netip.MustParsePrefix("fe80::/10"), "link-local"},
	{netip.MustParsePrefix("ff00::/8"), "multicast"},
}

// CheckPodSubnet says why p cannot be a pod subnet, or returns nil: it must
// be a network (no host bits set), no larger than a /8 (MinPodSubnetBits),
// hold a gateway and at least one address besides the network address and
// the IPv4 broadcast, and lie outside the unspecified, loopback,
// link-local, multicast and IPv4-mapped ranges.
func CheckPodSubnet(p netip.Prefix) error {
	switch {
	case !p.IsValid():
		return errors.New("not a valid CIDR")
	case p.Masked() != p:
		return fmt.Errorf("%s has host bits set; the network is %s", p, p.Masked())
	case p.Bits() < MinPodSubnetBits:
		return fmt.Errorf("%s is too large for a pod subnet: the prefix must be /%d or longer; a shorter one spans more than any one network", p, MinPodSubnetBits)
	case netaddr.HostBits(p) < 2:
		return fmt.Errorf("network %s too small to allocate from: it must hold a gateway and an address (at most /30 for IPv4, /126 for IPv6)", p)
	}
	for _, n := range notPodSubnets {
		if n.prefix.Overlaps(p) {
			return fmt.Errorf("%s cannot be a pod subnet: it overlaps %s, the %s range", p, n.prefix, n.what)
		}
	}
	return nil
}

// NewPodRange returns the range that hands out all of subnet: the gateway
// is the address after the network address, and neither it, the network
// address nor the IPv4 broadcast address is ever handed out. It fails when
// subnet cannot be a pod subnet (CheckPodSubnet).
func NewPodRange(subnet netip.Prefix) (PodRange, error) {
	if err := CheckPodSubnet(subnet); err != nil {
		return PodRange{}, err
	}
	first := subnet.Addr().Next()
	last := netaddr.LastAddr(subnet)
	if subnet.Addr().Is4() {
		last = last.Prev()
	}
	return PodRange{Subnet: subnet, Start: first, End: last, Gateway: first}, nil
}

// NodePodRanges returns the range sets of a node's pod CIDRs (its
// spec.podCIDRs, primary first): one set per CIDR, in order, each handing
// out its whole CIDR but the gateway. A node has at most one CIDR per family.
func NodePodRanges(podCIDRs []netip.Prefix) ([]PodRangeSet, error) {
	if len(podCIDRs) == 0 || len(podCIDRs) > 2 {
		return nil, fmt.Errorf("a node has one or two pod CIDRs, one per IP family; got %d", len(podCIDRs))
	}
	if len(podCIDRs) == 2 && podCIDRs[0].Addr().Is4() == podCIDRs[1].Addr().Is4() {
		return nil, fmt.Errorf("pod CIDRs %s and %s are both %s; a node has at most one per family", podCIDRs[0], podCIDRs[1], netaddr.FamilyOf(podCIDRs[0].Addr()))
	}
	sets := make([]PodRangeSet, 0, len(podCIDRs))
	for _, p := range podCIDRs {
		r, err := NewPodRange(p)
		if err != nil {
			return nil, fmt.Errorf("pod CIDR %s: %w", p, err)
		}
		sets = append(sets, PodRangeSet{r})
	}
	return sets, nil
}

// Contains reports whether a lies within [Start, End].
func (r PodRange) Contains(a netip.Addr) bool {
	return a.BitLen() == r.Start.BitLen() && r.Start.Compare(a) <= 0 && a.Compare(r.End) <= 0
}

// Usable reports whether a may be handed out from r: inside [Start, End],
// neither the gateway nor the network address nor the IPv4 broadcast.
func (r PodRange) Usable(a netip.Addr) bool {
	if !r.Contains(a) || a == r.Gateway || a == r.Subnet.Addr() {
		return false
	}
	return !(a.Is4() && a == netaddr.LastAddr(r.Subnet))
}

// FirstUsable returns the first address at or after a that the range hands
// out. Only the network address, the gateway and the IPv4 broadcast are
// ever skipped, so the loop is short.
func (r PodRange) FirstUsable(a netip.Addr) (netip.Addr, bool) {
	if a.Compare(r.Start) < 0 {
		a = r.Start
	}
	for a.IsValid() && a.Compare(r.End) <= 0 {
		if r.Usable(a) {
			return a, true
		}
		a = a.Next()
	}
	return netip.Addr{}, false
}

// Family is the range's address family.
func (r PodRange) Family() netaddr.Family { return netaddr.FamilyOf(r.Subnet.Addr()) }

func (r PodRange) String() string {
	return fmt.Sprintf("%s[%s-%s]", r.Subnet, r.Start, r.End)
}

// Family is the range set's address family.
func (s PodRangeSet) Family() netaddr.Family { return s[0].Family() }

// Contains reports whether a lies within one of the set's ranges.
func (s PodRangeSet) Contains(a netip.Addr) bool {
	for _, r := range s {
		if r.Contains(a) {
			return true
		}
	}
	return false
}

// RangeOf returns the range that a may be handed out from.
func (s PodRangeSet) RangeOf(a netip.Addr) (PodRange, bool) {
	for _, r := range s {
		if r.Usable(a) {
			return r, true
		}
	}
	return PodRange{}, false
}

// String names the set stably; stores key the set's round-robin cursor by
// it, so it must not change.
func (s PodRangeSet) String() string {
	parts := make([]string, len(s))
	for i, r := range s {
		parts[i] = r.String()
	}
	return strings.Join(parts, ",")
}
