package alloc

import (
	"context"
	"fmt"
	"net/netip"

	"lukechampine.com/uint128"

	"github.com/duet-net/duet/internal/netaddr"
)

// ServiceRange allocates cluster IPs from one service range
// (one entry of --service-cluster-ip-range), the way Kubernetes does since
// KEP-3070: the range is split into a lower static band, preferred for
// user-chosen IPs, and an upper dynamic band that AllocateNext draws from at
// random, falling back to the lower band only when the upper one is full.
//
// The network address is never handed out, nor is the IPv4 broadcast
// address; the last address of an IPv6 range is usable. In the primary range
// the first usable address is reserved for the kubernetes Service.
type ServiceRange struct {
	*pool
	// staticBand is the number of slots in the lower band.
	staticBand uint128.Uint128
	primary    bool
}

// ServiceRangeOptions are the optional parts of a ServiceRange.
type ServiceRangeOptions struct {
	// Primary reserves the first usable address for the kubernetes Service.
	Primary bool
	// Store records allocations; nil keeps them in memory only.
	Store Store
}

// NewServiceRange returns an allocator for cidr, which must satisfy
// netaddr.ValidateServiceRangeSize.
func NewServiceRange(cidr netip.Prefix, opts ServiceRangeOptions) (*ServiceRange, error) {
	if cidr.Masked() != cidr {
		return nil, fmt.Errorf("service range %s has host bits set; the network is %s", cidr, cidr.Masked())
	}
	if err := netaddr.ValidateServiceRangeSize("service range", cidr); err != nil {
		return nil, err
	}
	// Slots are the usable addresses: from network+1 to the end, less the
	// IPv4 broadcast address.
	last := netaddr.LastOffset(cidr).Sub64(1)
	if cidr.Addr().Is4() {
		last = last.Sub64(1)
	}
	r := &ServiceRange{
		pool:       newPool(cidr, uint128.From64(1), 0, last, opts.Store),
		staticBand: staticBandSize(cidr),
		primary:    opts.Primary,
	}
	if opts.Primary {
		r.reserve(uint128.Zero, "the kubernetes service")
	}
	return r, nil
}

// staticBandSize is KEP-3070's offset: min(max(16, size/16), 256) addresses,
// none for ranges of 16 addresses or fewer, where size counts every address
// of the range.
func staticBandSize(cidr netip.Prefix) uint128.Uint128 {
	h := netaddr.HostBits(cidr)
	switch {
	case h <= 4: // 16 addresses or fewer
		return uint128.Zero
	case h <= 8: // size/16 <= 16
		return uint128.From64(16)
	case h <= 12: // 16 < size/16 <= 256
		return uint128.From64(1 << (h - 4))
	default:
		return uint128.From64(256)
	}
}

// CIDR is the range.
func (r *ServiceRange) CIDR() netip.Prefix { return r.rng }

// Family is the range's IP family.
func (r *ServiceRange) Family() netaddr.Family { return r.fam }

// KubernetesServiceIP is the first usable address: the kubernetes Service's
// cluster IP when this is the primary range.
func (r *ServiceRange) KubernetesServiceIP() netip.Addr { return r.key(uint128.Zero).Addr() }

// ReservesKubernetesIP reports whether the range was created as Primary:
// its KubernetesServiceIP is reserved for the kubernetes Service.
func (r *ServiceRange) ReservesKubernetesIP() bool { return r.primary }

// Allocate takes a specific address, as a user-chosen clusterIP does.
func (r *ServiceRange) Allocate(ctx context.Context, ip netip.Addr) error {
	slot, err := r.addrSlot(ip)
	if err != nil {
		return err
	}
	if why, ok := r.reserved[slot]; ok {
		return &ReservedError{Value: ip.String(), For: why}
	}
	return r.claimSlot(ctx, slot)
}

// AllocateNext takes a random free address, from the upper band first.
func (r *ServiceRange) AllocateNext(ctx context.Context) (netip.Addr, error) {
	band := r.staticBand
	slot, err := r.claimNext(ctx, func() (uint128.Uint128, bool) {
		if band.Cmp(r.last) <= 0 {
			if s, ok := r.searchFrom(randomIn(band, r.last), band, r.last); ok {
				return s, true
			}
		}
		if band.IsZero() {
			return uint128.Zero, false
		}
		lowLast := band.Sub64(1)
		return r.searchFrom(randomIn(uint128.Zero, lowLast), uint128.Zero, lowLast)
	}, func() error {
		return &FullError{Msg: fmt.Sprintf("range is full: all %s usable addresses of %s are allocated", r.size(), r.rng)}
	})
	if err != nil {
		return netip.Addr{}, err
	}
	return r.key(slot).Addr(), nil
}

// Release frees an address. Releasing a free address, or the reserved one,
// does nothing.
func (r *ServiceRange) Release(ctx context.Context, ip netip.Addr) error {
	slot, err := r.addrSlot(ip)
	if err != nil {
		return err
	}
	return r.releaseSlot(ctx, slot)
}

// Has reports whether ip is allocated (or reserved).
func (r *ServiceRange) Has(ip netip.Addr) bool {
	slot, err := r.addrSlot(ip)
	return err == nil && r.has(slot)
}
