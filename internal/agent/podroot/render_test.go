package podroot

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
)

func TestPodNames(t *testing.T) {
	long := strings.Repeat("a", 62) + "-b"
	for _, tc := range []struct {
		name string
		spec Spec
		want Names
		bad  string
	}{
		{name: "the pod's name", spec: Spec{Name: "web-0", Namespace: "ns"}, want: Names{Hostname: "web-0", Short: "web-0"}},
		{name: "spec.hostname wins", spec: Spec{Name: "web-0", Hostname: "h"}, want: Names{Hostname: "h", Short: "h"}},
		{name: "a subdomain gives a domain in the cluster", spec: Spec{Name: "web-0", Namespace: "ns", Hostname: "h", Subdomain: "s"},
			want: Names{Hostname: "h", Short: "h", Domain: "s.ns.svc.cluster.local"}},
		{name: "another cluster domain", spec: Spec{Name: "p", Namespace: "ns", Subdomain: "s", ClusterDomain: "k8s.example"},
			want: Names{Hostname: "p", Short: "p", Domain: "s.ns.svc.k8s.example"}},
		{name: "setHostnameAsFQDN makes the kernel hostname the FQDN", spec: Spec{Name: "p", Namespace: "ns", Subdomain: "s", SetHostnameAsFQDN: true},
			want: Names{Hostname: "p.s.ns.svc.cluster.local", Short: "p", Domain: "s.ns.svc.cluster.local"}},
		{name: "setHostnameAsFQDN without a subdomain changes nothing", spec: Spec{Name: "p", SetHostnameAsFQDN: true}, want: Names{Hostname: "p", Short: "p"}},
		{name: "a long pod name is cut to 63 without a trailing dash", spec: Spec{Name: long + "c"}, want: Names{Hostname: strings.Repeat("a", 62), Short: strings.Repeat("a", 62)}},
		{name: "hostnameOverride has no domain", spec: Spec{Name: "p", Subdomain: "s", HostnameOverride: "my.host"}, want: Names{Hostname: "my.host", Short: "my.host"}},
		{name: "a hostNetwork pod is named for its node", spec: Spec{Name: "p", HostNetwork: true, NodeName: "node1", Subdomain: "s"}, want: Names{Hostname: "node1", Short: "node1"}},
		{name: "a hostNetwork pod needs its node", spec: Spec{Name: "p", HostNetwork: true}, bad: "nodeName"},
		{name: "a bad hostname", spec: Spec{Name: "p", Hostname: "a.b"}, bad: "spec.hostname"},
		{name: "a bad subdomain", spec: Spec{Name: "p", Subdomain: "A"}, bad: "spec.subdomain"},
		{name: "an FQDN too long", spec: Spec{Name: strings.Repeat("p", 41), Namespace: "ns", Subdomain: "s", SetHostnameAsFQDN: true}, bad: "longer than 63"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := PodNames(&tc.spec)
			if tc.bad != "" {
				if err == nil || !strings.Contains(err.Error(), tc.bad) {
					t.Fatalf("got %+v, %v; want an error about %s", got, err, tc.bad)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("got %+v, %v; want %+v", got, err, tc.want)
			}
		})
	}
}

const localhostLines = "# Kubernetes-managed hosts file.\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n" +
	"fe00::0\tip6-localnet\nfe00::0\tip6-mcastprefix\nfe00::1\tip6-allnodes\nfe00::2\tip6-allrouters\n"

func TestRenderHosts(t *testing.T) {
	v4, v6 := netip.MustParseAddr("10.244.0.5"), netip.MustParseAddr("fd00:10:244::5")
	for _, tc := range []struct {
		name    string
		names   Names
		addrs   []netip.Addr
		aliases []corev1.HostAlias
		want    string
	}{
		{name: "dual-stack, primary first", names: Names{Short: "web"}, addrs: []netip.Addr{v6, v4},
			want: localhostLines + "fd00:10:244::5\tweb\n10.244.0.5\tweb\n"},
		{name: "with a domain the FQDN comes first", names: Names{Short: "web", Domain: "s.ns.svc.cluster.local"}, addrs: []netip.Addr{v4, v6},
			want: localhostLines + "10.244.0.5\tweb.s.ns.svc.cluster.local\tweb\nfd00:10:244::5\tweb.s.ns.svc.cluster.local\tweb\n"},
		{name: "host aliases of both families", names: Names{Short: "p"}, addrs: []netip.Addr{v4},
			aliases: []corev1.HostAlias{{IP: "198.51.100.1", Hostnames: []string{"a", "b"}}, {IP: "2001:db8::1", Hostnames: []string{"c"}}},
			want:    localhostLines + "10.244.0.5\tp\n\n# Entries added by HostAliases.\n198.51.100.1\ta\tb\n2001:db8::1\tc\n"},
		{name: "no addresses yet", names: Names{Short: "p"}, want: localhostLines},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := string(RenderHosts(tc.names, tc.addrs, tc.aliases)); got != tc.want {
				t.Errorf("got:\n%s\nwant:\n%s", got, tc.want)
			}
		})
	}
}

