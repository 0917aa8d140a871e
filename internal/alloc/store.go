package alloc

import (
	"context"
	"net/netip"
	"sort"
	"sync"
)

// Store is where allocations are recorded when they must outlive the
// process or be shared by several allocators (server replicas): one record
// per allocated address (a /32 or /128 key) or prefix, created only if
// absent. That is all an allocator needs for uniqueness, and it maps
// directly onto an etcd transaction or an IPAddress object.
//
// The allocator decides which key to take; the store only keeps records,
// and knows nothing of ranges or policy.
type Store interface {
	// Create records key. If a record exists it returns an error that
	// wraps ErrAllocated and changes nothing.
	Create(ctx context.Context, key netip.Prefix) error
	// Delete removes key's record. Deleting an absent key is not an error.
	Delete(ctx context.Context, key netip.Prefix) error
	// List calls fn for every record whose key lies within the prefix.
	List(ctx context.Context, within netip.Prefix, fn func(key netip.Prefix) error) error
}

// MemStore is a Store in memory, safe for concurrent use. Several
// allocators sharing one MemStore behave like server replicas sharing etcd,
// which is how the replica tests use it.
type MemStore struct {
	mu   sync.Mutex
	keys map[netip.Prefix]struct{}
}

// NewMemStore returns an empty MemStore.
func NewMemStore() *MemStore {
	return &MemStore{keys: map[netip.Prefix]struct{}{}}
}

func (m *MemStore) Create(_ context.Context, key netip.Prefix) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, ok := m.keys[key]; ok {
		return &AllocatedError{What: key.String()}
	}
	m.keys[key] = struct{}{}
	return nil
}

func (m *MemStore) Delete(_ context.Context, key netip.Prefix) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	delete(m.keys, key)
	return nil
}

func (m *MemStore) List(ctx context.Context, within netip.Prefix, fn func(netip.Prefix) error) error {
	m.mu.Lock()
	keys := make([]netip.Prefix, 0, len(m.keys))
	for k := range m.keys {
		if within.Overlaps(k) && within.Bits() <= k.Bits() {
			keys = append(keys, k)
		}
	}
	m.mu.Unlock()
	sort.Slice(keys, func(i, j int) bool { return keys[i].Addr().Less(keys[j].Addr()) })
	for _, k := range keys {
		if err := ctx.Err(); err != nil {
			return err
		}
		if err := fn(k); err != nil {
			return err
		}
	}
	return nil
}

// Len is the number of records.
func (m *MemStore) Len() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.keys)
}

// Owner names the object an allocation is for, so that a Store can record
// it beside the key (an IPAddress object's parentRef, say). Allocators pass
// it through the context they hand to the Store.
type Owner struct {
	Group, Resource, Namespace, Name string
}

type ownerKey struct{}

// WithOwner returns a context that carries owner to Store calls.
func WithOwner(ctx context.Context, owner Owner) context.Context {
	return context.WithValue(ctx, ownerKey{}, owner)
}

// OwnerFrom returns the owner WithOwner put in ctx, if any.
func OwnerFrom(ctx context.Context) (Owner, bool) {
	o, ok := ctx.Value(ownerKey{}).(Owner)
	return o, ok
}
