package netaddr

import (
	"errors"
	"fmt"
	"net/netip"
)

const (
	// MaxServiceIPv6HostBits bounds an IPv6 service range at a /64.
	// Kubernetes' bitmap allocator stopped at /108 (65,536 addresses); Duet's
	// allocators cost memory per allocated address only, so a /64 is fine,
	// and a /64 is what operators actually get delegated.
	MaxServiceIPv6HostBits = 64
	// MinServiceRangeSize is Kubernetes' minimum service range size.
	MinServiceRangeSize = 8

	DefaultNodeMaskIPv4 = 24
	DefaultNodeMaskIPv6 = 64
	// A node's pod range must hold its gateway and at least one pod besides
	// the addresses that are never handed out (network, and for IPv4 broadcast).
	MaxNodeMaskIPv4 = 30
	MaxNodeMaskIPv6 = 126
)

// ParseServiceClusterIPRange parses --service-cluster-ip-range: one CIDR, or
// two of different families, primary first. Messages are kube-apiserver's.
func ParseServiceClusterIPRange(value string) ([]netip.Prefix, error) {
	entries := splitList(value)
	if len(entries) == 0 {
		return nil, errors.New("--service-cluster-ip-range must contain at least one valid cidr")
	}
	if len(entries) > 2 {
		return nil, errors.New("--service-cluster-ip-range must not contain more than two entries")
	}
	ranges := make([]netip.Prefix, 0, len(entries))
	for i, e := range entries {
		p, err := ParseCIDR(e)
		if err != nil {
			return nil, fmt.Errorf("service-cluster-ip-range[%d] is not a valid cidr: %w", i, err)
		}
		ranges = append(ranges, p)
	}
	if len(ranges) == 2 && ranges[0].Addr().Is4() == ranges[1].Addr().Is4() {
		return nil, errors.New("--service-cluster-ip-range[0] and --service-cluster-ip-range[1] must be of different IP family")
	}
	for i, p := range ranges {
		flag := "--service-cluster-ip-range"
		if i > 0 {
			flag = fmt.Sprintf("--service-cluster-ip-range[%d]", i)
		}
		if err := ValidateServiceRangeSize(flag, p); err != nil {
			return nil, err
		}
	}
	return ranges, nil
}

// ValidateServiceRangeSize checks that a service range is neither smaller
// than Kubernetes allows nor, for IPv6, larger than a /64.
func ValidateServiceRangeSize(flag string, p netip.Prefix) error {
	h := HostBits(p)
	if h < 3 { // 2^3 == MinServiceRangeSize
		return fmt.Errorf("%s %s holds %s addresses: the service cluster IP range must be at least %d IP addresses", flag, p, SizeString(p), MinServiceRangeSize)
	}
	if p.Addr().Is6() && h > MaxServiceIPv6HostBits {
		return fmt.Errorf("specified %s is too large; for 128-bit addresses, the mask must be >= %d", flag, 128-MaxServiceIPv6HostBits)
	}
	return nil
}

// NodeMaskFlags are --node-cidr-mask-size-ipv4 and --node-cidr-mask-size-ipv6
// as given on the command line; Set tells a default from an explicit value,
// because an explicit mask for a family the cluster lacks is an error.
type NodeMaskFlags struct {
	IPv4, IPv6       int
	IPv4Set, IPv6Set bool
}

// ClusterCIDRs is the parsed --cluster-cidr with the node mask size of each
// entry (index-aligned, primary first).
type ClusterCIDRs struct {
	CIDRs         []netip.Prefix
	NodeMaskSizes []int
}

// Families returns the families in configured order.
func (c ClusterCIDRs) Families() []Family {
	fams := make([]Family, len(c.CIDRs))
	for i, p := range c.CIDRs {
		fams[i] = FamilyOf(p.Addr())
	}
	return fams
}

// ParseClusterCIDRs parses --cluster-cidr with the node mask flags, with
// kube-controller-manager's rules and messages, except that the difference
// between node and cluster mask is not capped (Kubernetes caps it at 16 bits
// for IPv6, which refuses fd00::/32 with /64 nodes). An empty value is a
// cluster without pod CIDRs, and then no mask flag may be set.
func ParseClusterCIDRs(value string, masks NodeMaskFlags) (ClusterCIDRs, error) {
	entries := splitList(value)
	var out ClusterCIDRs
	for _, e := range entries {
		p, err := ParseCIDR(e)
		if err != nil {
			return ClusterCIDRs{}, fmt.Errorf("failed to parse cidr value:%q with error:%w", e, err)
		}
		out.CIDRs = append(out.CIDRs, p)
	}
	has := map[Family]bool{}
	for _, p := range out.CIDRs {
		has[FamilyOf(p.Addr())] = true
	}
	dualStack := has[IPv4] && has[IPv6]
	if len(out.CIDRs) > 1 && !dualStack {
		return ClusterCIDRs{}, fmt.Errorf("len of ClusterCIDRs==%d and they are not configured as dual stack (at least one from each IPFamily)", len(out.CIDRs))
	}
	if len(out.CIDRs) > 2 {
		return ClusterCIDRs{}, fmt.Errorf("length of clusterCIDRs is:%d more than max allowed of 2", len(out.CIDRs))
	}

	for _, m := range []struct {
		fam  Family
		set  bool
		size int
		max  int
	}{
		{IPv4, masks.IPv4Set, masks.IPv4, MaxNodeMaskIPv4},
		{IPv6, masks.IPv6Set, masks.IPv6, MaxNodeMaskIPv6},
	} {
		flag := "--node-cidr-mask-size-" + map[Family]string{IPv4: "ipv4", IPv6: "ipv6"}[m.fam]
		if !m.set {
			continue
		}
		switch {
		case len(out.CIDRs) == 0:
			return ClusterCIDRs{}, fmt.Errorf("usage of %s is not allowed without --cluster-cidr", flag)
		case !has[m.fam]:
			return ClusterCIDRs{}, fmt.Errorf("usage of %s is not allowed for a single-stack %s cluster", flag, m.fam.Other())
		case m.size < 0 || m.size > m.max:
			return ClusterCIDRs{}, fmt.Errorf("%s must be between 0 and %d, so that a node's range holds a gateway and a pod; got %d", flag, m.max, m.size)
		}
	}

	for _, p := range out.CIDRs {
		flag, size := "--node-cidr-mask-size-ipv4", DefaultNodeMaskIPv4
		if masks.IPv4Set {
			size = masks.IPv4
		}
		if p.Addr().Is6() {
			flag, size = "--node-cidr-mask-size-ipv6", DefaultNodeMaskIPv6
			if masks.IPv6Set {
				size = masks.IPv6
			}
		}
		if p.Bits() > size {
			return ClusterCIDRs{}, fmt.Errorf("invalid --cluster-cidr, mask size of cluster CIDR must be less than or equal to --node-cidr-mask-size configured for CIDR family: the mask of %s is longer than %s=%d", p, flag, size)
		}
		out.NodeMaskSizes = append(out.NodeMaskSizes, size)
	}
	return out, nil
}

// ParseCIDRList parses a comma-separated list of CIDRs of any families, as
// an agent's copy of a cluster-wide flag; errors name flag.
func ParseCIDRList(flag, value string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, s := range splitList(value) {
		p, err := ParseCIDR(s)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", flag, err)
		}
		out = append(out, p)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%s: no CIDR in %q", flag, value)
	}
	return out, nil
}
