package cluster

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/duet-net/duet/internal/netaddr"
)

// stack is what `duet up`'s address flags resolve to: the server's
// --cluster-cidr and --service-cluster-ip-range, primary first, the
// LoadBalancer pools, and the cluster's families. A single-stack cluster is
// single-stack all the way down: its nodes, underlay and external namespace
// get addresses of its family only.
type stack struct {
	clusterCIDR, serviceRange string
	lbPools                   []netip.Prefix
	families                  []netaddr.Family
}

// ParseSingleStack parses --single-stack: "" (dual-stack), ipv4 or ipv6.
func ParseSingleStack(value string) (netaddr.Family, error) {
	switch strings.ToLower(strings.TrimSpace(value)) {
	case "":
		return "", nil
	case "ipv4":
		return netaddr.IPv4, nil
	case "ipv6":
		return netaddr.IPv6, nil
	}
	return "", fmt.Errorf("--single-stack: %q is not an IP family; want ipv4 or ipv6", value)
}

// resolveStack checks duet up's address flags with the server's own rules
// and against each other, before anything is built.
func resolveStack(o Options) (stack, error) {
	single, err := ParseSingleStack(o.SingleStack)
	if err != nil {
		return stack{}, err
	}
	clusterCIDR, serviceRange, pools := o.ClusterCIDR, o.ServiceRange, o.LBPools
	if single != "" {
		// --single-stack keeps the entries of its family of each list, so
		// it takes the family's half of the defaults or of the lists given.
		if clusterCIDR, err = onlyFamily("--cluster-cidr", clusterCIDR, single); err != nil {
			return stack{}, err
		}
		if serviceRange, err = onlyFamily("--service-cluster-ip-range", serviceRange, single); err != nil {
			return stack{}, err
		}
		if pools != "" {
			pools = joinPrefixes(keepFamily(splitPrefixes(pools), single))
		}
	}
	if clusterCIDR, err = primaryFirst(clusterCIDR, o.IPv6Primary); err != nil {
		return stack{}, fmt.Errorf("--cluster-cidr: %w", err)
	}
	if serviceRange, err = primaryFirst(serviceRange, o.IPv6Primary); err != nil {
		return stack{}, fmt.Errorf("--service-cluster-ip-range: %w", err)
	}
	ranges, err := netaddr.ParseServiceClusterIPRange(serviceRange)
	if err != nil {
		return stack{}, err
	}
	cidrs, err := netaddr.ParseClusterCIDRs(clusterCIDR, netaddr.NodeMaskFlags{})
	if err != nil {
		return stack{}, err
	}
	if len(cidrs.CIDRs) == 0 {
		return stack{}, fmt.Errorf("--cluster-cidr: no CIDR in %q; duet up's nodes need pod CIDRs", clusterCIDR)
	}
	s := stack{clusterCIDR: clusterCIDR, serviceRange: serviceRange, families: cidrs.Families()}
	if svcFams := familiesOf(ranges); !slices.Equal(svcFams, s.families) {
		return stack{}, fmt.Errorf("--service-cluster-ip-range %s is %s but --cluster-cidr %s is %s; give both the same families, primary first",
			serviceRange, familyList(svcFams), clusterCIDR, familyList(s.families))
	}
	if pools != "" {
		if s.lbPools, err = netaddr.ParseCIDRList("--load-balancer-ip-pool", pools); err != nil {
			return stack{}, err
		}
		kept := keepFamily(s.lbPools, s.families...)
		if len(kept) != len(s.lbPools) && o.LBPools != DefaultLBPools && single == "" {
			// The default pools are dual-stack; a pool given of a family
			// the cluster lacks is a mistake worth naming.
			for _, p := range s.lbPools {
				if !slices.Contains(s.families, netaddr.FamilyOf(p.Addr())) {
					return stack{}, fmt.Errorf("--load-balancer-ip-pool: %s is %s, a family the cluster (--cluster-cidr %s) lacks", p, netaddr.FamilyOf(p.Addr()), clusterCIDR)
				}
			}
		}
		s.lbPools = kept
	}
	return s, nil
}

// lbPoolsFlag is the server's --load-balancer-ip-pool value.
func (s stack) lbPoolsFlag() string { return joinPrefixes(s.lbPools) }

// onlyFamily keeps the entry of family f of a comma-separated CIDR list.
func onlyFamily(flag, value string, f netaddr.Family) (string, error) {
	var kept []string
	for _, e := range strings.Split(value, ",") {
		e = strings.TrimSpace(e)
		p, err := netaddr.ParseCIDR(e)
		if err != nil {
			return "", fmt.Errorf("%s: %w", flag, err)
		}
		if netaddr.FamilyOf(p.Addr()) == f {
			kept = append(kept, e)
		}
	}
	if len(kept) == 0 {
		return "", fmt.Errorf("--single-stack %s: %s %q has no %s CIDR", strings.ToLower(string(f)), flag, value, f)
	}
	return strings.Join(kept, ","), nil
}

func splitPrefixes(value string) []netip.Prefix {
	var out []netip.Prefix
	for _, e := range strings.Split(value, ",") {
		if p, err := netaddr.ParseCIDR(strings.TrimSpace(e)); err == nil {
			out = append(out, p)
		}
	}
	return out
}

func keepFamily(ps []netip.Prefix, fams ...netaddr.Family) []netip.Prefix {
	var out []netip.Prefix
	for _, p := range ps {
		if slices.Contains(fams, netaddr.FamilyOf(p.Addr())) {
			out = append(out, p)
		}
	}
	return out
}

func joinPrefixes(ps []netip.Prefix) string {
	s := make([]string, len(ps))
	for i, p := range ps {
		s[i] = p.String()
	}
	return strings.Join(s, ",")
}

func familiesOf(ps []netip.Prefix) []netaddr.Family {
	out := make([]netaddr.Family, len(ps))
	for i, p := range ps {
		out[i] = netaddr.FamilyOf(p.Addr())
	}
	return out
}

func familyList(fams []netaddr.Family) string {
	if len(fams) == 1 {
		return string(fams[0]) + "-only"
	}
	s := make([]string, len(fams))
	for i, f := range fams {
		s[i] = string(f)
	}
	return "dual-stack " + strings.Join(s, ",")
}

// has reports whether the topology carries family f; a topology without
// Families is dual-stack.
func (t Topology) has(f netaddr.Family) bool {
	return len(t.Families) == 0 || slices.Contains(t.Families, f)
}

// IPs are the node's underlay addresses of the topology's families, in the
// order of fams (the cluster's, primary first; empty: IPv4, IPv6).
func (n Node) IPs(fams []netaddr.Family) []netip.Addr {
	if len(fams) == 0 {
		return []netip.Addr{n.IPv4, n.IPv6}
	}
	out := make([]netip.Addr, 0, len(fams))
	for _, f := range fams {
		if f == netaddr.IPv4 {
			out = append(out, n.IPv4)
		} else {
			out = append(out, n.IPv6)
		}
	}
	return out
}
