package netaddr

import (
	"fmt"
	"net/netip"
	"reflect"
	"strings"
	"testing"
)

func TestParseServiceClusterIPRange(t *testing.T) {
	tests := []struct {
		name    string
		value   string
		want    []string
		wantErr string
	}{
		{name: "single IPv4 range", value: "10.96.0.0/16", want: []string{"10.96.0.0/16"}},
		{name: "dual-stack, IPv4 primary", value: "10.96.0.0/16,fd00:10:96::/108", want: []string{"10.96.0.0/16", "fd00:10:96::/108"}},
		{name: "dual-stack, IPv6 primary", value: "fd00:10:96::/108,10.96.0.0/16", want: []string{"fd00:10:96::/108", "10.96.0.0/16"}},
		{name: "blanks around entries are trimmed", value: " 10.96.0.0/16 , fd00::/64 ", want: []string{"10.96.0.0/16", "fd00::/64"}},
		{name: "an IPv6 /64 is allowed, unlike Kubernetes' /108 cap", value: "fd00:1:2:3::/64", want: []string{"fd00:1:2:3::/64"}},
		{name: "a range of exactly 8 addresses is allowed", value: "10.0.0.0/29,fd00::/125", want: []string{"10.0.0.0/29", "fd00::/125"}},
		{name: "a large IPv4 range is allowed", value: "10.0.0.0/8", want: []string{"10.0.0.0/8"}},

		{name: "empty", value: "", wantErr: "--service-cluster-ip-range must contain at least one valid cidr"},
		{name: "blank", value: "  ", wantErr: "--service-cluster-ip-range must contain at least one valid cidr"},
		{name: "three entries", value: "10.0.0.0/16,fd00::/64,10.1.0.0/16", wantErr: "--service-cluster-ip-range must not contain more than two entries"},
		{name: "two IPv4 ranges", value: "10.0.0.0/16,10.1.0.0/16", wantErr: "--service-cluster-ip-range[0] and --service-cluster-ip-range[1] must be of different IP family"},
		{name: "two IPv6 ranges", value: "fd00::/64,fd01::/64", wantErr: "--service-cluster-ip-range[0] and --service-cluster-ip-range[1] must be of different IP family"},
		{name: "garbage primary", value: "foo", wantErr: `service-cluster-ip-range[0] is not a valid cidr: invalid CIDR address "foo"`},
		{name: "empty secondary", value: "10.0.0.0/16,", wantErr: `service-cluster-ip-range[1] is not a valid cidr: invalid CIDR address ""`},
		{name: "host bits name the network", value: "10.0.0.1/8", wantErr: `service-cluster-ip-range[0] is not a valid cidr: invalid CIDR address "10.0.0.1/8": host bits are set; the network is 10.0.0.0/8`},
		{name: "IPv6 host bits name the network", value: "10.0.0.0/8,fd00::1/64", wantErr: `service-cluster-ip-range[1] is not a valid cidr: invalid CIDR address "fd00::1/64": host bits are set; the network is fd00::/64`},
		{name: "IPv6 wider than /64", value: "fd00::/63", wantErr: "specified --service-cluster-ip-range is too large; for 128-bit addresses, the mask must be >= 64"},
		{name: "secondary IPv6 wider than /64", value: "10.0.0.0/16,fd00::/48", wantErr: "specified --service-cluster-ip-range[1] is too large; for 128-bit addresses, the mask must be >= 64"},
		{name: "IPv4 range of 4 addresses", value: "10.0.0.0/30", wantErr: "--service-cluster-ip-range 10.0.0.0/30 holds 4 addresses: the service cluster IP range must be at least 8 IP addresses"},
		{name: "IPv6 range of one address", value: "10.0.0.0/16,fd00::1/128", wantErr: "--service-cluster-ip-range[1] fd00::1/128 holds 1 addresses: the service cluster IP range must be at least 8 IP addresses"},
		{name: "IPv4-mapped IPv6", value: "::ffff:10.0.0.0/104", wantErr: "IPv4-mapped IPv6 prefixes are not allowed"},
		{name: "zone", value: "fe80::%eth0/64", wantErr: `service-cluster-ip-range[0] is not a valid cidr`},
		{name: "leading zeros are not sloppily accepted", value: "010.0.0.0/8", wantErr: `service-cluster-ip-range[0] is not a valid cidr`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseServiceClusterIPRange(tt.value)
			if tt.wantErr != "" {
				if err == nil || !strings.HasPrefix(err.Error(), tt.wantErr) && !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("ParseServiceClusterIPRange(%q) error = %v, want %q", tt.value, err, tt.wantErr)
				}
				if got != nil {
					t.Fatalf("ParseServiceClusterIPRange(%q) returned %v with an error", tt.value, got)
				}
				return
			}
			if err != nil {
				t.Fatalf("ParseServiceClusterIPRange(%q): %v", tt.value, err)
			}
			if !reflect.DeepEqual(prefixStrings(got), tt.want) {
				t.Fatalf("ParseServiceClusterIPRange(%q) = %v, want %v", tt.value, got, tt.want)
			}
		})
	}
}

