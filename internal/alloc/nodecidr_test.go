package alloc

import (
	"errors"
	"net/netip"
	"testing"
)

func mustNodeCIDRs(t testing.TB, cidr string, mask int, store Store) *NodeCIDRs {
	t.Helper()
	n, err := NewNodeCIDRs(netip.MustParsePrefix(cidr), mask, store)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func nextCIDR(t *testing.T, n *NodeCIDRs) string {
	t.Helper()
	p, err := n.AllocateNext(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return p.String()
}

func TestNodeCIDRsSequentialRoundRobin(t *testing.T) {
	n := mustNodeCIDRs(t, "10.244.0.0/22", 24, nil)
	for _, want := range []string{"10.244.0.0/24", "10.244.1.0/24", "10.244.2.0/24"} {
		if got := nextCIDR(t, n); got != want {
			t.Fatalf("got %s, want %s", got, want)
		}
	}
	// A freed CIDR is not reused before the cursor wraps.
	if err := n.Release(ctx, netip.MustParsePrefix("10.244.1.0/24")); err != nil {
		t.Fatal(err)
	}
	if got := nextCIDR(t, n); got != "10.244.3.0/24" {
		t.Fatalf("after releasing .1: got %s, want 10.244.3.0/24", got)
	}
	if got := nextCIDR(t, n); got != "10.244.1.0/24" {
		t.Fatalf("after wrapping: got %s, want 10.244.1.0/24", got)
	}
	_, err := n.AllocateNext(ctx)
	want := "CIDR allocation failed; there are no remaining CIDRs left to allocate in the accepted range: all 4 /24 CIDRs of cluster CIDR 10.244.0.0/22 are allocated"
	if !errors.Is(err, ErrFull) || err.Error() != want {
		t.Fatalf("exhausted: %v, want %q", err, want)
	}
}

func TestNodeCIDRsOccupy(t *testing.T) {
	tests := []struct {
		name     string
		occupy   string
		wantUsed uint64
		wantErr  string
	}{
		{name: "a node CIDR", occupy: "10.244.5.0/24", wantUsed: 1},
		{name: "a longer prefix marks its node CIDR", occupy: "10.244.5.128/25", wantUsed: 1},
		{name: "a shorter prefix marks what it covers", occupy: "10.244.4.0/22", wantUsed: 4},
		{name: "a prefix covering the cluster CIDR marks all of it", occupy: "10.0.0.0/8", wantUsed: 256},
		{name: "outside the cluster CIDR", occupy: "10.245.0.0/24", wantErr: "the provided CIDR (10.245.0.0/24) is not in the valid range. The range of valid CIDRs is 10.244.0.0/16"},
		{name: "the other family", occupy: "fd00::/64", wantErr: "the provided CIDR (fd00::/64) is not in the valid range. The range of valid CIDRs is 10.244.0.0/16"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			n := mustNodeCIDRs(t, "10.244.0.0/16", 24, nil)
			err := n.Occupy(ctx, netip.MustParsePrefix(tt.occupy))
			if tt.wantErr != "" {
				if err == nil || err.Error() != tt.wantErr {
					t.Fatalf("Occupy(%s) = %v, want %q", tt.occupy, err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if n.Used() != tt.wantUsed {
				t.Fatalf("Used = %d, want %d", n.Used(), tt.wantUsed)
			}
			// Occupying again is idempotent.
			if err := n.Occupy(ctx, netip.MustParsePrefix(tt.occupy)); err != nil || n.Used() != tt.wantUsed {
				t.Fatalf("second Occupy: %v, Used %d", err, n.Used())
			}
		})
	}
}

func TestNodeCIDRsOccupyIsSkippedByAllocateNext(t *testing.T) {
	n := mustNodeCIDRs(t, "10.244.0.0/16", 24, nil)
	for _, p := range []string{"10.244.0.0/24", "10.244.2.0/24"} {
		if err := n.Occupy(ctx, netip.MustParsePrefix(p)); err != nil {
			t.Fatal(err)
		}
	}
	for _, want := range []string{"10.244.1.0/24", "10.244.3.0/24"} {
		if got := nextCIDR(t, n); got != want {
			t.Fatalf("got %s, want %s", got, want)
		}
	}
}

func TestNodeCIDRsNoSixteenBitCap(t *testing.T) {
	// Kubernetes refuses these; Duet hands them out.
	n := mustNodeCIDRs(t, "fd00::/32", 64, nil)
	for _, want := range []string{"fd00::/64", "fd00:0:0:1::/64"} {
		if got := nextCIDR(t, n); got != want {
			t.Fatalf("got %s, want %s", got, want)
		}
	}
	if got := n.Size().String(); got != "4294967296" {
		t.Fatalf("Size = %s", got)
	}
	huge := mustNodeCIDRs(t, "fd00::/8", 120, nil)
	if got := huge.Size().String(); got != "5192296858534827628530496329220096" { // 2^112
		t.Fatalf("Size of fd00::/8 in /120s = %s", got)
	}
	if got := nextCIDR(t, huge); got != "fd00::/120" {
		t.Fatalf("got %s", got)
	}
	if err := huge.Occupy(ctx, netip.MustParsePrefix("fd00::/64")); err == nil {
		t.Fatal("Occupy of 2^56 node CIDRs at once was accepted")
	}
}

func TestNodeCIDRsWholeIPv4Space(t *testing.T) {
	// /0 with /32 nodes: the last slot is the last address of the space.
	n := mustNodeCIDRs(t, "0.0.0.0/0", 32, nil)
	last := netip.MustParsePrefix("255.255.255.255/32")
	if err := n.Occupy(ctx, last); err != nil || !n.Has(last) {
		t.Fatalf("Occupy(%s) = %v", last, err)
	}
	if err := n.Release(ctx, last); err != nil || n.Has(last) {
		t.Fatalf("Release(%s) = %v", last, err)
	}
}

func TestNewNodeCIDRsErrors(t *testing.T) {
	if _, err := NewNodeCIDRs(netip.MustParsePrefix("10.244.0.0/16"), 8, nil); err == nil {
		t.Error("a node mask shorter than the cluster mask was accepted")
	}
	if _, err := NewNodeCIDRs(netip.MustParsePrefix("10.244.1.0/16"), 24, nil); err == nil {
		t.Error("a cluster CIDR with host bits was accepted")
	}
	n := mustNodeCIDRs(t, "10.244.0.0/16", 24, nil)
	if err := n.Release(ctx, netip.MustParsePrefix("10.244.1.0/25")); !errors.Is(err, ErrNotInRange) {
		t.Errorf("Release of a /25 = %v", err)
	}
}
