package alloc

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"sync"
	"testing"

	"lukechampine.com/uint128"

	"github.com/duet-net/duet/internal/netaddr"
)

// subject adapts one allocator to the generic property test: keys are
// strings (an address or a prefix).
type subject struct {
	next    func() (string, error)
	take    func(key string) error // Allocate or Occupy
	release func(key string) error
	has     func(key string) bool
	used    func() uint64
	free    func() uint128.Uint128
	// randomKey returns a key in or near the range, for static requests.
	randomKey func(r *rand.Rand) string
	// takeIdempotent is set for Occupy, which succeeds on taken keys.
	takeIdempotent bool
}

func serviceSubject(r *ServiceRange) subject {
	return subject{
		next:    func() (string, error) { ip, err := r.AllocateNext(ctx); return ip.String(), err },
		take:    func(k string) error { return r.Allocate(ctx, netip.MustParseAddr(k)) },
		release: func(k string) error { return r.Release(ctx, netip.MustParseAddr(k)) },
		has:     func(k string) bool { return r.Has(netip.MustParseAddr(k)) },
		used:    r.Used, free: r.Free,
		randomKey: func(rnd *rand.Rand) string {
			return addrAtOffset(r.rng, randomIn(uint128.Zero, r.last.Add64(2))).String()
		},
	}
}

func nodeSubject(n *NodeCIDRs) subject {
	return subject{
		next:    func() (string, error) { p, err := n.AllocateNext(ctx); return p.String(), err },
		take:    func(k string) error { return n.Occupy(ctx, netip.MustParsePrefix(k)) },
		release: func(k string) error { return n.Release(ctx, netip.MustParsePrefix(k)) },
		has:     func(k string) bool { return n.Has(netip.MustParsePrefix(k)) },
		used:    n.Used, free: n.Free,
		randomKey: func(rnd *rand.Rand) string {
			return n.key(randomIn(uint128.Zero, n.last)).String()
		},
		takeIdempotent: true,
	}
}

// addrAtOffset may step past the end of p, to exercise out-of-range keys.
func addrAtOffset(p netip.Prefix, off uint128.Uint128) netip.Addr {
	return netaddr.FromUint128(netaddr.ToUint128(p.Addr()).Add(off), netaddr.FamilyOf(p.Addr()))
}

// checkProperties runs a random sequence of operations and checks after
// each that no key has two owners, that the allocator agrees with the
// model of what is owned, and that Used()+Free() never changes.
func checkProperties(t *testing.T, name string, s subject, seed uint64, ops int, preUsed uint64) {
	rnd := rand.New(rand.NewPCG(seed, seed^0x5eed))
	owner := map[string]int{} // key -> op number that took it
	total := s.free().Add64(s.used())
	for op := 0; op < ops; op++ {
		switch rnd.IntN(10) {
		case 0, 1, 2, 3, 4:
			k, err := s.next()
			if errors.Is(err, ErrFull) {
				continue
			}
			if err != nil {
				t.Fatalf("%s op %d: AllocateNext: %v", name, op, err)
			}
			if prev, ok := owner[k]; ok {
				t.Fatalf("%s op %d: %s handed out again, owned since op %d", name, op, k, prev)
			}
			owner[k] = op
		case 5, 6:
			k := s.randomKey(rnd)
			err := s.take(k)
			_, owned := owner[k]
			switch {
			case err == nil && owned && !s.takeIdempotent:
				t.Fatalf("%s op %d: static take of owned %s succeeded", name, op, k)
			case err == nil && !owned:
				owner[k] = op
			case errors.Is(err, ErrAllocated) && !owned:
				t.Fatalf("%s op %d: %s refused as allocated but nobody owns it", name, op, k)
			}
		default:
			// Release an owned key, or now and then a random one.
			var k string
			if len(owner) > 0 && rnd.IntN(4) > 0 {
				for k = range owner {
					break
				}
			} else {
				k = s.randomKey(rnd)
			}
			if err := s.release(k); err != nil && !errors.Is(err, ErrNotInRange) {
				t.Fatalf("%s op %d: Release(%s): %v", name, op, k, err)
			}
			if _, owned := owner[k]; owned && !s.has(k) {
				delete(owner, k)
			} else if owned {
				t.Fatalf("%s op %d: %s still held after Release", name, op, k)
			}
		}
		if got := s.free().Add64(s.used()); !got.Equals(total) {
			t.Fatalf("%s op %d: Used+Free = %s, was %s", name, op, got, total)
		}
		if s.used() != uint64(len(owner))+preUsed {
			t.Fatalf("%s op %d: Used = %d, model owns %d (+%d reserved)", name, op, s.used(), len(owner), preUsed)
		}
	}
	for k := range owner {
		if !s.has(k) {
			t.Fatalf("%s: owned %s not held", name, k)
		}
	}
}

