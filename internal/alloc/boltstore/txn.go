package boltstore

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"net/netip"

	bolt "go.etcd.io/bbolt"

	"github.com/duet-net/duet/internal/alloc"
)

// addrRecord is an address's value in the v4 and v6 buckets.
type addrRecord struct {
	ContainerID string `json:"id,omitempty"`
	IfName      string `json:"if,omitempty"`
	// ReleasedAt is set (unix ns) while the address cools down; a cooling
	// record has no owner.
	ReleasedAt int64 `json:"released,omitempty"`
}

// ownerRecord is an attachment's value in the owners bucket.
type ownerRecord struct {
	IPs []netip.Addr `json:"ips"`
}

// ownerKey is the owners bucket's key. Interface names cannot contain
// '/', so the key is unambiguous.
func ownerKey(o alloc.Attachment) []byte { return []byte(o.ContainerID + "/" + o.IfName) }

func ownerFromKey(k []byte) alloc.Attachment {
	i := bytes.LastIndexByte(k, '/')
	if i < 0 {
		return alloc.Attachment{ContainerID: string(k)}
	}
	return alloc.Attachment{ContainerID: string(k[:i]), IfName: string(k[i+1:])}
}

// addrKey is an address's key: its 4 or 16 bytes, in buf.
func addrKey(buf *[16]byte, a netip.Addr) []byte {
	if a.Is4() {
		b := a.As4()
		copy(buf[:], b[:])
		return buf[:4]
	}
	*buf = a.As16()
	return buf[:]
}

func coolKey(at int64, a netip.Addr) []byte {
	k := make([]byte, 8, 8+16)
	binary.BigEndian.PutUint64(k, uint64(at))
	return append(k, a.AsSlice()...)
}

// txn is an alloc.PodIPTxn over one bbolt transaction.
type txn struct {
	tx                               *bolt.Tx
	path                             string
	done                             bool
	v4, v6, owners, cursors, cooling *bolt.Bucket
}

func newTxn(tx *bolt.Tx) *txn {
	return &txn{
		tx:      tx,
		v4:      tx.Bucket(bucketV4),
		v6:      tx.Bucket(bucketV6),
		owners:  tx.Bucket(bucketOwners),
		cursors: tx.Bucket(bucketCursors),
		cooling: tx.Bucket(bucketCooling),
	}
}

// Commit writes the transaction to disk (bbolt syncs the file before it
// returns).
func (t *txn) Commit() error {
	t.done = true
	if err := t.tx.Commit(); err != nil {
		return &alloc.StoreError{Op: "committing to " + t.path, Err: err}
	}
	return nil
}

// Rollback drops the transaction; after Commit it does nothing.
func (t *txn) Rollback() error {
	if t.done {
		return nil
	}
	t.done = true
	if err := t.tx.Rollback(); err != nil {
		return &alloc.StoreError{Op: "rolling back on " + t.path, Err: err}
	}
	return nil
}

// fail wraps an error of bbolt's or of decoding as a store failure.
func fail(op string, err error) error {
	return &alloc.StoreError{Op: op, Err: err}
}

func (t *txn) addrs(a netip.Addr) *bolt.Bucket {
	if a.Is4() {
		return t.v4
	}
	return t.v6
}

func decodeRecord(a netip.Addr, v []byte) (alloc.PodIPRecord, error) {
	var rec addrRecord
	if err := json.Unmarshal(v, &rec); err != nil {
		return alloc.PodIPRecord{}, fail(fmt.Sprintf("record of %s", a), err)
	}
	return alloc.PodIPRecord{Holder: alloc.Attachment{ContainerID: rec.ContainerID, IfName: rec.IfName}, ReleasedAt: rec.ReleasedAt}, nil
}

func (t *txn) Record(a netip.Addr) (alloc.PodIPRecord, bool, error) {
	var buf [16]byte
	v := t.addrs(a).Get(addrKey(&buf, a))
	if v == nil {
		return alloc.PodIPRecord{}, false, nil
	}
	rec, err := decodeRecord(a, v)
	return rec, err == nil, err
}

func (t *txn) PutRecord(a netip.Addr, r alloc.PodIPRecord) error {
	v, err := json.Marshal(addrRecord{ContainerID: r.Holder.ContainerID, IfName: r.Holder.IfName, ReleasedAt: r.ReleasedAt})
	if err != nil {
		return fail(fmt.Sprintf("record of %s", a), err)
	}
	if err := t.addrs(a).Put(a.AsSlice(), v); err != nil {
		return fail(fmt.Sprintf("writing the record of %s", a), err)
	}
	return nil
}

func (t *txn) DeleteRecord(a netip.Addr) error {
	var buf [16]byte
	if err := t.addrs(a).Delete(addrKey(&buf, a)); err != nil {
		return fail(fmt.Sprintf("deleting the record of %s", a), err)
	}
	return nil
}

