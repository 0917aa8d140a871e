// Package netaddr holds Duet's dual-stack address vocabulary: IP families,
// strict CIDR parsing, 128-bit address arithmetic, and the cluster
// configuration flags (--service-cluster-ip-range, --cluster-cidr and the
// node mask sizes) with Kubernetes' validation rules and messages.
//
// Everything here is pure: net/netip values in, values or errors out.
package netaddr

import (
	"fmt"
	"net/netip"
	"strings"

	"lukechampine.com/uint128"
)

// Family is an IP family, spelled as core/v1 IPFamily spells it so that
// values can be copied to and from API objects unchanged.
type Family string

const (
	IPv4 Family = "IPv4"
	IPv6 Family = "IPv6"
)

// FamilyOf returns the family of a valid address.
func FamilyOf(a netip.Addr) Family {
	if a.Is4() {
		return IPv4
	}
	return IPv6
}

// Bits is the address length of the family: 32 or 128.
func (f Family) Bits() int {
	if f == IPv4 {
		return 32
	}
	return 128
}

// Other returns the other family of a dual-stack pair.
func (f Family) Other() Family {
	if f == IPv4 {
		return IPv6
	}
	return IPv4
}

// ParseCIDR parses s as a CIDR and insists that it names a network: host
// bits set (10.0.0.1/8) is an error that names the aligned network, where
// Kubernetes' "sloppy" parsing would silently mask them away. Zones and
// IPv4-mapped IPv6 prefixes are refused because they are ambiguous about
// the family.
func ParseCIDR(s string) (netip.Prefix, error) {
	p, err := netip.ParsePrefix(s)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("invalid CIDR address %q: %w", s, err)
	}
	if p.Addr().Is4In6() {
		return netip.Prefix{}, fmt.Errorf("invalid CIDR address %q: IPv4-mapped IPv6 prefixes are not allowed; write the IPv4 CIDR instead", s)
	}
	if m := p.Masked(); m != p {
		return netip.Prefix{}, fmt.Errorf("invalid CIDR address %q: host bits are set; the network is %s", s, m)
	}
	return p, nil
}

// ToUint128 returns the address as a number: IPv4 addresses use the low 32
// bits, IPv6 addresses all 128.
func ToUint128(a netip.Addr) uint128.Uint128 {
	if a.Is4() {
		b := a.As4()
		return uint128.From64(uint64(b[0])<<24 | uint64(b[1])<<16 | uint64(b[2])<<8 | uint64(b[3]))
	}
	b := a.As16()
	return uint128.FromBytesBE(b[:])
}

// FromUint128 is the inverse of ToUint128 for the given family. For IPv4
// only the low 32 bits are used.
func FromUint128(v uint128.Uint128, f Family) netip.Addr {
	if f == IPv4 {
		x := uint32(v.Lo)
		return netip.AddrFrom4([4]byte{byte(x >> 24), byte(x >> 16), byte(x >> 8), byte(x)})
	}
	var b [16]byte
	v.PutBytesBE(b[:])
	return netip.AddrFrom16(b)
}

// HostBits is the number of host bits of a prefix: 8 for a /24, 64 for an
// IPv6 /64.
func HostBits(p netip.Prefix) int {
	return p.Addr().BitLen() - p.Bits()
}

// LastOffset is the offset of the last address of p from its first: the
// prefix size minus one, which unlike the size always fits in 128 bits.
func LastOffset(p netip.Prefix) uint128.Uint128 {
	return lowMask(HostBits(p))
}

// lowMask returns a number with the n low bits set (0 <= n <= 128).
func lowMask(n int) uint128.Uint128 {
	if n >= 128 {
		return uint128.Max
	}
	return uint128.From64(1).Lsh(uint(n)).Sub64(1)
}

// LastAddr returns the last address of p: p's address with every host bit
// set. Host bits already set in p's address do not matter, so p need not be
// masked. An invalid prefix gives the zero Addr.
func LastAddr(p netip.Prefix) netip.Addr {
	if !p.IsValid() {
		return netip.Addr{}
	}
	if p.Addr().Is4() {
		b := p.Addr().As4()
		setHostBits(b[:], p.Bits())
		return netip.AddrFrom4(b)
	}
	b := p.Addr().As16()
	setHostBits(b[:], p.Bits())
	return netip.AddrFrom16(b)
}

// setHostBits sets every bit of the big-endian address b after its first
// bits.
func setHostBits(b []byte, bits int) {
	for i := range b {
		switch {
		case bits >= 8:
			bits -= 8
		case bits > 0:
			b[i] |= 0xff >> bits
			bits = 0
		default:
			b[i] = 0xff
		}
	}
}

// AddrAt returns the address at offset off from the start of p. The offset
// must be at most LastOffset(p).
func AddrAt(p netip.Prefix, off uint128.Uint128) netip.Addr {
	return FromUint128(ToUint128(p.Addr()).Add(off), FamilyOf(p.Addr()))
}

// OffsetOf returns the offset of a from the start of p, and whether a lies
// in p at all.
func OffsetOf(p netip.Prefix, a netip.Addr) (uint128.Uint128, bool) {
	if !p.Contains(a) {
		return uint128.Zero, false
	}
	return ToUint128(a).Sub(ToUint128(p.Addr())), true
}

// SizeString formats the number of addresses in p (2^hostbits) exactly,
// including 2^128, for messages.
func SizeString(p netip.Prefix) string {
	h := HostBits(p)
	if h == 128 {
		return "340282366920938463463374607431768211456"
	}
	return uint128.From64(1).Lsh(uint(h)).String()
}

// splitList splits a comma-separated flag value, trimming blanks around
// entries as Kubernetes does. An empty value yields no entries.
func splitList(value string) []string {
	value = strings.TrimSpace(value)
	if value == "" {
		return nil
	}
	parts := strings.Split(value, ",")
	for i := range parts {
		parts[i] = strings.TrimSpace(parts[i])
	}
	return parts
}
