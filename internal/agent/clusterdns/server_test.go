package clusterdns

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"
	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/component-base/metrics/testutil"

	"github.com/duet-net/duet/internal/testutil/roottest"
)

var loopback = []netip.Addr{netip.MustParseAddr("127.0.0.1")}

// serve runs a DNS server on 127.0.0.1 (a free port) answering from src
// and forwarding to upstreams, and returns its address.
func serve(t testing.TB, src Source, upstreams ...string) string {
	t.Helper()
	l, err := Listen("", loopback, 0)
	if err != nil {
		t.Fatal(err)
	}
	h := &Handler{Resolver: newTestResolver(t, src), Forwarder: NewForwarder(upstreams, nil, 500*time.Millisecond)}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		l.Serve(ctx, h, nil)
	}()
	t.Cleanup(func() {
		cancel()
		<-done
	})
	return l.Addrs()[0].String()
}

// fakeUpstream is a resolver on 127.0.0.1 standing for the node's
// upstream: outside.example has an address of each family, big.example
// 100 TXT records, everything else is NXDOMAIN. It counts questions.
type fakeUpstream struct {
	addr      string
	questions atomic.Int64
}

func startUpstream(t testing.TB) *fakeUpstream {
	t.Helper()
	u := &fakeUpstream{}
	l, err := Listen("", loopback, 0)
	if err != nil {
		t.Fatal(err)
	}
	u.addr = l.Addrs()[0].String()
	h := dns.HandlerFunc(func(w dns.ResponseWriter, req *dns.Msg) {
		u.questions.Add(1)
		m := new(dns.Msg)
		m.SetReply(req)
		q := req.Question[0]
		hdr := dns.RR_Header{Name: q.Name, Class: dns.ClassINET, Ttl: 60}
		switch {
		case q.Name == "outside.example." && q.Qtype == dns.TypeA:
			hdr.Rrtype = dns.TypeA
			m.Answer = []dns.RR{&dns.A{Hdr: hdr, A: net.ParseIP("198.51.100.7")}}
		case q.Name == "outside.example." && q.Qtype == dns.TypeAAAA:
			hdr.Rrtype = dns.TypeAAAA
			m.Answer = []dns.RR{&dns.AAAA{Hdr: hdr, AAAA: net.ParseIP("2001:db8:ffff::7")}}
		case q.Name == "big.example.":
			hdr.Rrtype = dns.TypeTXT
			for i := range 100 {
				m.Answer = append(m.Answer, &dns.TXT{Hdr: hdr, Txt: []string{fmt.Sprintf("record %03d of a long answer", i)}})
			}
		case q.Name != "outside.example.":
			m.Rcode = dns.RcodeNameError
		}
		size := dns.MinMsgSize
		if o := req.IsEdns0(); o != nil {
			size = int(o.UDPSize())
			m.SetEdns0(4096, false)
		}
		if _, ok := w.LocalAddr().(*net.TCPAddr); ok {
			size = dns.MaxMsgSize
		}
		m.Truncate(size)
		_ = w.WriteMsg(m)
	})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		l.Serve(ctx, h, nil)
	}()
	t.Cleanup(func() {
		cancel()
		<-done
	})
	return u
}

func ask(t testing.TB, addr, network, qname string, qtype uint16, edns int) *dns.Msg {
	t.Helper()
	m := new(dns.Msg)
	m.SetQuestion(qname, qtype)
	if edns > 0 {
		m.SetEdns0(uint16(edns), false)
	}
	return exchange(t, addr, network, m)
}

func exchange(t testing.TB, addr, network string, m *dns.Msg) *dns.Msg {
	t.Helper()
	c := &dns.Client{Net: network, Timeout: 5 * time.Second, UDPSize: dns.MaxMsgSize}
	resp, _, err := c.Exchange(m, addr)
	if err != nil {
		t.Fatalf("%s %s over %s: %v", m.Question[0].Name, dns.TypeToString[m.Question[0].Qtype], network, err)
	}
	return resp
}

