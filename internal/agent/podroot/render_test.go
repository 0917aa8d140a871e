package podroot

import (
	"net/netip"
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
)

func TestPodResolvConf(t *testing.T) {
	host := ResolvConf{Nameservers: []string{"192.0.2.53"}, Searches: []string{"corp.example"}, Options: []string{"edns0"}}
	dns := []netip.Addr{netip.MustParseAddr("10.96.0.10"), netip.MustParseAddr("fd00:10:96::a")}
	for _, tc := range []struct {
		name string
		in   DNSInput
		want ResolvConf
	}{
		{"ClusterFirst", DNSInput{Namespace: "ns1", ClusterDNS: dns, Host: host},
			ResolvConf{Nameservers: []string{"10.96.0.10", "fd00:10:96::a"}, Searches: []string{"ns1.svc.cluster.local", "svc.cluster.local", "cluster.local", "corp.example"}, Options: []string{"ndots:5"}}},
		{"ClusterFirst without cluster DNS is the host's", DNSInput{Namespace: "ns1", Host: host}, host},
		{"ClusterFirst for hostNetwork is the host's", DNSInput{Namespace: "ns1", HostNetwork: true, ClusterDNS: dns, Host: host}, host},
		{"ClusterFirstWithHostNet", DNSInput{Policy: corev1.DNSClusterFirstWithHostNet, Namespace: "ns1", HostNetwork: true, ClusterDNS: dns, ClusterDomain: "example.internal", Host: host},
			ResolvConf{Nameservers: []string{"10.96.0.10", "fd00:10:96::a"}, Searches: []string{"ns1.svc.example.internal", "svc.example.internal", "example.internal", "corp.example"}, Options: []string{"ndots:5"}}},
		{"Default", DNSInput{Policy: corev1.DNSDefault, Namespace: "ns1", ClusterDNS: dns, Host: host}, host},
		{"None with dnsConfig", DNSInput{Policy: corev1.DNSNone, Namespace: "ns1", Host: host, Config: &corev1.PodDNSConfig{
			Nameservers: []string{"203.0.113.53"}, Searches: []string{"a.example"}, Options: []corev1.PodDNSConfigOption{{Name: "ndots", Value: ptr("2")}}}},
			ResolvConf{Nameservers: []string{"203.0.113.53"}, Searches: []string{"a.example"}, Options: []string{"ndots:2"}}},
		{"dnsConfig options replace same-named ones", DNSInput{Namespace: "ns1", ClusterDNS: dns, Host: host, Config: &corev1.PodDNSConfig{
			Options: []corev1.PodDNSConfigOption{{Name: "ndots", Value: ptr("1")}, {Name: "rotate"}}}},
			ResolvConf{Nameservers: []string{"10.96.0.10", "fd00:10:96::a"}, Searches: []string{"ns1.svc.cluster.local", "svc.cluster.local", "cluster.local", "corp.example"}, Options: []string{"ndots:1", "rotate"}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := PodResolvConf(tc.in)
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(got.Nameservers, tc.want.Nameservers) || !slices.Equal(got.Searches, tc.want.Searches) || !slices.Equal(got.Options, tc.want.Options) {
				t.Errorf("got %+v\nwant %+v", got, tc.want)
			}
		})
	}
}

func ptr(s string) *string { return &s }

func TestPodNamesAndHosts(t *testing.T) {
	addrs := []netip.Addr{netip.MustParseAddr("10.244.0.5"), netip.MustParseAddr("fd00:10:244::5")}
	for _, tc := range []struct {
		name         string
		spec         Spec
		hostname     string
		hostsContain []string
	}{
		{"pod name", Spec{Name: "web-0", Namespace: "ns1"}, "web-0", []string{"10.244.0.5\tweb-0", "fd00:10:244::5\tweb-0"}},
		{"spec.hostname and subdomain", Spec{Name: "p", Namespace: "ns1", Hostname: "h", Subdomain: "sub"}, "h",
			[]string{"10.244.0.5\th.sub.ns1.svc.cluster.local\th"}},
		{"hostNetwork is the node's", Spec{Name: "p", Namespace: "ns1", HostNetwork: true, NodeName: "node1"}, "node1", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n, err := PodNames(&tc.spec)
			if err != nil {
				t.Fatal(err)
			}
			if n.Hostname != tc.hostname {
				t.Errorf("hostname %q, want %q", n.Hostname, tc.hostname)
			}
			hosts := string(RenderHosts(n, addrs, []corev1.HostAlias{{IP: "198.51.100.7", Hostnames: []string{"alias.example"}}}))
			for _, want := range append(tc.hostsContain, "127.0.0.1\tlocalhost", "198.51.100.7\talias.example") {
				if !strings.Contains(hosts, want) {
					t.Errorf("/etc/hosts lacks %q:\n%s", want, hosts)
				}
			}
		})
	}
}

func FuzzParseResolvConf(f *testing.F) {
	for _, s := range []string{"nameserver 10.0.0.1\nsearch a.example b.example.\noptions ndots:2 edns0\n", "domain x\n# c\n; d\n", "nameserver\n", "options a:1\noptions a:2\n"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := ParseResolvConf(data)
		if err != nil {
			return
		}
		// What it renders reads back the same.
		again, err := ParseResolvConf(c.Render())
		if err != nil {
			t.Fatalf("rendered %q does not parse: %v", c.Render(), err)
		}
		if !slices.Equal(again.Nameservers, c.Nameservers) || !slices.Equal(again.Searches, c.Searches) || !slices.Equal(again.Options, c.Options) {
			t.Errorf("round trip: %+v became %+v", c, again)
		}
	})
}
