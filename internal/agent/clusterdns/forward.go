package clusterdns

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync/atomic"
	"time"

	"github.com/miekg/dns"

	"github.com/duet-net/duet/internal/agent/podroot"
)

// DialFunc opens a connection to an upstream resolver.
type DialFunc func(ctx context.Context, network, addr string) (net.Conn, error)

// errNoUpstreams is a forward with nowhere to go.
var errNoUpstreams = errors.New("no upstream resolvers (the resolver configuration names no nameserver)")

// Forwarder asks the node's upstream resolvers the questions that are not
// the cluster's, one at a time in order, starting with the one that last
// answered, as the C library's resolver does.
type Forwarder struct {
	upstreams []string // host:port
	dial      DialFunc
	// Timeout bounds one attempt at one upstream.
	timeout time.Duration
	next    atomic.Uint32
}

// NewForwarder forwards to upstreams (host:port) over connections dial
// opens (nil: the process's own network namespace).
func NewForwarder(upstreams []string, dial DialFunc, timeout time.Duration) *Forwarder {
	if dial == nil {
		dial = (&net.Dialer{}).DialContext
	}
	if timeout <= 0 {
		timeout = 2 * time.Second
	}
	return &Forwarder{upstreams: upstreams, dial: dial, timeout: timeout}
}

// Upstreams are the resolvers forwarded to.
func (f *Forwarder) Upstreams() []string { return f.upstreams }

// Exchange sends req over network ("udp" or "tcp") and returns the first
// upstream answer, with req's ID. A truncated UDP answer is returned as
// it is: the client retries over TCP, and so does the forward.
func (f *Forwarder) Exchange(ctx context.Context, req *dns.Msg, network string) (*dns.Msg, error) {
	if f == nil || len(f.upstreams) == 0 {
		return nil, errNoUpstreams
	}
	// A fresh ID upstream: the client's is predictable to whoever sent it.
	out := req.Copy()
	out.Id = dns.Id()
	start := int(f.next.Load()) % len(f.upstreams)
	var errs []error
	for i := range f.upstreams {
		j := (start + i) % len(f.upstreams)
		resp, err := f.exchange(ctx, out, network, f.upstreams[j])
		if err == nil {
			f.next.Store(uint32(j))
			resp.Id = req.Id
			return resp, nil
		}
		errs = append(errs, fmt.Errorf("%s: %w", f.upstreams[j], err))
		if ctx.Err() != nil {
			break
		}
	}
	return nil, errors.Join(errs...)
}

func (f *Forwarder) exchange(ctx context.Context, m *dns.Msg, network, addr string) (*dns.Msg, error) {
	ctx, cancel := context.WithTimeout(ctx, f.timeout)
	defer cancel()
	conn, err := f.dial(ctx, network, addr)
	if err != nil {
		return nil, err
	}
	co := &dns.Conn{Conn: conn, UDPSize: dns.MaxMsgSize}
	defer co.Close()
	c := &dns.Client{Net: network, Timeout: f.timeout}
	resp, _, err := c.ExchangeWithConnContext(ctx, m, co)
	if err != nil {
		return nil, err
	}
	if len(resp.Question) != len(m.Question) || (len(m.Question) == 1 && !strings.EqualFold(resp.Question[0].Name, m.Question[0].Name)) {
		return nil, errors.New("the answer is to another question")
	}
	return resp, nil
}

// Upstreams reads the nameservers of a resolver configuration file
// (resolv.conf(5)) as host:port, leaving out those at one of the listen
// addresses (forwarding to itself would loop). A missing file gives none.
func Upstreams(path string, listen []netip.Addr) ([]string, error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("the upstream resolvers: %w", err)
	}
	conf, err := podroot.ParseResolvConf(data)
	if err != nil {
		return nil, fmt.Errorf("the upstream resolvers in %s: %w", path, err)
	}
	var out []string
	for _, ns := range conf.Nameservers {
		ip, err := netip.ParseAddr(ns)
		if err != nil {
			return nil, fmt.Errorf("%s: nameserver %q is not an IP address", path, ns)
		}
		self := false
		for _, l := range listen {
			self = self || l == ip.Unmap()
		}
		if !self {
			out = append(out, net.JoinHostPort(ip.String(), "53"))
		}
	}
	return out, nil
}
