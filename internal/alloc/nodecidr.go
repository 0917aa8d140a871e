package alloc

import (
	"context"
	"fmt"
	"net/netip"

	"lukechampine.com/uint128"

	"github.com/duet-net/duet/internal/netaddr"
)

// maxOccupySlots bounds what one Occupy call may mark, so that a stray
// short prefix (say a /8 in a cluster of /64 nodes) is refused instead of
// marking billions of node CIDRs.
const maxOccupySlots = 1 << 16

// NodeCIDRs hands out per-node pod CIDRs from one cluster CIDR, in
// sequence like Kubernetes' range allocator: 10.244.0.0/24, 10.244.1.0/24,
// and so on, wrapping at the end, so that a released CIDR is handed out
// again only after the cursor has been round. Unlike Kubernetes there is no
// limit on how many node CIDRs one cluster CIDR holds.
type NodeCIDRs struct {
	*pool
	nodeMask int
	cursor   uint128.Uint128 // guarded by pool.mu
}

// NewNodeCIDRs returns an allocator of /nodeMask prefixes from cidr.
func NewNodeCIDRs(cidr netip.Prefix, nodeMask int, store Store) (*NodeCIDRs, error) {
	if cidr.Masked() != cidr {
		return nil, fmt.Errorf("cluster CIDR %s has host bits set; the network is %s", cidr, cidr.Masked())
	}
	if nodeMask < cidr.Bits() || nodeMask > cidr.Addr().BitLen() {
		return nil, fmt.Errorf("node CIDR mask /%d does not fit cluster CIDR %s: it must be between %d and %d", nodeMask, cidr, cidr.Bits(), cidr.Addr().BitLen())
	}
	shift := cidr.Addr().BitLen() - nodeMask
	last := netaddr.LastOffset(cidr).Rsh(uint(shift))
	return &NodeCIDRs{pool: newPool(cidr, uint128.Zero, shift, last, store), nodeMask: nodeMask}, nil
}

// CIDR is the cluster CIDR.
func (n *NodeCIDRs) CIDR() netip.Prefix { return n.rng }

// NodeMask is the prefix length of the CIDRs handed out.
func (n *NodeCIDRs) NodeMask() int { return n.nodeMask }

// AllocateNext takes the next free node CIDR at or after the cursor.
func (n *NodeCIDRs) AllocateNext(ctx context.Context) (netip.Prefix, error) {
	slot, err := n.claimNext(ctx, func() (uint128.Uint128, bool) {
		s, ok := n.searchFrom(n.cursor, uint128.Zero, n.last)
		if ok {
			n.cursor = n.after(s)
		}
		return s, ok
	}, func() error {
		return &FullError{Msg: fmt.Sprintf("CIDR allocation failed; there are no remaining CIDRs left to allocate in the accepted range: all %s /%d CIDRs of cluster CIDR %s are allocated", n.size(), n.nodeMask, n.rng)}
	})
	if err != nil {
		return netip.Prefix{}, err
	}
	return n.key(slot), nil
}

func (n *NodeCIDRs) after(s uint128.Uint128) uint128.Uint128 {
	if s.Equals(n.last) {
		return uint128.Zero
	}
	return s.Add64(1)
}

// Occupy marks node CIDRs as taken, as found on Nodes when the controller
// starts. A prefix longer than the node mask marks the node CIDR that
// contains it; a shorter one marks every node CIDR it covers within the
// cluster CIDR. Occupying what is already taken is not an error: the
// caller is recovering state, not competing for it.
func (n *NodeCIDRs) Occupy(ctx context.Context, p netip.Prefix) error {
	if !p.IsValid() || p.Addr().Is4() != n.rng.Addr().Is4() || !p.Overlaps(n.rng) {
		return &NotInRangeError{What: "CIDR", Value: p.String(), ValidRange: n.rng.String()}
	}
	p = p.Masked()
	if p.Bits() < n.rng.Bits() {
		p = n.rng // clamp to the cluster CIDR it covers
	}
	firstSlot, _ := n.slotOfAddr(p.Addr())
	count := uint128.From64(1)
	if p.Bits() < n.nodeMask {
		if n.nodeMask-p.Bits() > 16 {
			return fmt.Errorf("occupying %s would mark more than %d /%d node CIDRs at once", p, maxOccupySlots, n.nodeMask)
		}
		count = uint128.From64(1 << (n.nodeMask - p.Bits()))
	}
	for i := uint128.Zero; i.Cmp(count) < 0; i = i.Add64(1) {
		if err := n.claimSlot(ctx, firstSlot.Add(i)); err != nil && !isAllocated(err) {
			return fmt.Errorf("occupying %s: %w", p, err)
		}
	}
	return nil
}

// Release frees a node CIDR. Releasing a free one does nothing.
func (n *NodeCIDRs) Release(ctx context.Context, p netip.Prefix) error {
	slot, err := n.slotOfPrefix(p)
	if err != nil {
		return err
	}
	return n.releaseSlot(ctx, slot)
}

// Has reports whether the node CIDR p is taken.
func (n *NodeCIDRs) Has(p netip.Prefix) bool {
	slot, err := n.slotOfPrefix(p)
	return err == nil && n.has(slot)
}

func (n *NodeCIDRs) slotOfPrefix(p netip.Prefix) (uint128.Uint128, error) {
	if p.IsValid() && p.Bits() == n.nodeMask && p.Masked() == p {
		if slot, ok := n.slotOfAddr(p.Addr()); ok {
			return slot, nil
		}
	}
	return uint128.Zero, &NotInRangeError{What: "CIDR", Value: p.String(), ValidRange: fmt.Sprintf("/%d CIDRs within %s", n.nodeMask, n.rng)}
}
