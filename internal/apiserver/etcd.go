package apiserver

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"time"

	"go.etcd.io/etcd/server/v3/embed"
)

// EmbeddedEtcd is a single-member etcd whose data lives in a directory and
// which listens on loopback ports of its own.
type EmbeddedEtcd struct {
	etcd      *embed.Etcd
	ClientURL string
}

type etcdPorts struct{ Client, Peer int }

// StartEmbeddedEtcd starts etcd in dir. The ports are picked free the first
// time and reused on restart when still free, so the member's recorded
// peer URL stays true; etcd's own log goes to dir/etcd.log.
//
// It returns ctx's error as soon as ctx is done, even while etcd is still
// starting: etcd's start cannot be interrupted (it waits for its database
// file's lock without a timeout), so it goes on in the background and is
// closed if it ever comes up.
func StartEmbeddedEtcd(ctx context.Context, dir string) (*EmbeddedEtcd, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	portsFile := filepath.Join(dir, "ports.json")
	var ports etcdPorts
	if data, err := os.ReadFile(portsFile); err == nil {
		_ = json.Unmarshal(data, &ports)
	}
	var err error
	if ports.Client, err = freePort(ports.Client); err != nil {
		return nil, err
	}
	if ports.Peer, err = freePort(ports.Peer); err != nil {
		return nil, err
	}
	if data, err := json.Marshal(ports); err == nil {
		_ = os.WriteFile(portsFile, data, 0o600)
	}

	cfg := embed.NewConfig()
	cfg.Name = "duet"
	cfg.Dir = filepath.Join(dir, "data")
	client := url.URL{Scheme: "http", Host: fmt.Sprintf("127.0.0.1:%d", ports.Client)}
	peer := url.URL{Scheme: "http", Host: fmt.Sprintf("127.0.0.1:%d", ports.Peer)}
	cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{client}, []url.URL{client}
	cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = []url.URL{peer}, []url.URL{peer}
	cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)
	cfg.LogLevel = "warn"
	cfg.LogOutputs = []string{filepath.Join(dir, "etcd.log")}
	// The API server compacts every five minutes; etcd keeps its database
	// small on its own as well.
	cfg.AutoCompactionMode = "periodic"
	cfg.AutoCompactionRetention = "1h"
	cfg.QuotaBackendBytes = 8 << 30

	type started struct {
		e   *embed.Etcd
		err error
	}
	done := make(chan started, 1)
	go func() {
		e, err := embed.StartEtcd(cfg)
		done <- started{e, err}
	}()
	var e *embed.Etcd
	select {
	case r := <-done:
		if r.err != nil {
			return nil, fmt.Errorf("starting embedded etcd in %s: %w", dir, r.err)
		}
		e = r.e
	case <-ctx.Done():
		go func() {
			if r := <-done; r.err == nil {
				r.e.Close()
			}
		}()
		return nil, fmt.Errorf("starting embedded etcd in %s: %w", dir, context.Cause(ctx))
	}
	select {
	case <-e.Server.ReadyNotify():
	case err := <-e.Err():
		e.Close()
		return nil, fmt.Errorf("embedded etcd failed: %w", err)
	case <-ctx.Done():
		e.Close()
		return nil, fmt.Errorf("waiting for embedded etcd in %s: %w", dir, context.Cause(ctx))
	case <-time.After(60 * time.Second):
		e.Close()
		return nil, fmt.Errorf("embedded etcd in %s did not become ready within 60s (see %s)", dir, filepath.Join(dir, "etcd.log"))
	}
	return &EmbeddedEtcd{etcd: e, ClientURL: client.String()}, nil
}

// Close stops etcd.
func (e *EmbeddedEtcd) Close() { e.etcd.Close() }

// Err reports etcd failing after start.
func (e *EmbeddedEtcd) Err() <-chan error { return e.etcd.Err() }

// freePort returns want if it can be bound on loopback, else a free port.
func freePort(want int) (int, error) {
	if want != 0 {
		if l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", want)); err == nil {
			l.Close()
			return want, nil
		}
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("finding a free loopback port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}