func TestServeBothTransports(t *testing.T) {
	addr := serve(t, clusterSource(t))
	for _, network := range []string{"udp", "tcp"} {
		for qtype, want := range map[uint16]string{dns.TypeA: "A 10.96.0.20", dns.TypeAAAA: "AAAA fd00:10:96::20"} {
			resp := ask(t, addr, network, "web.default.svc.cluster.local.", qtype, 0)
			if got := texts(resp.Answer); !slices.Equal(got, []string{want}) || !resp.Authoritative || !resp.RecursionAvailable || resp.Rcode != dns.RcodeSuccess {
				t.Errorf("over %s: %v (aa %v, ra %v, %s), want %s", network, got, resp.Authoritative, resp.RecursionAvailable, dns.RcodeToString[resp.Rcode], want)
			}
		}
	}
}

func TestServeEDNS(t *testing.T) {
	addr := serve(t, clusterSource(t))
	// No OPT in the question, none in the answer.
	if resp := ask(t, addr, "udp", "web.default.svc.cluster.local.", dns.TypeA, 0); resp.IsEdns0() != nil {
		t.Errorf("an answer to a question without EDNS carries OPT: %v", resp)
	}
	// OPT in, OPT out, with the server's size and the DO bit echoed.
	m := new(dns.Msg)
	m.SetQuestion("web.default.svc.cluster.local.", dns.TypeA)
	m.SetEdns0(4096, true)
	resp := exchange(t, addr, "udp", m)
	opt := resp.IsEdns0()
	if opt == nil || opt.UDPSize() != EDNSSize || !opt.Do() || opt.Version() != 0 || len(resp.Answer) != 1 {
		t.Errorf("EDNS answer %v, want OPT of size %d with DO and the A record", resp, EDNSSize)
	}
	// An unknown EDNS version is BADVERS.
	m = new(dns.Msg)
	m.SetQuestion("web.default.svc.cluster.local.", dns.TypeA)
	m.SetEdns0(1232, false)
	m.IsEdns0().SetVersion(1)
	resp = exchange(t, addr, "udp", m)
	if resp.Rcode != dns.RcodeBadVers || resp.IsEdns0() == nil || len(resp.Answer) != 0 {
		t.Errorf("EDNS version 1: %s with OPT %v, want BADVERS with OPT", dns.RcodeToString[resp.Rcode], resp.IsEdns0())
	}
	// Two OPTs are a format error.
	m = new(dns.Msg)
	m.SetQuestion("web.default.svc.cluster.local.", dns.TypeA)
	m.SetEdns0(1232, false)
	m.Extra = append(m.Extra, m.Extra[0])
	if resp = exchange(t, addr, "udp", m); resp.Rcode != dns.RcodeFormatError {
		t.Errorf("two OPT records: %s, want FORMERR", dns.RcodeToString[resp.Rcode])
	}
}

// A headless Service with more endpoints than a UDP answer holds:
// truncated (TC) to the client's size over UDP, whole over TCP.
func TestServeTruncates(t *testing.T) {
	src := clusterSource(t)
	svc := service("default", "many")
	svc.Spec.ClusterIP, svc.Spec.ClusterIPs = corev1.ClusterIPNone, []string{corev1.ClusterIPNone}
	var eps []ep
	for i := range 200 {
		eps = append(eps, ep{addr: fmt.Sprintf("10.244.%d.%d", i/250, i%250+1)})
	}
	src.add(t, svc, slice("default", "many", "many-v4", discoveryv1.AddressTypeIPv4, nil, eps...))
	addr := serve(t, src)
	const qname = "many.default.svc.cluster.local."
	for _, tc := range []struct {
		network string
		edns    int
		limit   int
		whole   bool
	}{
		{"udp", 0, 512, false},
		{"udp", 4096, EDNSSize, false}, // the server sends no more than it advertises
		{"udp", 800, 800, false},
		{"tcp", 0, dns.MaxMsgSize, true},
	} {
		resp := ask(t, addr, tc.network, qname, dns.TypeA, tc.edns)
		resp.Compress = true // as it was sent
		wire, err := resp.Pack()
		if err != nil {
			t.Fatal(err)
		}
		if tc.whole {
			if resp.Truncated || len(resp.Answer) != 200 {
				t.Errorf("over %s: %d records, truncated %v; want all 200", tc.network, len(resp.Answer), resp.Truncated)
			}
			continue
		}
		if !resp.Truncated || len(wire) > tc.limit || len(resp.Answer) == 0 || len(resp.Answer) >= 200 {
			t.Errorf("over %s with EDNS %d: %d bytes, %d records, TC %v; want TC and at most %d bytes", tc.network, tc.edns, len(wire), len(resp.Answer), resp.Truncated, tc.limit)
		}
	}
}

