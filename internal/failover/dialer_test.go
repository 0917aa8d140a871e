package failover

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/duet-net/duet/internal/pki"
	"github.com/duet-net/duet/internal/testutil/roottest"
)

// fakeServer answers /readyz with ok while ready, and /who with its name.
type fakeServer struct {
	name  string
	ready atomic.Bool
	srv   *httptest.Server
}

func (f *fakeServer) addr() string { return strings.TrimPrefix(f.srv.URL, "https://") }

func startFakes(t *testing.T, n int) ([]*fakeServer, *tls.Config) {
	t.Helper()
	ca, err := pki.LoadOrCreateCA(t.TempDir(), "test-ca")
	if err != nil {
		t.Fatal(err)
	}
	pair, err := ca.Issue("server", nil, []string{ServerName}, true)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := tls.X509KeyPair(pair.CertPEM, pair.KeyPEM)
	if err != nil {
		t.Fatal(err)
	}
	var fakes []*fakeServer
	for i := range n {
		f := &fakeServer{name: fmt.Sprintf("s%d", i)}
		f.ready.Store(true)
		f.srv = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			switch r.URL.Path {
			case "/readyz":
				if !f.ready.Load() {
					http.Error(w, "[-]etcd-quorum failed", http.StatusInternalServerError)
					return
				}
				_, _ = io.WriteString(w, "ok")
			default:
				_, _ = io.WriteString(w, f.name)
			}
		}))
		f.srv.TLS = &tls.Config{Certificates: []tls.Certificate{cert}}
		f.srv.EnableHTTP2 = true
		f.srv.StartTLS()
		t.Cleanup(f.srv.Close)
		fakes = append(fakes, f)
	}
	roots := x509.NewCertPool()
	roots.AddCert(ca.Cert)
	return fakes, &tls.Config{RootCAs: roots, ServerName: ServerName, NextProtos: []string{"h2", "http/1.1"}}
}

// client is an HTTP/2 client that keeps one connection, as client-go's,
// dialing through d.
func client(d *Dialer, tlsCfg *tls.Config) *http.Client {
	tr := &http.Transport{TLSClientConfig: tlsCfg, DialContext: d.DialContext, ForceAttemptHTTP2: true}
	return &http.Client{Transport: tr, Timeout: 2 * time.Second}
}

func who(c *http.Client) (string, error) {
	resp, err := c.Get("https://kubernetes/who")
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return string(b), err
}

// TestFailover: requests go to the first server; when it stops being
// ready its connection is closed and requests go to another within a few
// seconds; when that one dies, to the last; the first, ready again, is
// used once the others are gone.
func TestFailover(t *testing.T) {
	fakes, tlsCfg := startFakes(t, 3)
	var addrs []string
	for _, f := range fakes {
		addrs = append(addrs, f.addr())
	}
	d, err := New(addrs, Options{TLS: tlsCfg, Interval: 100 * time.Millisecond, Timeout: 500 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go d.Run(ctx)
	c := client(d, tlsCfg)
	if got, err := who(c); err != nil || got != "s0" {
		t.Fatalf("first request went to %q (%v), want s0", got, err)
	}

	fakes[0].ready.Store(false)
	start := time.Now()
	roottest.Eventually(t, 5*time.Second, "requests move off the unready server", func() error {
		got, err := who(c)
		if err != nil || got == "s0" {
			return fmt.Errorf("went to %q (%v)", got, err)
		}
		return nil
	})
	t.Logf("failed over from an unready server in %v", time.Since(start).Round(time.Millisecond))
	now, _ := who(c)

	// The one in use dies: its connection breaks, the next dial skips it.
	dead := slices.IndexFunc(fakes, func(f *fakeServer) bool { return f.name == now })
	fakes[dead].srv.CloseClientConnections()
	fakes[dead].srv.Close()
	roottest.Eventually(t, 5*time.Second, "requests reach the last server", func() error {
		got, err := who(c)
		if err != nil || got == "s0" || got == now {
			return fmt.Errorf("went to %q (%v)", got, err)
		}
		return nil
	})

	fakes[0].ready.Store(true)
	for _, f := range fakes[1:] {
		f.srv.CloseClientConnections()
		f.srv.Close()
	}
	roottest.Eventually(t, 5*time.Second, "requests come back to the first server", func() error {
		got, err := who(c)
		if err != nil || got != "s0" {
			return fmt.Errorf("went to %q (%v)", got, err)
		}
		return nil
	})
}

// TestDialTriesTheNextServer: a server that refuses connections is
// skipped at once, before any health check notices.
func TestDialTriesTheNextServer(t *testing.T) {
	fakes, tlsCfg := startFakes(t, 1)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := l.Addr().String()
	l.Close()
	d, err := New([]string{closed, fakes[0].addr()}, Options{TLS: tlsCfg})
	if err != nil {
		t.Fatal(err)
	}
	if got, err := who(client(d, tlsCfg)); err != nil || got != "s0" {
		t.Fatalf("request went to %q (%v), want s0", got, err)
	}
	if d.Current() != fakes[0].addr() {
		t.Errorf("Current() = %s, want the server that answered", d.Current())
	}
}

func TestParseServers(t *testing.T) {
	for _, tc := range []struct {
		in      string
		want    []string
		wantErr string
	}{
		{"https://203.0.113.2:6443", []string{"203.0.113.2:6443"}, ""},
		{"https://a:1, https://[2001:db8::1]", []string{"a:1", "[2001:db8::1]:6443"}, ""},
		{"https://a:1,https://a:1", nil, "listed twice"},
		{"http://a:1", nil, "https://HOST[:PORT]"},
		{"a:1", nil, "https://HOST[:PORT]"},
		{"https://a:0", nil, "port"},
		{"", nil, "no server URL"},
	} {
		got, err := ParseServers(tc.in)
		if tc.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("ParseServers(%q) = %v, %v; want an error containing %q", tc.in, got, err, tc.wantErr)
			}
			continue
		}
		if err != nil || !slices.Equal(got, tc.want) {
			t.Errorf("ParseServers(%q) = %v, %v; want %v", tc.in, got, err, tc.want)
		}
	}
}

func FuzzParseServers(f *testing.F) {
	f.Add("https://203.0.113.2:6443,https://[2001:db8::2]")
	f.Add("https://a:1,,https://b")
	f.Fuzz(func(t *testing.T, s string) {
		got, err := ParseServers(s)
		if err != nil {
			return
		}
		var urls []string
		for _, a := range got {
			if _, _, err := net.SplitHostPort(a); err != nil {
				t.Fatalf("ParseServers(%q) returned %q, not HOST:PORT", s, a)
			}
			urls = append(urls, "https://"+a)
		}
		again, err := ParseServers(strings.Join(urls, ","))
		if err != nil || !slices.Equal(again, got) {
			t.Fatalf("ParseServers(%q) = %q; as URLs again %q, %v", s, got, again, err)
		}
	})
}