func TestRenderHostNetworkHosts(t *testing.T) {
	aliases := []corev1.HostAlias{{IP: "198.51.100.1", Hostnames: []string{"a"}}}
	for _, tc := range []struct{ name, node, want string }{
		{"the node's file then the aliases", "127.0.0.1 localhost\n", hostsHeaderHostNetwork + "127.0.0.1 localhost\n\n# Entries added by HostAliases.\n198.51.100.1\ta\n"},
		{"a node file without a final newline", "127.0.0.1 localhost", hostsHeaderHostNetwork + "127.0.0.1 localhost\n\n# Entries added by HostAliases.\n198.51.100.1\ta\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := string(RenderHostNetworkHosts([]byte(tc.node), aliases)); got != tc.want {
				t.Errorf("got %q, want %q", got, tc.want)
			}
		})
	}
}

func TestParseResolvConf(t *testing.T) {
	for _, tc := range []struct {
		name, in string
		want     ResolvConf
		bad      bool
	}{
		{name: "nameservers add up", in: "nameserver 10.0.0.1\nnameserver 2001:db8::53\n", want: ResolvConf{Nameservers: []string{"10.0.0.1", "2001:db8::53"}}},
		{name: "the last search line wins, without trailing dots and '.'", in: "search a.example b\nsearch c.example. . d\n",
			want: ResolvConf{Searches: []string{"c.example", "d"}}},
		{name: "domain is a search of one", in: "domain corp.example\n", want: ResolvConf{Searches: []string{"corp.example"}}},
		{name: "options merge by name, later ones win in place", in: "options ndots:2 edns0\noptions timeout:1 ndots:3\n",
			want: ResolvConf{Options: []string{"ndots:3", "edns0", "timeout:1"}}},
		{name: "comments", in: "# nameserver 1.1.1.1\n; search x\nnameserver 10.0.0.1 # the one\n", want: ResolvConf{Nameservers: []string{"10.0.0.1"}}},
		{name: "systemd-resolved's stub", in: "nameserver 127.0.0.53\noptions edns0 trust-ad\nsearch .\n",
			want: ResolvConf{Nameservers: []string{"127.0.0.53"}, Options: []string{"edns0", "trust-ad"}}},
		{name: "a nameserver without an address", in: "nameserver\n", bad: true},
		{name: "too big", in: strings.Repeat("#", maxResolvConfSize+1), bad: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseResolvConf([]byte(tc.in))
			if tc.bad {
				if err == nil {
					t.Fatalf("parsed %+v, want an error", got)
				}
				return
			}
			if err != nil || !sameConf(got, tc.want) {
				t.Fatalf("got %+v, %v; want %+v", got, err, tc.want)
			}
		})
	}
}

func sameConf(a, b ResolvConf) bool {
	return slices.Equal(a.Nameservers, b.Nameservers) && slices.Equal(a.Searches, b.Searches) && slices.Equal(a.Options, b.Options)
}