func TestServeForwards(t *testing.T) {
	up := startUpstream(t)
	addr := serve(t, clusterSource(t), up.addr)
	for _, network := range []string{"udp", "tcp"} {
		resp := ask(t, addr, network, "outside.example.", dns.TypeAAAA, 0)
		if got := texts(resp.Answer); !slices.Equal(got, []string{"AAAA 2001:db8:ffff::7"}) || resp.Authoritative || !resp.RecursionAvailable {
			t.Errorf("forwarded over %s: %v (aa %v, ra %v), want the upstream's AAAA, not authoritative", network, got, resp.Authoritative, resp.RecursionAvailable)
		}
	}
	if resp := ask(t, addr, "udp", "nope.example.", dns.TypeA, 0); resp.Rcode != dns.RcodeNameError {
		t.Errorf("a name upstream lacks: %s, want its NXDOMAIN", dns.RcodeToString[resp.Rcode])
	}
	// A reverse name outside the cluster's CIDRs goes upstream too.
	before := up.questions.Load()
	ask(t, addr, "udp", "7.100.51.198.in-addr.arpa.", dns.TypePTR, 0)
	if up.questions.Load() != before+1 {
		t.Errorf("a PTR question outside the cluster did not reach upstream")
	}
	// The cluster's names never do.
	before = up.questions.Load()
	ask(t, addr, "udp", "nope.default.svc.cluster.local.", dns.TypeA, 0)
	ask(t, addr, "udp", "99.0.96.10.in-addr.arpa.", dns.TypePTR, 0)
	if n := up.questions.Load() - before; n != 0 {
		t.Errorf("%d questions about the cluster's names reached upstream", n)
	}
	// Upstream's long answer: truncated over UDP, so the client asks
	// again over TCP and gets it whole.
	if resp := ask(t, addr, "udp", "big.example.", dns.TypeTXT, 1232); !resp.Truncated {
		t.Errorf("a long forwarded answer over UDP: %d records, not truncated", len(resp.Answer))
	}
	if resp := ask(t, addr, "tcp", "big.example.", dns.TypeTXT, 0); resp.Truncated || len(resp.Answer) != 100 {
		t.Errorf("a long forwarded answer over TCP: %d records (TC %v), want 100", len(resp.Answer), resp.Truncated)
	}
	// ExternalName targets outside the cluster are completed from upstream.
	resp := ask(t, addr, "udp", "ext.default.svc.cluster.local.", dns.TypeA, 0)
	if got := texts(resp.Answer); !slices.Equal(got, []string{"A 198.51.100.7", "CNAME outside.example."}) {
		t.Errorf("ExternalName A: %v, want the CNAME and upstream's A", got)
	}
}

func TestServeForwardFailures(t *testing.T) {
	// A port nothing listens on: the forward fails, SERVFAIL.
	l, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := l.LocalAddr().String()
	l.Close()
	addr := serve(t, clusterSource(t), dead)
	if resp := ask(t, addr, "udp", "outside.example.", dns.TypeA, 0); resp.Rcode != dns.RcodeServerFailure {
		t.Errorf("upstream down: %s, want SERVFAIL", dns.RcodeToString[resp.Rcode])
	}
	// The CNAME alone when its target cannot be asked.
	if resp := ask(t, addr, "udp", "ext.default.svc.cluster.local.", dns.TypeA, 0); resp.Rcode != dns.RcodeSuccess || len(resp.Answer) != 1 {
		t.Errorf("ExternalName with upstream down: %v, want the CNAME alone", resp)
	}
	// No upstream at all: REFUSED, so the client tries its next server.
	addr = serve(t, clusterSource(t))
	if resp := ask(t, addr, "udp", "outside.example.", dns.TypeA, 0); resp.Rcode != dns.RcodeRefused {
		t.Errorf("no upstreams: %s, want REFUSED", dns.RcodeToString[resp.Rcode])
	}
}

