package alloc

import (
	"bytes"
	"cmp"
	"errors"
	"net/netip"
	"slices"
	"strings"
	"sync"
)

// PodIPStore keeps the pod-address reservations of one network, as
// host-local's backend/store does: the policy (PodIPs) decides which address
// to hand out, the store only keeps records, in transactions, and knows
// nothing of ranges, gateways or cool-downs. MemPodIPStore keeps them in
// memory (tests); internal/alloc/boltstore keeps them in duet-ipam's bbolt
// file, which the CNI plugin and the Duet agent share.
//
// Errors a store meets itself (a disk, a database) are returned wrapped in
// a *StoreError, so that callers tell them from the policy's refusals.
type PodIPStore interface {
	// Begin starts a transaction, which must end with Commit or Rollback.
	// Writable transactions are serialised: every change of one is kept
	// at Commit, none at Rollback.
	Begin(writable bool) (PodIPTxn, error)
}

// PodIPTxn is one transaction on a PodIPStore. It holds four kinds of
// record, each an index the policy needs so that no call walks the whole
// store: per address, its record (held or cooling); per attachment, the
// addresses it holds; per range set, the address reserved last (the
// round-robin cursor); and the cool-down queue, oldest release first.
type PodIPTxn interface {
	// Commit keeps the transaction's changes (on disk, for a durable
	// store, before it returns) and ends it.
	Commit() error
	// Rollback drops the transaction's changes and ends it; after Commit
	// it does nothing.
	Rollback() error

	// Record returns a's record, if it has one.
	Record(a netip.Addr) (PodIPRecord, bool, error)
	// PutRecord writes a's record.
	PutRecord(a netip.Addr, r PodIPRecord) error
	// DeleteRecord removes a's record; an absent one is not an error.
	DeleteRecord(a netip.Addr) error
	// NextFree returns the first address in [from, to] (one family) that
	// has no record. It costs the records it passes, not the range.
	NextFree(from, to netip.Addr) (netip.Addr, bool, error)
	// Records calls fn for each record in [from, to] (one family), in
	// address order.
	Records(from, to netip.Addr, fn func(netip.Addr, PodIPRecord) error) error

	// Holdings returns the addresses o holds, nil if none, in the order
	// they were put. The caller must not change the slice.
	Holdings(o Attachment) ([]netip.Addr, error)
	// PutHoldings records the addresses o holds; the store keeps a copy.
	PutHoldings(o Attachment, addrs []netip.Addr) error
	// DeleteHoldings forgets o's addresses (their records stay).
	DeleteHoldings(o Attachment) error
	// EachHolding calls fn for every attachment with addresses, ordered by
	// container ID and interface.
	EachHolding(fn func(Attachment, []netip.Addr) error) error

	// Cursor returns the address reserved last in the named range set, or
	// the zero Addr.
	Cursor(set string) (netip.Addr, error)
	// PutCursor records the address reserved last in the named set.
	PutCursor(set string, a netip.Addr) error

	// Enqueue adds a, released at the time at (unix ns), to the cool-down
	// queue; Dequeue removes that entry.
	Enqueue(at int64, a netip.Addr) error
	Dequeue(at int64, a netip.Addr) error
	// NextQueued returns the queue entry that follows (at, a), oldest
	// first; 0 and the zero Addr ask for the oldest entry. The queue is
	// ordered by time, then by the address's bytes.
	NextQueued(at int64, a netip.Addr) (int64, netip.Addr, bool, error)
}

// PodIPRecord is what a store keeps per address: the attachment holding
// it, or since when it cools down.
type PodIPRecord struct {
	Holder Attachment
	// ReleasedAt is set (unix ns) while the address cools down; a cooling
	// record has no holder.
	ReleasedAt int64
}

// HeldBy reports whether the record says that o holds the address.
func (r PodIPRecord) HeldBy(o Attachment) bool {
	return r.ReleasedAt == 0 && r.Holder == o
}

// MemPodIPStore is a PodIPStore in memory, safe for concurrent use: the
// store of tests and benchmarks, and the reference the bbolt store is
// tested against. Writable transactions are serialised and undone on
// Rollback.
type MemPodIPStore struct {
	mu       sync.RWMutex
	records  map[netip.Addr]PodIPRecord
	holdings map[Attachment][]netip.Addr
	cursors  map[string]netip.Addr
	queue    []queued // sorted as bbolt sorts the keys
	// undo is the writable transaction's log, reused: it holds mu.
	undo undoLog
	// txns and addrs are slabs that writable transactions (holding mu)
	// carve handles and holdings from, so that a write allocates once per
	// slab rather than once per call. Nothing carved is ever handed out
	// twice: a stale handle still reports its end, and a holdings slice a
	// caller kept is never overwritten.
	txns  []memTxn
	addrs []netip.Addr
}

// slab sizes: a handle is 16 bytes, an address 24.
const (
	memTxnSlab  = 64
	memAddrSlab = 128
)

