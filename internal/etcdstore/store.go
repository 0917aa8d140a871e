// Package etcdstore keeps allocation records in etcd: an alloc.Store whose
// create-if-absent is an etcd transaction, so that allocators in several
// server replicas sharing one etcd never hand out the same address or
// prefix, and allocations survive restarts.
//
// One store owns one key prefix (for example "/duet/allocations/nodecidrs/")
// and keeps one key per record below it. The value is a small JSON document
// naming the prefix and, when the caller put one in the context with
// alloc.WithOwner, the object the allocation is for.
package etcdstore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"strings"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/duet-net/duet/internal/alloc"
)

// listPageSize bounds one range read of List; pages are read at one
// revision, so a List sees one consistent snapshot however many pages it
// takes.
const listPageSize = 1000

// Store is an alloc.Store over etcd, safe for concurrent use.
type Store struct {
	kv     clientv3.KV
	prefix string
}

var _ alloc.Store = (*Store)(nil)

// New returns a Store that keeps its records under prefix (a trailing "/"
// is added if missing). Stores with different prefixes never see each
// other's records.
func New(kv clientv3.KV, prefix string) (*Store, error) {
	if kv == nil {
		return nil, errors.New("etcdstore: no etcd client")
	}
	if prefix == "" || prefix == "/" {
		return nil, errors.New("etcdstore: the key prefix must name a directory of its own, such as /duet/allocations/nodecidrs/")
	}
	if !strings.HasSuffix(prefix, "/") {
		prefix += "/"
	}
	return &Store{kv: kv, prefix: prefix}, nil
}

// Prefix is the etcd key prefix the store's records live under.
func (s *Store) Prefix() string { return s.prefix }

// Key is the etcd key of key's record.
func (s *Store) Key(key netip.Prefix) string { return s.prefix + encodeKey(key) }

// Record is what a store keeps for one allocation.
type Record struct {
	Prefix netip.Prefix
	// Owner is the object the allocation was made for; nil when the
	// allocator did not name one.
	Owner *alloc.Owner
}

// value is the JSON stored under a key.
type value struct {
	Prefix string      `json:"prefix"`
	Owner  *ownerValue `json:"owner,omitempty"`
}

type ownerValue struct {
	Group     string `json:"group,omitempty"`
	Resource  string `json:"resource,omitempty"`
	Namespace string `json:"namespace,omitempty"`
	Name      string `json:"name,omitempty"`
}

// Create records key if no record of it exists. If one does, the error
// wraps alloc.ErrAllocated and the existing record is left as it is.
func (s *Store) Create(ctx context.Context, key netip.Prefix) error {
	if !key.IsValid() {
		return fmt.Errorf("etcdstore: cannot record invalid prefix %v", key)
	}
	v := value{Prefix: key.String()}
	if o, ok := alloc.OwnerFrom(ctx); ok {
		v.Owner = &ownerValue{Group: o.Group, Resource: o.Resource, Namespace: o.Namespace, Name: o.Name}
	}
	data, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("etcdstore: encoding the record of %s: %w", key, err)
	}
	k := s.Key(key)
	resp, err := s.kv.Txn(ctx).
		If(clientv3.Compare(clientv3.CreateRevision(k), "=", 0)).
		Then(clientv3.OpPut(k, string(data))).
		Commit()
	if err != nil {
		return fmt.Errorf("etcdstore: recording %s at %s: %w", key, k, err)
	}
	if !resp.Succeeded {
		return &alloc.AllocatedError{What: key.String()}
	}
	return nil
}

// Delete removes key's record; an absent record is not an error.
func (s *Store) Delete(ctx context.Context, key netip.Prefix) error {
	if !key.IsValid() {
		return fmt.Errorf("etcdstore: cannot delete the record of invalid prefix %v", key)
	}
	k := s.Key(key)
	if _, err := s.kv.Delete(ctx, k); err != nil {
		return fmt.Errorf("etcdstore: deleting the record of %s at %s: %w", key, k, err)
	}
	return nil
}

