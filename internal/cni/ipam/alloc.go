package ipam

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"net/netip"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/duet-net/duet/internal/alloc"
)

// txn is the allocation policy over one bbolt transaction: which address
// to hand out (round-robin from the address reserved last, skipping held
// and cooling addresses, the oldest cooling one when nothing else is free)
// and how a reservation and a release are recorded. It is Duet's pod IP
// policy (alloc.PodIPs) with its cursor and cool-down kept on disk, since
// the plugin lives for one call.
type txn struct {
	tx                             *bolt.Tx
	v4, v6, owners, cursors, coolq *bolt.Bucket
}

func newTxn(tx *bolt.Tx) *txn {
	return &txn{
		tx:      tx,
		v4:      tx.Bucket(bucketV4),
		v6:      tx.Bucket(bucketV6),
		owners:  tx.Bucket(bucketOwners),
		cursors: tx.Bucket(bucketCursors),
		coolq:   tx.Bucket(bucketCooling),
	}
}

func (t *txn) addrs(a netip.Addr) *bolt.Bucket {
	if a.Is4() {
		return t.v4
	}
	return t.v6
}

func (t *txn) record(a netip.Addr) (addrRecord, bool, error) {
	var rec addrRecord
	v := t.addrs(a).Get(a.AsSlice())
	if v == nil {
		return rec, false, nil
	}
	if err := json.Unmarshal(v, &rec); err != nil {
		return rec, false, fmt.Errorf("record of %s: %w", a, err)
	}
	return rec, true, nil
}

func (t *txn) putRecord(a netip.Addr, rec addrRecord) error {
	v, err := json.Marshal(rec)
	if err != nil {
		return err
	}
	return t.addrs(a).Put(a.AsSlice(), v)
}

func (t *txn) owner(o Owner) ([]netip.Addr, error) {
	v := t.owners.Get(o.key())
	if v == nil {
		return nil, nil
	}
	var rec ownerRecord
	if err := json.Unmarshal(v, &rec); err != nil {
		return nil, fmt.Errorf("owner record %s: %w", o, err)
	}
	return rec.IPs, nil
}

func (t *txn) putOwner(o Owner, addrs []netip.Addr) error {
	v, err := json.Marshal(ownerRecord{IPs: addrs})
	if err != nil {
		return err
	}
	return t.owners.Put(o.key(), v)
}

// arrange orders an owner's addresses by range set: one per set, in the
// sets' order. It fails if they do not match the sets one to one.
func arrange(addrs []netip.Addr, sets []RangeSet) ([]netip.Addr, bool) {
	if len(addrs) != len(sets) {
		return nil, false
	}
	out := make([]netip.Addr, len(sets))
	used := make([]bool, len(addrs))
	for i, set := range sets {
		for j, a := range addrs {
			if !used[j] {
				if _, ok := set.rangeOf(a); ok {
					out[i], used[j] = a, true
					break
				}
			}
		}
		if !out[i].IsValid() {
			return nil, false
		}
	}
	return out, true
}

// fits returns the addresses an owner holds, ordered by set, if they still
// answer the request: one per range set, recorded as the owner's, and
// including every requested address.
func (t *txn) fits(o Owner, addrs []netip.Addr, sets []RangeSet, requested []netip.Addr) ([]netip.Addr, bool) {
	addrs, ok := arrange(addrs, sets)
	if !ok {
		return nil, false
	}
	for _, a := range addrs {
		if rec, ok, err := t.record(a); err != nil || !ok || !rec.heldBy(o) {
			return nil, false
		}
	}
	for _, r := range requested {
		found := false
		for _, a := range addrs {
			found = found || a == r
		}
		if !found {
			return nil, false
		}
	}
	return addrs, true
}

