package masq

import (
	"net/netip"
	"slices"

	"github.com/duet-net/duet/internal/nft"
)

// SetFamilies limits the programmer to the tables of fams: the tables of
// the other families are deleted at the next Apply or Reconcile and kept
// deleted, so a single-stack node holds no masquerade rules of the family
// it lacks. No families (the default) is both.
func (p *Programmer) SetFamilies(fams []nft.Family) {
	for i, f := range nft.Families {
		off := len(fams) > 0 && !slices.Contains(fams, f)
		if off != p.absent[i] {
			// The kernel must be read again for the family switched.
			p.programmed = false
		}
		p.absent[i] = off
	}
}

// compile is the model of r for the families the programmer keeps; the
// others' models are empty.
func (p *Programmer) compile(r Rules) model {
	m := compile(r)
	for i := range m {
		if p.absent[i] {
			m[i] = tableModel{}
		}
	}
	return m
}

// familiesOf are the families of cidrs, in the order of nft.Families.
func familiesOf(cidrs []netip.Prefix) []nft.Family {
	var out []nft.Family
	for _, f := range nft.Families {
		for _, c := range cidrs {
			if c.Addr().Is6() == (f == nft.IPv6) {
				out = append(out, f)
				break
			}
		}
	}
	return out
}
