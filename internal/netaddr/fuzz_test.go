package netaddr

import (
	"net/netip"
	"testing"
)

// The parsers take operator input: whatever they are given they must not
// panic, and what they accept must satisfy the invariants callers rely on.

func FuzzParseCIDR(f *testing.F) {
	for _, s := range []string{"10.0.0.0/8", "10.0.0.1/8", "fd00::/64", "fd00::1/64", "::ffff:10.0.0.0/104", "fe80::%eth0/64", "0.0.0.0/0", "::/0", "1.2.3.4/33", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		p, err := ParseCIDR(s)
		if err != nil {
			return
		}
		if !p.IsValid() || p.Masked() != p || p.Addr().Is4In6() || p.Addr().Zone() != "" {
			t.Fatalf("ParseCIDR(%q) accepted %v", s, p)
		}
	})
}

func FuzzParseServiceClusterIPRange(f *testing.F) {
	for _, s := range []string{"10.96.0.0/16", "10.96.0.0/16,fd00::/108", "fd00::/64,10.0.0.0/8", "10.0.0.0/16,10.1.0.0/16", "a,b,c", "", ",", "fd00::/63"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		ranges, err := ParseServiceClusterIPRange(s)
		if err != nil {
			if ranges != nil {
				t.Fatalf("ranges returned with error for %q", s)
			}
			return
		}
		if len(ranges) < 1 || len(ranges) > 2 {
			t.Fatalf("%q gave %d ranges", s, len(ranges))
		}
		if len(ranges) == 2 && FamilyOf(ranges[0].Addr()) == FamilyOf(ranges[1].Addr()) {
			t.Fatalf("%q gave two ranges of one family", s)
		}
		for _, p := range ranges {
			h := HostBits(p)
			if h < 3 || (p.Addr().Is6() && h > MaxServiceIPv6HostBits) || p.Masked() != p {
				t.Fatalf("%q accepted range %v", s, p)
			}
		}
	})
}

func FuzzParseClusterCIDRs(f *testing.F) {
	f.Add("10.244.0.0/16,fd00::/48", 24, 64, false, false)
	f.Add("fd00::/32", 0, 64, false, true)
	f.Add("10.0.0.0/8", 31, 0, true, false)
	f.Add("", 24, 0, true, false)
	f.Add("10.0.0.0/16,10.1.0.0/16", 24, 64, false, false)
	f.Fuzz(func(t *testing.T, s string, m4, m6 int, set4, set6 bool) {
		c, err := ParseClusterCIDRs(s, NodeMaskFlags{IPv4: m4, IPv6: m6, IPv4Set: set4, IPv6Set: set6})
		if err != nil {
			return
		}
		if len(c.CIDRs) > 2 || len(c.CIDRs) != len(c.NodeMaskSizes) {
			t.Fatalf("%q: %d CIDRs, %d masks", s, len(c.CIDRs), len(c.NodeMaskSizes))
		}
		seen := map[Family]bool{}
		for i, p := range c.CIDRs {
			fam := FamilyOf(p.Addr())
			if seen[fam] {
				t.Fatalf("%q: two CIDRs of %s", s, fam)
			}
			seen[fam] = true
			max := MaxNodeMaskIPv4
			if fam == IPv6 {
				max = MaxNodeMaskIPv6
			}
			if m := c.NodeMaskSizes[i]; m < p.Bits() || m > max {
				t.Fatalf("%q: node mask %d for %v", s, m, p)
			}
			if p.Masked() != p || !netip.Prefix.IsValid(p) {
				t.Fatalf("%q: accepted %v", s, p)
			}
		}
	})
}
