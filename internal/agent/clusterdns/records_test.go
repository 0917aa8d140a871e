package clusterdns

import (
	"slices"
	"strings"
	"testing"

	"github.com/miekg/dns"
)

func newTestResolver(t testing.TB, src Source) *Resolver {
	t.Helper()
	r, err := NewResolver("cluster.local", DefaultTTL, src, testOwned)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func TestResolve(t *testing.T) {
	r := newTestResolver(t, clusterSource(t))
	const (
		noerror  = dns.RcodeSuccess
		nxdomain = dns.RcodeNameError
	)
	web := "web.default.svc.cluster.local."
	for _, tc := range []struct {
		name   string
		qname  string
		qtype  uint16
		rcode  int
		answer []string // rrText, sorted
		extra  []string // ownedTexts, sorted; nil: not checked
		// soa is the zone of the SOA in the authority section of an
		// answer without records ("" for none).
		soa     string
		forward bool
		chase   string
	}{
		// Services with cluster IPs: one record per family they have.
		{name: "a dual-stack Service's A record is its IPv4 cluster IP", qname: web, qtype: dns.TypeA, answer: []string{"A 10.96.0.20"}},
		{name: "a dual-stack Service's AAAA record is its IPv6 cluster IP", qname: web, qtype: dns.TypeAAAA, answer: []string{"AAAA fd00:10:96::20"}},
		{name: "ANY gives both families", qname: web, qtype: dns.TypeANY, answer: []string{"A 10.96.0.20", "AAAA fd00:10:96::20"}},
		{name: "names are case-insensitive and answered as asked", qname: "WEB.Default.SVC.Cluster.Local.", qtype: dns.TypeA, answer: []string{"A 10.96.0.20"}},
		{name: "an IPv4-only Service has no AAAA: NODATA, not NXDOMAIN", qname: "web4.default.svc.cluster.local.", qtype: dns.TypeAAAA, soa: "cluster.local."},
		{name: "an IPv4-only Service's A record", qname: "web4.default.svc.cluster.local.", qtype: dns.TypeA, answer: []string{"A 10.96.0.21"}},
		{name: "an IPv6-only Service has no A: NODATA", qname: "web6.default.svc.cluster.local.", qtype: dns.TypeA, soa: "cluster.local."},
		{name: "an IPv6-only Service's AAAA record", qname: "web6.default.svc.cluster.local.", qtype: dns.TypeAAAA, answer: []string{"AAAA fd00:10:96::21"}},
		{name: "a Service whose name starts with a digit, A", qname: "1web.default.svc.cluster.local.", qtype: dns.TypeA, answer: []string{"A 10.96.0.22"}},
		{name: "a Service whose name starts with a digit, AAAA", qname: "1web.default.svc.cluster.local.", qtype: dns.TypeAAAA, answer: []string{"AAAA fd00:10:96::22"}},
		{name: "a Service whose name starts with a digit, SRV", qname: "_https._tcp.1web.default.svc.cluster.local.", qtype: dns.TypeSRV,
			answer: []string{"SRV 0 100 443 1web.default.svc.cluster.local."}},
		{name: "a Service's MX: NODATA", qname: web, qtype: dns.TypeMX, soa: "cluster.local."},
		{name: "a missing Service is NXDOMAIN", qname: "nope.default.svc.cluster.local.", qtype: dns.TypeA, rcode: nxdomain, soa: "cluster.local."},
		{name: "a Service of another namespace is not found", qname: "web.other.svc.cluster.local.", qtype: dns.TypeA, rcode: nxdomain, soa: "cluster.local."},

		// Headless Services: the ready endpoints of each family.
		{name: "a headless Service's A records are its ready IPv4 endpoints", qname: "hl.default.svc.cluster.local.", qtype: dns.TypeA,
			answer: []string{"A 10.244.0.5", "A 10.244.1.6"}},
		{name: "a headless Service's AAAA records are its ready IPv6 endpoints", qname: "hl.default.svc.cluster.local.", qtype: dns.TypeAAAA,
			answer: []string{"AAAA fd00:10:244:1::6", "AAAA fd00:10:244::5"}},
		{name: "publishNotReadyAddresses publishes endpoints that are not ready", qname: "pub.default.svc.cluster.local.", qtype: dns.TypeA,
			answer: []string{"A 10.244.1.8"}},
		{name: "a headless Service without endpoints: NODATA", qname: "empty.default.svc.cluster.local.", qtype: dns.TypeA, soa: "cluster.local."},
		{name: "an endpoint's hostname (spec.hostname + spec.subdomain), IPv4", qname: "c.hl.default.svc.cluster.local.", qtype: dns.TypeA,
			answer: []string{"A 10.244.0.5"}},
		{name: "an endpoint's hostname, IPv6", qname: "c.hl.default.svc.cluster.local.", qtype: dns.TypeAAAA, answer: []string{"AAAA fd00:10:244::5"}},
		{name: "an endpoint without hostname by its address, IPv4", qname: "10-244-1-6.hl.default.svc.cluster.local.", qtype: dns.TypeA,
			answer: []string{"A 10.244.1.6"}},
		{name: "an endpoint without hostname by its address, IPv6", qname: "fd00-10-244-1--6.hl.default.svc.cluster.local.", qtype: dns.TypeAAAA,
			answer: []string{"AAAA fd00:10:244:1::6"}},
		{name: "an endpoint with a hostname is not named by its address", qname: "10-244-0-5.hl.default.svc.cluster.local.", qtype: dns.TypeA, rcode: nxdomain, soa: "cluster.local."},
		{name: "an endpoint that is not ready has no name", qname: "10-244-1-7.hl.default.svc.cluster.local.", qtype: dns.TypeA, rcode: nxdomain, soa: "cluster.local."},
		{name: "endpoint names exist for headless Services only", qname: "c.web.default.svc.cluster.local.", qtype: dns.TypeA, rcode: nxdomain, soa: "cluster.local."},

		// SRV records of named ports.
		{name: "SRV of a named port points at the Service", qname: "_http._tcp." + web, qtype: dns.TypeSRV,
			answer: []string{"SRV 0 100 80 web.default.svc.cluster.local."},
			extra:  []string{web + " A 10.96.0.20", web + " AAAA fd00:10:96::20"}},
		{name: "SRV of a UDP port", qname: "_dns._udp." + web, qtype: dns.TypeSRV, answer: []string{"SRV 0 100 53 web.default.svc.cluster.local."}},
		{name: "SRV of a port name the protocol lacks is NXDOMAIN", qname: "_http._udp." + web, qtype: dns.TypeSRV, rcode: nxdomain, soa: "cluster.local."},
		{name: "SRV of a missing port name is NXDOMAIN", qname: "_nope._tcp." + web, qtype: dns.TypeSRV, rcode: nxdomain, soa: "cluster.local."},
		{name: "an SRV name's A: NODATA", qname: "_http._tcp." + web, qtype: dns.TypeA, soa: "cluster.local."},
		{name: "the protocol name above SRV names exists", qname: "_tcp." + web, qtype: dns.TypeSRV, soa: "cluster.local."},
		{name: "SRV at a Service's own name lists its named ports", qname: web, qtype: dns.TypeSRV,
			answer: []string{"SRV 0 50 53 web.default.svc.cluster.local.", "SRV 0 50 80 web.default.svc.cluster.local."}},
		{name: "SRV of a headless Service: one per ready endpoint, at the endpoint's port", qname: "_http._tcp.hl.default.svc.cluster.local.", qtype: dns.TypeSRV,
			answer: []string{
				"SRV 0 33 8080 10-244-1-6.hl.default.svc.cluster.local.",
				"SRV 0 33 8080 c.hl.default.svc.cluster.local.",
				"SRV 0 33 8080 fd00-10-244-1--6.hl.default.svc.cluster.local.",
			},
			extra: []string{
				"10-244-1-6.hl.default.svc.cluster.local. A 10.244.1.6",
				"c.hl.default.svc.cluster.local. A 10.244.0.5",
				"c.hl.default.svc.cluster.local. AAAA fd00:10:244::5",
				"fd00-10-244-1--6.hl.default.svc.cluster.local. AAAA fd00:10:244:1::6",
			}},

		{name: "SRV of a port only the slices name", qname: "_https._tcp.manual.default.svc.cluster.local.", qtype: dns.TypeSRV,
			answer: []string{"SRV 0 100 443 192-0-2-2.manual.default.svc.cluster.local."},
			extra:  []string{"192-0-2-2.manual.default.svc.cluster.local. A 192.0.2.2"}},
		{name: "SRV of the other slice's port", qname: "_http._tcp.manual.default.svc.cluster.local.", qtype: dns.TypeSRV,
			answer: []string{"SRV 0 100 80 192-0-2-1.manual.default.svc.cluster.local."}},
		{name: "a headless Service's A records from several slices", qname: "manual.default.svc.cluster.local.", qtype: dns.TypeA,
			answer: []string{"A 192.0.2.1", "A 192.0.2.2"}},

		// ExternalName.
		{name: "ExternalName is a CNAME", qname: "ext.default.svc.cluster.local.", qtype: dns.TypeCNAME, answer: []string{"CNAME outside.example."}},
		{name: "ExternalName's A: the CNAME, and its target is resolved upstream", qname: "ext.default.svc.cluster.local.", qtype: dns.TypeA,
			answer: []string{"CNAME outside.example."}, chase: "outside.example."},
		{name: "ExternalName inside the cluster domain is followed here", qname: "alias.default.svc.cluster.local.", qtype: dns.TypeAAAA,
			answer: []string{"AAAA fd00:10:96::20", "CNAME web.default.svc.cluster.local."}},

		// Pods.
		{name: "a pod's A record", qname: "10-244-0-5.default.pod.cluster.local.", qtype: dns.TypeA, answer: []string{"A 10.244.0.5"}},
		{name: "a pod's AAAA record", qname: "fd00-10-244--5.default.pod.cluster.local.", qtype: dns.TypeAAAA, answer: []string{"AAAA fd00:10:244::5"}},
		{name: "a pod's AAAA record, address uncompressed", qname: "fd00-10-244-0-0-0-0-5.default.pod.cluster.local.", qtype: dns.TypeAAAA, answer: []string{"AAAA fd00:10:244::5"}},
		{name: "a pod's IPv4 name has no AAAA", qname: "10-244-0-5.default.pod.cluster.local.", qtype: dns.TypeAAAA, soa: "cluster.local."},
		{name: "a pod name in the wrong namespace is NXDOMAIN", qname: "10-244-0-5.other.pod.cluster.local.", qtype: dns.TypeA, rcode: nxdomain, soa: "cluster.local."},
		{name: "a finished pod has no name", qname: "10-244-0-9.default.pod.cluster.local.", qtype: dns.TypeA, rcode: nxdomain, soa: "cluster.local."},
		{name: "an address no pod has is NXDOMAIN", qname: "10-244-0-99.default.pod.cluster.local.", qtype: dns.TypeA, rcode: nxdomain, soa: "cluster.local."},
		{name: "a pod label that is no address is NXDOMAIN", qname: "10-244-0.default.pod.cluster.local.", qtype: dns.TypeA, rcode: nxdomain, soa: "cluster.local."},

		// PTR records.
		{name: "PTR of a Service's IPv4 cluster IP", qname: "20.0.96.10.in-addr.arpa.", qtype: dns.TypePTR, answer: []string{"PTR web.default.svc.cluster.local."}},
		{name: "PTR of a Service's IPv6 cluster IP", qname: mustReverse(t, "fd00:10:96::20"), qtype: dns.TypePTR, answer: []string{"PTR web.default.svc.cluster.local."}},
		{name: "PTR of a Service whose name starts with a digit", qname: mustReverse(t, "fd00:10:96::22"), qtype: dns.TypePTR, answer: []string{"PTR 1web.default.svc.cluster.local."}},
		{name: "PTR of a headless endpoint with a hostname", qname: "5.0.244.10.in-addr.arpa.", qtype: dns.TypePTR, answer: []string{"PTR c.hl.default.svc.cluster.local."}},
		{name: "PTR of a headless endpoint with a hostname, IPv6", qname: mustReverse(t, "fd00:10:244::5"), qtype: dns.TypePTR, answer: []string{"PTR c.hl.default.svc.cluster.local."}},
		{name: "PTR of a headless endpoint without hostname", qname: mustReverse(t, "fd00:10:244:1::6"), qtype: dns.TypePTR,
			answer: []string{"PTR fd00-10-244-1--6.hl.default.svc.cluster.local."}},
		{name: "PTR of a pod in no headless Service, IPv4", qname: "7.0.244.10.in-addr.arpa.", qtype: dns.TypePTR, answer: []string{"PTR 10-244-0-7.default.pod.cluster.local."}},
		{name: "PTR of a pod in no headless Service, IPv6", qname: mustReverse(t, "fd00:10:244::7"), qtype: dns.TypePTR, answer: []string{"PTR fd00-10-244--7.default.pod.cluster.local."}},
		{name: "an unused address of a cluster CIDR is NXDOMAIN", qname: "99.0.96.10.in-addr.arpa.", qtype: dns.TypePTR, rcode: nxdomain, soa: "96.10.in-addr.arpa."},
		{name: "an unused IPv6 address of a cluster CIDR is NXDOMAIN", qname: mustReverse(t, "fd00:10:96::99"), qtype: dns.TypePTR, rcode: nxdomain,
			soa: "0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.6.9.0.0.0.1.0.0.0.0.d.f.ip6.arpa."},
		{name: "a Service IP's A: NODATA", qname: "20.0.96.10.in-addr.arpa.", qtype: dns.TypeA, soa: "96.10.in-addr.arpa."},
		{name: "the reverse zone of a service range has a SOA", qname: "96.10.in-addr.arpa.", qtype: dns.TypeSOA, answer: []string{"SOA ns.dns.cluster.local. hostmaster.cluster.local. SERIAL 7200 1800 86400 5"}},
		{name: "a name above addresses of a cluster CIDR exists", qname: "0.96.10.in-addr.arpa.", qtype: dns.TypePTR, soa: "96.10.in-addr.arpa."},
		{name: "an address outside the cluster is forwarded", qname: "1.113.0.203.in-addr.arpa.", qtype: dns.TypePTR, forward: true},
		{name: "a hostNetwork pod's address is the node's: forwarded", qname: "11.113.0.203.in-addr.arpa.", qtype: dns.TypePTR, forward: true},
		{name: "a reverse name above the cluster's is forwarded", qname: "10.in-addr.arpa.", qtype: dns.TypeSOA, forward: true},
		{name: "a malformed reverse name is forwarded", qname: "x.0.96.10.in-addr.arpa.", qtype: dns.TypePTR, forward: true},

		// The zone itself.
		{name: "the zone's SOA", qname: "cluster.local.", qtype: dns.TypeSOA, answer: []string{"SOA ns.dns.cluster.local. hostmaster.cluster.local. SERIAL 7200 1800 86400 5"}},
		{name: "the zone's NS", qname: "cluster.local.", qtype: dns.TypeNS, answer: []string{"NS ns.dns.cluster.local."}},
		{name: "the nameserver's addresses are kube-dns's, IPv4", qname: "ns.dns.cluster.local.", qtype: dns.TypeA, answer: []string{"A 10.96.0.10"}},
		{name: "the nameserver's addresses are kube-dns's, IPv6", qname: "ns.dns.cluster.local.", qtype: dns.TypeAAAA, answer: []string{"AAAA fd00:10:96::a"}},
		{name: "the specification's version", qname: "dns-version.cluster.local.", qtype: dns.TypeTXT, answer: []string{`TXT "1.1.0"`}},
		{name: "a namespace with Services exists", qname: "default.svc.cluster.local.", qtype: dns.TypeA, soa: "cluster.local."},
		{name: "a namespace without Services does not", qname: "nope.svc.cluster.local.", qtype: dns.TypeA, rcode: nxdomain, soa: "cluster.local."},
		{name: "a namespace with pods exists under pod", qname: "default.pod.cluster.local.", qtype: dns.TypeA, soa: "cluster.local."},
		{name: "svc.<zone> exists", qname: "svc.cluster.local.", qtype: dns.TypeA, soa: "cluster.local."},
		{name: "a name of no layout is NXDOMAIN", qname: "a.b.c.d.e.f.svc.cluster.local.", qtype: dns.TypeA, rcode: nxdomain, soa: "cluster.local."},
		{name: "a name of another tree is NXDOMAIN", qname: "x.other.cluster.local.", qtype: dns.TypeA, rcode: nxdomain, soa: "cluster.local."},

		// Everything else is the upstream resolvers'.
		{name: "a name outside the cluster domain is forwarded", qname: "example.com.", qtype: dns.TypeA, forward: true},
		{name: "a name ending in the domain's labels elsewhere is forwarded", qname: "cluster.local.example.com.", qtype: dns.TypeA, forward: true},
		{name: "a name ending in the domain's text but not its labels is forwarded", qname: "xcluster.local.", qtype: dns.TypeA, forward: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			res := r.Resolve(tc.qname, tc.qtype)
			if res.Forward != tc.forward {
				t.Fatalf("forward = %v, want %v (%+v)", res.Forward, tc.forward, res)
			}
			if tc.forward {
				return
			}
			if res.Rcode != tc.rcode || !res.Authoritative {
				t.Errorf("rcode %s (authoritative %v), want %s, authoritative", dns.RcodeToString[res.Rcode], res.Authoritative, dns.RcodeToString[tc.rcode])
			}
			got := texts(res.Answer)
			for i, g := range got {
				if f := strings.Fields(g); f[0] == "SOA" {
					f[3] = "SERIAL" // the serial is the agent's start time
					got[i] = strings.Join(f, " ")
				}
			}
			if !slices.Equal(got, tc.answer) {
				t.Errorf("answer %q, want %q", got, tc.answer)
			}
			for _, rr := range res.Answer {
				if rr.Header().Name != tc.qname && rr.Header().Rrtype != dns.TypeAAAA && rr.Header().Rrtype != dns.TypeA {
					t.Errorf("record %v is not owned by the question's name %s", rr, tc.qname)
				}
				if rr.Header().Ttl != 5 {
					t.Errorf("record %v: TTL %d, want 5", rr, rr.Header().Ttl)
				}
			}
			if tc.chase == "" && tc.rcode == noerror && len(res.Answer) > 0 && res.Answer[0].Header().Name != tc.qname {
				t.Errorf("first record %v is not owned by %s", res.Answer[0], tc.qname)
			}
			if tc.extra != nil {
				if got := ownedTexts(res.Extra); !slices.Equal(got, tc.extra) {
					t.Errorf("extra %q, want %q", got, tc.extra)
				}
			}
			var soa string
			for _, rr := range res.Ns {
				if s, ok := rr.(*dns.SOA); ok {
					soa = s.Hdr.Name
					if s.Minttl != 5 {
						t.Errorf("SOA minimum %d, want the record TTL 5 (negative answers cached as long as positive ones)", s.Minttl)
					}
				}
			}
			if soa != tc.soa {
				t.Errorf("authority SOA of %q, want %q", soa, tc.soa)
			}
			if res.Chase != tc.chase {
				t.Errorf("chase %q, want %q", res.Chase, tc.chase)
			}
		})
	}
}