func TestPodResolvConf(t *testing.T) {
	host := ResolvConf{Nameservers: []string{"203.0.113.53"}, Searches: []string{"corp.example"}, Options: []string{"edns0"}}
	dns := []netip.Addr{netip.MustParseAddr("fd00:10:96::a"), netip.MustParseAddr("10.96.0.10")}
	two := "2"
	clusterSearch := []string{"ns.svc.cluster.local", "svc.cluster.local", "cluster.local", "corp.example"}
	many := make([]string, 40)
	for i := range many {
		many[i] = fmt.Sprintf("%s%02d", strings.Repeat("x", 98), i) // 101 characters with the space
	}
	short := make([]string, 40)
	for i := range short {
		short[i] = fmt.Sprintf("s%d.example", i)
	}
	for _, tc := range []struct {
		name string
		in   DNSInput
		want ResolvConf
		bad  string
	}{
		{name: "ClusterFirst: the cluster's servers, primary family first, cluster searches then the host's",
			in:   DNSInput{Namespace: "ns", ClusterDNS: dns, Host: host},
			want: ResolvConf{Nameservers: []string{"fd00:10:96::a", "10.96.0.10"}, Searches: clusterSearch, Options: []string{"ndots:5"}}},
		{name: "ClusterFirst without a kube-dns Service falls back to the host's",
			in: DNSInput{Policy: corev1.DNSClusterFirst, Namespace: "ns", Host: host}, want: host},
		{name: "ClusterFirst on the host network is the host's",
			in: DNSInput{Policy: corev1.DNSClusterFirst, HostNetwork: true, Namespace: "ns", ClusterDNS: dns, Host: host}, want: host},
		{name: "ClusterFirstWithHostNet on the host network is the cluster's",
			in:   DNSInput{Policy: corev1.DNSClusterFirstWithHostNet, HostNetwork: true, Namespace: "ns", ClusterDNS: dns[1:], Host: host},
			want: ResolvConf{Nameservers: []string{"10.96.0.10"}, Searches: clusterSearch, Options: []string{"ndots:5"}}},
		{name: "Default is the host's", in: DNSInput{Policy: corev1.DNSDefault, ClusterDNS: dns, Host: host}, want: host},
		{name: "another cluster domain", in: DNSInput{Namespace: "ns", ClusterDomain: "k8s.example", ClusterDNS: dns[1:]},
			want: ResolvConf{Nameservers: []string{"10.96.0.10"}, Searches: []string{"ns.svc.k8s.example", "svc.k8s.example", "k8s.example"}, Options: []string{"ndots:5"}}},
		{name: "None is dnsConfig alone",
			in: DNSInput{Policy: corev1.DNSNone, ClusterDNS: dns, Host: host, Config: &corev1.PodDNSConfig{
				Nameservers: []string{"198.51.100.53"}, Searches: []string{"my.example"}, Options: []corev1.PodDNSConfigOption{{Name: "ndots", Value: &two}, {Name: "edns0"}}}},
			want: ResolvConf{Nameservers: []string{"198.51.100.53"}, Searches: []string{"my.example"}, Options: []string{"ndots:2", "edns0"}}},
		{name: "None needs a nameserver", in: DNSInput{Policy: corev1.DNSNone}, bad: "nameservers"},
		{name: "dnsConfig adds after, drops duplicates, and replaces options by name",
			in: DNSInput{Namespace: "ns", ClusterDNS: dns[1:], Host: host, Config: &corev1.PodDNSConfig{
				Nameservers: []string{"10.96.0.10", "198.51.100.53"}, Searches: []string{"cluster.local", "my.example"},
				Options: []corev1.PodDNSConfigOption{{Name: "ndots", Value: &two}, {Name: "single-request"}}}},
			want: ResolvConf{Nameservers: []string{"10.96.0.10", "198.51.100.53"}, Searches: append(slices.Clone(clusterSearch), "my.example"), Options: []string{"ndots:2", "single-request"}}},
		{name: "at most 3 nameservers", in: DNSInput{Policy: corev1.DNSNone, Config: &corev1.PodDNSConfig{Nameservers: []string{"10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4"}}},
			want: ResolvConf{Nameservers: []string{"10.0.0.1", "10.0.0.2", "10.0.0.3"}}},
		{name: "searches within 2048 characters", in: DNSInput{Policy: corev1.DNSNone, Config: &corev1.PodDNSConfig{Nameservers: []string{"10.0.0.1"}, Searches: many}},
			want: ResolvConf{Nameservers: []string{"10.0.0.1"}, Searches: many[:20]}},
		{name: "at most 32 searches", in: DNSInput{Policy: corev1.DNSNone, Config: &corev1.PodDNSConfig{Nameservers: []string{"10.0.0.1"}, Searches: short}},
			want: ResolvConf{Nameservers: []string{"10.0.0.1"}, Searches: short[:32]}},
		{name: "an unknown policy", in: DNSInput{Policy: "Cluster"}, bad: "spec.dnsPolicy"},
		{name: "an option with a space", in: DNSInput{Policy: corev1.DNSNone, Config: &corev1.PodDNSConfig{Nameservers: []string{"10.0.0.1"}, Options: []corev1.PodDNSConfigOption{{Name: "a b"}}}}, bad: "options[0]"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := PodResolvConf(tc.in)
			if tc.bad != "" {
				if err == nil || !strings.Contains(err.Error(), tc.bad) {
					t.Fatalf("got %+v, %v; want an error about %s", got, err, tc.bad)
				}
				return
			}
			if err != nil || !sameConf(got, tc.want) {
				t.Fatalf("got %+v, %v;\nwant %+v", got, err, tc.want)
			}
		})
	}
}

func TestRenderResolvConf(t *testing.T) {
	c := ResolvConf{Nameservers: []string{"10.96.0.10", "fd00:10:96::a"}, Searches: []string{"ns.svc.cluster.local", "svc.cluster.local"}, Options: []string{"ndots:5"}}
	want := "search ns.svc.cluster.local svc.cluster.local\nnameserver 10.96.0.10\nnameserver fd00:10:96::a\noptions ndots:5\n"
	if got := string(c.Render()); got != want {
		t.Errorf("got %q, want %q", got, want)
	}
	if got := string((ResolvConf{}).Render()); got != "" {
		t.Errorf("empty configuration rendered as %q", got)
	}
}

// FuzzParseResolvConf checks that whatever the host's resolv.conf holds, a
// parsed configuration renders into a file that parses back to itself.
func FuzzParseResolvConf(f *testing.F) {
	f.Add([]byte("nameserver 10.0.0.1\nsearch a b.\noptions ndots:2 edns0\n"))
	f.Add([]byte("domain x\n# c\n; d\nnameserver ::1 extra\noptions a:1 a:2\n"))
	f.Add([]byte("search . .. ...\n\tnameserver\t1.2.3.4\r\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := ParseResolvConf(data)
		if err != nil {
			return
		}
		again, err := ParseResolvConf(c.Render())
		if err != nil {
			t.Fatalf("rendered %q from %q does not parse: %v", c.Render(), data, err)
		}
		if !sameConf(c, again) {
			t.Fatalf("%q parsed to %+v, rendered and parsed again to %+v", data, c, again)
		}
	})
}
