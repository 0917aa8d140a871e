package failover

import (
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"strconv"
	"strings"

	"k8s.io/client-go/rest"
)

// ServerName is the name every duet server's certificate holds, whatever
// its address: a client that may land on any server verifies it by this
// name rather than by the address of the first.
const ServerName = "kubernetes"

// ParseServers reads API server URLs, https://HOST[:PORT] (port 6443 if
// none), comma-separated, into HOST:PORT addresses.
func ParseServers(s string) ([]string, error) {
	var out []string
	for _, part := range strings.Split(s, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		u, err := url.Parse(part)
		if err != nil || u.Scheme != "https" || u.Hostname() == "" || u.User != nil || u.RawQuery != "" || u.Fragment != "" || strings.Trim(u.Path, "/") != "" {
			return nil, fmt.Errorf("server %q: must be https://HOST[:PORT]", part)
		}
		port := u.Port()
		if port == "" {
			port = "6443"
		}
		if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 || strconv.Itoa(n) != port {
			return nil, fmt.Errorf("server %q: port must be a number from 1 to 65535", part)
		}
		addr := net.JoinHostPort(u.Hostname(), port)
		for _, o := range out {
			if o == addr {
				return nil, fmt.Errorf("server %q is listed twice", part)
			}
		}
		out = append(out, addr)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("no server URL in %q", s)
	}
	return out, nil
}

// Configure makes cfg follow servers: every connection of the clients
// made from it goes through the returned Dialer, whose Run must then run
// for failures to be noticed. Servers are verified by ServerName unless
// cfg names another.
func Configure(cfg *rest.Config, servers []string, netnsPath string, log *slog.Logger) (*Dialer, error) {
	if cfg.TLSClientConfig.ServerName == "" {
		cfg.TLSClientConfig.ServerName = ServerName
	}
	tlsCfg, err := rest.TLSConfigFor(cfg)
	if err != nil {
		return nil, fmt.Errorf("the API servers' TLS configuration: %w", err)
	}
	d, err := New(servers, Options{TLS: tlsCfg, NetNS: netnsPath, Log: log})
	if err != nil {
		return nil, err
	}
	cfg.Host = "https://" + servers[0]
	cfg.Dial = d.DialContext
	return d, nil
}
