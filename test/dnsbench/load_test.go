package main

import (
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// testServer answers A questions for names under "ok." with 192.0.2.1,
// ignores those under "drop.", and gives NXDOMAIN for the rest, and for
// names under "later." until ready is set, which it sets itself after
// readyAfter of those NXDOMAINs when that is not 0.
type testServer struct {
	addr       string
	ready      atomic.Bool
	readyAfter atomic.Int32 // set by tests while the server runs
	notYet     atomic.Int32
}

func newTestServer(t *testing.T) *testServer {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ts := &testServer{addr: pc.LocalAddr().String()}
	srv := &dns.Server{PacketConn: pc, Handler: dns.HandlerFunc(func(w dns.ResponseWriter, req *dns.Msg) {
		q := req.Question[0]
		if strings.HasSuffix(q.Name, "drop.") {
			return
		}
		m := new(dns.Msg)
		m.SetReply(req)
		if strings.HasSuffix(q.Name, "ok.") || (strings.HasSuffix(q.Name, "later.") && ts.ready.Load()) {
			rr, _ := dns.NewRR(q.Name + " 5 IN A 192.0.2.1")
			m.Answer = append(m.Answer, rr)
		} else {
			m.Rcode = dns.RcodeNameError
			if strings.HasSuffix(q.Name, "later.") && ts.notYet.Add(1) == ts.readyAfter.Load() {
				ts.ready.Store(true)
			}
		}
		_ = w.WriteMsg(m)
	})}
	started := make(chan struct{})
	srv.NotifyStartedFunc = func() { close(started) }
	go func() { _ = srv.ActivateAndServe() }()
	<-started
	t.Cleanup(func() { _ = srv.Shutdown() })
	return ts
}

func TestSaturateCountsAnswers(t *testing.T) {
	ts := newTestServer(t)
	qs := []question{newQuestion("a.ok.", dns.TypeA), newQuestion("b.ok.", dns.TypeA), newQuestion("c.nx.", dns.TypeA)}
	res, err := saturate(ts.addr, qs, 3, 300*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	// Worker w starts at question w: one of three asks the NXDOMAIN
	// name first, and all go round the same three.
	if res.ok == 0 || res.failed == 0 || res.lost != 0 || res.qps() <= 0 {
		t.Fatalf("saturate = %+v, want positive and NXDOMAIN answers and none lost", res)
	}
	if res.ok < res.failed {
		t.Errorf("saturate = %+v: two of three questions are answered positively", res)
	}
}

func TestFixedRate(t *testing.T) {
	ts := newTestServer(t)
	qs := []question{newQuestion("a.ok.", dns.TypeA), newQuestion("b.ok.", dns.TypeA), newQuestion("c.ok.", dns.TypeA), newQuestion("d.drop.", dns.TypeA)}
	res, err := fixedRate(ts.addr, qs, 400, 500*time.Millisecond, 4)
	if err != nil {
		t.Fatal(err)
	}
	if res.sent != 200 || len(res.latencies) != 150 || res.lost != 50 || res.failed != 0 {
		t.Fatalf("fixedRate = sent %d, answered %d, lost %d, failed %d; want 200, 150, 50, 0", res.sent, len(res.latencies), res.lost, res.failed)
	}
	if p50, ok := res.percentile(50); !ok || p50 <= 0 || p50 > time.Second {
		t.Errorf("p50 = %v, %v; want an answer's latency", p50, ok)
	}
	// A quarter is lost: the 99th percentile falls among them.
	if _, ok := res.percentile(99); ok {
		t.Error("p99 counts as answered, but a quarter of the questions were lost")
	}
}

func TestFirstAnswerWaitsForTheName(t *testing.T) {
	ts := newTestServer(t)
	ts.readyAfter.Store(3)
	stop := make(chan struct{})
	at, err := firstAnswer(ts.addr, "svc.later.", time.Millisecond, stop)
	if err != nil || at.IsZero() {
		t.Fatalf("firstAnswer = %v, %v; want the time of the first positive answer", at, err)
	}
	if n := ts.notYet.Load(); n != 3 {
		t.Errorf("firstAnswer stopped asking after %d NXDOMAINs, want 3 and then the answer", n)
	}
	// stop ends a wait for a name that never comes.
	close(stop)
	if at, err := firstAnswer(ts.addr, "never.nx.", time.Millisecond, stop); err != nil || !at.IsZero() {
		t.Fatalf("firstAnswer after stop = %v, %v; want the zero time", at, err)
	}
}

func TestCompare(t *testing.T) {
	a, b := newTestServer(t), newTestServer(t)
	b.ready.Store(true)
	qs := []question{newQuestion("x.ok.", dns.TypeA), newQuestion("x.later.", dns.TypeA), newQuestion("x.nx.", dns.TypeA)}
	diff, err := compare(&dnsServer{name: "a", addr: a.addr}, &dnsServer{name: "b", addr: b.addr}, qs)
	if err != nil || diff != 1 {
		t.Fatalf("compare = %d, %v; want 1 (x.later. only)", diff, err)
	}
}
