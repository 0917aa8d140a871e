package alloc

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"time"

	"lukechampine.com/uint128"

	"github.com/duet-net/duet/internal/netaddr"
)

// PodIPs hands out pod addresses from one node CIDR, round-robin: each
// search starts after the address handed out last, so a released address is
// not reused until the cursor comes round. On top of that an address just
// released cools down: it is not handed out again before the cool-down has
// passed, unless nothing else is free. Both keep a new pod from receiving
// traffic (conntrack entries, stale endpoints) meant for a deleted one.
//
// The first usable address is the node's gateway and never goes to a pod;
// the network address is never handed out, nor the IPv4 broadcast address.
type PodIPs struct {
	*pool
	cooldown time.Duration
	now      func() time.Time

	// Guarded by pool.mu. Cooling slots stay set in the index, so searches
	// skip them at no cost; coolQueue holds them oldest first.
	cursor    uint128.Uint128
	cooling   map[uint128.Uint128]time.Time
	coolQueue []cooled
}

type cooled struct {
	slot uint128.Uint128
	at   time.Time
}

// PodIPOptions are the optional parts of a PodIPs allocator.
type PodIPOptions struct {
	// Cooldown is how long a released address rests before reuse.
	Cooldown time.Duration
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// Store records allocations; nil keeps them in memory only.
	Store Store
}

// NewPodIPs returns an allocator for the node CIDR nodeCIDR.
func NewPodIPs(nodeCIDR netip.Prefix, opts PodIPOptions) (*PodIPs, error) {
	if nodeCIDR.Masked() != nodeCIDR {
		return nil, fmt.Errorf("node CIDR %s has host bits set; the network is %s", nodeCIDR, nodeCIDR.Masked())
	}
	max := netaddr.MaxNodeMaskIPv6
	if nodeCIDR.Addr().Is4() {
		max = netaddr.MaxNodeMaskIPv4
	}
	if nodeCIDR.Bits() > max {
		return nil, fmt.Errorf("node CIDR %s is too small for a gateway and a pod: the mask must be at most /%d", nodeCIDR, max)
	}
	last := netaddr.LastOffset(nodeCIDR).Sub64(1)
	if nodeCIDR.Addr().Is4() {
		last = last.Sub64(1)
	}
	now := opts.Now
	if now == nil {
		now = time.Now
	}
	a := &PodIPs{
		pool:     newPool(nodeCIDR, uint128.From64(1), 0, last, opts.Store),
		cooldown: opts.Cooldown,
		now:      now,
		cursor:   uint128.From64(1),
		cooling:  map[uint128.Uint128]time.Time{},
	}
	a.reserve(uint128.Zero, "the node's gateway")
	return a, nil
}

// CIDR is the node CIDR.
func (a *PodIPs) CIDR() netip.Prefix { return a.rng }

// Gateway is the node's address in its pod network.
func (a *PodIPs) Gateway() netip.Addr { return a.key(uint128.Zero).Addr() }

// Used is the number of addresses in use, the gateway included and
// cooling addresses not.
func (a *PodIPs) Used() uint64 {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.used - uint64(len(a.cooling))
}

// Free is the number of addresses that can be handed out, cooling ones
// included (they are handed out when nothing else is left).
func (a *PodIPs) Free() uint128.Uint128 {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.size().Sub64(a.used - uint64(len(a.cooling)))
}

// AllocateNext takes the next free address after the last one handed out,
// or the address that has cooled longest if every other one is taken.
func (a *PodIPs) AllocateNext(ctx context.Context) (netip.Addr, error) {
	slot, err := a.claimNextPod(ctx)
	if err != nil {
		return netip.Addr{}, err
	}
	return a.key(slot).Addr(), nil
}

