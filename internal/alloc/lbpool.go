package alloc

import (
	"context"
	"fmt"
	"net/netip"

	"lukechampine.com/uint128"

	"github.com/duet-net/duet/internal/netaddr"
)

// LBPool allocates LoadBalancer ingress IPs from one CIDR of a pool. It
// hands out the lowest free address, so that addresses are predictable for
// whoever routes the pool. The network address and, for IPv4 ranges larger
// than a /31, the broadcast address are never handed out: some routers and
// clients mishandle them.
type LBPool struct {
	*pool
}

// NewLBPool returns an allocator for cidr; store (may be nil) keeps one
// record per address.
func NewLBPool(cidr netip.Prefix, store Store) (*LBPool, error) {
	if cidr.Masked() != cidr {
		return nil, fmt.Errorf("load balancer pool %s has host bits set; the network is %s", cidr, cidr.Masked())
	}
	last := netaddr.LastOffset(cidr)
	first := uint128.Zero
	if netaddr.HostBits(cidr) >= 2 {
		first = uint128.From64(1)
		last = last.Sub64(1)
		if cidr.Addr().Is4() {
			last = last.Sub64(1)
		}
	}
	return &LBPool{pool: newPool(cidr, first, 0, last, store)}, nil
}

// CIDR is the pool's range.
func (p *LBPool) CIDR() netip.Prefix { return p.rng }

// Family is the pool's IP family.
func (p *LBPool) Family() netaddr.Family { return p.fam }

// Contains reports whether ip is an address this pool can hand out.
func (p *LBPool) Contains(ip netip.Addr) bool {
	_, ok := p.slotOfAddr(ip)
	return ok
}

// Allocate takes a specific address, as a requested loadBalancerIP does.
func (p *LBPool) Allocate(ctx context.Context, ip netip.Addr) error {
	slot, err := p.addrSlot(ip)
	if err != nil {
		return err
	}
	return p.claimSlot(ctx, slot)
}

// AllocateNext takes the lowest free address.
func (p *LBPool) AllocateNext(ctx context.Context) (netip.Addr, error) {
	slot, err := p.claimNext(ctx, func() (uint128.Uint128, bool) {
		return p.index.nextClear(uint128.Zero, p.last)
	}, func() error {
		return &FullError{Msg: fmt.Sprintf("load balancer pool %s is full: all %s addresses are allocated", p.rng, p.size())}
	})
	if err != nil {
		return netip.Addr{}, err
	}
	return p.key(slot).Addr(), nil
}

// Release frees an address; releasing a free one does nothing.
func (p *LBPool) Release(ctx context.Context, ip netip.Addr) error {
	slot, err := p.addrSlot(ip)
	if err != nil {
		return err
	}
	return p.releaseSlot(ctx, slot)
}

// Has reports whether ip is allocated.
func (p *LBPool) Has(ip netip.Addr) bool {
	slot, err := p.addrSlot(ip)
	return err == nil && p.has(slot)
}
