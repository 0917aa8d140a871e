package alloc

import (
	"errors"
	"net/netip"
	"testing"
	"time"
)

type fakeClock struct{ t time.Time }

func (c *fakeClock) Now() time.Time          { return c.t }
func (c *fakeClock) Advance(d time.Duration) { c.t = c.t.Add(d) }

func mustPodIPs(t testing.TB, cidr string, cooldown time.Duration, clock *fakeClock) *PodIPs {
	t.Helper()
	opts := PodIPOptions{Cooldown: cooldown}
	if clock != nil {
		opts.Now = clock.Now
	}
	a, err := NewPodIPs(netip.MustParsePrefix(cidr), opts)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func nextIP(t *testing.T, a *PodIPs) string {
	t.Helper()
	ip, err := a.AllocateNext(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return ip.String()
}

func TestPodIPsGatewayAndRoundRobin(t *testing.T) {
	a := mustPodIPs(t, "10.244.1.0/24", 0, nil)
	if got := a.Gateway().String(); got != "10.244.1.1" {
		t.Fatalf("Gateway = %s", got)
	}
	for _, want := range []string{"10.244.1.2", "10.244.1.3", "10.244.1.4"} {
		if got := nextIP(t, a); got != want {
			t.Fatalf("got %s, want %s", got, want)
		}
	}
	if err := a.Release(ctx, netip.MustParseAddr("10.244.1.2")); err != nil {
		t.Fatal(err)
	}
	if got := nextIP(t, a); got != "10.244.1.5" {
		t.Fatalf("round-robin went back to a released address: %s", got)
	}
	err := a.Allocate(ctx, a.Gateway())
	if !errors.Is(err, ErrReserved) || err.Error() != "the provided IP (10.244.1.1) is reserved for the node's gateway" {
		t.Fatalf("Allocate(gateway) = %v", err)
	}
}

func TestPodIPsIPv6UsesLastAddress(t *testing.T) {
	a := mustPodIPs(t, "fd00:10:244:1::/126", 0, nil)
	// ::0 network, ::1 gateway, ::2 and ::3 for pods.
	if got := []string{nextIP(t, a), nextIP(t, a)}; got[0] != "fd00:10:244:1::2" || got[1] != "fd00:10:244:1::3" {
		t.Fatalf("got %v", got)
	}
	if _, err := a.AllocateNext(ctx); !errors.Is(err, ErrFull) {
		t.Fatalf("want ErrFull, got %v", err)
	}
}

func TestPodIPsIPv4NeverBroadcast(t *testing.T) {
	a := mustPodIPs(t, "10.0.0.0/30", 0, nil)
	if got := nextIP(t, a); got != "10.0.0.2" {
		t.Fatalf("got %s", got)
	}
	_, err := a.AllocateNext(ctx)
	if !errors.Is(err, ErrFull) || err.Error() != "range is full: all 2 usable addresses of node CIDR 10.0.0.0/30 are allocated" {
		t.Fatalf("got %v", err)
	}
	if err := a.Allocate(ctx, netip.MustParseAddr("10.0.0.3")); !errors.Is(err, ErrNotInRange) {
		t.Fatalf("Allocate(broadcast) = %v", err)
	}
	if _, err := NewPodIPs(netip.MustParsePrefix("10.0.0.0/31"), PodIPOptions{}); err == nil {
		t.Fatal("a /31 node CIDR was accepted")
	}
}

func TestPodIPsCooldown(t *testing.T) {
	clock := &fakeClock{t: time.Unix(1000, 0)}
	// 6 usable (.1-.6), .1 the gateway: five pod addresses .2-.6.
	a := mustPodIPs(t, "10.0.0.0/29", 30*time.Second, clock)
	for i := 0; i < 5; i++ {
		nextIP(t, a)
	}
	for _, ip := range []string{"10.0.0.4", "10.0.0.3"} {
		if err := a.Release(ctx, netip.MustParseAddr(ip)); err != nil {
			t.Fatal(err)
		}
		clock.Advance(time.Second)
	}
	if a.Has(netip.MustParseAddr("10.0.0.4")) || a.Used() != 4 {
		t.Fatalf("cooling address counted as used: Used %d", a.Used())
	}
	// Nothing else is free: the one that has cooled longest comes back first.
	if got := nextIP(t, a); got != "10.0.0.4" {
		t.Fatalf("full range: got %s, want the oldest cooling 10.0.0.4", got)
	}

	// With room elsewhere, a cooling address waits out its cool-down even
	// when the cursor passes it.
	b := mustPodIPs(t, "10.0.0.0/29", 30*time.Second, clock)
	for i := 0; i < 3; i++ {
		nextIP(t, b) // .2 .3 .4
	}
	if err := b.Release(ctx, netip.MustParseAddr("10.0.0.2")); err != nil {
		t.Fatal(err)
	}
	if got := []string{nextIP(t, b), nextIP(t, b)}; got[0] != "10.0.0.5" || got[1] != "10.0.0.6" {
		t.Fatalf("got %v", got)
	}
	// The cursor wraps; .2 still cools and is the only free address.
	if got := nextIP(t, b); got != "10.0.0.2" {
		t.Fatalf("got %s", got)
	}
	if err := b.Release(ctx, netip.MustParseAddr("10.0.0.5")); err != nil {
		t.Fatal(err)
	}
	if err := b.Release(ctx, netip.MustParseAddr("10.0.0.3")); err != nil {
		t.Fatal(err)
	}
	clock.Advance(31 * time.Second)
	if err := b.Release(ctx, netip.MustParseAddr("10.0.0.4")); err != nil {
		t.Fatal(err)
	}
	// .3 and .5 have cooled; .4 has not. The cursor is at .3.
	if got := []string{nextIP(t, b), nextIP(t, b), nextIP(t, b)}; got[0] != "10.0.0.3" || got[1] != "10.0.0.5" || got[2] != "10.0.0.4" {
		t.Fatalf("got %v, want [10.0.0.3 10.0.0.5 10.0.0.4]", got)
	}

	// An explicit request may take a cooling address.
	c := mustPodIPs(t, "10.0.0.0/29", time.Hour, clock)
	ip := netip.MustParseAddr(nextIP(t, c))
	if err := c.Release(ctx, ip); err != nil {
		t.Fatal(err)
	}
	if err := c.Allocate(ctx, ip); err != nil || !c.Has(ip) || c.Used() != 2 {
		t.Fatalf("Allocate of a cooling address: %v, Used %d", err, c.Used())
	}
}
