// Package etcdtest starts a single-member embedded etcd for a test: data in
// the test's temporary directory, listeners on free loopback ports chosen by
// the kernel (so tests in parallel never race for a port), logs only on
// errors, and everything stopped when the test ends.
package etcdtest

import (
	"net/url"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest"
)

// startTimeout bounds how long Start waits for the server; it is ready in
// well under a second on an idle machine, but CI machines are shared.
const startTimeout = 60 * time.Second

// Server is a running embedded etcd.
type Server struct {
	Etcd *embed.Etcd
	// Endpoints are the client URLs to dial, e.g. "http://127.0.0.1:41234",
	// for an API server's storage configuration.
	Endpoints []string
	// Client is connected to the server and closed when the test ends.
	Client *clientv3.Client
}

// Start starts an etcd server for t and returns it once it serves
// clients. It fails the test if the server does not come up.
func Start(t testing.TB) *Server {
	t.Helper()
	cfg := embed.NewConfig()
	cfg.Name = "duet-test"
	cfg.Dir = t.TempDir()
	cfg.UnsafeNoFsync = true // a throwaway single member: durability buys nothing
	// Port 0 lets the kernel pick; the actual addresses are read back from
	// the listeners. A single member never dials its own peer URL.
	loopback := url.URL{Scheme: "http", Host: "127.0.0.1:0"}
	cfg.ListenPeerUrls = []url.URL{loopback}
	cfg.AdvertisePeerUrls = []url.URL{loopback}
	cfg.ListenClientUrls = []url.URL{loopback}
	cfg.AdvertiseClientUrls = []url.URL{loopback}
	cfg.ListenMetricsUrls = nil
	cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)
	cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zaptest.NewLogger(t, zaptest.Level(zapcore.ErrorLevel)).Named("etcd-server"))

	e, err := embed.StartEtcd(cfg)
	if err != nil {
		t.Fatalf("starting embedded etcd in %s: %v", cfg.Dir, err)
	}
	t.Cleanup(e.Close)
	select {
	case <-e.Server.ReadyNotify():
	case err := <-e.Err():
		t.Fatalf("embedded etcd failed while starting: %v", err)
	case <-time.After(startTimeout):
		e.Server.Stop()
		t.Fatalf("embedded etcd was not ready after %v", startTimeout)
	}

	s := &Server{Etcd: e}
	for _, l := range e.Clients {
		s.Endpoints = append(s.Endpoints, "http://"+l.Addr().String())
	}
	s.Client = s.NewClient(t)
	return s
}

// NewClient returns another client of the server, closed when the test
// ends; several clients stand in for several server replicas.
func (s *Server) NewClient(t testing.TB) *clientv3.Client {
	t.Helper()
	c, err := clientv3.New(clientv3.Config{
		Endpoints:   s.Endpoints,
		DialTimeout: 10 * time.Second,
		Logger:      zaptest.NewLogger(t, zaptest.Level(zapcore.ErrorLevel)).Named("etcd-client"),
	})
	if err != nil {
		t.Fatalf("connecting to embedded etcd at %v: %v", s.Endpoints, err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}