// A second upstream answers when the first does not, and is asked first
// from then on.
func TestForwarderFailsOver(t *testing.T) {
	l, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close() // never answers
	up := startUpstream(t)
	f := NewForwarder([]string{l.LocalAddr().String(), up.addr}, nil, 200*time.Millisecond)
	m := new(dns.Msg)
	m.SetQuestion("outside.example.", dns.TypeA)
	for i := range 2 {
		start := time.Now()
		resp, err := f.Exchange(context.Background(), m, "udp")
		if err != nil || len(resp.Answer) != 1 || resp.Id != m.Id {
			t.Fatalf("exchange %d: %v, %v", i, resp, err)
		}
		if took := time.Since(start); i == 1 && took >= 200*time.Millisecond {
			t.Errorf("the second exchange took %v: the silent upstream was asked again first", took)
		}
	}
}

func TestServeRefusals(t *testing.T) {
	addr := serve(t, clusterSource(t))
	if resp := ask(t, addr, "tcp", "cluster.local.", dns.TypeAXFR, 0); resp.Rcode != dns.RcodeRefused {
		t.Errorf("AXFR: %s, want REFUSED", dns.RcodeToString[resp.Rcode])
	}
	m := new(dns.Msg)
	m.SetQuestion("version.bind.", dns.TypeTXT)
	m.Question[0].Qclass = dns.ClassCHAOS
	if resp := exchange(t, addr, "udp", m); resp.Rcode != dns.RcodeRefused {
		t.Errorf("CHAOS: %s, want REFUSED", dns.RcodeToString[resp.Rcode])
	}
	for _, op := range []int{dns.OpcodeStatus, dns.OpcodeNotify, dns.OpcodeUpdate} {
		m := new(dns.Msg)
		m.SetQuestion("cluster.local.", dns.TypeSOA)
		m.Opcode = op
		if resp := exchange(t, addr, "udp", m); resp.Rcode != dns.RcodeNotImplemented {
			t.Errorf("opcode %s: %s, want NOTIMP", dns.OpcodeToString[op], dns.RcodeToString[resp.Rcode])
		}
	}
}

func TestMetrics(t *testing.T) {
	RegisterMetrics()
	up := startUpstream(t)
	addr := serve(t, clusterSource(t), up.addr)
	read := func() (a, nx, fwd float64, count uint64) {
		a, _ = testutil.GetCounterMetricValue(Requests.WithLabelValues("udp", "A", zoneCluster))
		nx, _ = testutil.GetCounterMetricValue(Responses.WithLabelValues("NXDOMAIN", zoneCluster))
		fwd, _ = testutil.GetCounterMetricValue(Responses.WithLabelValues("NOERROR", zoneForward))
		count, _ = testutil.GetHistogramMetricCount(Duration.WithLabelValues(zoneCluster))
		return
	}
	a0, nx0, fwd0, n0 := read()
	ask(t, addr, "udp", "web.default.svc.cluster.local.", dns.TypeA, 0)
	ask(t, addr, "udp", "nope.default.svc.cluster.local.", dns.TypeA, 0)
	ask(t, addr, "udp", "outside.example.", dns.TypeAAAA, 0)
	a1, nx1, fwd1, n1 := read()
	if a1-a0 != 2 || nx1-nx0 != 1 || fwd1-fwd0 != 1 || n1-n0 != 2 {
		t.Errorf("after 2 cluster A questions (one NXDOMAIN) and one forward: requests +%v, NXDOMAIN +%v, forwarded NOERROR +%v, latencies +%d",
			a1-a0, nx1-nx0, fwd1-fwd0, n1-n0)
	}
}

// The UDP sockets queue a burst of questions: as root, past the system's
// default limit.
func TestListenReceiveBuffer(t *testing.T) {
	roottest.Require(t)
	l, err := Listen("", loopback, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	raw, err := l.UDP[0].(*net.UDPConn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var size int
	var serr error
	if err := raw.Control(func(fd uintptr) { size, serr = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUF) }); err != nil || serr != nil {
		t.Fatal(err, serr)
	}
	// The kernel reports twice what was set (its bookkeeping share).
	if size < udpReceiveBuffer {
		t.Errorf("UDP receive buffer %d bytes, want at least %d", size, udpReceiveBuffer)
	}
}
