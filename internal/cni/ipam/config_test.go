package ipam

import (
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// conf wraps an ipam section in a network configuration as a runtime
// passes it.
func conf(ipam string) string {
	return `{"cniVersion":"1.1.0","name":"pods","type":"bridge","ipam":` + ipam + `}`
}

func TestParseAcceptsHostLocalConfigs(t *testing.T) {
	type rng struct{ subnet, start, end, gw string }
	tests := []struct {
		name    string
		stdin   string
		args    string
		sets    [][]rng
		dataDir string
		routes  []string
		req     []string
	}{
		{
			name:  "host-local's dual-stack example: one IPv4 and one IPv6 range set",
			stdin: conf(`{"type":"host-local","ranges":[[{"subnet":"10.244.1.0/24"}],[{"subnet":"fd00:10:244:1::/64"}]]}`),
			sets: [][]rng{
				{{"10.244.1.0/24", "10.244.1.1", "10.244.1.254", "10.244.1.1"}},
				{{"fd00:10:244:1::/64", "fd00:10:244:1::1", "fd00:10:244:1:ffff:ffff:ffff:ffff", "fd00:10:244:1::1"}},
			},
			dataDir: DefaultDataDir,
		},
		{
			name: "rangeStart, rangeEnd and gateway as given",
			stdin: conf(`{"type":"duet-ipam","dataDir":"/run/ipam","ranges":[[{"subnet":"10.1.0.0/16","rangeStart":"10.1.1.10","rangeEnd":"10.1.1.20","gateway":"10.1.0.254"}]],
				"routes":[{"dst":"0.0.0.0/0"},{"dst":"192.168.0.0/16","gw":"10.1.0.254"}]}`),
			sets:    [][]rng{{{"10.1.0.0/16", "10.1.1.10", "10.1.1.20", "10.1.0.254"}}},
			dataDir: "/run/ipam",
			routes:  []string{"0.0.0.0/0", "192.168.0.0/16"},
		},
		{
			name:  "a range set of two subnets of one family",
			stdin: conf(`{"ranges":[[{"subnet":"10.1.2.0/24"},{"subnet":"10.1.3.0/24"}]]}`),
			sets:  [][]rng{{{"10.1.2.0/24", "10.1.2.1", "10.1.2.254", "10.1.2.1"}, {"10.1.3.0/24", "10.1.3.1", "10.1.3.254", "10.1.3.1"}}},
		},
		{
			name:  "the old single-range form comes first",
			stdin: conf(`{"subnet":"10.9.0.0/24","ranges":[[{"subnet":"fd00::/120"}]]}`),
			sets:  [][]rng{{{"10.9.0.0/24", "10.9.0.1", "10.9.0.254", "10.9.0.1"}}, {{"fd00::/120", "fd00::1", "fd00::ff", "fd00::1"}}},
		},
		{
			name:  "podCIDRs from the Duet agent, IPv6 primary, keep their order",
			stdin: conf(`{"type":"duet-ipam","podCIDRs":["fd00:10:244:2::/64","10.244.2.0/24"]}`),
			sets: [][]rng{
				{{"fd00:10:244:2::/64", "fd00:10:244:2::1", "fd00:10:244:2:ffff:ffff:ffff:ffff", "fd00:10:244:2::1"}},
				{{"10.244.2.0/24", "10.244.2.1", "10.244.2.254", "10.244.2.1"}},
			},
		},
		{
			name:  "a /8 is the largest pod subnet, in both families",
			stdin: conf(`{"ranges":[[{"subnet":"10.0.0.0/8"}],[{"subnet":"fd00::/8"}]]}`),
			sets: [][]rng{
				{{"10.0.0.0/8", "10.0.0.1", "10.255.255.254", "10.0.0.1"}},
				{{"fd00::/8", "fd00::1", "fdff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "fd00::1"}},
			},
		},
		{
			name:  "a /30 holds the gateway and one address",
			stdin: conf(`{"ranges":[[{"subnet":"10.0.0.0/30"}]]}`),
			sets:  [][]rng{{{"10.0.0.0/30", "10.0.0.1", "10.0.0.2", "10.0.0.1"}}},
		},
		{
			name:  "requested IPs from CNI_ARGS, args and runtimeConfig",
			stdin: `{"cniVersion":"1.0.0","name":"pods","args":{"cni":{"ips":["fd00::7"]}},"runtimeConfig":{"ips":["10.0.0.9/24"]},"ipam":{"ranges":[[{"subnet":"10.0.0.0/24"}],[{"subnet":"fd00::/64"}]]}}`,
			args:  "IgnoreUnknown=1;IP=10.0.0.5;K8S_POD_NAME=x",
			sets:  [][]rng{{{"10.0.0.0/24", "10.0.0.1", "10.0.0.254", "10.0.0.1"}}, {{"fd00::/64", "fd00::1", "fd00::ffff:ffff:ffff:ffff", "fd00::1"}}},
			req:   []string{"10.0.0.5", "fd00::7", "10.0.0.9"},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c, err := Parse([]byte(tc.stdin), tc.args)
			if err != nil {
				t.Fatal(err)
			}
			if len(c.RangeSets) != len(tc.sets) {
				t.Fatalf("got %d range sets, want %d: %v", len(c.RangeSets), len(tc.sets), c.RangeSets)
			}
			for i, set := range tc.sets {
				if len(c.RangeSets[i]) != len(set) {
					t.Fatalf("set %d: got %v", i, c.RangeSets[i])
				}
				for j, want := range set {
					r := c.RangeSets[i][j]
					got := rng{r.Subnet.String(), r.Start.String(), r.End.String(), r.Gateway.String()}
					if got != want {
						t.Errorf("set %d range %d = %+v, want %+v", i, j, got, want)
					}
				}
			}
			if tc.dataDir != "" && c.DataDir != tc.dataDir {
				t.Errorf("dataDir = %q, want %q", c.DataDir, tc.dataDir)
			}
			if len(c.Routes) != len(tc.routes) {
				t.Fatalf("routes = %v, want %v", c.Routes, tc.routes)
			}
			for i, r := range c.Routes {
				if r.Dst.String() != tc.routes[i] {
					t.Errorf("route %d = %s, want %s", i, r.Dst.String(), tc.routes[i])
				}
			}
			var req []string
			for _, a := range c.Requested {
				req = append(req, a.String())
			}
			if strings.Join(req, ",") != strings.Join(tc.req, ",") {
				t.Errorf("requested = %v, want %v", req, tc.req)
			}
			if c.Cooldown != DefaultCooldown {
				t.Errorf("cooldown = %s", c.Cooldown)
			}
		})
	}
}

func TestParseErrorsNameTheField(t *testing.T) {
	tests := []struct {
		name, stdin, want string
	}{
		{"not JSON", `{"name":`, "decoding the network configuration"},
		{"no name", `{"cniVersion":"1.0.0","ipam":{}}`, "name: missing network name"},
		{"a name that is not a file name", `{"name":"a/b","ipam":{"ranges":[[{"subnet":"10.0.0.0/24"}]]}}`, "name: "},
		{"no ipam key", `{"name":"pods"}`, "IPAM config missing 'ipam' key"},
		{"no ranges", conf(`{"type":"duet-ipam"}`), "ipam.ranges: no IP ranges specified"},
		{"an empty range set", conf(`{"ranges":[[]]}`), "ipam.ranges[0]: empty range set"},
		{"a range without subnet", conf(`{"ranges":[[{"rangeStart":"10.0.0.5"}]]}`), "ipam.ranges[0][0].subnet: missing subnet"},
		{"a subnet that is not a CIDR", conf(`{"ranges":[[{"subnet":"10.0.0.0/24"}],[{"subnet":"fd00::/200"}]]}`), `ipam.ranges[1][0].subnet: invalid CIDR address "fd00::/200"`},
		{"host bits set", conf(`{"ranges":[[{"subnet":"10.244.1.7/24"}]]}`), `ipam.ranges[0][0].subnet: invalid CIDR address "10.244.1.7/24": host bits are set; the network is 10.244.1.0/24`},
		{"a /31 is too small", conf(`{"ranges":[[{"subnet":"10.0.0.0/31"}]]}`), "ipam.ranges[0][0].subnet: network 10.0.0.0/31 too small to allocate from"},
		{"a /127 is too small", conf(`{"ranges":[[{"subnet":"fd00::/127"}]]}`), "ipam.ranges[0][0].subnet: network fd00::/127 too small"},
		{"rangeStart outside the subnet", conf(`{"ranges":[[{"subnet":"10.0.0.0/24","rangeStart":"10.0.1.1"}]]}`), "ipam.ranges[0][0].rangeStart: 10.0.1.1 is not in subnet 10.0.0.0/24"},
		{"rangeEnd not an address", conf(`{"ranges":[[{"subnet":"10.0.0.0/24","rangeEnd":"ten"}]]}`), `ipam.ranges[0][0].rangeEnd: "ten" is not an IP address`},
		{"rangeEnd before rangeStart", conf(`{"ranges":[[{"subnet":"10.0.0.0/24","rangeStart":"10.0.0.50","rangeEnd":"10.0.0.40"}]]}`), "ipam.ranges[0][0].rangeEnd: 10.0.0.40 is before rangeStart 10.0.0.50"},
		{"gateway outside the subnet", conf(`{"ranges":[[{"subnet":"fd00::/64","gateway":"fd01::1"}]]}`), "ipam.ranges[0][0].gateway: fd01::1 is not in subnet fd00::/64"},
		{"a range holding only its gateway", conf(`{"ranges":[[{"subnet":"10.0.0.0/24","rangeStart":"10.0.0.1","rangeEnd":"10.0.0.1"}]]}`), "ipam.ranges[0][0]: 10.0.0.0/24[10.0.0.1-10.0.0.1] has no address to hand out"},
		{"mixed families in one set", conf(`{"ranges":[[{"subnet":"10.0.0.0/24"},{"subnet":"fd00::/64"}]]}`), "ipam.ranges[0][1].subnet: fd00::/64 is IPv6 but ipam.ranges[0][0] is IPv4"},
		{"overlapping ranges in a set", conf(`{"ranges":[[{"subnet":"10.0.0.0/16"},{"subnet":"10.0.5.0/24"}]]}`), "ipam.ranges[0][1]: 10.0.5.0/24[10.0.5.1-10.0.5.254] overlaps ipam.ranges[0][0]"},
		{"overlapping range sets", conf(`{"ranges":[[{"subnet":"10.0.0.0/16"}],[{"subnet":"10.0.0.0/24"}]]}`), "ipam.ranges[1]: 10.0.0.0/24[10.0.0.1-10.0.0.254] overlaps 10.0.0.0/16[10.0.0.1-10.0.255.254] of ipam.ranges[0]"},
		{"ranges and podCIDRs", conf(`{"ranges":[[{"subnet":"10.0.0.0/24"}]],"podCIDRs":["fd00::/64"]}`), "ipam.podCIDRs: set either ipam.ranges or ipam.podCIDRs, not both"},
		{"a bad pod CIDR", conf(`{"podCIDRs":["10.244.0.0/24","fd00::1/64"]}`), `ipam.podCIDRs[1]: invalid CIDR address "fd00::1/64": host bits are set; the network is fd00::/64`},
		{"two IPv4 pod CIDRs", conf(`{"podCIDRs":["10.244.0.0/24","10.245.0.0/24"]}`), "ipam.podCIDRs: 10.244.0.0/24 and 10.245.0.0/24 are both IPv4"},
		{"three pod CIDRs", conf(`{"podCIDRs":["10.244.0.0/24","fd00::/64","10.245.0.0/24"]}`), "ipam.podCIDRs: at most two CIDRs"},
		{"a route without dst", conf(`{"ranges":[[{"subnet":"10.0.0.0/24"}]],"routes":[{"dst":"0.0.0.0/0"},{"gw":"10.0.0.1"}]}`), "ipam.routes[1].dst: missing destination"},
		{"a route with a bad dst", conf(`{"ranges":[[{"subnet":"10.0.0.0/24"}]],"routes":[{"dst":"default"}]}`), `ipam.routes[0].dst: invalid CIDR address "default"`},
		{"a route whose gw is of the other family", conf(`{"ranges":[[{"subnet":"10.0.0.0/24"}]],"routes":[{"dst":"::/0","gw":"10.0.0.1"}]}`), "ipam.routes[0].gw: 10.0.0.1 is IPv4 but dst ::/0 is IPv6"},
		{"a bad cooldown", conf(`{"ranges":[[{"subnet":"10.0.0.0/24"}]],"cooldown":"soon"}`), `ipam.cooldown: "soon" is not a duration`},
		{"a requested IP outside every range", `{"name":"pods","runtimeConfig":{"ips":["10.9.9.9"]},"ipam":{"ranges":[[{"subnet":"10.0.0.0/24"}]]}}`, "runtimeConfig.ips[0]: requested IP 10.9.9.9 is in none of the configured ranges"},
		{"a requested IP that is not one", `{"name":"pods","args":{"cni":{"ips":["x"]}},"ipam":{"ranges":[[{"subnet":"10.0.0.0/24"}]]}}`, `args.cni.ips[0]: "x" is not an IP address`},
		{"two IPv4 sets on CNI 0.2.0", `{"cniVersion":"0.2.0","name":"pods","ipam":{"ranges":[[{"subnet":"10.0.0.0/24"}],[{"subnet":"10.0.1.0/24"}]]}}`, "cniVersion: CNI version 0.2.0 does not support more than 1 address per family"},
		{"the whole IPv4 space", conf(`{"ranges":[[{"subnet":"0.0.0.0/0"}]]}`), "ipam.ranges[0][0].subnet: 0.0.0.0/0 is too large for a pod subnet: the prefix must be /8 or longer"},
		{"the whole IPv6 space", conf(`{"ranges":[[{"subnet":"10.0.0.0/24"}],[{"subnet":"::/0"}]]}`), "ipam.ranges[1][0].subnet: ::/0 is too large for a pod subnet"},
		{"an IPv4 /7", conf(`{"ranges":[[{"subnet":"10.0.0.0/7"}]]}`), "ipam.ranges[0][0].subnet: 10.0.0.0/7 is too large for a pod subnet"},
		{"an IPv6 /7", conf(`{"ranges":[[{"subnet":"fc00::/7"}]]}`), "ipam.ranges[0][0].subnet: fc00::/7 is too large for a pod subnet"},
		{"a pod CIDR of the whole space", conf(`{"podCIDRs":["0.0.0.0/0"]}`), "ipam.podCIDRs[0]: 0.0.0.0/0 is too large for a pod subnet"},
		{"the old single range of the whole space", conf(`{"subnet":"::/0"}`), "ipam.subnet: ::/0 is too large"},
		{"a runtime range of the whole space", `{"cniVersion":"1.1.0","name":"pods","runtimeConfig":{"ipRanges":[[{"subnet":"0.0.0.0/0"}]]},"ipam":{}}`, "runtimeConfig.ipRanges[0][0].subnet: 0.0.0.0/0 is too large"},
		{"IPv4 unspecified", conf(`{"ranges":[[{"subnet":"0.0.0.0/24"}]]}`), "ipam.ranges[0][0].subnet: 0.0.0.0/24 cannot be a pod subnet: it overlaps 0.0.0.0/8, the unspecified (\"this network\") range"},
		{"IPv4 loopback", conf(`{"ranges":[[{"subnet":"127.0.0.0/8"}]]}`), "ipam.ranges[0][0].subnet: 127.0.0.0/8 cannot be a pod subnet: it overlaps 127.0.0.0/8, the loopback range"},
		{"IPv4 link-local", conf(`{"podCIDRs":["169.254.0.0/24"]}`), "ipam.podCIDRs[0]: 169.254.0.0/24 cannot be a pod subnet: it overlaps 169.254.0.0/16, the link-local range"},
		{"IPv4 multicast", conf(`{"ranges":[[{"subnet":"224.0.0.0/8"}]]}`), "it overlaps 224.0.0.0/4, the multicast range"},
		{"a range holding the limited broadcast", conf(`{"ranges":[[{"subnet":"255.255.255.0/24"}]]}`), "it overlaps 255.255.255.255/32, the limited broadcast range"},
		{"IPv6 unspecified and loopback", conf(`{"ranges":[[{"subnet":"::/120"}]]}`), "ipam.ranges[0][0].subnet: ::/120 cannot be a pod subnet: it overlaps ::/128, the unspecified range"},
		{"IPv6 loopback", conf(`{"ranges":[[{"subnet":"::/127"}]]}`), "ipam.ranges[0][0].subnet: network ::/127 too small"},
		{"IPv6 link-local", conf(`{"ranges":[[{"subnet":"fe80::/64"}]]}`), "ipam.ranges[0][0].subnet: fe80::/64 cannot be a pod subnet: it overlaps fe80::/10, the link-local range"},
		{"IPv6 multicast", conf(`{"podCIDRs":["ff05::/64"]}`), "ipam.podCIDRs[0]: ff05::/64 cannot be a pod subnet: it overlaps ff00::/8, the multicast range"},
		{"IPv4-mapped IPv6", conf(`{"ranges":[[{"subnet":"::ffff:0:0/96"}]]}`), "IPv4-mapped IPv6 prefixes are not allowed"},
		{"a missing resolv.conf", conf(`{"ranges":[[{"subnet":"10.0.0.0/24"}]],"resolvConf":"/nonexistent/resolv.conf"}`), "ipam.resolvConf: open /nonexistent/resolv.conf"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse([]byte(tc.stdin), "")
			if err == nil {
				t.Fatalf("accepted; want an error containing %q", tc.want)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %q\ndoes not contain %q", err, tc.want)
			}
		})
	}
}

func TestParseFieldErrorIsTyped(t *testing.T) {
	_, err := Parse([]byte(conf(`{"ranges":[[{"subnet":"10.0.0.0/24","gateway":"x"}]]}`)), "")
	var fe *FieldError
	if !errors.As(err, &fe) || fe.Field != "ipam.ranges[0][0].gateway" {
		t.Fatalf("got %v", err)
	}
}

func TestParseCooldownResolvConfAndGCArgs(t *testing.T) {
	dir := t.TempDir()
	rc := filepath.Join(dir, "resolv.conf")
	if err := os.WriteFile(rc, []byte("# comment\nnameserver 10.96.0.10\nnameserver fd00:10:96::a\nsearch default.svc.cluster.local svc.cluster.local\noptions ndots:5\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	stdin := `{"cniVersion":"1.1.0","name":"pods","cni.dev/valid-attachments":[{"containerID":"c1","ifname":"eth0"}],
		"ipam":{"podCIDRs":["10.244.0.0/24"],"cooldown":"0s","resolvConf":"` + rc + `"}}`
	c, err := Parse([]byte(stdin), "")
	if err != nil {
		t.Fatal(err)
	}
	if c.Cooldown != 0 {
		t.Errorf("cooldown = %s, want 0", c.Cooldown)
	}
	if got := strings.Join(c.DNS.Nameservers, ","); got != "10.96.0.10,fd00:10:96::a" {
		t.Errorf("nameservers = %s", got)
	}
	if len(c.DNS.Search) != 2 || len(c.DNS.Options) != 1 {
		t.Errorf("dns = %+v", c.DNS)
	}
	if len(c.ValidAttachments) != 1 || c.ValidAttachments[0].ContainerID != "c1" {
		t.Errorf("valid attachments = %+v", c.ValidAttachments)
	}
}

func TestRangeSkipsNetworkGatewayAndBroadcast(t *testing.T) {
	c, err := Parse([]byte(conf(`{"ranges":[[{"subnet":"10.0.0.0/29","rangeStart":"10.0.0.0","rangeEnd":"10.0.0.7"}]]}`)), "")
	if err != nil {
		t.Fatal(err)
	}
	r := c.RangeSets[0][0]
	var got []string
	for a, ok := r.FirstUsable(r.Start); ok; a, ok = r.FirstUsable(a.Next()) {
		got = append(got, a.String())
	}
	if want := "10.0.0.2,10.0.0.3,10.0.0.4,10.0.0.5,10.0.0.6"; strings.Join(got, ",") != want {
		t.Fatalf("usable = %v, want %s", got, want)
	}
	if r.Usable(netip.MustParseAddr("10.0.0.1")) {
		t.Fatal("the gateway is usable")
	}
}
