package netexec

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

func freePorts(t *testing.T) (int, int) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	u, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer u.Close()
	return l.Addr().(*net.TCPAddr).Port, u.LocalAddr().(*net.UDPAddr).Port
}

func TestServeBothFamilies(t *testing.T) {
	t.Setenv("HOSTNAME", "pod-a")
	httpPort, udpPort := freePorts(t)
	srv, err := Listen(httpPort, udpPort, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})

	client := &http.Client{Timeout: 2 * time.Second}
	get := func(host, path string) (string, error) {
		resp, err := client.Get(fmt.Sprintf("http://%s%s", net.JoinHostPort(host, fmt.Sprint(httpPort)), path))
		if err != nil {
			return "", err
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		return string(b), err
	}
	for _, host := range []string{"127.0.0.1", "::1"} {
		body, err := get(host, "/hostname")
		if err != nil || body != "pod-a" {
			t.Fatalf("%s /hostname = %q, %v", host, body, err)
		}
		ip, err := get(host, "/clientip")
		if h, _, _ := net.SplitHostPort(ip); err != nil || h != host {
			t.Fatalf("%s /clientip = %q, %v", host, ip, err)
		}
		if echo, err := get(host, "/echo?msg=hello%20there"); err != nil || echo != "hello there" {
			t.Fatalf("%s /echo = %q, %v", host, echo, err)
		}

		conn, err := net.Dial("udp", net.JoinHostPort(host, fmt.Sprint(udpPort)))
		if err != nil {
			t.Fatal(err)
		}
		for msg, want := range map[string]string{"hostname": "pod-a", "echo abc": "abc", "clientip": conn.LocalAddr().String()} {
			_ = conn.SetDeadline(time.Now().Add(2 * time.Second))
			if _, err := conn.Write([]byte(msg)); err != nil {
				t.Fatal(err)
			}
			buf := make([]byte, 2048)
			n, err := conn.Read(buf)
			if err != nil || !strings.EqualFold(string(buf[:n]), want) {
				t.Fatalf("%s UDP %q = %q, %v; want %q", host, msg, buf[:n], err, want)
			}
		}
		conn.Close()
	}
}
