package nft

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"strings"

	"github.com/google/nftables"
	"golang.org/x/sys/unix"
)

// How the fake prints objects: as nft would, near enough to read.

var verdictType = nftables.TypeVerdict.GetNFTMagic()

var hookNames = map[nftables.ChainHook]string{
	*nftables.ChainHookPrerouting:  "prerouting",
	*nftables.ChainHookInput:       "input",
	*nftables.ChainHookForward:     "forward",
	*nftables.ChainHookOutput:      "output",
	*nftables.ChainHookPostrouting: "postrouting",
}

func hookText(h *Hook) string {
	if h == nil {
		return ""
	}
	name, ok := hookNames[h.Num]
	if !ok {
		name = fmt.Sprintf("hook-%d", h.Num)
	}
	policy := ""
	if h.Drop {
		policy = "; policy drop"
	}
	return fmt.Sprintf(" { type %s hook %s priority %d%s }", h.Type, name, h.Priority, policy)
}

func typeText(t nftables.SetDatatype) string {
	fs := fieldsOfMagic(t.GetNFTMagic())
	if len(fs) == 0 {
		return fmt.Sprintf("type-%d/%d", t.GetNFTMagic(), t.Bytes)
	}
	names := make([]string, len(fs))
	for i, f := range fs {
		names[i] = f.Name
	}
	return strings.Join(names, " . ")
}

func setText(s *Set, _ Family) string {
	var b strings.Builder
	b.WriteString("{ type " + typeText(s.KeyType))
	if s.Flags&SetMap != 0 {
		b.WriteString(" : " + typeText(s.DataType))
	}
	var flags []string
	for _, f := range []struct {
		flag SetFlags
		name string
	}{{SetInterval, "interval"}, {SetDynamic, "dynamic"}, {SetTimeout, "timeout"}} {
		if s.Flags&f.flag != 0 {
			flags = append(flags, f.name)
		}
	}
	if len(flags) > 0 {
		b.WriteString("; flags " + strings.Join(flags, ","))
	}
	if s.Timeout > 0 {
		fmt.Fprintf(&b, "; timeout %s", s.Timeout)
	}
	if s.Size > 0 {
		fmt.Fprintf(&b, "; size %d", s.Size)
	}
	b.WriteString(" }")
	return b.String()
}

// elementsText prints elements, one a line; an interval set's as ranges,
// each start with the end that follows it.
func elementsText(s *Set, fam Family, elems []Element, withData bool) []string {
	out := make([]string, 0, len(elems))
	if s.Flags&SetInterval != 0 {
		for i := 0; i < len(elems); i++ {
			e := elems[i]
			if e.IntervalEnd {
				out = append(out, "(end) "+valueText(s.KeyType, e.Key))
				continue
			}
			var end string
			hasEnd := i+1 < len(elems) && elems[i+1].IntervalEnd
			if hasEnd {
				end = elems[i+1].Key
				i++
			}
			out = append(out, rangeText(s.KeyType, e.Key, end, hasEnd))
		}
		return out
	}
	for _, e := range elems {
		line := valueText(s.KeyType, e.Key)
		switch {
		case !withData:
		case e.Goto != "":
			line += " : goto " + e.Goto
		case e.Data != "":
			line += " : " + valueText(s.DataType, e.Data)
		}
		out = append(out, line)
	}
	return out
}

// rangeText prints the range from start to the key before end (to the
// last key without an end), as a prefix when it is one.
func rangeText(t nftables.SetDatatype, start, end string, hasEnd bool) string {
	from, ok := netip.AddrFromSlice([]byte(start))
	if !ok {
		return valueText(t, start) + "-(" + valueText(t, end) + ")"
	}
	to := netip.AddrFrom4([4]byte{255, 255, 255, 255})
	if from.Is6() {
		to = netip.AddrFrom16([16]byte{0: 255, 1: 255, 2: 255, 3: 255, 4: 255, 5: 255, 6: 255, 7: 255,
			8: 255, 9: 255, 10: 255, 11: 255, 12: 255, 13: 255, 14: 255, 15: 255})
	}
	if hasEnd {
		e, ok := netip.AddrFromSlice([]byte(end))
		if !ok || e.BitLen() != from.BitLen() {
			return valueText(t, start) + "-(" + valueText(t, end) + ")"
		}
		to = e.Prev()
	}
	// The range is prefix p when p starts at from, holds to, and not the
	// address after it.
	for bits := 0; bits <= from.BitLen(); bits++ {
		p := netip.PrefixFrom(from, bits)
		next := to.Next()
		if p.Masked().Addr() == from && p.Contains(to) && (!next.IsValid() || !p.Contains(next)) {
			return p.String()
		}
	}
	return from.String() + "-" + to.String()
}

// valueText decodes a key or value field by field, each of a
// concatenation padded to 4 bytes. What it cannot decode it prints in hex.
func valueText(t nftables.SetDatatype, v string) string {
	fs := fieldsOfMagic(t.GetNFTMagic())
	if len(fs) == 0 {
		return fmt.Sprintf("%x", v)
	}
	parts := make([]string, 0, len(fs))
	b := []byte(v)
	for i, f := range fs {
		n := int(f.Bytes)
		if len(fs) > 1 {
			n = (n + 3) &^ 3
		}
		if n > len(b) || (i == len(fs)-1 && n != len(b)) {
			return fmt.Sprintf("%x", v)
		}
		parts = append(parts, fieldText(f, b[:n]))
		b = b[n:]
	}
	return strings.Join(parts, " . ")
}

var protocols = map[byte]string{unix.IPPROTO_TCP: "tcp", unix.IPPROTO_UDP: "udp", unix.IPPROTO_SCTP: "sctp",
	unix.IPPROTO_ICMP: "icmp", unix.IPPROTO_ICMPV6: "ipv6-icmp"}

func fieldText(t nftables.SetDatatype, b []byte) string {
	switch t.GetNFTMagic() {
	case nftables.TypeIPAddr.GetNFTMagic(), nftables.TypeIP6Addr.GetNFTMagic():
		if a, ok := netip.AddrFromSlice(b[:t.Bytes]); ok {
			return a.String()
		}
	case nftables.TypeInetProto.GetNFTMagic():
		if p, ok := protocols[b[0]]; ok {
			return p
		}
		return fmt.Sprint(b[0])
	case nftables.TypeInetService.GetNFTMagic(), nftables.TypeEtherType.GetNFTMagic():
		return fmt.Sprint(binary.BigEndian.Uint16(b))
	case nftables.TypeMark.GetNFTMagic():
		return fmt.Sprintf("0x%08x", binary.NativeEndian.Uint32(b))
	case nftables.TypeInteger.GetNFTMagic():
		if len(b) == 4 {
			return fmt.Sprint(binary.NativeEndian.Uint32(b))
		}
	}
	return fmt.Sprintf("0x%x", b)
}
