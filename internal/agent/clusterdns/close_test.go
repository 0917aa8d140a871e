package clusterdns

import (
	"bytes"
	"context"
	"log/slog"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// syncBuffer is a log sink the servers' goroutines may write to.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// Closing one address's sockets stops DNS there, quietly, and leaves the
// other address served.
func TestCloseAddrsStopsOneAddress(t *testing.T) {
	keep, drop := netip.MustParseAddr("127.0.0.1"), netip.MustParseAddr("127.0.0.2")
	l, err := Listen("", []netip.Addr{keep, drop}, 0)
	if err != nil {
		t.Fatal(err)
	}
	var logs syncBuffer
	log := slog.New(slog.NewTextHandler(&logs, nil))
	h := dns.HandlerFunc(func(w dns.ResponseWriter, req *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(req)
		_ = w.WriteMsg(m)
	})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		l.Serve(ctx, h, log)
	}()
	defer func() {
		cancel()
		<-done
	}()
	addrs := l.Addrs() // UDP of each address, then TCP
	addrOf := map[netip.Addr]string{}
	for _, a := range addrs[:2] {
		ap := netip.MustParseAddrPort(a.String())
		addrOf[ap.Addr()] = a.String()
	}
	query := func(addr, network string) error {
		m := new(dns.Msg)
		m.SetQuestion("example.", dns.TypeA)
		c := &dns.Client{Net: network, Timeout: time.Second}
		_, _, err := c.Exchange(m, addr)
		return err
	}
	for _, network := range []string{"udp", "tcp"} {
		for _, a := range []netip.Addr{keep, drop} {
			if err := query(addrOf[a], network); err != nil {
				t.Fatalf("before: %s over %s: %v", a, network, err)
			}
		}
	}

	if n := l.CloseAddrs([]netip.Addr{drop}); n != 2 {
		t.Errorf("CloseAddrs closed %d sockets, want the UDP and TCP ones of %s", n, drop)
	}
	if n := l.CloseAddrs([]netip.Addr{drop}); n != 0 {
		t.Errorf("CloseAddrs again closed %d sockets", n)
	}
	for _, a := range l.Addrs() {
		if strings.HasPrefix(a.String(), drop.String()+":") {
			t.Errorf("%s is still listed", a)
		}
	}
	for _, network := range []string{"udp", "tcp"} {
		if err := query(addrOf[keep], network); err != nil {
			t.Errorf("after: %s over %s: %v", keep, network, err)
		}
		if err := query(addrOf[drop], network); err == nil {
			t.Errorf("after: %s still answers over %s", drop, network)
		}
	}
	cancel()
	<-done
	if s := logs.String(); strings.Contains(s, "level=ERROR") {
		t.Errorf("closing an address was logged as a failure:\n%s", s)
	}
}