// Get returns key's record, and false if there is none.
func (s *Store) Get(ctx context.Context, key netip.Prefix) (Record, bool, error) {
	if !key.IsValid() {
		return Record{}, false, fmt.Errorf("etcdstore: cannot read the record of invalid prefix %v", key)
	}
	k := s.Key(key)
	resp, err := s.kv.Get(ctx, k)
	if err != nil {
		return Record{}, false, fmt.Errorf("etcdstore: reading the record of %s at %s: %w", key, k, err)
	}
	if len(resp.Kvs) == 0 {
		return Record{}, false, nil
	}
	r, err := s.decode(resp.Kvs[0].Key, resp.Kvs[0].Value)
	return r, err == nil, err
}

// List calls fn, in key order (family, then address, then prefix length),
// for every record whose key lies within the prefix: the same family, an
// address inside it and a prefix length at least its own. The records come
// from one range read at a single revision, paged.
func (s *Store) List(ctx context.Context, within netip.Prefix, fn func(key netip.Prefix) error) error {
	return s.ListRecords(ctx, within, func(r Record) error { return fn(r.Prefix) })
}

// Scan calls fn for every key in [from, end), in pages of listPageSize
// read at one revision, so it sees one consistent snapshot however many
// pages it takes. With keysOnly, values are not read.
func Scan(ctx context.Context, kv clientv3.KV, from, end string, keysOnly bool, fn func(key, value []byte) error) error {
	return ScanAt(ctx, kv, 0, from, end, keysOnly, fn)
}

// ScanAt is Scan at etcd revision rev, or at the current one when rev is
// 0. Reading at a given revision lets a caller compare the keys with
// something else read at that revision (the API's resourceVersion of a
// list is one); a revision etcd has compacted away fails with
// rpctypes.ErrCompacted.
func ScanAt(ctx context.Context, kv clientv3.KV, rev int64, from, end string, keysOnly bool, fn func(key, value []byte) error) error {
	for {
		opts := []clientv3.OpOption{clientv3.WithRange(end), clientv3.WithLimit(listPageSize)}
		if keysOnly {
			opts = append(opts, clientv3.WithKeysOnly())
		}
		if rev != 0 {
			opts = append(opts, clientv3.WithRev(rev))
		}
		resp, err := kv.Get(ctx, from, opts...)
		if err != nil {
			return err
		}
		if rev == 0 {
			rev = resp.Header.Revision
		}
		for _, kv := range resp.Kvs {
			if err := fn(kv.Key, kv.Value); err != nil {
				return err
			}
		}
		if !resp.More || len(resp.Kvs) == 0 {
			return nil
		}
		from = string(resp.Kvs[len(resp.Kvs)-1].Key) + "\x00"
	}
}

// ListRecords is List with the owners.
func (s *Store) ListRecords(ctx context.Context, within netip.Prefix, fn func(Record) error) error {
	if !within.IsValid() {
		return fmt.Errorf("etcdstore: cannot list within invalid prefix %v", within)
	}
	start, end := keyRange(within)
	err := Scan(ctx, s.kv, s.prefix+start, s.prefix+end, false, func(key, value []byte) error {
		r, err := s.decode(key, value)
		if err != nil {
			return err
		}
		if !contains(within, r.Prefix) {
			return nil // a shorter prefix that starts inside within
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		return fn(r)
	})
	if err != nil {
		return fmt.Errorf("etcdstore: listing records within %s under %s: %w", within, s.prefix, err)
	}
	return nil
}

func (s *Store) decode(k, v []byte) (Record, error) {
	p, err := decodeKey(strings.TrimPrefix(string(k), s.prefix))
	if err != nil {
		return Record{}, fmt.Errorf("etcdstore: %w (delete it with etcdctl if nothing should be there)", err)
	}
	r := Record{Prefix: p}
	var val value
	if len(v) > 0 && json.Unmarshal(v, &val) == nil && val.Owner != nil {
		r.Owner = &alloc.Owner{Group: val.Owner.Group, Resource: val.Owner.Resource, Namespace: val.Owner.Namespace, Name: val.Owner.Name}
	}
	return r, nil
}
