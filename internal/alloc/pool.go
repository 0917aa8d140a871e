// Package alloc hands out service IPs, node CIDRs and pod IPs, one
// allocator per range and family. Allocators decide which address or prefix
// to hand out; an optional Store keeps one record per allocation so that
// allocations survive restarts and stay unique across replicas. Without a
// Store the in-memory index is the whole state.
//
// All arithmetic is 128-bit and memory grows with what is allocated, never
// with the size of a range.
package alloc

import (
	"context"
	"errors"
	"fmt"
	"math/bits"
	"math/rand/v2"
	"net/netip"
	"sync"

	"lukechampine.com/uint128"

	"github.com/duet-net/duet/internal/netaddr"
)

// pool is the engine under every allocator: slots 0..last of a range, each
// slot one address or one prefix, a sparse index of taken slots, and the
// optional store. Slot i stands for the block of 2^shift addresses starting
// at offset first + i<<shift from the start of the range.
type pool struct {
	rng   netip.Prefix
	fam   netaddr.Family
	first uint128.Uint128 // offset of slot 0 from the start of rng
	shift int             // host bits of one slot: 0 for addresses
	last  uint128.Uint128 // highest slot
	store Store

	mu    sync.Mutex
	index *sparseSet
	used  uint64 // slots set in index, reserved ones included
	// reserved slots are taken for good: never handed out, never released.
	reserved map[uint128.Uint128]string
}

func newPool(rng netip.Prefix, first uint128.Uint128, shift int, last uint128.Uint128, store Store) *pool {
	return &pool{
		rng: rng, fam: netaddr.FamilyOf(rng.Addr()),
		first: first, shift: shift, last: last, store: store,
		index:    newSparseSet(last),
		reserved: map[uint128.Uint128]string{},
	}
}

// reserve takes a slot for good, for the reason given ("the kubernetes
// service", "the node's gateway").
func (p *pool) reserve(slot uint128.Uint128, why string) {
	p.reserved[slot] = why
	if p.index.set(slot) {
		p.used++
	}
}

// key returns the record key of a slot: an address as a /32 or /128, or a
// prefix.
func (p *pool) key(slot uint128.Uint128) netip.Prefix {
	off := p.first.Add(slot.Lsh(uint(p.shift)))
	a := netaddr.AddrAt(p.rng, off)
	return netip.PrefixFrom(a, a.BitLen()-p.shift)
}

// slotOfAddr maps an address to its slot, if the address can be a slot.
func (p *pool) slotOfAddr(a netip.Addr) (uint128.Uint128, bool) {
	off, ok := netaddr.OffsetOf(p.rng, a)
	if !ok || off.Cmp(p.first) < 0 {
		return uint128.Zero, false
	}
	slot := off.Sub(p.first).Rsh(uint(p.shift))
	if slot.Cmp(p.last) > 0 {
		return uint128.Zero, false
	}
	return slot, true
}

// addrSlot maps an address to its slot, or says why it has none.
func (p *pool) addrSlot(ip netip.Addr) (uint128.Uint128, error) {
	if slot, ok := p.slotOfAddr(ip); ok {
		return slot, nil
	}
	e := &NotInRangeError{What: "IP", Value: ip.String(), ValidRange: p.rng.String()}
	switch {
	case ip == p.rng.Addr():
		e.Reason = "it is the network address"
	case p.rng.Contains(ip):
		e.Reason = "it is the broadcast address"
	}
	return uint128.Zero, e
}

// size is the number of slots.
func (p *pool) size() uint128.Uint128 { return p.last.Add64(1) }

// Used is the number of slots taken, reserved ones included.
func (p *pool) Used() uint64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.used
}

// Free is the number of slots that can still be handed out.
func (p *pool) Free() uint128.Uint128 {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.size().Sub64(p.used)
}

// Size is the number of slots in the range: Used() + Free().
func (p *pool) Size() uint128.Uint128 { return p.size() }

