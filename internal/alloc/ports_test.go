package alloc

import (
	"context"
	"errors"
	"net/netip"
	"testing"
)

func TestPortRange(t *testing.T) {
	ctx := context.Background()
	store := NewMemStore()
	r, err := NewPortRange(30000, 30009, store)
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Allocate(ctx, 30005); err != nil {
		t.Fatal(err)
	}
	if err := r.Allocate(ctx, 30005); !errors.Is(err, ErrAllocated) {
		t.Fatalf("second Allocate(30005) = %v, want ErrAllocated", err)
	}
	if err := r.Allocate(ctx, 29999); !errors.Is(err, ErrNotInRange) {
		t.Fatalf("Allocate(29999) = %v, want ErrNotInRange", err)
	}
	seen := map[int]bool{30005: true}
	for range 9 {
		p, err := r.AllocateNext(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if seen[p] || p < 30000 || p > 30009 {
			t.Fatalf("AllocateNext gave %d twice or out of range", p)
		}
		seen[p] = true
	}
	if _, err := r.AllocateNext(ctx); !errors.Is(err, ErrFull) {
		t.Fatalf("AllocateNext on a full range = %v, want ErrFull", err)
	}
	// A second replica on the same store sees every port as taken.
	r2, _ := NewPortRange(30000, 30009, store)
	if err := r2.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	if !r2.Has(30000) || r2.Free().Lo != 0 {
		t.Fatalf("replica after Sync: Has(30000)=%v free=%v", r2.Has(30000), r2.Free())
	}
	if err := r.Release(ctx, 30005); err != nil {
		t.Fatal(err)
	}
	var ports []int
	_ = store.List(ctx, portSpace, func(k netip.Prefix) error {
		p, ok := PortOfKey(k)
		if !ok {
			t.Fatalf("record %s is no port", k)
		}
		ports = append(ports, p)
		return nil
	})
	if len(ports) != 9 {
		t.Fatalf("store holds %d ports, want 9", len(ports))
	}
}

func TestLBPool(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		cidr        string
		first, last string
		size        uint64
	}{
		{"192.0.2.0/29", "192.0.2.1", "192.0.2.6", 6},
		{"192.0.2.8/31", "192.0.2.8", "192.0.2.9", 2},
		{"192.0.2.9/32", "192.0.2.9", "192.0.2.9", 1},
		{"2001:db8::/125", "2001:db8::1", "2001:db8::7", 7},
	} {
		p, err := NewLBPool(netip.MustParsePrefix(tc.cidr), NewMemStore())
		if err != nil {
			t.Fatal(err)
		}
		if p.Size().Lo != tc.size {
			t.Errorf("%s: size %v, want %d", tc.cidr, p.Size(), tc.size)
		}
		a, err := p.AllocateNext(ctx)
		if err != nil || a.String() != tc.first {
			t.Errorf("%s: first AllocateNext = %v %v, want %s", tc.cidr, a, err, tc.first)
		}
		if !p.Contains(netip.MustParseAddr(tc.last)) {
			t.Errorf("%s: does not contain %s", tc.cidr, tc.last)
		}
		for range tc.size - 1 {
			if _, err := p.AllocateNext(ctx); err != nil {
				t.Fatalf("%s: %v", tc.cidr, err)
			}
		}
		if _, err := p.AllocateNext(ctx); !errors.Is(err, ErrFull) {
			t.Errorf("%s: full pool gave %v", tc.cidr, err)
		}
	}
	if _, err := NewLBPool(netip.MustParsePrefix("192.0.2.1/24"), nil); err == nil {
		t.Error("a pool with host bits was accepted")
	}
}