func TestAllocatorProperties(t *testing.T) {
	for seed := uint64(1); seed <= 8; seed++ {
		for _, store := range []func() Store{func() Store { return nil }, func() Store { return NewMemStore() }} {
			label := fmt.Sprintf("seed %d store %T", seed, store())
			for _, cidr := range []string{"10.0.0.0/27", "10.96.0.0/22", "fd00::/122", "fd00:1::/64"} {
				r, err := NewServiceRange(netip.MustParsePrefix(cidr), ServiceRangeOptions{Primary: true, Store: store()})
				if err != nil {
					t.Fatal(err)
				}
				checkProperties(t, label+" service "+cidr, serviceSubject(r), seed, 3000, 1)
			}
			for _, c := range []struct {
				cidr string
				mask int
			}{{"10.244.0.0/20", 24}, {"fd00::/56", 64}, {"fd00::/32", 64}} {
				n, err := NewNodeCIDRs(netip.MustParsePrefix(c.cidr), c.mask, store())
				if err != nil {
					t.Fatal(err)
				}
				checkProperties(t, label+" nodes "+c.cidr, nodeSubject(n), seed, 3000, 0)
			}
		}
	}
}

// Two allocators sharing one store stand for two server replicas sharing
// etcd: hammered concurrently, they never hand out one address twice, and
// after a Sync each sees the other's allocations.
func TestReplicasNeverShareAnAddress(t *testing.T) {
	store := NewMemStore()
	cidr := netip.MustParsePrefix("10.96.0.0/24")
	var replicas []*ServiceRange
	for i := 0; i < 2; i++ {
		r, err := NewServiceRange(cidr, ServiceRangeOptions{Primary: true, Store: store})
		if err != nil {
			t.Fatal(err)
		}
		replicas = append(replicas, r)
	}
	var mu sync.Mutex
	owners := map[netip.Addr]int{}
	var wg sync.WaitGroup
	for w := 0; w < 8; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			r := replicas[w%2]
			for {
				ip, err := r.AllocateNext(context.Background())
				if errors.Is(err, ErrFull) {
					return
				}
				if err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				if prev, ok := owners[ip]; ok {
					t.Errorf("%s handed to worker %d and %d", ip, prev, w)
				}
				owners[ip] = w
				mu.Unlock()
			}
		}(w)
	}
	wg.Wait()
	if len(owners) != 253 || store.Len() != 253 {
		t.Fatalf("%d addresses handed out, %d records; want 253 (254 less the kubernetes service's)", len(owners), store.Len())
	}
	// A release by one replica becomes visible to the other at Sync.
	var some netip.Addr
	for ip := range owners {
		some = ip
		break
	}
	if err := replicas[0].Release(ctx, some); err != nil {
		t.Fatal(err)
	}
	if err := replicas[1].Sync(ctx); err != nil {
		t.Fatal(err)
	}
	got, err := replicas[1].AllocateNext(ctx)
	if err != nil || got != some {
		t.Fatalf("after Sync replica 1 allocated %s, %v; want %s", got, err, some)
	}
}

// A restarted process that loads the store sees exactly what was recorded.
func TestSyncRestoresState(t *testing.T) {
	store := NewMemStore()
	n1, _ := NewNodeCIDRs(netip.MustParsePrefix("fd00::/48"), 64, store)
	var taken []netip.Prefix
	for i := 0; i < 10; i++ {
		p, err := n1.AllocateNext(ctx)
		if err != nil {
			t.Fatal(err)
		}
		taken = append(taken, p)
	}
	// Records of another length within the range (addresses of a
	// service range, say) are not the node allocator's.
	if err := store.Create(ctx, netip.PrefixFrom(taken[0].Addr().Next(), 128)); err != nil {
		t.Fatal(err)
	}
	n2, _ := NewNodeCIDRs(netip.MustParsePrefix("fd00::/48"), 64, store)
	if err := n2.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	if n2.Used() != 10 {
		t.Fatalf("Used after Sync = %d", n2.Used())
	}
	for _, p := range taken {
		if !n2.Has(p) {
			t.Fatalf("%s lost across restart", p)
		}
	}
}

// failingStore refuses every write, to check that a failed record leaves
// nothing half-applied.
type failingStore struct{}

func (failingStore) Create(context.Context, netip.Prefix) error {
	return errors.New("etcd unavailable")
}
func (failingStore) Delete(context.Context, netip.Prefix) error {
	return errors.New("etcd unavailable")
}
func (failingStore) List(context.Context, netip.Prefix, func(netip.Prefix) error) error {
	return errors.New("etcd unavailable")
}

func TestStoreFailureChangesNothing(t *testing.T) {
	r, _ := NewServiceRange(netip.MustParsePrefix("10.96.0.0/24"), ServiceRangeOptions{Store: failingStore{}})
	if _, err := r.AllocateNext(ctx); err == nil {
		t.Fatal("AllocateNext succeeded without a store")
	}
	if err := r.Allocate(ctx, netip.MustParseAddr("10.96.0.9")); err == nil || r.Has(netip.MustParseAddr("10.96.0.9")) {
		t.Fatalf("Allocate with a failing store: %v, Has %v", err, r.Has(netip.MustParseAddr("10.96.0.9")))
	}
	if r.Used() != 0 {
		t.Fatalf("Used = %d after failed allocations", r.Used())
	}
	if err := r.Sync(ctx); err == nil {
		t.Fatal("Sync succeeded without a store")
	}
}