// claimSlot records a specific slot: in the index, then in the store. It is
// the only way slots become taken, so a slot is never handed to two callers:
// the index excludes concurrent callers in this process, the store's
// create-if-absent excludes other processes.
func (p *pool) claimSlot(ctx context.Context, slot uint128.Uint128) error {
	p.mu.Lock()
	if !p.index.set(slot) {
		p.mu.Unlock()
		return ErrAllocated
	}
	p.used++
	p.mu.Unlock()
	if p.store == nil {
		return nil
	}
	err := p.store.Create(ctx, p.key(slot))
	if err != nil && !errors.Is(err, ErrAllocated) {
		// Nothing was recorded: give the slot back.
		p.mu.Lock()
		if p.index.clear(slot) {
			p.used--
		}
		p.mu.Unlock()
	}
	// On ErrAllocated another replica holds the slot: the index keeps it
	// marked, which is the truth.
	return err
}

// claimNext takes the first slot that search finds free, retrying when
// another replica turns out to hold it. search runs with p.mu held.
func (p *pool) claimNext(ctx context.Context, search func() (uint128.Uint128, bool), full func() error) (uint128.Uint128, error) {
	for {
		p.mu.Lock()
		slot, ok := search()
		if !ok {
			p.mu.Unlock()
			return uint128.Zero, full()
		}
		p.index.set(slot)
		p.used++
		p.mu.Unlock()
		if p.store == nil {
			return slot, nil
		}
		err := p.store.Create(ctx, p.key(slot))
		switch {
		case err == nil:
			return slot, nil
		case errors.Is(err, ErrAllocated):
			continue // held elsewhere; now marked here too
		default:
			p.mu.Lock()
			if p.index.clear(slot) {
				p.used--
			}
			p.mu.Unlock()
			return uint128.Zero, fmt.Errorf("recording %s: %w", p.key(slot), err)
		}
	}
}

// releaseSlot frees a slot. The store record goes first: a slot that is
// free in the index but still recorded could be handed out and then fail,
// while the reverse order only delays reuse.
func (p *pool) releaseSlot(ctx context.Context, slot uint128.Uint128) error {
	if _, ok := p.reserved[slot]; ok {
		return nil
	}
	if p.store != nil {
		if err := p.store.Delete(ctx, p.key(slot)); err != nil {
			return fmt.Errorf("releasing %s: %w", p.key(slot), err)
		}
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.index.clear(slot) {
		p.used--
	}
	return nil
}

func (p *pool) has(slot uint128.Uint128) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.index.test(slot)
}

// Sync rebuilds the index from the store, for a process that starts with a
// store holding earlier allocations, or to learn of other replicas' releases.
func (p *pool) Sync(ctx context.Context) error {
	if p.store == nil {
		return nil
	}
	idx := newSparseSet(p.last)
	var used uint64
	err := p.store.List(ctx, p.rng, func(key netip.Prefix) error {
		if key.Bits() != key.Addr().BitLen()-p.shift {
			return nil // another allocator's records within the same range
		}
		if slot, ok := p.slotOfAddr(key.Addr()); ok && idx.set(slot) {
			used++
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("loading allocations in %s: %w", p.rng, err)
	}
	for slot := range p.reserved {
		if idx.set(slot) {
			used++
		}
	}
	p.mu.Lock()
	p.index, p.used = idx, used
	p.mu.Unlock()
	return nil
}

// searchFrom finds a free slot in [lo, hi], looking first at or after start
// and then wrapping to lo. p.mu must be held.
func (p *pool) searchFrom(start, lo, hi uint128.Uint128) (uint128.Uint128, bool) {
	if s, ok := p.index.nextClear(start, hi); ok {
		return s, true
	}
	if start.Cmp(lo) > 0 {
		return p.index.nextClear(lo, start.Sub64(1))
	}
	return uint128.Zero, false
}

// randomIn returns a uniformly random number in [lo, hi].
func randomIn(lo, hi uint128.Uint128) uint128.Uint128 {
	span := hi.Sub(lo) // number of values minus one
	if span.Hi == 0 {
		if span.Lo == ^uint64(0) {
			return lo.Add64(rand.Uint64())
		}
		return lo.Add64(rand.Uint64N(span.Lo + 1))
	}
	// Rejection sampling over the bits that span needs.
	hiMask := ^uint64(0) >> bits.LeadingZeros64(span.Hi)
	for {
		v := uint128.New(rand.Uint64(), rand.Uint64()&hiMask)
		if v.Cmp(span) <= 0 {
			return lo.Add(v)
		}
	}
}