type queued struct {
	at int64
	a  netip.Addr
}

// NewMemPodIPStore returns an empty MemPodIPStore.
func NewMemPodIPStore() *MemPodIPStore {
	m := &MemPodIPStore{
		records:  map[netip.Addr]PodIPRecord{},
		holdings: map[Attachment][]netip.Addr{},
		cursors:  map[string]netip.Addr{},
	}
	return m
}

func (m *MemPodIPStore) Begin(writable bool) (PodIPTxn, error) {
	if !writable {
		m.mu.RLock()
		return &memTxn{m: m, open: true}, nil
	}
	m.mu.Lock()
	if len(m.txns) == 0 {
		m.txns = make([]memTxn, memTxnSlab)
	}
	t := &m.txns[0]
	m.txns = m.txns[1:]
	*t = memTxn{m: m, open: true, writable: true}
	return t, nil
}

var (
	errReadOnly = errors.New("write in a read-only transaction")
	errTxDone   = errors.New("transaction has ended")
)

// memTxn changes the store in place and logs in m.undo how to undo each
// change.
type memTxn struct {
	m              *MemPodIPStore
	open, writable bool
}

// undoLog has one log per kind of record: changes to different kinds are
// independent, so each is undone on its own, newest first.
type undoLog struct {
	records  []recordChange
	holdings []holdingsChange
	cursors  []cursorChange
	queue    []queueChange
}

type recordChange struct {
	addr    netip.Addr
	old     PodIPRecord
	present bool
}

type holdingsChange struct {
	owner   Attachment
	old     []netip.Addr
	present bool
}

type cursorChange struct {
	set     string
	old     netip.Addr
	present bool
}

type queueChange struct {
	q     queued
	added bool // Enqueue, else Dequeue
}

func (t *memTxn) Commit() error {
	if !t.open {
		return &StoreError{Op: "memory store", Err: errTxDone}
	}
	t.end()
	return nil
}

func (t *memTxn) Rollback() error {
	if !t.open {
		return nil
	}
	m := t.m
	u := &m.undo
	for i := len(u.records) - 1; i >= 0; i-- {
		c := &u.records[i]
		restore(m.records, c.addr, c.old, c.present)
	}
	for i := len(u.holdings) - 1; i >= 0; i-- {
		c := &u.holdings[i]
		restore(m.holdings, c.owner, c.old, c.present)
	}
	for i := len(u.cursors) - 1; i >= 0; i-- {
		c := &u.cursors[i]
		restore(m.cursors, c.set, c.old, c.present)
	}
	for i := len(u.queue) - 1; i >= 0; i-- {
		c := &u.queue[i]
		j, found := m.find(c.q.at, c.q.a)
		switch {
		case c.added && found:
			m.queue = slices.Delete(m.queue, j, j+1)
		case !c.added && !found:
			m.queue = slices.Insert(m.queue, j, c.q)
		}
	}
	t.end()
	return nil
}

// end empties the logs and lets the next transaction in. The logs keep
// their backing arrays (and, until overwritten, the old values in them):
// a store of tests can afford that, and writes then allocate nothing.
func (t *memTxn) end() {
	t.open = false
	if !t.writable {
		t.m.mu.RUnlock()
		return
	}
	u := &t.m.undo
	u.records, u.holdings, u.cursors, u.queue = u.records[:0], u.holdings[:0], u.cursors[:0], u.queue[:0]
	t.m.mu.Unlock()
}

// check refuses writes outside an open writable transaction.
func (t *memTxn) check() error {
	switch {
	case !t.open:
		return &StoreError{Op: "memory store", Err: errTxDone}
	case !t.writable:
		return &StoreError{Op: "memory store", Err: errReadOnly}
	}
	return nil
}

// restore puts a map entry back as it was: old, or absent.
func restore[K comparable, V any](m map[K]V, k K, old V, present bool) {
	if present {
		m[k] = old
	} else {
		delete(m, k)
	}
}

func (t *memTxn) Record(a netip.Addr) (PodIPRecord, bool, error) {
	r, ok := t.m.records[a]
	return r, ok, nil
}

func (t *memTxn) PutRecord(a netip.Addr, r PodIPRecord) error {
	if err := t.check(); err != nil {
		return err
	}
	old, had := t.m.records[a]
	t.m.undo.records = append(t.m.undo.records, recordChange{a, old, had})
	t.m.records[a] = r
	return nil
}

func (t *memTxn) DeleteRecord(a netip.Addr) error {
	if err := t.check(); err != nil {
		return err
	}
	old, had := t.m.records[a]
	if !had {
		return nil
	}
	t.m.undo.records = append(t.m.undo.records, recordChange{a, old, true})
	delete(t.m.records, a)
	return nil
}

// NextFree probes the addresses from from on, one lookup per record
// passed, as bbolt's cursor walks its keys.
func (t *memTxn) NextFree(from, to netip.Addr) (netip.Addr, bool, error) {
	for a := from; a.IsValid(); a = a.Next() {
		if _, held := t.m.records[a]; !held {
			return a, true, nil
		}
		if a == to {
			break
		}
	}
	return netip.Addr{}, false, nil
}

