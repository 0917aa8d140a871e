package apiserver

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/transport"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"

	"github.com/duet-net/duet/internal/pki"
)

// EmbeddedEtcd is this server's etcd member: its data lives in a
// directory, its client port on loopback, its peer port on the server's
// address with mutual TLS from the cluster CA.
type EmbeddedEtcd struct {
	etcd      *embed.Etcd
	ClientURL string
	PeerURL   string
	Name      string
	closeOnce sync.Once
}

type etcdPorts struct{ Client, Peer int }

// etcdPeer is a member of the cluster as a joining member names it in
// its initial cluster.
type etcdPeer struct {
	Name     string   `json:"name"`
	PeerURLs []string `json:"peerURLs"`
}

// etcdMember configures this server's member.
type etcdMember struct {
	// Dir holds data/, ports.json, name, peer.crt and peer.key.
	Dir string
	// PeerHost is the address other members reach this one at;
	// ListenHost the one its peer port listens on ("" for all).
	PeerHost, ListenHost string
	// CA signs the member's peer certificate and is the one CA its peers'
	// certificates are trusted from.
	CA *pki.CA
	// Join lists the cluster's members, this one included, when it joins
	// an existing cluster for the first time; nil starts a new cluster or
	// restarts a member from its data.
	Join []etcdPeer
}

// etcdNameFile keeps the member's name in its directory.
const etcdNameFile = "name"

// legacyMemberName is the name of every member started before Duet
// clustered its etcd.
const legacyMemberName = "duet"

// memberDataExists tells whether dir holds a member's data: a restart,
// which keeps the cluster it belongs to.
func memberDataExists(dir string) bool {
	_, err := os.Stat(filepath.Join(dir, "data", "member", "wal"))
	return err == nil
}

var nameRE = regexp.MustCompile(`[^a-z0-9-]+`)

// memberName returns the member's name, made and kept the first time: the
// host's name and a random suffix (servers on one host, or in namespaces
// of one host, share a host name). A member with data and no name file is
// of an earlier version, and kept its fixed name.
func memberName(dir string) (string, error) {
	path := filepath.Join(dir, etcdNameFile)
	if data, err := os.ReadFile(path); err == nil && strings.TrimSpace(string(data)) != "" {
		return strings.TrimSpace(string(data)), nil
	}
	name := legacyMemberName
	if !memberDataExists(dir) {
		host, _ := os.Hostname()
		host = strings.Trim(nameRE.ReplaceAllString(strings.ToLower(host), "-"), "-")
		if len(host) > 40 {
			host = host[:40]
		}
		if host == "" {
			host = "duet"
		}
		b := make([]byte, 3)
		if _, err := rand.Read(b); err != nil {
			return "", err
		}
		name = host + "-" + hex.EncodeToString(b)
	}
	if err := os.WriteFile(path, []byte(name+"\n"), 0o600); err != nil {
		return "", fmt.Errorf("recording the etcd member's name: %w", err)
	}
	return name, nil
}

// etcdTick and etcdElection are the raft heartbeat and election timeout.
// Twice etcd's defaults: a machine busy with three servers' worth of API
// traffic delays heartbeats enough to trigger needless elections with
// etcd's 100 ms and 1 s, while a dead leader is still replaced within a
// few seconds.
const (
	etcdTick     = 200
	etcdElection = 2000
)

// StartEmbeddedEtcd starts the member m describes. The ports are picked
// free the first time and reused on restart when still free, so the
// member's recorded peer URL stays true; etcd's own log goes to
// m.Dir/etcd.log.
//
// It returns ctx's error as soon as ctx is done, even while etcd is still
// starting: etcd's start cannot be interrupted (it waits for its database
// file's lock without a timeout), so it goes on in the background and is
// closed if it ever comes up.
func StartEmbeddedEtcd(ctx context.Context, m etcdMember) (*EmbeddedEtcd, error) {
	dir := m.Dir
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	portsFile := filepath.Join(dir, "ports.json")
	var ports etcdPorts
	if data, err := os.ReadFile(portsFile); err == nil {
		_ = json.Unmarshal(data, &ports)
	}
	var err error
	if ports.Client, err = freePort("127.0.0.1", ports.Client); err != nil {
		return nil, err
	}
	if ports.Peer, err = freePort(m.ListenHost, ports.Peer); err != nil {
		return nil, err
	}
	if data, err := json.Marshal(ports); err == nil {
		_ = os.WriteFile(portsFile, data, 0o600)
	}
	name, err := memberName(dir)
	if err != nil {
		return nil, err
	}

	cfg := embed.NewConfig()
	cfg.Name = name
	cfg.Dir = filepath.Join(dir, "data")
	client := url.URL{Scheme: "http", Host: net.JoinHostPort("127.0.0.1", fmt.Sprint(ports.Client))}
	peer := url.URL{Scheme: "https", Host: net.JoinHostPort(m.PeerHost, fmt.Sprint(ports.Peer))}
	listenPeer := url.URL{Scheme: "https", Host: net.JoinHostPort(m.ListenHost, fmt.Sprint(ports.Peer))}
	if m.ListenHost == "" {
		listenPeer.Host = net.JoinHostPort("0.0.0.0", fmt.Sprint(ports.Peer))
	}
	cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{client}, []url.URL{client}
	cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = []url.URL{listenPeer}, []url.URL{peer}
	cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)
	if m.Join != nil && !memberDataExists(dir) {
		var parts []string
		for _, p := range m.Join {
			for _, u := range p.PeerURLs {
				parts = append(parts, p.Name+"="+u)
			}
		}
		cfg.InitialCluster = strings.Join(parts, ",")
		cfg.ClusterState = embed.ClusterStateFlagExisting
	}
	if err := writePeerCert(m, name); err != nil {
		return nil, err
	}
	cfg.PeerTLSInfo = transport.TLSInfo{
		CertFile:       filepath.Join(dir, "peer.crt"),
		KeyFile:        filepath.Join(dir, "peer.key"),
		TrustedCAFile:  filepath.Join(dir, "peer-ca.crt"),
		ClientCertAuth: true,
	}
	cfg.TickMs, cfg.ElectionMs = etcdTick, etcdElection
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
	// A member joining a cluster, or restarting in one that has lost
	// quorum meanwhile, is ready only once it hears from a leader: give
	// it longer than a lone member needs.
	select {
	case <-e.Server.ReadyNotify():
	case err := <-e.Err():
		e.Close()
		return nil, fmt.Errorf("embedded etcd failed: %w", err)
	case <-e.Server.StopNotify():
		e.Close()
		return nil, fmt.Errorf("embedded etcd in %s stopped while starting (removed from its cluster? see %s)", dir, filepath.Join(dir, "etcd.log"))
	case <-ctx.Done():
		e.Close()
		return nil, fmt.Errorf("waiting for embedded etcd in %s: %w", dir, context.Cause(ctx))
	case <-time.After(etcdReadyTimeout):
		e.Close()
		return nil, fmt.Errorf("embedded etcd in %s did not become ready within %v: are a quorum of its cluster's members up? (see %s)", dir, etcdReadyTimeout, filepath.Join(dir, "etcd.log"))
	}
	ee := &EmbeddedEtcd{etcd: e, ClientURL: client.String(), PeerURL: peer.String(), Name: name}
	if err := ee.updatePeerURL(ctx); err != nil {
		e.Close()
		return nil, err
	}
	return ee, nil
}

