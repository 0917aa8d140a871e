package alloc

import (
	"context"
	"fmt"
	"net/netip"

	"lukechampine.com/uint128"
)

// portSpace is where PortRange records live in a Store: port p is recorded
// as the address 0.0.p>>8.p&0xff. Stores key records by prefix, and this
// keeps ports out of the way of any real address (0.0.0.0/16 is never a
// service, node or pod address) without a second kind of store.
var portSpace = netip.MustParsePrefix("0.0.0.0/16")

// PortRange allocates node ports from one range (--service-node-port-range,
// 30000-32767 by default), at random like Kubernetes, with the same
// one-record-per-allocation Store as the address allocators so that server
// replicas never hand out one port twice.
type PortRange struct {
	*pool
	base, end int
}

// NewPortRange returns an allocator for the ports base..end inclusive.
func NewPortRange(base, end int, store Store) (*PortRange, error) {
	if base < 1 || end > 65535 || base > end {
		return nil, fmt.Errorf("invalid port range %d-%d", base, end)
	}
	return &PortRange{
		pool: newPool(portSpace, uint128.From64(uint64(base)), 0, uint128.From64(uint64(end-base)), store),
		base: base, end: end,
	}, nil
}

// String is the range as the flag spells it.
func (r *PortRange) String() string { return fmt.Sprintf("%d-%d", r.base, r.end) }

// Base and End bound the range.
func (r *PortRange) Base() int { return r.base }
func (r *PortRange) End() int  { return r.end }

func (r *PortRange) slot(port int) (uint128.Uint128, error) {
	if port < r.base || port > r.end {
		return uint128.Zero, &NotInRangeError{What: "port", Value: fmt.Sprint(port), ValidRange: r.String()}
	}
	return uint128.From64(uint64(port - r.base)), nil
}

// Allocate takes a specific port, as a user-chosen nodePort does.
func (r *PortRange) Allocate(ctx context.Context, port int) error {
	slot, err := r.slot(port)
	if err != nil {
		return err
	}
	return r.claimSlot(ctx, slot)
}

// AllocateNext takes a random free port.
func (r *PortRange) AllocateNext(ctx context.Context) (int, error) {
	slot, err := r.claimNext(ctx, func() (uint128.Uint128, bool) {
		return r.searchFrom(randomIn(uint128.Zero, r.last), uint128.Zero, r.last)
	}, func() error {
		return &FullError{Msg: fmt.Sprintf("range is full: all %d ports of %s are allocated", r.end-r.base+1, r)}
	})
	if err != nil {
		return 0, err
	}
	return r.base + int(slot.Lo), nil
}

// Release frees a port; releasing a free one does nothing.
func (r *PortRange) Release(ctx context.Context, port int) error {
	slot, err := r.slot(port)
	if err != nil {
		return err
	}
	return r.releaseSlot(ctx, slot)
}

// Has reports whether port is allocated.
func (r *PortRange) Has(port int) bool {
	slot, err := r.slot(port)
	return err == nil && r.has(slot)
}

// PortOfKey returns the port a Store record of a PortRange stands for.
func PortOfKey(key netip.Prefix) (int, bool) {
	if !portSpace.Contains(key.Addr()) || key.Bits() != 32 {
		return 0, false
	}
	b := key.Addr().As4()
	return int(b[2])<<8 | int(b[3]), true
}