// NextFree walks the sorted keys from the first at or after from: while
// each one is the candidate, the candidate moves on by one.
func (t *txn) NextFree(from, to netip.Addr) (netip.Addr, bool, error) {
	var buf [16]byte
	c := t.addrs(from).Cursor()
	k, _ := c.Seek(addrKey(&buf, from))
	a := from
	for k != nil && bytes.Equal(k, addrKey(&buf, a)) {
		if a == to {
			return netip.Addr{}, false, nil
		}
		a = a.Next()
		k, _ = c.Next()
	}
	return a, true, nil
}

func (t *txn) Records(from, to netip.Addr, fn func(netip.Addr, alloc.PodIPRecord) error) error {
	var buf [16]byte
	c := t.addrs(from).Cursor()
	end := to.AsSlice()
	for k, v := c.Seek(addrKey(&buf, from)); k != nil && bytes.Compare(k, end) <= 0; k, v = c.Next() {
		a, ok := netip.AddrFromSlice(k)
		if !ok {
			return fail("reading records", fmt.Errorf("key %x is not an address", k))
		}
		rec, err := decodeRecord(a, v)
		if err != nil {
			return err
		}
		if err := fn(a, rec); err != nil {
			return err
		}
	}
	return nil
}

func (t *txn) Holdings(o alloc.Attachment) ([]netip.Addr, error) {
	v := t.owners.Get(ownerKey(o))
	if v == nil {
		return nil, nil
	}
	var rec ownerRecord
	if err := json.Unmarshal(v, &rec); err != nil {
		return nil, fail(fmt.Sprintf("owner record %s", o), err)
	}
	if rec.IPs == nil {
		rec.IPs = []netip.Addr{} // present, if empty
	}
	return rec.IPs, nil
}

func (t *txn) PutHoldings(o alloc.Attachment, addrs []netip.Addr) error {
	v, err := json.Marshal(ownerRecord{IPs: addrs})
	if err != nil {
		return fail(fmt.Sprintf("owner record %s", o), err)
	}
	if err := t.owners.Put(ownerKey(o), v); err != nil {
		return fail(fmt.Sprintf("writing the owner record %s", o), err)
	}
	return nil
}

func (t *txn) DeleteHoldings(o alloc.Attachment) error {
	if err := t.owners.Delete(ownerKey(o)); err != nil {
		return fail(fmt.Sprintf("deleting the owner record %s", o), err)
	}
	return nil
}

func (t *txn) EachHolding(fn func(alloc.Attachment, []netip.Addr) error) error {
	return t.owners.ForEach(func(k, v []byte) error {
		var rec ownerRecord
		if err := json.Unmarshal(v, &rec); err != nil {
			return fail(fmt.Sprintf("owner record %s", k), err)
		}
		return fn(ownerFromKey(k), rec.IPs)
	})
}

// Cursor returns the zero Addr for a cursor that is absent or unreadable:
// the search then starts at the start of the set.
func (t *txn) Cursor(set string) (netip.Addr, error) {
	a, _ := netip.AddrFromSlice(t.cursors.Get([]byte(set)))
	return a, nil
}

func (t *txn) PutCursor(set string, a netip.Addr) error {
	if err := t.cursors.Put([]byte(set), a.AsSlice()); err != nil {
		return fail("writing the cursor of "+set, err)
	}
	return nil
}

func (t *txn) Enqueue(at int64, a netip.Addr) error {
	if err := t.cooling.Put(coolKey(at, a), []byte{}); err != nil {
		return fail(fmt.Sprintf("queueing %s", a), err)
	}
	return nil
}

func (t *txn) Dequeue(at int64, a netip.Addr) error {
	if err := t.cooling.Delete(coolKey(at, a)); err != nil {
		return fail(fmt.Sprintf("dequeueing %s", a), err)
	}
	return nil
}

// NextQueued seeks past (at, a). It skips keys that hold no address; they
// can only come from editing the file by hand.
func (t *txn) NextQueued(at int64, a netip.Addr) (int64, netip.Addr, bool, error) {
	c := t.cooling.Cursor()
	var k []byte
	if at == 0 && !a.IsValid() {
		k, _ = c.First() // the oldest, as expire asks on every call
	} else {
		after := coolKey(at, a)
		if k, _ = c.Seek(after); k != nil && bytes.Equal(k, after) {
			k, _ = c.Next()
		}
	}
	for ; k != nil; k, _ = c.Next() {
		if len(k) < 8 {
			continue
		}
		if a, ok := netip.AddrFromSlice(k[8:]); ok {
			return int64(binary.BigEndian.Uint64(k[:8])), a, true, nil
		}
	}
	return 0, netip.Addr{}, false, nil
}