func (a *PodIPs) claimNextPod(ctx context.Context) (uint128.Uint128, error) {
	for {
		a.mu.Lock()
		a.expire()
		slot, ok := a.searchFrom(a.cursor, uint128.Zero, a.last)
		if ok {
			a.index.set(slot)
			a.used++
		} else if slot, ok = a.oldestCooling(); ok {
			a.uncool(slot) // stays set in the index, now as used
		} else {
			a.mu.Unlock()
			return uint128.Zero, &FullError{Msg: fmt.Sprintf("range is full: all %s usable addresses of node CIDR %s are allocated", a.size(), a.rng)}
		}
		if slot.Equals(a.last) {
			a.cursor = uint128.Zero
		} else {
			a.cursor = slot.Add64(1)
		}
		a.mu.Unlock()
		if a.store == nil {
			return slot, nil
		}
		err := a.store.Create(ctx, a.key(slot))
		switch {
		case err == nil:
			return slot, nil
		case errors.Is(err, ErrAllocated):
			continue
		default:
			a.mu.Lock()
			if a.index.clear(slot) {
				a.used--
			}
			a.mu.Unlock()
			return uint128.Zero, fmt.Errorf("recording %s: %w", a.key(slot), err)
		}
	}
}

// Allocate takes a specific address. An explicit request may take a
// cooling address: the cool-down only steers automatic choice.
func (a *PodIPs) Allocate(ctx context.Context, ip netip.Addr) error {
	slot, err := a.addrSlot(ip)
	if err != nil {
		return err
	}
	if why, ok := a.reserved[slot]; ok {
		return &ReservedError{Value: ip.String(), For: why}
	}
	a.mu.Lock()
	if _, ok := a.cooling[slot]; ok {
		a.uncool(slot)
		a.index.clear(slot) // claimSlot sets it again
		a.used--
	}
	a.mu.Unlock()
	return a.claimSlot(ctx, slot)
}

// Release frees an address and starts its cool-down. Releasing a free or
// cooling address, or the gateway, does nothing.
func (a *PodIPs) Release(ctx context.Context, ip netip.Addr) error {
	slot, err := a.addrSlot(ip)
	if err != nil {
		return err
	}
	if _, ok := a.reserved[slot]; ok {
		return nil
	}
	if a.store != nil {
		if err := a.store.Delete(ctx, a.key(slot)); err != nil {
			return fmt.Errorf("releasing %s: %w", ip, err)
		}
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if _, ok := a.cooling[slot]; ok || !a.index.test(slot) {
		return nil
	}
	if a.cooldown <= 0 {
		a.index.clear(slot)
		a.used--
		return nil
	}
	at := a.now()
	a.cooling[slot] = at
	a.coolQueue = append(a.coolQueue, cooled{slot, at})
	return nil
}

// Has reports whether ip is in use (cooling addresses are not).
func (a *PodIPs) Has(ip netip.Addr) bool {
	slot, err := a.addrSlot(ip)
	if err != nil {
		return false
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	_, cooling := a.cooling[slot]
	return a.index.test(slot) && !cooling
}

// Sync rebuilds the index from the store; cooling addresses stay cooling.
func (a *PodIPs) Sync(ctx context.Context) error {
	if err := a.pool.Sync(ctx); err != nil {
		return err
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	for slot := range a.cooling {
		if !a.index.set(slot) {
			a.uncool(slot) // taken meanwhile by another allocator
		} else {
			a.used++
		}
	}
	return nil
}

// expire frees the cooling addresses whose cool-down has passed.
func (a *PodIPs) expire() {
	now := a.now()
	for len(a.coolQueue) > 0 {
		c := a.coolQueue[0]
		at, ok := a.cooling[c.slot]
		if ok && at.Equal(c.at) {
			if now.Sub(at) < a.cooldown {
				return
			}
			delete(a.cooling, c.slot)
			a.index.clear(c.slot)
			a.used--
		}
		a.coolQueue = a.coolQueue[1:]
	}
}

// oldestCooling returns the slot that has cooled longest.
func (a *PodIPs) oldestCooling() (uint128.Uint128, bool) {
	for len(a.coolQueue) > 0 {
		c := a.coolQueue[0]
		if at, ok := a.cooling[c.slot]; ok && at.Equal(c.at) {
			return c.slot, true
		}
		a.coolQueue = a.coolQueue[1:] // stale entry
	}
	return uint128.Zero, false
}

// uncool ends a slot's cool-down, leaving its index bit alone.
func (a *PodIPs) uncool(slot uint128.Uint128) {
	delete(a.cooling, slot)
}

func isAllocated(err error) bool { return errors.Is(err, ErrAllocated) }
