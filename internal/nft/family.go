package nft

import (
	"fmt"
	"net/netip"

	"github.com/google/nftables"
)

// Family is an address family: the family of a table (nft's ip or ip6)
// and of the addresses its rules handle. The service proxy runs one
// proxier per family and the masquerade tables are one per family.
type Family uint8

// The families, numbered as their IP versions.
const (
	IPv4 Family = 4
	IPv6 Family = 6
)

// Families are both families, IPv4 first.
var Families = [...]Family{IPv4, IPv6}

func (f Family) String() string {
	if f.valid() {
		return fmt.Sprintf("IPv%d", uint8(f))
	}
	return fmt.Sprintf("Family(%d)", uint8(f))
}

// Keyword is the family as nft spells it: ip or ip6.
func (f Family) Keyword() string {
	if f == IPv6 {
		return "ip6"
	}
	return "ip"
}

func (f Family) valid() bool { return f == IPv4 || f == IPv6 }

// Has reports whether a is an address of family f. An IPv4-mapped IPv6
// address is of neither family, and an address with a zone of none.
func (f Family) Has(a netip.Addr) bool {
	return a.IsValid() && a.Zone() == "" && ((f == IPv4 && a.Is4()) || (f == IPv6 && a.Is6() && !a.Is4In6()))
}

// FamilyOf is the family of a; an IPv4-mapped address counts as IPv4.
func FamilyOf(a netip.Addr) Family {
	if a.Is4() || a.Is4In6() {
		return IPv4
	}
	return IPv6
}

// TableFamily is the family as the kernel numbers it (NFPROTO_IPV4 or
// NFPROTO_IPV6).
func (f Family) TableFamily() nftables.TableFamily {
	if f == IPv6 {
		return nftables.TableFamilyIPv6
	}
	return nftables.TableFamilyIPv4
}

// AddrLen is the length of the family's addresses in bytes.
func (f Family) AddrLen() int {
	if f == IPv6 {
		return 16
	}
	return 4
}

// AddrType is the set key type of the family's addresses.
func (f Family) AddrType() nftables.SetDatatype {
	if f == IPv6 {
		return nftables.TypeIP6Addr
	}
	return nftables.TypeIPAddr
}
