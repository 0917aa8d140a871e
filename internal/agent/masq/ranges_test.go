package masq

import (
	"math/rand/v2"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/duet-net/duet/internal/nft"
)

func rangeStrings(rs []ipRange) string {
	s := make([]string, len(rs))
	for i, r := range rs {
		s[i] = r.String()
	}
	return strings.Join(s, " ")
}

func TestMergePrefixes(t *testing.T) {
	tests := []struct {
		name  string
		in    []string
		want4 string
		want6 string
	}{
		{name: "nothing", want4: "", want6: ""},
		{name: "families are kept apart", in: []string{"10.0.0.0/8", "fd00::/8"}, want4: "10.0.0.0/8", want6: "fd00::/8"},
		{name: "duplicates collapse", in: []string{"10.0.0.0/8", "10.0.0.0/8"}, want4: "10.0.0.0/8"},
		{name: "a nested CIDR disappears into its parent", in: []string{"10.1.0.0/16", "10.0.0.0/8", "10.200.3.0/24"}, want4: "10.0.0.0/8"},
		{name: "adjacent CIDRs become one range", in: []string{"10.0.1.0/24", "10.0.0.0/24", "10.0.2.0/24"}, want4: "10.0.0.0-10.0.2.255"},
		{name: "adjacent halves become their parent", in: []string{"10.0.0.0/25", "10.0.0.128/25"}, want4: "10.0.0.0/24"},
		{name: "disjoint CIDRs stay apart, sorted", in: []string{"192.168.0.0/16", "10.0.0.0/8", "172.16.0.0/12"}, want4: "10.0.0.0/8 172.16.0.0/12 192.168.0.0/16"},
		{name: "the top of the address space", in: []string{"255.255.255.0/24", "255.0.0.0/8", "ffff::/16"}, want4: "255.0.0.0/8", want6: "ffff::/16"},
		{name: "everything", in: []string{"0.0.0.0/0", "10.0.0.0/8", "::/0"}, want4: "0.0.0.0/0", want6: "::/0"},
		{name: "single addresses", in: []string{"10.0.0.1/32", "10.0.0.2/32", "2001:db8::1/128"}, want4: "10.0.0.1-10.0.0.2", want6: "2001:db8::1/128"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in := prefixes(tt.in...)
			if got := rangeStrings(mergePrefixes(in, false)); got != tt.want4 {
				t.Errorf("IPv4 = %q, want %q", got, tt.want4)
			}
			if got := rangeStrings(mergePrefixes(in, true)); got != tt.want6 {
				t.Errorf("IPv6 = %q, want %q", got, tt.want6)
			}
		})
	}
}

// TestMergePrefixesProperty checks merging against address membership
// on random small prefixes: an address is in the merged ranges exactly
// when it is in some input prefix, and the ranges are sorted, disjoint
// and not adjacent.
func TestMergePrefixesProperty(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for range 200 {
		var in []netip.Prefix
		for range rng.IntN(20) {
			bits := 24 + rng.IntN(9)
			a := netip.AddrFrom4([4]byte{10, 0, 0, byte(rng.IntN(256))})
			in = append(in, netip.PrefixFrom(a, bits).Masked())
		}
		got := mergePrefixes(in, false)
		for i := 1; i < len(got); i++ {
			if got[i].from.Compare(got[i-1].to.Next()) <= 0 {
				t.Fatalf("ranges %v and %v overlap or touch (from %v)", got[i-1], got[i], in)
			}
		}
		for x := range 256 {
			a := netip.AddrFrom4([4]byte{10, 0, 0, byte(x)})
			inPrefix := slices.ContainsFunc(in, func(p netip.Prefix) bool { return p.Contains(a) })
			inRange := slices.ContainsFunc(got, func(r ipRange) bool { return r.from.Compare(a) <= 0 && a.Compare(r.to) <= 0 })
			if inPrefix != inRange {
				t.Fatalf("%v: in a prefix %t, in a merged range %t (from %v: %v)", a, inPrefix, inRange, in, got)
			}
		}
	}
}

func TestDiffRanges(t *testing.T) {
	r := func(ss ...string) []ipRange { return mergePrefixes(prefixes(ss...), false) }
	tests := []struct {
		name             string
		old, new         []ipRange
		wantDel, wantAdd string
	}{
		{name: "no change", old: r("10.0.0.0/8"), new: r("10.0.0.0/8")},
		{name: "from nothing", new: r("10.0.0.0/8", "192.168.0.0/16"), wantAdd: "10.0.0.0/8 192.168.0.0/16"},
		{name: "to nothing", old: r("10.0.0.0/8"), wantDel: "10.0.0.0/8"},
		{name: "one changed among many touches only it", old: r("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"), new: r("10.0.0.0/8", "172.16.0.0/16", "192.168.0.0/16"),
			wantDel: "172.16.0.0/12", wantAdd: "172.16.0.0/16"},
		{name: "a range that grows over a neighbour", old: r("10.0.0.0/24", "10.0.2.0/24"), new: r("10.0.0.0/22"),
			wantDel: "10.0.0.0/24 10.0.2.0/24", wantAdd: "10.0.0.0/22"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			del, add := diffRanges(tt.old, tt.new)
			if got := rangeStrings(del); got != tt.wantDel {
				t.Errorf("deleted %q, want %q", got, tt.wantDel)
			}
			if got := rangeStrings(add); got != tt.wantAdd {
				t.Errorf("added %q, want %q", got, tt.wantAdd)
			}
		})
	}
}

// TestElementsRoundTrip checks the interval encoding the kernel gets
// against the decoding of what it gives back, including ranges that run
// to the last address and so have no end element.
func TestElementsRoundTrip(t *testing.T) {
	for _, tt := range []struct {
		f  nft.Family
		in []string
	}{
		{nft.IPv4, nil},
		{nft.IPv4, []string{"0.0.0.0/8", "10.0.0.0/8", "255.255.255.255/32"}},
		{nft.IPv4, []string{"0.0.0.0/0"}},
		{nft.IPv6, []string{"::/0"}},
		{nft.IPv6, []string{"::/128", "fd00::/8", "ffff:ffff::/32"}},
	} {
		want := mergePrefixes(prefixes(tt.in...), tt.f == nft.IPv6)
		els := elements(want)
		rand.Shuffle(len(els), func(i, j int) { els[i], els[j] = els[j], els[i] }) // the kernel's dump order is its own
		got, ok := rangesOf(els, tt.f)
		if !ok || !slices.Equal(got, want) {
			t.Errorf("%v %v: decoded %v (ok %t), want %v", tt.f, tt.in, got, ok, want)
		}
	}
}

func TestRangesOfRefusesWhatDuetDoesNotWrite(t *testing.T) {
	good := elements(mergePrefixes(prefixes("10.0.0.0/8", "192.168.0.0/16"), false))
	for name, els := range map[string][]nft.Element{
		"an end without a start":    good[1:],
		"two starts in a row":       {good[0], good[2], good[3]},
		"a key of the other family": append(slices.Clone(good), nft.Element{Key: string(netip.MustParseAddr("fd00::").AsSlice())}),
		"a key of no family":        {{Key: "\x01\x02\x03"}},
		"data on an element":        {{Key: good[0].Key, Data: "\x01\x02\x03\x04"}, good[1]},
	} {
		if rs, ok := rangesOf(els, nft.IPv4); ok {
			t.Errorf("%s: decoded as %v", name, rs)
		}
	}
}