// The three messages the issue quotes must match Kubernetes' text exactly.
func TestServiceRangeMessagesAreKubernetes(t *testing.T) {
	for value, want := range map[string]string{
		"":                                  "--service-cluster-ip-range must contain at least one valid cidr",
		"10.0.0.0/16,fd00::/64,10.1.0.0/16": "--service-cluster-ip-range must not contain more than two entries",
		"10.0.0.0/16,10.1.0.0/16":           "--service-cluster-ip-range[0] and --service-cluster-ip-range[1] must be of different IP family",
	} {
		_, err := ParseServiceClusterIPRange(value)
		if err == nil || err.Error() != want {
			t.Errorf("ParseServiceClusterIPRange(%q) error = %v, want exactly %q", value, err, want)
		}
	}
}

func TestParseClusterCIDRs(t *testing.T) {
	tests := []struct {
		name      string
		value     string
		masks     NodeMaskFlags
		wantCIDRs []string
		wantMasks []int
		wantErr   string
	}{
		{name: "no cluster CIDR", value: ""},
		{name: "IPv4 with default /24 nodes", value: "10.244.0.0/16", wantCIDRs: []string{"10.244.0.0/16"}, wantMasks: []int{24}},
		{name: "IPv6 with default /64 nodes", value: "fd00:10:244::/56", wantCIDRs: []string{"fd00:10:244::/56"}, wantMasks: []int{64}},
		{name: "dual-stack keeps the order and aligns masks", value: "fd00:10:244::/56,10.244.0.0/16",
			masks:     NodeMaskFlags{IPv4: 26, IPv4Set: true, IPv6: 80, IPv6Set: true},
			wantCIDRs: []string{"fd00:10:244::/56", "10.244.0.0/16"}, wantMasks: []int{80, 26}},
		{name: "no 16-bit cap between cluster and node mask", value: "fd00::/32", wantCIDRs: []string{"fd00::/32"}, wantMasks: []int{64}},
		{name: "a /8 cluster with /120 nodes", value: "fd00::/8", masks: NodeMaskFlags{IPv6: 120, IPv6Set: true}, wantCIDRs: []string{"fd00::/8"}, wantMasks: []int{120}},
		{name: "node mask equal to cluster mask", value: "10.0.0.0/24", masks: NodeMaskFlags{IPv4: 24, IPv4Set: true}, wantCIDRs: []string{"10.0.0.0/24"}, wantMasks: []int{24}},

		{name: "unparsable", value: "10.0.0.0/33", wantErr: `failed to parse cidr value:"10.0.0.0/33" with error:invalid CIDR address "10.0.0.0/33"`},
		{name: "host bits name the network", value: "10.244.1.0/16", wantErr: `failed to parse cidr value:"10.244.1.0/16" with error:invalid CIDR address "10.244.1.0/16": host bits are set; the network is 10.244.0.0/16`},
		{name: "two of one family", value: "10.0.0.0/16,10.1.0.0/16", wantErr: "len of ClusterCIDRs==2 and they are not configured as dual stack (at least one from each IPFamily)"},
		{name: "three of one family", value: "10.0.0.0/16,10.1.0.0/16,10.2.0.0/16", wantErr: "len of ClusterCIDRs==3 and they are not configured as dual stack (at least one from each IPFamily)"},
		{name: "three mixed", value: "10.0.0.0/16,fd00::/48,10.2.0.0/16", wantErr: "length of clusterCIDRs is:3 more than max allowed of 2"},
		{name: "IPv6 mask on a single-stack IPv4 cluster", value: "10.0.0.0/16", masks: NodeMaskFlags{IPv6: 64, IPv6Set: true}, wantErr: "usage of --node-cidr-mask-size-ipv6 is not allowed for a single-stack IPv4 cluster"},
		{name: "IPv4 mask on a single-stack IPv6 cluster", value: "fd00::/48", masks: NodeMaskFlags{IPv4: 24, IPv4Set: true}, wantErr: "usage of --node-cidr-mask-size-ipv4 is not allowed for a single-stack IPv6 cluster"},
		{name: "mask without cluster CIDR", value: "", masks: NodeMaskFlags{IPv4: 24, IPv4Set: true}, wantErr: "usage of --node-cidr-mask-size-ipv4 is not allowed without --cluster-cidr"},
		{name: "node mask shorter than cluster mask", value: "10.244.0.0/16", masks: NodeMaskFlags{IPv4: 12, IPv4Set: true},
			wantErr: "invalid --cluster-cidr, mask size of cluster CIDR must be less than or equal to --node-cidr-mask-size configured for CIDR family: the mask of 10.244.0.0/16 is longer than --node-cidr-mask-size-ipv4=12"},
		{name: "default node mask shorter than cluster mask", value: "10.0.0.0/16,fd00::/120",
			wantErr: "invalid --cluster-cidr, mask size of cluster CIDR must be less than or equal to --node-cidr-mask-size configured for CIDR family: the mask of fd00::/120 is longer than --node-cidr-mask-size-ipv6=64"},
		{name: "IPv4 node mask leaves no room for pods", value: "10.0.0.0/16", masks: NodeMaskFlags{IPv4: 31, IPv4Set: true}, wantErr: "--node-cidr-mask-size-ipv4 must be between 0 and 30, so that a node's range holds a gateway and a pod; got 31"},
		{name: "IPv6 node mask leaves no room for pods", value: "fd00::/64", masks: NodeMaskFlags{IPv6: 127, IPv6Set: true}, wantErr: "--node-cidr-mask-size-ipv6 must be between 0 and 126, so that a node's range holds a gateway and a pod; got 127"},
		{name: "negative node mask", value: "fd00::/64", masks: NodeMaskFlags{IPv6: -1, IPv6Set: true}, wantErr: "--node-cidr-mask-size-ipv6 must be between 0 and 126"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseClusterCIDRs(tt.value, tt.masks)
			if tt.wantErr != "" {
				if err == nil || !strings.HasPrefix(err.Error(), tt.wantErr) {
					t.Fatalf("ParseClusterCIDRs(%q, %+v) error = %v, want %q", tt.value, tt.masks, err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("ParseClusterCIDRs(%q, %+v): %v", tt.value, tt.masks, err)
			}
			if !reflect.DeepEqual(prefixStrings(got.CIDRs), tt.wantCIDRs) || !reflect.DeepEqual(got.NodeMaskSizes, tt.wantMasks) {
				t.Fatalf("ParseClusterCIDRs(%q, %+v) = %v %v, want %v %v", tt.value, tt.masks, got.CIDRs, got.NodeMaskSizes, tt.wantCIDRs, tt.wantMasks)
			}
		})
	}
}

func TestAddressArithmetic(t *testing.T) {
	tests := []struct {
		prefix, addr string
		offset       string
	}{
		{"10.0.0.0/8", "10.255.255.255", "16777215"},
		{"0.0.0.0/0", "255.255.255.255", "4294967295"},
		{"::/0", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "340282366920938463463374607431768211455"},
		{"fd00::/64", "fd00::ffff:ffff:ffff:ffff", "18446744073709551615"},
		{"fd00::/63", "fd00:0:0:1::", "18446744073709551616"}, // crosses the 64-bit boundary
	}
	for _, tt := range tests {
		p := netip.MustParsePrefix(tt.prefix)
		a := netip.MustParseAddr(tt.addr)
		off, ok := OffsetOf(p, a)
		if !ok || off.String() != tt.offset {
			t.Errorf("OffsetOf(%s, %s) = %s, %v; want %s", p, a, off, ok, tt.offset)
		}
		if back := AddrAt(p, off); back != a {
			t.Errorf("AddrAt(%s, %s) = %s, want %s", p, off, back, a)
		}
	}
	if _, ok := OffsetOf(netip.MustParsePrefix("10.0.0.0/8"), netip.MustParseAddr("11.0.0.0")); ok {
		t.Error("OffsetOf accepted an address outside the prefix")
	}
	if got := SizeString(netip.MustParsePrefix("::/0")); got != "340282366920938463463374607431768211456" {
		t.Errorf("SizeString(::/0) = %s", got)
	}
	if got := LastOffset(netip.MustParsePrefix("::/0")).String(); got != "340282366920938463463374607431768211455" {
		t.Errorf("LastOffset(::/0) = %s", got)
	}
}

func prefixStrings(ps []netip.Prefix) []string {
	if ps == nil {
		return nil
	}
	out := make([]string, len(ps))
	for i, p := range ps {
		out[i] = p.String()
	}
	return out
}

func TestParseCIDRList(t *testing.T) {
	for _, tc := range []struct{ in, want, err string }{
		{in: "10.244.0.0/16,fd00:10:244::/56", want: "[10.244.0.0/16 fd00:10:244::/56]"},
		{in: " 10.0.0.0/8 ", want: "[10.0.0.0/8]"},
		{in: "10.0.0.1/8", err: "--cluster-cidr: "},
		{in: "", err: `--cluster-cidr: no CIDR in ""`},
	} {
		got, err := ParseCIDRList("--cluster-cidr", tc.in)
		if tc.err != "" {
			if err == nil || !strings.HasPrefix(err.Error(), tc.err) {
				t.Errorf("ParseCIDRList(%q) = %v, %v; want error %q", tc.in, got, err, tc.err)
			}
			continue
		}
		if err != nil || fmt.Sprint(got) != tc.want {
			t.Errorf("ParseCIDRList(%q) = %v, %v; want %s", tc.in, got, err, tc.want)
		}
	}
}
