package etcdstore

import (
	"encoding/hex"
	"fmt"
	"net/netip"
	"strconv"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/duet-net/duet/internal/netaddr"
)

// Record keys are the store's prefix followed by
//
//	v4/<8 hex digits of the address>/<2 decimal digits of the prefix length>
//	v6/<32 hex digits of the address>/<3 decimal digits of the prefix length>
//
// for example "v4/0af40100/24" for 10.244.1.0/24. Every field has a fixed
// width and the address comes first, so keys sort by family, then address,
// and all records whose address lies in a prefix form one contiguous key
// range: List is a single range read. The lowercase hex keeps keys readable
// in etcdctl output.

const (
	tag4 = "v4/"
	tag6 = "v6/"
)

// encodeKey returns the key suffix of a record, without the store prefix.
// A prefix with host bits set is encoded as given; it round-trips.
func encodeKey(p netip.Prefix) string {
	a := p.Addr()
	if a.Is4() {
		b := a.As4()
		return tag4 + hex.EncodeToString(b[:]) + "/" + fmt.Sprintf("%02d", p.Bits())
	}
	b := a.As16()
	return tag6 + hex.EncodeToString(b[:]) + "/" + fmt.Sprintf("%03d", p.Bits())
}

// decodeKey parses what encodeKey wrote, and only that: any other spelling
// of the same prefix is refused, so decodeKey(s) succeeding means
// encodeKey(result) == s.
func decodeKey(s string) (netip.Prefix, error) {
	bad := func(why string) (netip.Prefix, error) {
		return netip.Prefix{}, fmt.Errorf("malformed record key %q: %s", s, why)
	}
	var addrLen, bitsLen, maxBits int
	switch {
	case len(s) >= len(tag4) && s[:len(tag4)] == tag4:
		addrLen, bitsLen, maxBits = 4, 2, 32
	case len(s) >= len(tag6) && s[:len(tag6)] == tag6:
		addrLen, bitsLen, maxBits = 16, 3, 128
	default:
		return bad("it starts with neither v4/ nor v6/")
	}
	rest := s[len(tag4):]
	hexLen := 2 * addrLen
	if len(rest) != hexLen+1+bitsLen || rest[hexLen] != '/' {
		return bad("wrong length or layout")
	}
	raw := rest[:hexLen]
	for _, c := range []byte(raw) {
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return bad("the address is not lowercase hex")
		}
	}
	buf, err := hex.DecodeString(raw)
	if err != nil {
		return bad(err.Error())
	}
	digits := rest[hexLen+1:]
	for _, c := range []byte(digits) {
		if c < '0' || c > '9' {
			return bad("the prefix length is not decimal")
		}
	}
	bits, _ := strconv.Atoi(digits)
	if bits > maxBits {
		return bad("the prefix length is too long for the family")
	}
	addr, _ := netip.AddrFromSlice(buf)
	return netip.PrefixFrom(addr, bits), nil
}

// keyRange returns the key suffixes [start, end) that hold every record
// whose address lies within p. Records with a shorter prefix length than p
// (a covering prefix that starts inside p) fall in the range too; the
// caller filters them.
func keyRange(p netip.Prefix) (start, end string) {
	m := p.Masked()
	first := m.Addr()
	last := netaddr.LastAddr(m)
	startKey := encodeKey(netip.PrefixFrom(first, 0))
	lastKey := encodeKey(netip.PrefixFrom(last, 0))
	// Cut the length field off: every key of an address is "<addr part>/..".
	start = startKey[:len(startKey)-lenField(first)]
	end = clientv3.GetPrefixRangeEnd(lastKey[:len(lastKey)-lenField(last)])
	return start, end
}

func lenField(a netip.Addr) int {
	if a.Is4() {
		return 2
	}
	return 3
}

// contains reports whether a record key k lies within p, with MemStore's
// meaning: the same family, k's address in p and k at least as long as p.
func contains(p, k netip.Prefix) bool {
	return p.Addr().Is4() == k.Addr().Is4() && k.Bits() >= p.Bits() && p.Masked().Contains(k.Addr())
}
