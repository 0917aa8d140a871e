package netaddr

import (
	"net/netip"
	"testing"
)

func TestLastAddr(t *testing.T) {
	tests := []struct {
		name, prefix, want string
	}{
		{"IPv4 /0 is the whole space", "0.0.0.0/0", "255.255.255.255"},
		{"IPv4 /32 is its own address", "10.1.2.3/32", "10.1.2.3"},
		{"IPv4 /24", "10.244.1.0/24", "10.244.1.255"},
		{"IPv4 mask inside a byte", "10.244.0.0/23", "10.244.1.255"},
		{"IPv4 /31", "192.0.2.6/31", "192.0.2.7"},
		{"IPv4 /1", "128.0.0.0/1", "255.255.255.255"},
		{"IPv4 host bits set are ignored", "10.1.2.3/16", "10.1.255.255"},
		{"IPv6 /0 is the whole space", "::/0", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"},
		{"IPv6 /128 is its own address", "fd00::7/128", "fd00::7"},
		{"IPv6 /64", "fd00:10:244:1::/64", "fd00:10:244:1:ffff:ffff:ffff:ffff"},
		{"IPv6 mask inside a byte", "fd00:10:244::/57", "fd00:10:244:7f:ffff:ffff:ffff:ffff"},
		{"IPv6 /127", "2001:db8::/127", "2001:db8::1"},
		{"IPv6 host bits set are ignored", "2001:db8::1/112", "2001:db8::ffff"},
		{"IPv4-mapped IPv6 stays IPv6", "::ffff:10.0.0.0/104", "::ffff:10.255.255.255"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := LastAddr(netip.MustParsePrefix(tc.prefix))
			if got != netip.MustParseAddr(tc.want) {
				t.Fatalf("LastAddr(%s) = %s, want %s", tc.prefix, got, tc.want)
			}
			// It agrees with the offset arithmetic on the masked prefix.
			m := netip.MustParsePrefix(tc.prefix).Masked()
			if alt := AddrAt(m, LastOffset(m)); alt != got {
				t.Fatalf("AddrAt(%s, LastOffset) = %s, LastAddr = %s", m, alt, got)
			}
		})
	}
	if got := LastAddr(netip.Prefix{}); got.IsValid() {
		t.Fatalf("LastAddr of the zero prefix = %s, want the zero Addr", got)
	}
}