func mustReverse(t testing.TB, ip string) string {
	t.Helper()
	s, err := dns.ReverseAddr(ip)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// A CNAME cycle inside the cluster domain ends after maxChase steps.
func TestResolveExternalNameLoopEnds(t *testing.T) {
	r := newTestResolver(t, clusterSource(t))
	res := r.Resolve("loop.default.svc.cluster.local.", dns.TypeA)
	if res.Rcode != dns.RcodeSuccess || len(res.Answer) != maxChase+1 {
		t.Fatalf("got %s with %d records, want NOERROR with %d CNAMEs", dns.RcodeToString[res.Rcode], len(res.Answer), maxChase+1)
	}
}

// Until the informers have synced, the cluster's names are SERVFAIL (a
// client retries) rather than NXDOMAIN (a client gives up and caches).
func TestResolveBeforeSync(t *testing.T) {
	src := clusterSource(t)
	src.HasSynced = func() bool { return false }
	r := newTestResolver(t, src)
	for _, q := range []struct {
		name  string
		qtype uint16
		rcode int
	}{
		{"web.default.svc.cluster.local.", dns.TypeA, dns.RcodeServerFailure},
		{"99.0.96.10.in-addr.arpa.", dns.TypePTR, dns.RcodeServerFailure},
	} {
		if res := r.Resolve(q.name, q.qtype); res.Rcode != q.rcode || res.Forward {
			t.Errorf("%s before sync: %s (forward %v), want %s", q.name, dns.RcodeToString[res.Rcode], res.Forward, dns.RcodeToString[q.rcode])
		}
	}
	if res := r.Resolve("1.113.0.203.in-addr.arpa.", dns.TypePTR); !res.Forward {
		t.Errorf("a reverse name outside the cluster before sync: %+v, want it forwarded", res)
	}
}

func TestNewResolverRefusesBadDomains(t *testing.T) {
	for _, d := range []string{"", ".", "bad domain", "a..b", strings.Repeat("x", 64) + ".local"} {
		if _, err := NewResolver(d, DefaultTTL, newSource(), nil); err == nil {
			t.Errorf("cluster domain %q accepted", d)
		}
	}
	r, err := NewResolver("K8s.Example.", DefaultTTL, newSource(), nil)
	if err != nil || r.Zone() != "k8s.example." {
		t.Errorf("NewResolver(K8s.Example.) = %v, %v; want zone k8s.example.", r, err)
	}
}

// Another cluster domain moves every name.
func TestResolveOtherDomain(t *testing.T) {
	r, err := NewResolver("k8s.example", DefaultTTL, clusterSource(t), testOwned)
	if err != nil {
		t.Fatal(err)
	}
	if res := r.Resolve("web.default.svc.k8s.example.", dns.TypeA); len(res.Answer) != 1 {
		t.Errorf("web.default.svc.k8s.example: %+v, want its A record", res)
	}
	if res := r.Resolve("web.default.svc.cluster.local.", dns.TypeA); !res.Forward {
		t.Errorf("cluster.local in a cluster of k8s.example: %+v, want it forwarded", res)
	}
	if res := r.Resolve("20.0.96.10.in-addr.arpa.", dns.TypePTR); len(res.Answer) != 1 || res.Answer[0].(*dns.PTR).Ptr != "web.default.svc.k8s.example." {
		t.Errorf("PTR: %+v, want web.default.svc.k8s.example.", res)
	}
}
