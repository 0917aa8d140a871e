// Package probe runs one attempt of a Kubernetes container probe
// (httpGet, tcpSocket, exec, grpc) and says whether it succeeded, as the
// kubelet's prober does; the schedule (delays, periods, thresholds) is
// the caller's. Connections are made through a dialer the caller gives
// (NetNSDial), so that they start inside the pod's network namespace.
package probe

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/duet-net/duet/internal/netns"
)

// Target is what a probe checks.
type Target struct {
	// PodIP is the default host of httpGet and tcpSocket probes.
	PodIP netip.Addr
	// Ports are the container's ports, for named probe ports.
	Ports []corev1.ContainerPort
	// Dial connects as from inside the pod's network namespace
	// (NetNSDial); nil dials from the caller's own.
	Dial func(ctx context.Context, network, address string) (net.Conn, error)
	// Exec runs argv in the container and returns its exit code.
	Exec func(ctx context.Context, argv []string) (int, error)
}

// Timeout is a probe's timeout: timeoutSeconds, 1 s when unset.
func Timeout(p *corev1.Probe) time.Duration {
	if p.TimeoutSeconds > 0 {
		return time.Duration(p.TimeoutSeconds) * time.Second
	}
	return time.Second
}

// Run makes one attempt of probe p against t. A nil error is success;
// the error says why it failed.
func Run(ctx context.Context, p *corev1.Probe, t Target) error {
	ctx, cancel := context.WithTimeout(ctx, Timeout(p))
	defer cancel()
	switch {
	case p.HTTPGet != nil:
		return httpGet(ctx, p.HTTPGet, t)
	case p.TCPSocket != nil:
		port, err := resolvePort(p.TCPSocket.Port, t.Ports)
		if err != nil {
			return err
		}
		conn, err := t.dial(ctx, "tcp", net.JoinHostPort(host(p.TCPSocket.Host, t), strconv.Itoa(port)))
		if err != nil {
			return err
		}
		return conn.Close()
	case p.Exec != nil:
		if len(p.Exec.Command) == 0 {
			return errors.New("exec probe without a command")
		}
		code, err := t.Exec(ctx, p.Exec.Command)
		if err != nil {
			return err
		}
		if code != 0 {
			return fmt.Errorf("command %v exited with %d", p.Exec.Command, code)
		}
		return nil
	case p.GRPC != nil:
		return grpcHealth(ctx, p.GRPC, t)
	}
	return errors.New("probe has no handler")
}

func (t Target) dial(ctx context.Context, network, address string) (net.Conn, error) {
	if t.Dial != nil {
		return t.Dial(ctx, network, address)
	}
	var d net.Dialer
	return d.DialContext(ctx, network, address)
}

// NetNSDial returns a Dial whose sockets are made inside the network
// namespace at path ("" is the caller's own). A socket stays in the
// namespace it was made in, so the connection is then used from any
// thread.
func NetNSDial(path string) func(ctx context.Context, network, address string) (net.Conn, error) {
	if path == "" {
		var d net.Dialer
		return d.DialContext
	}
	return func(ctx context.Context, network, address string) (net.Conn, error) {
		var conn net.Conn
		err := netns.Do(path, func() error {
			var d net.Dialer
			var err error
			conn, err = d.DialContext(ctx, network, address)
			return err
		})
		return conn, err
	}
}

func host(h string, t Target) string {
	if h != "" {
		return h
	}
	return t.PodIP.String()
}

// resolvePort turns a probe's port, a number or a container port's name,
// into a number.
func resolvePort(p intstr.IntOrString, ports []corev1.ContainerPort) (int, error) {
	if p.Type == intstr.Int {
		if p.IntVal < 1 || p.IntVal > 65535 {
			return 0, fmt.Errorf("port %d is out of range", p.IntVal)
		}
		return int(p.IntVal), nil
	}
	for _, cp := range ports {
		if cp.Name == p.StrVal {
			return int(cp.ContainerPort), nil
		}
	}
	if n, err := strconv.Atoi(p.StrVal); err == nil && n > 0 && n < 65536 {
		return n, nil
	}
	return 0, fmt.Errorf("no container port named %q", p.StrVal)
}

// httpGet succeeds on a status from 200 to 399, as the kubelet's does;
// redirects are followed to the same host only.
func httpGet(ctx context.Context, g *corev1.HTTPGetAction, t Target) error {
	port, err := resolvePort(g.Port, t.Ports)
	if err != nil {
		return err
	}
	scheme := strings.ToLower(string(g.Scheme))
	if scheme == "" {
		scheme = "http"
	}
	path := g.Path
	if !strings.HasPrefix(path, "/") {
		path = "/" + path
	}
	h := host(g.Host, t)
	url := scheme + "://" + net.JoinHostPort(h, strconv.Itoa(port)) + path
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	req.Header.Set("User-Agent", "kube-probe/1.37")
	req.Header.Set("Accept", "*/*")
	for _, hd := range g.HTTPHeaders {
		if strings.EqualFold(hd.Name, "Host") {
			req.Host = hd.Value
			continue
		}
		req.Header.Add(hd.Name, hd.Value)
	}
	client := &http.Client{
		Transport: &http.Transport{
			DialContext:       t.dial,
			DisableKeepAlives: true,
			// Probes check that a server answers, not who it is.
			TLSClientConfig: &tls.Config{InsecureSkipVerify: true}, //nolint:gosec
		},
		CheckRedirect: func(r *http.Request, via []*http.Request) error {
			if r.URL.Hostname() != h || len(via) >= 10 {
				return http.ErrUseLastResponse
			}
			return nil
		},
	}
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 10<<10))
	if resp.StatusCode < 200 || resp.StatusCode >= 400 {
		return fmt.Errorf("HTTP probe failed with statuscode: %d", resp.StatusCode)
	}
	return nil
}
