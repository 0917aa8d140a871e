package apiserver

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"sort"
	"strings"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"k8s.io/klog/v2"
)

// serverEndpoint is where one live API server serves.
type serverEndpoint struct {
	Addrs []netip.Addr `json:"addresses"`
	Port  int          `json:"port"`
}

// serverLeases tells the API servers sharing one etcd about each other.
type serverLeases interface {
	// Advertise makes this server known as live, for a while.
	Advertise(ctx context.Context) error
	// List returns the live servers, this one included once advertised.
	List(ctx context.Context) ([]serverEndpoint, error)
	// Withdraw makes this server unknown at once.
	Withdraw(ctx context.Context) error
}

// apiserverLeasePrefix holds one key per live API server.
const apiserverLeasePrefix = "/duet/apiserver-leases/"

// etcdLeases keeps each server's endpoint under a key of its own, bound to
// an etcd lease that the server keeps alive: when a server stops renewing
// it (killed, hung, cut off from etcd), etcd deletes the key once the TTL
// has passed, and a server that stops cleanly revokes it at once. This is
// kube-apiserver's "lease" endpoint reconciler (its /masterleases/ keys),
// rather than coordination Leases in kube-system: expiry is etcd's to
// decide, so no reader compares another host's renewTime with its own
// clock, and nothing is left behind for anyone to collect. The key is
// named by a per-process ID, not by address, so that servers sharing one
// address (ports apart) are both listed.
type etcdLeases struct {
	client *clientv3.Client
	key    string
	value  string
	ttl    time.Duration
	// keepAlive bounds the keep-alive of every lease granted: the
	// server's life.
	keepAlive context.Context

	mu    sync.Mutex
	lease clientv3.LeaseID // 0 while none is known alive
}

func newEtcdLeases(keepAlive context.Context, client *clientv3.Client, id string, self serverEndpoint, ttl time.Duration) (*etcdLeases, error) {
	value, err := json.Marshal(self)
	if err != nil {
		return nil, err
	}
	return &etcdLeases{client: client, key: apiserverLeasePrefix + id, value: string(value), ttl: ttl, keepAlive: keepAlive}, nil
}

// Advertise writes this server's key under its lease, granting a new lease
// (kept alive in the background, every third of the TTL, by the etcd
// client) when there is none or the last one was lost.
func (l *etcdLeases) Advertise(ctx context.Context) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.lease == 0 {
		g, err := l.client.Grant(ctx, int64(l.ttl/time.Second))
		if err != nil {
			return fmt.Errorf("granting this API server's lease: %w", err)
		}
		alive, err := l.client.KeepAlive(l.keepAlive, g.ID)
		if err != nil {
			return fmt.Errorf("keeping this API server's lease alive: %w", err)
		}
		l.lease = g.ID
		go func(id clientv3.LeaseID) {
			for range alive {
			}
			// Closed: the lease expired or was revoked, or the server
			// stops. The next Advertise grants a new one.
			l.mu.Lock()
			if l.lease == id {
				l.lease = 0
			}
			l.mu.Unlock()
		}(g.ID)
	}
	// Written every time: the key may have been deleted behind our back.
	if _, err := l.client.Put(ctx, l.key, l.value, clientv3.WithLease(l.lease)); err != nil {
		if errors.Is(err, rpctypes.ErrLeaseNotFound) {
			l.lease = 0
		}
		return fmt.Errorf("advertising this API server: %w", err)
	}
	return nil
}

func (l *etcdLeases) List(ctx context.Context) ([]serverEndpoint, error) {
	resp, err := l.client.Get(ctx, apiserverLeasePrefix, clientv3.WithPrefix())
	if err != nil {
		return nil, fmt.Errorf("listing live API servers: %w", err)
	}
	var out []serverEndpoint
	for _, kv := range resp.Kvs {
		var e serverEndpoint
		if err := json.Unmarshal(kv.Value, &e); err != nil || e.Port <= 0 || e.Port > 65535 {
			klog.InfoS("Ignoring an API server lease that does not parse", "key", string(kv.Key))
			continue
		}
		out = append(out, e)
	}
	sort.Slice(out, func(i, j int) bool { return endpointKey(out[i]) < endpointKey(out[j]) })
	return out, nil
}

func (l *etcdLeases) Withdraw(ctx context.Context) error {
	l.mu.Lock()
	id := l.lease
	l.lease = 0
	l.mu.Unlock()
	if id == 0 {
		_, err := l.client.Delete(ctx, l.key)
		return err
	}
	if _, err := l.client.Revoke(ctx, id); err != nil && !errors.Is(err, rpctypes.ErrLeaseNotFound) {
		return fmt.Errorf("revoking this API server's lease: %w", err)
	}
	return nil
}

func endpointKey(e serverEndpoint) string {
	var b strings.Builder
	for _, a := range e.Addrs {
		b.WriteString(a.String())
		b.WriteByte(',')
	}
	fmt.Fprintf(&b, "%d", e.Port)
	return b.String()
}
