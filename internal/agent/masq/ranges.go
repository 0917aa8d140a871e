package masq

import (
	"net/netip"
	"slices"

	"github.com/duet-net/duet/internal/netaddr"
)

// ipRange is an inclusive address range of one family: what an nftables
// interval set holds once prefixes are merged.
type ipRange struct {
	from, to netip.Addr
}

func (r ipRange) String() string {
	if p, ok := r.prefix(); ok {
		return p.String()
	}
	return r.from.String() + "-" + r.to.String()
}

// prefix returns the range as a single prefix, when it is one.
func (r ipRange) prefix() (netip.Prefix, bool) {
	bits := r.from.BitLen()
	for b := 0; b <= bits; b++ {
		p := netip.PrefixFrom(r.from, b)
		if p.Masked().Addr() == r.from && lastAddr(p) == r.to {
			return p, true
		}
	}
	return netip.Prefix{}, false
}

func compareRanges(a, b ipRange) int {
	if c := a.from.Compare(b.from); c != 0 {
		return c
	}
	return a.to.Compare(b.to)
}

// lastAddr is the last address of a prefix: its host bits all set.
func lastAddr(p netip.Prefix) netip.Addr { return netaddr.LastAddr(p) }

// mergePrefixes returns the prefixes of one family as sorted, disjoint,
// non-adjacent ranges. The kernel refuses overlapping intervals, and
// merging adjacent ones too makes the result canonical: one set of
// addresses has exactly one representation, so comparing with what the
// kernel holds and diffing two configurations are plain comparisons.
func mergePrefixes(prefixes []netip.Prefix, ipv6 bool) []ipRange {
	rs := make([]ipRange, 0, len(prefixes))
	for _, p := range prefixes {
		if !p.IsValid() || p.Addr().Is6() != ipv6 {
			continue
		}
		p = p.Masked()
		rs = append(rs, ipRange{p.Addr(), lastAddr(p)})
	}
	slices.SortFunc(rs, compareRanges)
	out := rs[:0]
	for _, r := range rs {
		if n := len(out); n > 0 {
			cur := &out[n-1]
			next := cur.to.Next() // invalid when cur reaches the top of the family
			if !next.IsValid() || r.from.Compare(next) <= 0 {
				if r.to.Compare(cur.to) > 0 {
					cur.to = r.to
				}
				continue
			}
		}
		out = append(out, r)
	}
	return slices.Clip(out)
}

// diffRanges returns what to delete from old and add to it to get new;
// both must be sorted.
func diffRanges(old, new []ipRange) (del, add []ipRange) {
	i, j := 0, 0
	for i < len(old) || j < len(new) {
		switch {
		case j == len(new):
			del = append(del, old[i])
			i++
		case i == len(old):
			add = append(add, new[j])
			j++
		default:
			switch c := compareRanges(old[i], new[j]); {
			case c == 0:
				i++
				j++
			case c < 0:
				del = append(del, old[i])
				i++
			default:
				add = append(add, new[j])
				j++
			}
		}
	}
	return del, add
}
