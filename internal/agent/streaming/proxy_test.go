package streaming

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// podNet is a Runtime whose one pod, ns/web, is an HTTP server on
// loopback: DialPod reaches it at any port the test maps.
type podNet struct {
	Runtime
	ports map[int32]string // port to the server's host:port
}

func (p podNet) Check(pod PodRef, _ string) error {
	if pod != (PodRef{"ns", "web"}) {
		return NotFound("pod %s is not running on this node", pod)
	}
	return nil
}

func (p podNet) DialPod(ctx context.Context, pod PodRef, port int32) (net.Conn, error) {
	addr, ok := p.ports[port]
	if !ok {
		return nil, fmt.Errorf("connection refused at port %d", port)
	}
	return (&net.Dialer{}).DialContext(ctx, "tcp", addr)
}

func TestProxy(t *testing.T) {
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		fmt.Fprintf(w, "%s %s?%s host=%s body=%s", r.Method, r.URL.Path, r.URL.RawQuery, r.Host, body)
	}))
	defer backend.Close()
	tlsBackend := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "tls %s", r.URL.Path)
	}))
	defer tlsBackend.Close()
	rt := podNet{ports: map[int32]string{80: backend.Listener.Addr().String(), 443: tlsBackend.Listener.Addr().String()}}
	agent := httptest.NewServer(Handler(rt, slog.New(slog.DiscardHandler)))
	defer agent.Close()

	for _, tc := range []struct {
		method, path, body string
		code               int
		want               string
	}{
		{"GET", "/proxy/ns/web/http/80/results/a_udp@x?q=1&r=2", "", 200, "GET /results/a_udp@x?q=1&r=2 host=web:80 body="},
		{"GET", "/proxy/ns/web/http/80/", "", 200, "GET /? host=web:80"},
		{"POST", "/proxy/ns/web/http/80/echo", "hello", 200, "POST /echo? host=web:80 body=hello"},
		{"GET", "/proxy/ns/web/https/443/secure", "", 200, "tls /secure"},
		{"GET", "/proxy/ns/web/http/81/x", "", 502, "connection refused at port 81"},
		{"GET", "/proxy/ns/other/http/80/x", "", 404, "pod ns/other is not running"},
		{"GET", "/proxy/ns/web/ftp/80/x", "", 400, `scheme "ftp"`},
		{"GET", "/proxy/ns/web/http/0/x", "", 400, `port "0"`},
		{"GET", "/proxy/ns/web/http/99999/x", "", 400, `port "99999"`},
	} {
		req, _ := http.NewRequest(tc.method, agent.URL+tc.path, strings.NewReader(tc.body))
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != tc.code || !strings.Contains(string(body), tc.want) {
			t.Errorf("%s %s: %d %q, want %d containing %q", tc.method, tc.path, resp.StatusCode, body, tc.code, tc.want)
		}
	}
}

// A runtime that cannot dial pods serves no proxy.
func TestNoProxyWithoutDialer(t *testing.T) {
	agent := httptest.NewServer(Handler(struct{ Runtime }{}, slog.New(slog.DiscardHandler)))
	defer agent.Close()
	resp, err := http.Get(agent.URL + "/proxy/ns/web/http/80/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound {
		t.Errorf("status %d, want 404", resp.StatusCode)
	}
}
