package clusterdns

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/miekg/dns"
)

func TestParseName(t *testing.T) {
	const zone = "cluster.local."
	for _, tc := range []struct {
		qname string
		want  name
		out   bool // outside the zone
	}{
		{qname: "cluster.local.", want: name{kind: kindApex}},
		{qname: "svc.cluster.local.", want: name{kind: kindEmpty}},
		{qname: "pod.cluster.local.", want: name{kind: kindEmpty}},
		{qname: "dns.cluster.local.", want: name{kind: kindEmpty}},
		{qname: "ns.dns.cluster.local.", want: name{kind: kindNameserver}},
		{qname: "dns-version.cluster.local.", want: name{kind: kindVersion}},
		{qname: "default.svc.cluster.local.", want: name{kind: kindNamespace, ns: "default"}},
		{qname: "web.default.svc.cluster.local.", want: name{kind: kindService, ns: "default", service: "web"}},
		{qname: "h.sub.default.svc.cluster.local.", want: name{kind: kindEndpoint, ns: "default", service: "sub", host: "h"}},
		{qname: "_tcp.web.default.svc.cluster.local.", want: name{kind: kindProto, ns: "default", service: "web", proto: "tcp"}},
		{qname: "_http._tcp.web.default.svc.cluster.local.", want: name{kind: kindSRV, ns: "default", service: "web", proto: "tcp", port: "http"}},
		{qname: "http._tcp.web.default.svc.cluster.local.", want: name{kind: kindNone}},
		{qname: "_._tcp.web.default.svc.cluster.local.", want: name{kind: kindNone}},
		{qname: "a.b.c.d.e.svc.cluster.local.", want: name{kind: kindNone}},
		{qname: "a.b.c.d.e.f.g.svc.cluster.local.", want: name{kind: kindNone}},
		{qname: "default.pod.cluster.local.", want: name{kind: kindPodNamespace, ns: "default"}},
		{qname: "10-244-0-2.default.pod.cluster.local.", want: name{kind: kindPod, ns: "default", host: "10-244-0-2"}},
		{qname: "a.b.default.pod.cluster.local.", want: name{kind: kindNone}},
		{qname: "x.ns.dns.cluster.local.", want: name{kind: kindNone}},
		{qname: "other.cluster.local.", want: name{kind: kindNone}},
		{qname: `we\.b.default.svc.cluster.local.`, want: name{kind: kindNone}},
		{qname: "web..svc.cluster.local.", want: name{kind: kindNone}},
		{qname: "example.com.", out: true},
		{qname: "xcluster.local.", out: true},
		{qname: "cluster.local.example.", out: true},
		{qname: "local.", out: true},
	} {
		got, ok := parseName(tc.qname, zone)
		if ok == tc.out || got != tc.want {
			t.Errorf("parseName(%q) = %+v, %v; want %+v, %v", tc.qname, got, ok, tc.want, !tc.out)
		}
	}
}

func TestAddrLabels(t *testing.T) {
	for _, tc := range []struct {
		label string
		addr  string // "" for not an address
		// canonical is AddrLabel(addr) when it differs from label.
		canonical string
	}{
		{label: "10-244-0-2", addr: "10.244.0.2"},
		{label: "0-0-0-0", addr: "0.0.0.0"},
		{label: "255-255-255-255", addr: "255.255.255.255"},
		{label: "fd00-10-244--2", addr: "fd00:10:244::2"},
		{label: "FD00-10-244--2", addr: "fd00:10:244::2", canonical: "fd00-10-244--2"},
		{label: "fd00-10-244-0-0-0-0-2", addr: "fd00:10:244::2", canonical: "fd00-10-244--2"},
		{label: "2001-db8-0-1--11", addr: "2001:db8:0:1::11"},
		{label: "0-0-0-0-0-0-0-1", addr: "::1"},
		{label: "--1", addr: "::1", canonical: "0-0-0-0-0-0-0-1"},
		{label: "fd00--", addr: "fd00::", canonical: "fd00-0-0-0-0-0-0-0"},
		{label: "10-244-0-02"},
		{label: "10-244-0-256"},
		{label: "10-244-0"},
		{label: "10-244-0-2-1"},
		{label: "10.244.0.2"},
		{label: "fd00:10:244::2"},
		{label: "fe80--1%eth0"},
		{label: "0-0-0-0-0-ffff-a00-1"}, // IPv4-mapped
		{label: "web"},
		{label: ""},
		{label: "-"},
	} {
		a, ok := ParseAddrLabel(tc.label)
		if tc.addr == "" {
			if ok {
				t.Errorf("ParseAddrLabel(%q) = %v, want not an address", tc.label, a)
			}
			continue
		}
		want := netip.MustParseAddr(tc.addr)
		if !ok || a != want {
			t.Errorf("ParseAddrLabel(%q) = %v, %v; want %v", tc.label, a, ok, want)
		}
		canonical := tc.canonical
		if canonical == "" {
			canonical = tc.label
		}
		if got := AddrLabel(want); got != canonical {
			t.Errorf("AddrLabel(%v) = %q, want %q", want, got, canonical)
		}
	}
}

