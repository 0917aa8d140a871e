package apiserver

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	clientsnapshot "go.etcd.io/etcd/client/v3/snapshot"
	"go.etcd.io/etcd/etcdutl/v3/snapshot"
	"go.uber.org/zap"
	"google.golang.org/grpc"
)

// DialFunc connects to an address, as net.Dialer.DialContext does; the
// snapshot commands use one that enters a server's network namespace.
type DialFunc func(ctx context.Context, network, addr string) (net.Conn, error)

// EtcdClientURL is the client URL of the embedded etcd of the server in
// dataDir, which its ports.json records.
func EtcdClientURL(dataDir string) (string, error) {
	path := filepath.Join(dataDir, "etcd", "ports.json")
	data, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("%s holds no embedded etcd of a duet server: %w", dataDir, err)
	}
	var ports etcdPorts
	if err := json.Unmarshal(data, &ports); err != nil || ports.Client == 0 {
		return "", fmt.Errorf("%s: no client port recorded", path)
	}
	return (&url.URL{Scheme: "http", Host: net.JoinHostPort("127.0.0.1", fmt.Sprint(ports.Client))}).String(), nil
}

// SaveSnapshot writes a snapshot of the etcd of the running server in
// dataDir to file (through a temporary file: a failed save leaves none),
// with the checksum etcd appends, and returns its etcd version.
func SaveSnapshot(ctx context.Context, dataDir, file string, dial DialFunc) (string, error) {
	endpoint, err := EtcdClientURL(dataDir)
	if err != nil {
		return "", err
	}
	cfg := clientv3.Config{Endpoints: []string{endpoint}, DialTimeout: 10 * time.Second, Logger: zap.NewNop()}
	if dial != nil {
		cfg.DialOptions = []grpc.DialOption{grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
			return dial(ctx, "tcp", addr)
		})}
	}
	if err := caughtUp(ctx, cfg); err != nil {
		return "", fmt.Errorf("the etcd member of %s: %w", dataDir, err)
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	version, err := clientsnapshot.SaveWithVersion(ctx, zap.NewNop(), cfg, file)
	if err != nil {
		return "", fmt.Errorf("saving a snapshot of the etcd of %s (is its server running?): %w", dataDir, err)
	}
	return version, nil
}

// caughtUp makes sure the member is in its cluster's quorum and has
// applied everything committed: a linearizable read returns only once the
// member has applied the leader's commit index as of the read, so a
// snapshot taken after it holds every write acknowledged before it. A
// member cut off from its cluster, or one just back and behind, would
// otherwise save a stale snapshot.
func caughtUp(ctx context.Context, cfg clientv3.Config) error {
	c, err := clientv3.New(cfg)
	if err != nil {
		return err
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if _, err := c.Get(clientv3.WithRequireLeader(ctx), quorumProbeKey); err != nil {
		return fmt.Errorf("not in its cluster's quorum, or not caught up (%w): its snapshot could miss acknowledged writes", err)
	}
	return nil
}

// SnapshotStatus describes a snapshot file.
type SnapshotStatus struct {
	Revision  int64
	TotalKeys int
	TotalSize int64
}

// RestoreSnapshot makes the data directory of a stopped (or wiped)
// server hold a new one-member etcd cluster with the snapshot's data,
// after checking the snapshot's checksum. The member's name and peer
// URL are the ones the server starts with (bindAddress is its
// --bind-address); other servers then join it afresh. The revision is
// bumped and marked compacted, so that clients watching at a revision of
// the old cluster re-list instead of missing what differs.
func RestoreSnapshot(file, dataDir, bindAddress string) (SnapshotStatus, error) {
	lock, err := lockDataDir(dataDir)
	if err != nil {
		return SnapshotStatus{}, err
	}
	defer lock.Close()
	dir := filepath.Join(dataDir, "etcd")
	if _, err := os.Stat(filepath.Join(dir, "data")); err == nil {
		return SnapshotStatus{}, fmt.Errorf("%s already holds etcd data: remove it first (or leave its cluster with duet server --leave)", dir)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return SnapshotStatus{}, err
	}
	if err := checkSnapshotHash(file); err != nil {
		return SnapshotStatus{}, err
	}
	lg := zap.NewNop()
	st, err := snapshot.NewV3(lg).Status(file)
	if err != nil {
		return SnapshotStatus{}, fmt.Errorf("reading the snapshot %s: %w", file, err)
	}
	bind := net.ParseIP(bindAddress)
	if bind == nil {
		return SnapshotStatus{}, fmt.Errorf("--bind-address %q is not a valid IP address", bindAddress)
	}
	listen, advertise := peerHosts(&Config{BindAddress: bind})
	// A new name: the member is a new one, of a new cluster.
	_ = os.Remove(filepath.Join(dir, etcdNameFile))
	name, err := memberName(dir)
	if err != nil {
		return SnapshotStatus{}, err
	}
	port, err := reservePeerPort(dir, listen)
	if err != nil {
		// The address may be another namespace's (duet up's servers):
		// any port is free there, and the server records the one it
		// binds when it starts.
		if port, err = reservePeerPort(dir, "127.0.0.1"); err != nil {
			return SnapshotStatus{}, err
		}
	}
	peerURL := (&url.URL{Scheme: "https", Host: net.JoinHostPort(advertise, fmt.Sprint(port))}).String()
	err = snapshot.NewV3(lg).Restore(snapshot.RestoreConfig{
		SnapshotPath:        file,
		Name:                name,
		OutputDataDir:       filepath.Join(dir, "data"),
		PeerURLs:            []string{peerURL},
		InitialCluster:      name + "=" + peerURL,
		InitialClusterToken: "etcd-cluster",
		RevisionBump:        1_000_000_000,
		MarkCompacted:       true,
	})
	if err != nil {
		_ = os.RemoveAll(filepath.Join(dir, "data"))
		if strings.Contains(err.Error(), "expected sha256") {
			return SnapshotStatus{}, fmt.Errorf("restoring %s: its checksum does not match its content: the file is damaged (%w)", file, err)
		}
		return SnapshotStatus{}, fmt.Errorf("restoring %s: %w", file, err)
	}
	return SnapshotStatus{Revision: st.Revision, TotalKeys: st.TotalKey, TotalSize: st.TotalSize}, nil
}

// checkSnapshotHash checks the SHA-256 that etcd appends to a snapshot
// (the file is then 32 bytes past a multiple of 512) before anything reads
// the database: bbolt's own checks of a damaged file panic, in goroutines
// of their own, instead of returning an error.
func checkSnapshotHash(file string) error {
	f, err := os.Open(file)
	if err != nil {
		return fmt.Errorf("reading the snapshot: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return fmt.Errorf("reading the snapshot: %w", err)
	}
	size := fi.Size()
	if size%512 != sha256.Size {
		return fmt.Errorf("restoring %s: it carries no checksum (%d bytes, not a multiple of 512 plus 32): not a snapshot of duet snapshot save, or cut short", file, size)
	}
	h := sha256.New()
	if _, err := io.CopyN(h, f, size-sha256.Size); err != nil {
		return fmt.Errorf("reading the snapshot %s: %w", file, err)
	}
	want := make([]byte, sha256.Size)
	if _, err := io.ReadFull(f, want); err != nil {
		return fmt.Errorf("reading the snapshot %s: %w", file, err)
	}
	if !bytes.Equal(h.Sum(nil), want) {
		return fmt.Errorf("restoring %s: its checksum does not match its content: the file is damaged", file)
	}
	return nil
}
