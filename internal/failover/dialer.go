// Package failover lets a client of the Kubernetes API follow several
// servers, which client-go cannot: its connections go through a Dialer
// that connects to a ready server whatever address it is asked for. The
// Dialer checks every server's /readyz every second; when the server in
// use stops being ready (dead, cut off, or without an etcd quorum) it
// closes the connections to it, so that the client's next request
// reconnects, to a server that is ready.
package failover

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/duet-net/duet/internal/netns"
)

// DialFunc opens a connection, as net.Dialer.DialContext does.
type DialFunc func(ctx context.Context, network, addr string) (net.Conn, error)

// Options configure a Dialer.
type Options struct {
	// TLS verifies the servers in health checks (the cluster CA, the
	// server name every server's certificate holds).
	TLS *tls.Config
	// NetNS is the network namespace to connect from ("" for the
	// process's own).
	NetNS string
	// Interval between health checks, and the timeout of each (1 s).
	Interval, Timeout time.Duration
	// Failures is how many checks in a row a server must fail to count
	// as down (2).
	Failures int
	Log      *slog.Logger
}

// Dialer connects to the ready server of a list.
type Dialer struct {
	servers []string // host:port
	dial    DialFunc
	opts    Options
	checker *http.Client

	mu      sync.Mutex
	state   map[string]*server
	current string
}

type server struct {
	ready    bool
	failures int
	conns    map[*conn]struct{}
}

// New makes a Dialer for servers (host:port), the first preferred.
func New(servers []string, opts Options) (*Dialer, error) {
	if len(servers) == 0 {
		return nil, errors.New("failover: no servers")
	}
	if opts.Interval <= 0 {
		opts.Interval = time.Second
	}
	if opts.Timeout <= 0 {
		opts.Timeout = time.Second
	}
	if opts.Failures <= 0 {
		opts.Failures = 2
	}
	if opts.Log == nil {
		opts.Log = slog.New(slog.DiscardHandler)
	}
	d := &Dialer{servers: slices.Clone(servers), opts: opts, state: map[string]*server{}, current: servers[0]}
	base := (&net.Dialer{Timeout: 10 * time.Second, KeepAlive: 15 * time.Second}).DialContext
	d.dial = base
	if opts.NetNS != "" {
		d.dial = func(ctx context.Context, network, addr string) (net.Conn, error) {
			var c net.Conn
			err := netns.Do(opts.NetNS, func() error {
				var err error
				c, err = base(ctx, network, addr)
				return err
			})
			return c, err
		}
	}
	for _, s := range servers {
		// Ready until a check says otherwise: the first requests need not
		// wait for one.
		d.state[s] = &server{ready: true, conns: map[*conn]struct{}{}}
	}
	tlsCfg := &tls.Config{MinVersion: tls.VersionTLS12}
	if opts.TLS != nil {
		tlsCfg = opts.TLS.Clone()
	}
	// The checks carry no credentials: /readyz is public.
	tlsCfg.Certificates, tlsCfg.GetClientCertificate = nil, nil
	// HTTP/1.1 alone: the checker speaks nothing else.
	tlsCfg.NextProtos = []string{"http/1.1"}
	d.checker = &http.Client{
		Timeout: opts.Timeout,
		Transport: &http.Transport{
			// Each check dials afresh: a connection that hangs must not
			// be reused by the next check.
			DisableKeepAlives: true,
			TLSClientConfig:   tlsCfg,
			DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
				return d.dial(ctx, network, addr)
			},
			Proxy: nil,
		},
	}
	return d, nil
}

// Servers lists the servers, and Current the one in use.
func (d *Dialer) Servers() []string { return slices.Clone(d.servers) }

// Current is the server new connections go to while it is ready.
func (d *Dialer) Current() string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.current
}

// DialContext connects to the server in use if it is ready, else to the
// first ready one, else tries them all; addr is ignored.
func (d *Dialer) DialContext(ctx context.Context, network, _ string) (net.Conn, error) {
	var errs []error
	for _, addr := range d.order() {
		c, err := d.dial(ctx, network, addr)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", addr, err))
			d.failed(addr)
			if ctx.Err() != nil {
				break
			}
			continue
		}
		return d.track(addr, c), nil
	}
	return nil, fmt.Errorf("no API server reachable: %w", errors.Join(errs...))
}

// order is the order to try the servers in: the current one if ready,
// then the other ready ones, then the rest (all may be wrongly marked).
func (d *Dialer) order() []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	var ready, down []string
	if d.state[d.current].ready {
		ready = append(ready, d.current)
	}
	for _, s := range d.servers {
		switch {
		case s == d.current && d.state[s].ready:
		case d.state[s].ready:
			ready = append(ready, s)
		default:
			down = append(down, s)
		}
	}
	return append(ready, down...)
}

func (d *Dialer) failed(addr string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.state[addr].ready = false
}

func (d *Dialer) track(addr string, c net.Conn) net.Conn {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.current != addr {
		d.opts.Log.Info("API server in use", "server", addr, "was", d.current)
		d.current = addr
	}
	tc := &conn{Conn: c, d: d, addr: addr}
	d.state[addr].conns[tc] = struct{}{}
	return tc
}

// Run checks the servers until ctx is done.
func (d *Dialer) Run(ctx context.Context) {
	t := time.NewTicker(d.opts.Interval)
	defer t.Stop()
	for {
		var wg sync.WaitGroup
		for _, s := range d.servers {
			wg.Go(func() { d.report(s, d.check(ctx, s)) })
		}
		wg.Wait()
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// check returns nil if the server answers /readyz with ok.
func (d *Dialer) check(ctx context.Context, addr string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "https://"+addr+"/readyz", nil)
	if err != nil {
		return err
	}
	resp, err := d.checker.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	if resp.StatusCode != http.StatusOK || strings.TrimSpace(string(body)) != "ok" {
		return fmt.Errorf("/readyz: %s", resp.Status)
	}
	return nil
}

// report records a check's result; a server that went down loses its
// connections, and if it was in use, the next ready one takes over.
func (d *Dialer) report(addr string, err error) {
	d.mu.Lock()
	st := d.state[addr]
	var drop []*conn
	if err == nil {
		if !st.ready {
			d.opts.Log.Info("API server ready again", "server", addr)
		}
		st.ready, st.failures = true, 0
	} else if st.failures++; st.failures >= d.opts.Failures && (st.ready || len(st.conns) > 0) {
		d.opts.Log.Info("API server down: closing its connections", "server", addr, "err", err, "connections", len(st.conns))
		st.ready = false
		for c := range st.conns {
			drop = append(drop, c)
		}
		if d.current == addr {
			for _, s := range d.servers {
				if d.state[s].ready {
					d.opts.Log.Info("API server in use", "server", s, "was", addr)
					d.current = s
					break
				}
			}
		}
	}
	d.mu.Unlock()
	for _, c := range drop {
		c.Close()
	}
}

// conn is a connection the Dialer tracks until it is closed.
type conn struct {
	net.Conn
	d    *Dialer
	addr string
	once sync.Once
}

func (c *conn) Close() error {
	c.once.Do(func() {
		c.d.mu.Lock()
		delete(c.d.state[c.addr].conns, c)
		c.d.mu.Unlock()
	})
	return c.Conn.Close()
}