func TestParseReverse(t *testing.T) {
	for _, tc := range []struct {
		qname string
		want  string // prefix; "" for not a reverse name Duet reads
	}{
		{"2.0.244.10.in-addr.arpa.", "10.244.0.2/32"},
		{"244.10.in-addr.arpa.", "10.244.0.0/16"},
		{"in-addr.arpa.", "0.0.0.0/0"},
		{"0.0.0.0.in-addr.arpa.", "0.0.0.0/32"},
		{mustReverse(t, "fd00:10:244::2"), "fd00:10:244::2/128"},
		{"d.f.ip6.arpa.", "fd00::/8"},
		{"ip6.arpa.", "::/0"},
		{"1.2.3.4.5.in-addr.arpa.", ""},
		{"02.0.244.10.in-addr.arpa.", ""},
		{"256.0.244.10.in-addr.arpa.", ""},
		{"-1.0.244.10.in-addr.arpa.", ""},
		{"+1.0.244.10.in-addr.arpa.", ""},
		{"x.in-addr.arpa.", ""},
		{"..in-addr.arpa.", ""},
		{"xin-addr.arpa.", ""},
		{"D.f.ip6.arpa.", ""},
		{"df.ip6.arpa.", ""},
		{"g.ip6.arpa.", ""},
		{strings.Repeat("0.", 33) + "ip6.arpa.", ""},
		{"example.com.", ""},
	} {
		got, ok := ParseReverse(tc.qname)
		if tc.want == "" {
			if ok {
				t.Errorf("ParseReverse(%q) = %v, want not read", tc.qname, got)
			}
			continue
		}
		if want := netip.MustParsePrefix(tc.want); !ok || got != want {
			t.Errorf("ParseReverse(%q) = %v, %v; want %v", tc.qname, got, ok, want)
		}
		if back := ReverseName(got); back != tc.qname {
			t.Errorf("ReverseName(%v) = %q, want %q", got, back, tc.qname)
		}
	}
	// ReverseName rounds down to octets and nibbles.
	for p, want := range map[string]string{"10.96.0.0/12": "10.in-addr.arpa.", "fd00:10:96::/108": "0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.6.9.0.0.0.1.0.0.0.0.d.f.ip6.arpa."} {
		if got := ReverseName(netip.MustParsePrefix(p)); got != want {
			t.Errorf("ReverseName(%s) = %q, want %q", p, got, want)
		}
	}
}

// FuzzParseAddrLabel: whatever a label reads as, writing that address as
// a label and reading it again gives the address back.
func FuzzParseAddrLabel(f *testing.F) {
	for _, s := range []string{"10-244-0-2", "fd00-10-244--2", "--1", "fd00--", "0-0-0-0-0-ffff-a00-1", "1-2-3-4-5", "fe80--1%eth0"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, label string) {
		a, ok := ParseAddrLabel(label)
		if !ok {
			return
		}
		l := AddrLabel(a)
		if strings.HasPrefix(l, "-") || strings.HasSuffix(l, "-") || len(l) > 63 {
			t.Fatalf("AddrLabel(%v) = %q: not a DNS label", a, l)
		}
		if _, ok := dns.IsDomainName(l + "."); !ok {
			t.Fatalf("AddrLabel(%v) = %q: not a DNS name", a, l)
		}
		if b, ok := ParseAddrLabel(l); !ok || b != a {
			t.Fatalf("ParseAddrLabel(AddrLabel(%v) = %q) = %v, %v", a, l, b, ok)
		}
	})
}

// FuzzParseReverse: a reverse name is read only in its one canonical
// spelling, so ReverseName gives back exactly the name read.
func FuzzParseReverse(f *testing.F) {
	for _, s := range []string{"2.0.244.10.in-addr.arpa.", "244.10.in-addr.arpa.", "in-addr.arpa.", "d.f.ip6.arpa.", "02.0.244.10.in-addr.arpa.", "..ip6.arpa."} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, qname string) {
		p, ok := ParseReverse(qname)
		if !ok {
			return
		}
		if p.Masked() != p {
			t.Fatalf("ParseReverse(%q) = %v: host bits set", qname, p)
		}
		if back := ReverseName(p); back != qname {
			t.Fatalf("ReverseName(ParseReverse(%q) = %v) = %q", qname, p, back)
		}
	})
}

// FuzzParseName: any name splits without panicking, and the parts of a
// cluster name are labels of it.
func FuzzParseName(f *testing.F) {
	for _, s := range []string{"web.default.svc.cluster.local.", "_http._tcp.web.ns.svc.cluster.local.", "1-2-3-4.ns.pod.cluster.local.", ".cluster.local.", "..svc.cluster.local.", `a\.b.svc.cluster.local.`} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, qname string) {
		n, ok := parseName(qname, "cluster.local.")
		if !ok {
			return
		}
		labels := strings.Split(strings.TrimSuffix(qname, "cluster.local."), ".")
		for _, part := range []string{n.ns, n.service, n.host} {
			if part != "" && !contains(labels, part) {
				t.Fatalf("parseName(%q) = %+v: %q is not a label of the name", qname, n, part)
			}
		}
		for _, part := range []string{n.port, n.proto} {
			if part != "" && !contains(labels, "_"+part) {
				t.Fatalf("parseName(%q) = %+v: _%q is not a label of the name", qname, n, part)
			}
		}
	})
}

func contains(ss []string, s string) bool {
	for _, x := range ss {
		if x == s {
			return true
		}
	}
	return false
}