// release frees an owner's addresses: each starts its cool-down (or is
// deleted when there is none), and the owner's index entry goes.
func (t *txn) release(o Owner, addrs []netip.Addr, now time.Time, cooldown time.Duration) error {
	at := now.UnixNano()
	for _, a := range addrs {
		rec, ok, err := t.record(a)
		if err != nil {
			return err
		}
		if !ok || !rec.heldBy(o) {
			continue // not ours: never free another owner's address
		}
		if cooldown <= 0 {
			if err := t.addrs(a).Delete(a.AsSlice()); err != nil {
				return err
			}
			continue
		}
		if err := t.putRecord(a, addrRecord{ReleasedAt: at}); err != nil {
			return err
		}
		if err := t.coolq.Put(coolKey(at, a), []byte{}); err != nil {
			return err
		}
	}
	return t.owners.Delete(o.key())
}

// expire ends the cool-down of addresses released at least cooldown ago,
// oldest first; the work is bounded by what has expired.
func (t *txn) expire(now time.Time, cooldown time.Duration) error {
	limit := now.Add(-cooldown).UnixNano()
	c := t.coolq.Cursor()
	for k, _ := c.First(); k != nil; k, _ = c.First() {
		at := int64(binary.BigEndian.Uint64(k[:8]))
		if at > limit {
			return nil
		}
		a, ok := netip.AddrFromSlice(k[8:])
		if ok {
			rec, found, err := t.record(a)
			if err != nil {
				return err
			}
			if found && rec.ReleasedAt == at {
				if err := t.addrs(a).Delete(a.AsSlice()); err != nil {
					return err
				}
			}
		}
		if err := c.Delete(); err != nil {
			return err
		}
	}
	return nil
}

// claim records a as held by o; a cooling address leaves the queue.
func (t *txn) claim(o Owner, a netip.Addr, prev addrRecord, existed bool) error {
	if existed && prev.ReleasedAt != 0 {
		if err := t.coolq.Delete(coolKey(prev.ReleasedAt, a)); err != nil {
			return err
		}
	}
	return t.putRecord(a, addrRecord{ContainerID: o.ContainerID, IfName: o.IfName})
}

// claimRequested takes a specific address. An explicit request may take a
// cooling address: the cool-down only steers automatic choice.
func (t *txn) claimRequested(o Owner, set RangeSet, a netip.Addr) (netip.Addr, error) {
	if _, ok := set.rangeOf(a); !ok {
		why := "reserved"
		for _, rr := range set {
			if rr.Gateway == a {
				why = "the gateway"
			}
		}
		return netip.Addr{}, &alloc.ReservedError{Value: a.String(), For: why}
	}
	rec, ok, err := t.record(a)
	if err != nil {
		return netip.Addr{}, err
	}
	if ok && rec.ReleasedAt == 0 && !rec.heldBy(o) {
		return netip.Addr{}, &alloc.AllocatedError{What: fmt.Sprintf("requested IP %s (held by container %s interface %s)", a, rec.ContainerID, rec.IfName)}
	}
	return a, t.claim(o, a, rec, ok)
}

// claimNext takes the next free address of the set after the one reserved
// last, wrapping round; if every address is held or cooling, the one that
// has cooled longest.
func (t *txn) claimNext(o Owner, set RangeSet) (netip.Addr, error) {
	name := []byte(set.String())
	var cur netip.Addr
	if v := t.cursors.Get(name); v != nil {
		cur, _ = netip.AddrFromSlice(v)
	}
	a, ok := t.searchFrom(set, cur)
	var prev addrRecord
	var existed bool
	if !ok {
		if a, prev, ok = t.oldestCooling(set); !ok {
			return netip.Addr{}, t.fullError(set)
		}
		existed = true
	}
	if err := t.claim(o, a, prev, existed); err != nil {
		return netip.Addr{}, err
	}
	return a, t.cursors.Put(name, a.AsSlice())
}

