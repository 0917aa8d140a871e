package alloc

import (
	"net/netip"
	"strings"
	"testing"
)

func TestCheckPodSubnet(t *testing.T) {
	tests := []struct {
		name, prefix string
		want         string // "" means accepted
	}{
		{"a node's IPv4 /24", "10.244.1.0/24", ""},
		{"a node's IPv6 /64", "fd00:10:244:1::/64", ""},
		{"IPv4 /8, the largest", "10.0.0.0/8", ""},
		{"IPv6 /8, the largest", "fd00::/8", ""},
		{"IPv4 /30, the smallest", "192.0.2.0/30", ""},
		{"IPv6 /126, the smallest", "2001:db8::/126", ""},
		{"global IPv6", "2001:db8:1::/48", ""},
		{"IPv4 /0", "0.0.0.0/0", "0.0.0.0/0 is too large for a pod subnet: the prefix must be /8 or longer"},
		{"IPv6 /0", "::/0", "::/0 is too large for a pod subnet"},
		{"IPv4 /7", "10.0.0.0/7", "10.0.0.0/7 is too large"},
		{"IPv6 /7", "fc00::/7", "fc00::/7 is too large"},
		{"IPv4 /31", "10.0.0.0/31", "network 10.0.0.0/31 too small to allocate from"},
		{"IPv4 /32", "10.0.0.1/32", "network 10.0.0.1/32 too small"},
		{"IPv6 /127", "fd00::/127", "network fd00::/127 too small"},
		{"IPv6 /128", "fd00::1/128", "network fd00::1/128 too small"},
		{"host bits set", "10.244.1.7/24", "10.244.1.7/24 has host bits set; the network is 10.244.1.0/24"},
		{"this network", "0.0.0.0/16", "it overlaps 0.0.0.0/8, the unspecified"},
		{"IPv4 loopback", "127.0.0.0/8", "it overlaps 127.0.0.0/8, the loopback range"},
		{"inside IPv4 loopback", "127.1.0.0/24", "the loopback range"},
		{"IPv4 link-local", "169.254.1.0/24", "it overlaps 169.254.0.0/16, the link-local range"},
		{"covering IPv4 link-local", "169.0.0.0/8", "the link-local range"},
		{"IPv4 multicast", "239.1.0.0/16", "it overlaps 224.0.0.0/4, the multicast range"},
		{"IPv4 limited broadcast", "255.255.255.252/30", "the limited broadcast range"},
		{"IPv6 unspecified", "::/64", "it overlaps ::/128, the unspecified range"},
		{"just above the IPv6 loopback", "::1:0/126", ""}, // ::1:0-::1:3 holds neither :: nor ::1
		{"IPv4-mapped", "::ffff:0:0/104", "the IPv4-mapped range"},
		{"IPv6 link-local", "fe80::/64", "it overlaps fe80::/10, the link-local range"},
		{"IPv6 multicast", "ff02::/120", "it overlaps ff00::/8, the multicast range"},
		{"the zero prefix", "", "not a valid CIDR"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var p netip.Prefix
			if tc.prefix != "" {
				p = netip.MustParsePrefix(tc.prefix)
			}
			err := CheckPodSubnet(p)
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("CheckPodSubnet(%s) = %v, want it accepted", tc.prefix, err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Fatalf("CheckPodSubnet(%s) = %v, want an error containing %q", tc.prefix, err, tc.want)
			}
			if _, rerr := NewPodRange(p); (rerr == nil) != (err == nil) {
				t.Fatalf("NewPodRange(%s) = %v, CheckPodSubnet = %v", tc.prefix, rerr, err)
			}
		})
	}
}

func TestNewPodRangeHandsOutAllButNetworkGatewayAndBroadcast(t *testing.T) {
	tests := []struct{ prefix, start, end, gw string }{
		{"10.244.1.0/24", "10.244.1.1", "10.244.1.254", "10.244.1.1"},
		{"192.0.2.0/30", "192.0.2.1", "192.0.2.2", "192.0.2.1"},
		{"fd00:10:244:1::/64", "fd00:10:244:1::1", "fd00:10:244:1:ffff:ffff:ffff:ffff", "fd00:10:244:1::1"},
		{"2001:db8::/126", "2001:db8::1", "2001:db8::3", "2001:db8::1"},
	}
	for _, tc := range tests {
		r, err := NewPodRange(netip.MustParsePrefix(tc.prefix))
		if err != nil {
			t.Fatal(err)
		}
		if got := [3]string{r.Start.String(), r.End.String(), r.Gateway.String()}; got != [3]string{tc.start, tc.end, tc.gw} {
			t.Errorf("%s: start, end, gateway = %v, want %s %s %s", tc.prefix, got, tc.start, tc.end, tc.gw)
		}
		if first, ok := r.FirstUsable(r.Start); !ok || first != r.Gateway.Next() {
			t.Errorf("%s: first usable %s, want the address after the gateway", tc.prefix, first)
		}
	}
}

func TestNodePodRanges(t *testing.T) {
	p := netip.MustParsePrefix
	sets, err := NodePodRanges([]netip.Prefix{p("fd00:10:244:2::/64"), p("10.244.2.0/24")})
	if err != nil {
		t.Fatal(err)
	}
	if len(sets) != 2 || sets[0].String() != "fd00:10:244:2::/64[fd00:10:244:2::1-fd00:10:244:2:ffff:ffff:ffff:ffff]" || sets[1].String() != "10.244.2.0/24[10.244.2.1-10.244.2.254]" {
		t.Fatalf("sets = %v, want one per CIDR, in order", sets)
	}
	for _, tc := range []struct {
		cidrs []netip.Prefix
		want  string
	}{
		{nil, "one or two pod CIDRs"},
		{[]netip.Prefix{p("10.0.0.0/24"), p("fd00::/64"), p("10.1.0.0/24")}, "one or two pod CIDRs"},
		{[]netip.Prefix{p("10.0.0.0/24"), p("10.1.0.0/24")}, "both IPv4"},
		{[]netip.Prefix{p("10.0.0.0/24"), p("::/0")}, "pod CIDR ::/0: ::/0 is too large for a pod subnet"},
	} {
		if _, err := NodePodRanges(tc.cidrs); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("NodePodRanges(%v) = %v, want an error containing %q", tc.cidrs, err, tc.want)
		}
	}
}