func (t *memTxn) Records(from, to netip.Addr, fn func(netip.Addr, PodIPRecord) error) error {
	var addrs []netip.Addr
	for a := range t.m.records {
		if a.BitLen() == from.BitLen() && from.Compare(a) <= 0 && a.Compare(to) <= 0 {
			addrs = append(addrs, a)
		}
	}
	slices.SortFunc(addrs, netip.Addr.Compare)
	for _, a := range addrs {
		if err := fn(a, t.m.records[a]); err != nil {
			return err
		}
	}
	return nil
}

func (t *memTxn) Holdings(o Attachment) ([]netip.Addr, error) {
	return t.m.holdings[o], nil
}

func (t *memTxn) PutHoldings(o Attachment, addrs []netip.Addr) error {
	if err := t.check(); err != nil {
		return err
	}
	old, had := t.m.holdings[o]
	t.m.undo.holdings = append(t.m.undo.holdings, holdingsChange{o, old, had})
	t.m.holdings[o] = t.m.keep(addrs)
	return nil
}

// keep returns a copy of addrs carved from the address slab (mu held for
// writing), capped so that appending to it cannot reach its neighbours.
func (m *MemPodIPStore) keep(addrs []netip.Addr) []netip.Addr {
	n := len(addrs)
	if n == 0 {
		return slices.Clone(addrs) // nil stays nil
	}
	if n > memAddrSlab/4 {
		return slices.Clone(addrs)
	}
	if len(m.addrs) < n {
		m.addrs = make([]netip.Addr, memAddrSlab)
	}
	c := m.addrs[:n:n]
	m.addrs = m.addrs[n:]
	copy(c, addrs)
	return c
}

func (t *memTxn) DeleteHoldings(o Attachment) error {
	if err := t.check(); err != nil {
		return err
	}
	old, had := t.m.holdings[o]
	if !had {
		return nil
	}
	t.m.undo.holdings = append(t.m.undo.holdings, holdingsChange{o, old, true})
	delete(t.m.holdings, o)
	return nil
}

func (t *memTxn) EachHolding(fn func(Attachment, []netip.Addr) error) error {
	owners := make([]Attachment, 0, len(t.m.holdings))
	for o := range t.m.holdings {
		owners = append(owners, o)
	}
	// The order of bbolt's keys, "containerID/ifname".
	slices.SortFunc(owners, func(a, b Attachment) int { return strings.Compare(a.String(), b.String()) })
	for _, o := range owners {
		if err := fn(o, t.m.holdings[o]); err != nil {
			return err
		}
	}
	return nil
}

func (t *memTxn) Cursor(set string) (netip.Addr, error) {
	return t.m.cursors[set], nil
}

func (t *memTxn) PutCursor(set string, a netip.Addr) error {
	if err := t.check(); err != nil {
		return err
	}
	old, had := t.m.cursors[set]
	t.m.undo.cursors = append(t.m.undo.cursors, cursorChange{set, old, had})
	t.m.cursors[set] = a
	return nil
}

// compareQueued orders queue entries as bbolt orders their keys: the time
// as 8 big-endian bytes, then the address bytes (none for the zero Addr).
func compareQueued(x, y queued) int {
	if c := cmp.Compare(uint64(x.at), uint64(y.at)); c != 0 {
		return c
	}
	return bytes.Compare(x.a.AsSlice(), y.a.AsSlice())
}

// find returns where (at, a) is or would be in the queue.
func (m *MemPodIPStore) find(at int64, a netip.Addr) (int, bool) {
	return slices.BinarySearchFunc(m.queue, queued{at, a}, compareQueued)
}

func (t *memTxn) Enqueue(at int64, a netip.Addr) error {
	if err := t.check(); err != nil {
		return err
	}
	i, found := t.m.find(at, a)
	if found {
		return nil
	}
	t.m.undo.queue = append(t.m.undo.queue, queueChange{queued{at, a}, true})
	t.m.queue = slices.Insert(t.m.queue, i, queued{at, a})
	return nil
}

func (t *memTxn) Dequeue(at int64, a netip.Addr) error {
	if err := t.check(); err != nil {
		return err
	}
	i, found := t.m.find(at, a)
	if !found {
		return nil
	}
	t.m.undo.queue = append(t.m.undo.queue, queueChange{queued{at, a}, false})
	t.m.queue = slices.Delete(t.m.queue, i, i+1)
	return nil
}

func (t *memTxn) NextQueued(at int64, a netip.Addr) (int64, netip.Addr, bool, error) {
	i, found := t.m.find(at, a)
	if found {
		i++
	}
	if i >= len(t.m.queue) {
		return 0, netip.Addr{}, false, nil
	}
	q := t.m.queue[i]
	return q.at, q.a, true, nil
}