// searchFrom finds the first address after cur that has no record, going
// through the set's ranges in order and wrapping round to end at cur.
func (t *txn) searchFrom(set RangeSet, cur netip.Addr) (netip.Addr, bool) {
	ri := -1
	if cur.IsValid() {
		for i, r := range set {
			if r.Contains(cur) {
				ri = i
				break
			}
		}
	}
	if ri < 0 { // first use, or the ranges changed: start at the start
		a, ok := t.firstFree(set[0], set[0].Start, set[0].End)
		for i := 1; !ok && i < len(set); i++ {
			a, ok = t.firstFree(set[i], set[i].Start, set[i].End)
		}
		return a, ok
	}
	if n := cur.Next(); n.IsValid() {
		if a, ok := t.firstFree(set[ri], n, set[ri].End); ok {
			return a, true
		}
	}
	for k := 1; k < len(set); k++ {
		r := set[(ri+k)%len(set)]
		if a, ok := t.firstFree(r, r.Start, r.End); ok {
			return a, true
		}
	}
	return t.firstFree(set[ri], set[ri].Start, cur)
}

// firstFree returns the first usable address of r in [lo, hi] with no
// record. It walks the sorted keys beside the candidate, so it costs the
// number of records it passes, never the size of the range.
func (t *txn) firstFree(r Range, lo, hi netip.Addr) (netip.Addr, bool) {
	a, ok := r.firstFrom(lo)
	if !ok || a.Compare(hi) > 0 {
		return netip.Addr{}, false
	}
	c := t.addrs(a).Cursor()
	k, _ := c.Seek(a.AsSlice())
	for {
		key := a.AsSlice()
		for k != nil && bytes.Compare(k, key) < 0 {
			k, _ = c.Next()
		}
		if k == nil || !bytes.Equal(k, key) {
			return a, true
		}
		n := a.Next()
		if !n.IsValid() {
			return netip.Addr{}, false
		}
		if a, ok = r.firstFrom(n); !ok || a.Compare(hi) > 0 {
			return netip.Addr{}, false
		}
	}
}

// oldestCooling returns the set's address that has cooled longest.
func (t *txn) oldestCooling(set RangeSet) (netip.Addr, addrRecord, bool) {
	c := t.coolq.Cursor()
	for k, _ := c.First(); k != nil; k, _ = c.Next() {
		a, ok := netip.AddrFromSlice(k[8:])
		if !ok {
			continue
		}
		if _, ok := set.rangeOf(a); !ok {
			continue
		}
		rec, found, err := t.record(a)
		if err != nil || !found || rec.ReleasedAt != int64(binary.BigEndian.Uint64(k[:8])) {
			continue
		}
		return a, rec, true
	}
	return netip.Addr{}, addrRecord{}, false
}

// hasRoom reports whether the set could hand out an address now.
func (t *txn) hasRoom(set RangeSet) bool {
	if _, ok := t.searchFrom(set, netip.Addr{}); ok {
		return true
	}
	_, _, ok := t.oldestCooling(set)
	return ok
}

func (t *txn) fullError(set RangeSet) error {
	held := 0
	for _, r := range set {
		c := t.addrs(r.Start).Cursor()
		end := r.End.AsSlice()
		for k, _ := c.Seek(r.Start.AsSlice()); k != nil && bytes.Compare(k, end) <= 0; k, _ = c.Next() {
			held++
		}
	}
	return &alloc.FullError{Msg: fmt.Sprintf("range is full: all %d usable addresses of %s are reserved; release some (CNI DEL or GC) or give the network a larger range", held, set)}
}

// dropOrphans deletes held address records whose owner has no index entry.
// Reservations are written in one transaction with their index entry, so
// this finds nothing unless the file was edited by hand.
func (t *txn) dropOrphans() error {
	for _, b := range []*bolt.Bucket{t.v4, t.v6} {
		var orphans [][]byte
		err := b.ForEach(func(k, v []byte) error {
			var rec addrRecord
			if err := json.Unmarshal(v, &rec); err != nil {
				return err
			}
			if rec.ReleasedAt == 0 && t.owners.Get(Owner{rec.ContainerID, rec.IfName}.key()) == nil {
				orphans = append(orphans, bytes.Clone(k))
			}
			return nil
		})
		if err != nil {
			return err
		}
		for _, k := range orphans {
			if err := b.Delete(k); err != nil {
				return err
			}
		}
	}
	return nil
}