// etcdReadyTimeout bounds the wait for the member to be ready.
const etcdReadyTimeout = 2 * time.Minute

// writePeerCert issues the member's peer certificate for its address and
// loopback, and writes it with the CA that peers are trusted from.
func writePeerCert(m etcdMember, name string) error {
	hosts := []string{"127.0.0.1", "::1", "localhost"}
	if m.PeerHost != "" && !slices.Contains(hosts, m.PeerHost) {
		hosts = append(hosts, m.PeerHost)
	}
	pair, err := m.CA.IssuePeer("etcd-peer:"+name, hosts)
	if err != nil {
		return err
	}
	if err := pair.WriteFiles(filepath.Join(m.Dir, "peer.crt"), filepath.Join(m.Dir, "peer.key")); err != nil {
		return fmt.Errorf("writing the etcd peer certificate: %w", err)
	}
	if err := os.WriteFile(filepath.Join(m.Dir, "peer-ca.crt"), m.CA.ChainPEM(), 0o644); err != nil {
		return fmt.Errorf("writing the etcd peer CA: %w", err)
	}
	return nil
}

// updatePeerURL records the member's peer URL in the cluster when it
// changed: a member of an earlier version advertised plain HTTP on
// loopback, and a server may move to another address.
func (e *EmbeddedEtcd) updatePeerURL(ctx context.Context) error {
	id := e.etcd.Server.MemberID()
	me := e.etcd.Server.Cluster().Member(id)
	if me == nil || slices.Equal(me.PeerURLs, []string{e.PeerURL}) {
		return nil
	}
	c, err := e.client()
	if err != nil {
		return err
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if _, err := c.MemberUpdate(ctx, uint64(id), []string{e.PeerURL}); err != nil {
		return fmt.Errorf("recording this etcd member's peer URL %s (was %v): %w", e.PeerURL, me.PeerURLs, err)
	}
	return nil
}

// client is a client of this member alone.
func (e *EmbeddedEtcd) client() (*clientv3.Client, error) {
	c, err := clientv3.New(clientv3.Config{Endpoints: []string{e.ClientURL}, DialTimeout: 10 * time.Second})
	if err != nil {
		return nil, fmt.Errorf("connecting to the embedded etcd: %w", err)
	}
	return c, nil
}

// ID is the member's ID in its cluster.
func (e *EmbeddedEtcd) ID() uint64 { return uint64(e.etcd.Server.MemberID()) }

// IsLearner tells whether the member is a learner not yet promoted.
func (e *EmbeddedEtcd) IsLearner() bool { return e.etcd.Server.IsLearner() }

// HasLeader tells whether the member knows a leader now.
func (e *EmbeddedEtcd) HasLeader() bool { return e.etcd.Server.Leader() != 0 }

// Close stops etcd; it may be called more than once.
func (e *EmbeddedEtcd) Close() { e.closeOnce.Do(e.etcd.Close) }

// Err reports etcd failing after start.
func (e *EmbeddedEtcd) Err() <-chan error { return e.etcd.Err() }

// Stopped is closed when the member stops, on its own too: removed from
// its cluster.
func (e *EmbeddedEtcd) Stopped() <-chan struct{} { return e.etcd.Server.StopNotify() }

// freePort returns want if it can be bound on host, else a free port.
func freePort(host string, want int) (int, error) {
	if want != 0 {
		if l, err := net.Listen("tcp", net.JoinHostPort(host, fmt.Sprint(want))); err == nil {
			l.Close()
			return want, nil
		}
	}
	l, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
	if err != nil {
		return 0, fmt.Errorf("finding a free port on %q: %w", host, err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

var errNoEmbeddedEtcd = errors.New("this server uses an external etcd (--etcd-servers): servers join by sharing it, not with --join")
