package etcdstore

import (
	"net/netip"
	"testing"
)

func TestKeyEncoding(t *testing.T) {
	for _, tc := range []struct {
		prefix string
		key    string
	}{
		{"10.244.1.0/24", "v4/0af40100/24"},
		{"0.0.0.0/0", "v4/00000000/00"},
		{"255.255.255.255/32", "v4/ffffffff/32"},
		{"10.244.1.7/24", "v4/0af40107/24"}, // host bits kept: what was created is what is listed
		{"fd00::/64", "v6/fd000000000000000000000000000000/064"},
		{"fd00::1/128", "v6/fd000000000000000000000000000001/128"},
		{"::ffff:10.0.0.0/104", "v6/00000000000000000000ffff0a000000/104"},
	} {
		p := netip.MustParsePrefix(tc.prefix)
		if got := encodeKey(p); got != tc.key {
			t.Errorf("encodeKey(%s) = %q, want %q", p, got, tc.key)
		}
		back, err := decodeKey(tc.key)
		if err != nil || back != p {
			t.Errorf("decodeKey(%q) = %v, %v; want %s", tc.key, back, err, p)
		}
	}
}

func TestDecodeKeyRefusesOtherSpellings(t *testing.T) {
	for _, s := range []string{
		"", "v4/", "v5/0af40100/24", "v4/0AF40100/24", "v4/0af40100/024", "v4/0af40100/4",
		"v4/0af40100/33", "v4/0af4010/24", "v4/0af40100-24", "v6/fd00/064", "v6/fd000000000000000000000000000000/129",
		"v6/fd000000000000000000000000000000/64", "v4/0af40100/+4", "v4/0af4010g/24",
	} {
		if p, err := decodeKey(s); err == nil {
			t.Errorf("decodeKey(%q) = %v, want an error", s, p)
		}
	}
}

func TestKeyRangeHoldsExactlyTheAddressesInside(t *testing.T) {
	within := netip.MustParsePrefix("10.244.0.0/16")
	start, end := keyRange(within)
	for _, tc := range []struct {
		key     string
		inRange bool
	}{
		{"10.243.255.0/24", false},
		{"10.244.0.0/16", true},
		{"10.244.0.0/8", true}, // starts inside: in the range, filtered by contains
		{"10.244.0.0/24", true},
		{"10.244.255.255/32", true},
		{"10.245.0.0/24", false},
		{"fd00::/64", false},
	} {
		k := encodeKey(netip.MustParsePrefix(tc.key))
		if got := start <= k && k < end; got != tc.inRange {
			t.Errorf("%s (key %q) in [%q, %q) = %v, want %v", tc.key, k, start, end, got, tc.inRange)
		}
	}
}

func FuzzDecodeKey(f *testing.F) {
	for _, s := range []string{"v4/0af40100/24", "v6/fd000000000000000000000000000000/064", "v4/0af40100/99", "v6/", "x"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		p, err := decodeKey(s)
		if err != nil {
			return
		}
		if !p.IsValid() {
			t.Fatalf("decodeKey(%q) returned invalid prefix %v", s, p)
		}
		if back := encodeKey(p); back != s {
			t.Fatalf("decodeKey(%q) = %v, which encodes as %q", s, p, back)
		}
	})
}

// FuzzKeyRange checks that a single range read finds every record within a
// prefix and nothing whose address lies outside it.
func FuzzKeyRange(f *testing.F) {
	f.Add([]byte{10, 244, 1, 0}, uint8(24), []byte{10, 244, 0, 0}, uint8(16))
	f.Add([]byte{10, 245, 0, 0}, uint8(24), []byte{10, 244, 0, 0}, uint8(16))
	f.Add([]byte{0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1}, uint8(128), []byte{0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}, uint8(64))
	f.Add([]byte{255, 255, 255, 255}, uint8(32), []byte{0, 0, 0, 0}, uint8(0))
	f.Fuzz(func(t *testing.T, kb []byte, kbits uint8, wb []byte, wbits uint8) {
		ka, ok1 := netip.AddrFromSlice(kb)
		wa, ok2 := netip.AddrFromSlice(wb)
		if !ok1 || !ok2 || int(kbits) > ka.BitLen() || int(wbits) > wa.BitLen() {
			return
		}
		k, w := netip.PrefixFrom(ka, int(kbits)), netip.PrefixFrom(wa, int(wbits))
		start, end := keyRange(w)
		key := encodeKey(k)
		inRange := start <= key && key < end
		addrInside := ka.Is4() == wa.Is4() && w.Masked().Contains(ka)
		if inRange != addrInside {
			t.Fatalf("key of %s in range of %s = %v, but address inside = %v", k, w, inRange, addrInside)
		}
		memStoreWould := w.Overlaps(k) && w.Bits() <= k.Bits()
		if got := inRange && contains(w, k); got != memStoreWould {
			t.Fatalf("List(%s) returns %s = %v; MemStore would say %v", w, k, got, memStoreWould)
		}
	})
}
