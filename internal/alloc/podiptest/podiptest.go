// Package podiptest is the conformance suite for alloc.PodIPStore
// implementations: the pod-IP policy's behaviour (round-robin, cool-down,
// both addresses or neither, GC, requested addresses) and its properties
// (never two owners for one address, under random churn and under
// concurrency), run against any store. The in-memory store and the bbolt
// store both pass it, so the policy cannot tell them apart.
package podiptest

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/duet-net/duet/internal/alloc"
)

// Opener runs fn with the store open, as one invocation has it: a durable
// store is opened before fn and closed after, so that each call sees only
// what earlier calls kept. It must be safe for concurrent use.
type Opener func(fn func(alloc.PodIPStore) error) error

// Options tune the suite to the store's speed.
type Options struct {
	// ChurnSteps is the number of random operations per seed of the
	// property test (default 400).
	ChurnSteps int
	// Seeds is the number of random sequences (default 4).
	Seeds int
}

// T0 is the suite's clock origin.
var T0 = time.Date(2026, 11, 28, 12, 0, 0, 0, time.UTC)

// Run runs the suite; newOpener gives each test a fresh, empty store.
func Run(t *testing.T, newOpener func(t *testing.T) Opener, opts Options) {
	if opts.ChurnSteps == 0 {
		opts.ChurnSteps = 400
	}
	if opts.Seeds == 0 {
		opts.Seeds = 4
	}
	for _, tc := range []struct {
		name string
		fn   func(t *testing.T, e *env)
	}{
		{"one address per family after the gateway", testReserveAfterGateway},
		{"ADD is idempotent for one attachment", testReserveIdempotent},
		{"DEL is idempotent and unknown attachments are fine", testReleaseIdempotent},
		{"the round-robin cursor survives between calls", testCursorSurvives},
		{"the cool-down survives between calls", testCooldownSurvives},
		{"unreserve frees at once", testUnreserve},
		{"every usable address once, then full", testEveryUsableAddressOnce},
		{"a set of two ranges fills both in order", testTwoRangeSet},
		{"both addresses or neither", testBothOrNeither},
		{"GC releases every attachment not valid", testGC},
		{"Available fails only when a range set is exhausted", testAvailable},
		{"Check verifies the reservation", testCheck},
		{"changed ranges give a new reservation", testChangedRanges},
		{"requested addresses", testRequested},
		{"concurrent reservations are unique", testConcurrent},
	} {
		t.Run(tc.name, func(t *testing.T) { tc.fn(t, &env{t: t, open: newOpener(t)}) })
	}
	t.Run("random churn never gives an address two owners", func(t *testing.T) {
		for seed := uint64(1); seed <= uint64(opts.Seeds); seed++ {
			t.Run(fmt.Sprintf("seed %d", seed), func(t *testing.T) {
				testChurn(t, &env{t: t, open: newOpener(t)}, seed, opts.ChurnSteps)
			})
		}
	})
}

// Range returns the range handing out all of cidr, as a node's pod CIDR.
func Range(t testing.TB, cidr string) alloc.PodRange {
	t.Helper()
	r, err := alloc.NewPodRange(netip.MustParsePrefix(cidr))
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// Sets returns one range set per CIDR, each handing out all of it.
func Sets(t testing.TB, cidrs ...string) []alloc.PodRangeSet {
	t.Helper()
	sets := make([]alloc.PodRangeSet, len(cidrs))
	for i, c := range cidrs {
		sets[i] = alloc.PodRangeSet{Range(t, c)}
	}
	return sets
}

// DualStack is a node's pair of pod CIDRs.
func DualStack(t testing.TB) []alloc.PodRangeSet {
	return Sets(t, "10.244.1.0/24", "fd00:10:244:1::/64")
}

// Pod is the attachment eth0 of container "pod<n>".
func Pod(n int) alloc.Attachment {
	return alloc.Attachment{ContainerID: fmt.Sprintf("pod%d", n), IfName: "eth0"}
}

// Join formats addresses as "a,b".
func Join(addrs []netip.Addr) string {
	s := make([]string, len(addrs))
	for i, a := range addrs {
		s[i] = a.String()
	}
	return strings.Join(s, ",")
}

type env struct {
	t    *testing.T
	open Opener
}

// with runs fn on the policy for sets at the time now, as one call.
func (e *env) with(sets []alloc.PodRangeSet, now time.Time, cooldown time.Duration, fn func(p *alloc.PodIPs) error) error {
	return e.open(func(st alloc.PodIPStore) error {
		p, err := alloc.NewPodIPs(st, sets, alloc.PodIPOptions{Cooldown: cooldown, Now: func() time.Time { return now }})
		if err != nil {
			return err
		}
		return fn(p)
	})
}

// do is with for calls that must succeed.
func (e *env) do(sets []alloc.PodRangeSet, now time.Time, cooldown time.Duration, fn func(p *alloc.PodIPs)) {
	e.t.Helper()
	if err := e.with(sets, now, cooldown, func(p *alloc.PodIPs) error { fn(p); return nil }); err != nil {
		e.t.Fatal(err)
	}
}

func (e *env) reserve(o alloc.Attachment, sets []alloc.PodRangeSet, now time.Time, cooldown time.Duration) string {
	e.t.Helper()
	var got []netip.Addr
	err := e.with(sets, now, cooldown, func(p *alloc.PodIPs) error {
		var err error
		got, err = p.Reserve(o, nil)
		return err
	})
	if err != nil {
		e.t.Fatalf("Reserve(%s): %v", o, err)
	}
	return Join(got)
}

func (e *env) release(o alloc.Attachment, sets []alloc.PodRangeSet, now time.Time, cooldown time.Duration) string {
	e.t.Helper()
	var got []netip.Addr
	err := e.with(sets, now, cooldown, func(p *alloc.PodIPs) error {
		var err error
		got, err = p.Release(o)
		return err
	})
	if err != nil {
		e.t.Fatalf("Release(%s): %v", o, err)
	}
	return Join(got)
}

func (e *env) counts(sets []alloc.PodRangeSet) (held, cooling int) {
	e.t.Helper()
	e.do(sets, T0, 0, func(p *alloc.PodIPs) {
		var err error
		if held, cooling, err = p.Counts(); err != nil {
			e.t.Fatal(err)
		}
	})
	return held, cooling
}

func testReserveAfterGateway(t *testing.T, e *env) {
	ss := DualStack(t)
	if got := e.reserve(Pod(1), ss, T0, time.Minute); got != "10.244.1.2,fd00:10:244:1::2" {
		t.Fatalf("first pod got %s", got)
	}
	if got := e.reserve(Pod(2), ss, T0, time.Minute); got != "10.244.1.3,fd00:10:244:1::3" {
		t.Fatalf("second pod got %s", got)
	}
	if got := e.reserve(alloc.Attachment{ContainerID: "pod1", IfName: "net1"}, ss, T0, time.Minute); got != "10.244.1.4,fd00:10:244:1::4" {
		t.Fatalf("a second interface of pod1 got %s", got)
	}
}

func testReserveIdempotent(t *testing.T, e *env) {
	ss := DualStack(t)
	first := e.reserve(Pod(1), ss, T0, time.Minute)
	for i := 0; i < 3; i++ {
		if got := e.reserve(Pod(1), ss, T0, time.Minute); got != first {
			t.Fatalf("repeated ADD got %s, first got %s", got, first)
		}
	}
	if held, _ := e.counts(ss); held != 2 {
		t.Fatalf("held = %d, want 2", held)
	}
}

func testReleaseIdempotent(t *testing.T, e *env) {
	ss := DualStack(t)
	if got := e.release(Pod(9), ss, T0, time.Minute); got != "" {
		t.Fatalf("releasing an unknown attachment released %s", got)
	}
	e.reserve(Pod(1), ss, T0, time.Minute)
	if got := e.release(Pod(1), ss, T0, time.Minute); got != "10.244.1.2,fd00:10:244:1::2" {
		t.Fatalf("released %q", got)
	}
	if got := e.release(Pod(1), ss, T0, time.Minute); got != "" {
		t.Fatalf("second DEL released %q", got)
	}
	if held, cooling := e.counts(ss); held != 0 || cooling != 2 {
		t.Fatalf("held %d cooling %d, want 0 and 2", held, cooling)
	}
	e.do(ss, T0, time.Minute, func(p *alloc.PodIPs) {
		if addrs, _ := p.Lookup(Pod(1)); addrs != nil {
			t.Fatalf("the holdings still list %v", addrs)
		}
	})
}

func testCursorSurvives(t *testing.T, e *env) {
	ss := DualStack(t)
	e.reserve(Pod(1), ss, T0, 0)
	e.release(Pod(1), ss, T0, 0) // no cool-down: only the cursor keeps .2 away
	if got := e.reserve(Pod(2), ss, T0, 0); got != "10.244.1.3,fd00:10:244:1::3" {
		t.Fatalf("after a release the next call went back to %s", got)
	}
}

func testCooldownSurvives(t *testing.T, e *env) {
	ss := Sets(t, "10.0.0.0/29") // gateway .1, pods .2 to .6
	const cd = time.Minute
	for i := 2; i <= 6; i++ {
		e.reserve(Pod(i), ss, T0, cd)
	}
	e.release(Pod(4), ss, T0.Add(-2*cd), cd) // cooled down long ago
	e.release(Pod(3), ss, T0, cd)            // just freed
	// The cursor wraps to .2 (held), .3 (cooling: skipped), .4 (free).
	if got := e.reserve(Pod(7), ss, T0.Add(time.Second), cd); got != "10.0.0.4" {
		t.Fatalf("got %s, want 10.0.0.4: a just-freed address was reused", got)
	}
	// Nothing is free now but .3, still cooling: it is handed out rather
	// than failing.
	if got := e.reserve(Pod(8), ss, T0.Add(2*time.Second), cd); got != "10.0.0.3" {
		t.Fatalf("got %s, want the cooling 10.0.0.3 when nothing else is free", got)
	}
	e.release(Pod(5), ss, T0.Add(3*time.Second), cd)
	e.release(Pod(6), ss, T0.Add(4*time.Second), cd)
	// Both cooling; the one released first comes first.
	if got := e.reserve(Pod(9), ss, T0.Add(5*time.Second), cd); got != "10.0.0.5" {
		t.Fatalf("got %s, want the longest-cooled 10.0.0.5", got)
	}
	// After its cool-down .6 is free again, and the round-robin finds it.
	if got := e.reserve(Pod(10), ss, T0.Add(4*time.Second+cd), cd); got != "10.0.0.6" {
		t.Fatalf("got %s, want 10.0.0.6 once cooled", got)
	}
	if held, cooling := e.counts(ss); held != 5 || cooling != 0 {
		t.Fatalf("held %d cooling %d, want 5 and 0", held, cooling)
	}
}

func testUnreserve(t *testing.T, e *env) {
	ss := Sets(t, "10.0.0.0/30") // one pod address: .2
	e.reserve(Pod(1), ss, T0, time.Hour)
	e.do(ss, T0, time.Hour, func(p *alloc.PodIPs) {
		if got, err := p.Unreserve(Pod(1)); err != nil || Join(got) != "10.0.0.2" {
			t.Fatalf("Unreserve = %v, %v", got, err)
		}
	})
	if held, cooling := e.counts(ss); held != 0 || cooling != 0 {
		t.Fatalf("held %d cooling %d after Unreserve, want nothing left", held, cooling)
	}
}

func testEveryUsableAddressOnce(t *testing.T, e *env) {
	for _, tc := range []struct{ cidr, want string }{
		{"10.0.0.0/30", "10.0.0.2"},                                     // .0 network, .1 gateway, .3 broadcast
		{"10.0.1.0/29", "10.0.1.2,10.0.1.3,10.0.1.4,10.0.1.5,10.0.1.6"}, // never .7
		{"fd00::/126", "fd00::2,fd00::3"},                               // IPv6 has no broadcast: the last address is a pod's
	} {
		ss := Sets(t, tc.cidr) // disjoint ranges: one store serves all
		var got []string
		for i := 0; ; i++ {
			var addrs []netip.Addr
			err := e.with(ss, T0, 0, func(p *alloc.PodIPs) error {
				var err error
				addrs, err = p.Reserve(alloc.Attachment{ContainerID: tc.cidr + fmt.Sprint(i), IfName: "eth0"}, nil)
				return err
			})
			if errors.Is(err, alloc.ErrFull) {
				break
			}
			if err != nil || i > 10 {
				t.Fatalf("%s: reservation %d: %v, %v", tc.cidr, i, addrs, err)
			}
			got = append(got, Join(addrs))
		}
		if strings.Join(got, ",") != tc.want {
			t.Fatalf("%s handed out %v, want %s", tc.cidr, got, tc.want)
		}
	}
}

func testTwoRangeSet(t *testing.T, e *env) {
	ss := []alloc.PodRangeSet{{Range(t, "10.0.0.0/30"), Range(t, "10.0.1.0/29")}}
	ss[0][1].Start = netip.MustParseAddr("10.0.1.5")
	var got []string
	for i := 0; i < 3; i++ {
		got = append(got, e.reserve(Pod(i), ss, T0, 0))
	}
	if want := "10.0.0.2,10.0.1.5,10.0.1.6"; strings.Join(got, ",") != want {
		t.Fatalf("got %v, want %s", got, want)
	}
	// The cursor wraps from the end of the last range to the first.
	e.release(Pod(0), ss, T0, 0)
	if got := e.reserve(Pod(3), ss, T0, 0); got != "10.0.0.2" {
		t.Fatalf("after wrapping got %s, want 10.0.0.2", got)
	}
	err := e.with(ss, T0, 0, func(p *alloc.PodIPs) error { _, err := p.Reserve(Pod(4), nil); return err })
	if !errors.Is(err, alloc.ErrFull) || !strings.Contains(err.Error(), "all 3 usable addresses of 10.0.0.0/30[10.0.0.1-10.0.0.2],10.0.1.0/29[10.0.1.5-10.0.1.6]") {
		t.Fatalf("full set: %v", err)
	}
}

func testBothOrNeither(t *testing.T, e *env) {
	// IPv6 first, then an IPv4 /30 with room for one pod.
	ss := Sets(t, "fd00::/64", "10.0.0.0/30")
	e.reserve(Pod(1), ss, T0, 0)
	e.do(ss, T0, 0, func(p *alloc.PodIPs) {
		_, err := p.Reserve(Pod(2), nil)
		if !errors.Is(err, alloc.ErrFull) || !strings.Contains(err.Error(), "range set 1") {
			t.Fatalf("got %v, want range set 1 full", err)
		}
	})
	e.do(ss, T0, 0, func(p *alloc.PodIPs) {
		if _, _, found, _ := p.Holder(netip.MustParseAddr("fd00::3")); found {
			t.Fatal("the IPv6 address of the failed ADD stayed reserved")
		}
		if addrs, _ := p.Lookup(Pod(2)); addrs != nil {
			t.Fatalf("the failed ADD left holdings %v", addrs)
		}
	})
	if held, _ := e.counts(ss); held != 2 {
		t.Fatalf("held = %d, want 2", held)
	}
}

func testGC(t *testing.T, e *env) {
	ss := DualStack(t)
	for i := 1; i <= 4; i++ {
		e.reserve(Pod(i), ss, T0, time.Minute)
	}
	e.do(ss, T0, time.Minute, func(p *alloc.PodIPs) {
		released, err := p.GC([]alloc.Attachment{Pod(2), Pod(4), {ContainerID: "gone", IfName: "eth0"}})
		if err != nil {
			t.Fatal(err)
		}
		if len(released) != 2 || released[0] != Pod(1) || released[1] != Pod(3) {
			t.Fatalf("released %v, want pod1 and pod3", released)
		}
	})
	e.do(ss, T0, time.Minute, func(p *alloc.PodIPs) {
		for _, o := range []alloc.Attachment{Pod(2), Pod(4)} {
			if _, err := p.Check(o); err != nil {
				t.Fatalf("a valid attachment lost its reservation: %v", err)
			}
		}
	})
	if held, cooling := e.counts(ss); held != 4 || cooling != 4 {
		t.Fatalf("held %d cooling %d, want 4 and 4 (released ones cool down too)", held, cooling)
	}
}

func testAvailable(t *testing.T, e *env) {
	ss := Sets(t, "10.0.0.0/30", "fd00::/64")
	available := func() error {
		var err error
		e.do(ss, T0, time.Minute, func(p *alloc.PodIPs) { err = p.Available() })
		return err
	}
	if err := available(); err != nil {
		t.Fatalf("empty store: %v", err)
	}
	e.reserve(Pod(1), ss, T0, time.Minute)
	if err := available(); !errors.Is(err, alloc.ErrFull) || !strings.Contains(err.Error(), "range set 0: range is full: all 1 usable addresses of 10.0.0.0/30") {
		t.Fatalf("got %v", err)
	}
	e.release(Pod(1), ss, T0, time.Minute)
	if err := available(); err != nil {
		t.Fatalf("a cooling address can still be handed out, yet: %v", err)
	}
}

func testCheck(t *testing.T, e *env) {
	ss := DualStack(t)
	e.reserve(Pod(1), ss, T0, 0)
	e.do(ss, T0, 0, func(p *alloc.PodIPs) {
		if got, err := p.Check(Pod(1)); err != nil || Join(got) != "10.244.1.2,fd00:10:244:1::2" {
			t.Fatalf("Check = %v, %v", got, err)
		}
		_, err := p.Check(Pod(2))
		if !errors.Is(err, alloc.ErrUnknownAttachment) || err.Error() != "no addresses are reserved for container pod2 interface eth0" {
			t.Fatalf("unknown attachment: %v", err)
		}
	})
	other := Sets(t, "10.9.0.0/24", "fd00:10:244:1::/64")
	e.do(other, T0, 0, func(p *alloc.PodIPs) {
		if _, err := p.Check(Pod(1)); err == nil || !strings.Contains(err.Error(), "does not match the network's range sets") {
			t.Fatalf("changed ranges: %v", err)
		}
	})
}

func testChangedRanges(t *testing.T, e *env) {
	e.reserve(Pod(1), DualStack(t), T0, time.Minute)
	moved := Sets(t, "10.244.9.0/24", "fd00:10:244:1::/64")
	if got := e.reserve(Pod(1), moved, T0, time.Minute); got != "10.244.9.2,fd00:10:244:1::3" {
		t.Fatalf("got %s", got)
	}
	e.do(moved, T0, time.Minute, func(p *alloc.PodIPs) {
		if _, cooling, found, _ := p.Holder(netip.MustParseAddr("10.244.1.2")); !found || !cooling {
			t.Fatal("the old address was not released into its cool-down")
		}
	})
}

func testRequested(t *testing.T, e *env) {
	ss := DualStack(t)
	want := []netip.Addr{netip.MustParseAddr("10.244.1.77"), netip.MustParseAddr("fd00:10:244:1::77")}
	reserve := func(o alloc.Attachment, req []netip.Addr) ([]netip.Addr, error) {
		var got []netip.Addr
		err := e.with(ss, T0, 0, func(p *alloc.PodIPs) error {
			var err error
			got, err = p.Reserve(o, req)
			return err
		})
		return got, err
	}
	if got, err := reserve(Pod(1), want); err != nil || Join(got) != Join(want) {
		t.Fatalf("got %v, %v", got, err)
	}
	if got, err := reserve(Pod(1), want); err != nil || Join(got) != Join(want) {
		t.Fatalf("repeated: %v, %v", got, err)
	}
	if _, err := reserve(Pod(2), want[:1]); !errors.Is(err, alloc.ErrAllocated) || !strings.Contains(err.Error(), "held by container pod1 interface eth0") {
		t.Fatalf("taken: %v", err)
	}
	if _, err := reserve(Pod(3), []netip.Addr{netip.MustParseAddr("10.244.1.8"), netip.MustParseAddr("10.244.1.9")}); err == nil || !strings.Contains(err.Error(), "requested IP 10.244.1.9 was not allocated") {
		t.Fatalf("two requested in one set: %v", err)
	}
	if _, err := reserve(Pod(2), []netip.Addr{netip.MustParseAddr("10.244.1.1")}); !errors.Is(err, alloc.ErrReserved) || !strings.Contains(err.Error(), "the gateway") {
		t.Fatalf("gateway: %v", err)
	}
	// The failed requests left nothing behind.
	if held, _ := e.counts(ss); held != 2 {
		t.Fatalf("held = %d, want 2", held)
	}
}

func testConcurrent(t *testing.T, e *env) {
	ss := DualStack(t)
	const n = 50
	got := make([][]netip.Addr, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		wg.Go(func() {
			errs[i] = e.with(ss, T0, time.Minute, func(p *alloc.PodIPs) error {
				var err error
				got[i], err = p.Reserve(Pod(i), nil)
				return err
			})
		})
	}
	wg.Wait()
	seen := map[netip.Addr]int{}
	for i := 0; i < n; i++ {
		if errs[i] != nil {
			t.Fatal(errs[i])
		}
		if len(got[i]) != 2 || !got[i][0].Is4() || !got[i][1].Is6() {
			t.Fatalf("pod%d got %v", i, got[i])
		}
		for _, a := range got[i] {
			if j, dup := seen[a]; dup {
				t.Fatalf("%s handed to pod%d and pod%d", a, j, i)
			}
			seen[a] = i
		}
	}
	if held, _ := e.counts(ss); held != 2*n {
		t.Fatalf("held = %d, want %d", held, 2*n)
	}
}

// testChurn runs random ADD (some with requested addresses), DEL, GC and
// unreserve calls on small ranges, each call its own invocation, and
// checks after each call that no address has two owners: against a model
// of who holds what, and against the store's own records.
func testChurn(t *testing.T, e *env, seed uint64, steps int) {
	ss := Sets(t, "10.0.0.0/28", "fd00::/124") // 13 and 14 pods
	rng := rand.New(rand.NewPCG(seed, seed^0x5eed))
	now := T0
	live := map[alloc.Attachment][]netip.Addr{} // the model
	const cd = 5 * time.Second
	for step := 0; step < steps; step++ {
		now = now.Add(time.Duration(rng.IntN(3000)) * time.Millisecond)
		o := Pod(rng.IntN(20))
		err := e.with(ss, now, cd, func(p *alloc.PodIPs) error {
			switch op := rng.IntN(20); {
			case op < 10:
				var req []netip.Addr
				if op == 0 { // a specific IPv4 address, maybe someone else's
					req = []netip.Addr{netip.AddrFrom4([4]byte{10, 0, 0, byte(rng.IntN(16))})}
				}
				got, err := p.Reserve(o, req)
				switch {
				case err == nil:
					for other, addrs := range live {
						for _, a := range addrs {
							if other != o && (a == got[0] || a == got[1]) {
								return fmt.Errorf("step %d: %s handed to %s, held by %s", step, a, o, other)
							}
						}
					}
					if prev, ok := live[o]; ok && req == nil && Join(prev) != Join(got) {
						return fmt.Errorf("step %d: repeated ADD of %s gave %v, it held %v", step, o, got, prev)
					}
					live[o] = got
				case errors.Is(err, alloc.ErrFull) || errors.Is(err, alloc.ErrAllocated) || errors.Is(err, alloc.ErrReserved) ||
					req != nil && strings.Contains(err.Error(), "was not allocated"): // the network or broadcast address
					// A refusal changes nothing: o keeps what it held.
					held, lerr := p.Lookup(o)
					if lerr != nil || Join(held) != Join(live[o]) {
						return fmt.Errorf("step %d: refused Reserve(%s, %v) (%v) left it holding %v (%v); it held %v", step, o, req, err, held, lerr, live[o])
					}
				default:
					return fmt.Errorf("step %d: Reserve(%s, %v): %w", step, o, req, err)
				}
			case op < 16:
				if _, err := p.Release(o); err != nil {
					return err
				}
				delete(live, o)
			case op < 17:
				if _, err := p.Unreserve(o); err != nil {
					return err
				}
				delete(live, o)
			default:
				var valid []alloc.Attachment
				for v := range live {
					if rng.IntN(4) > 0 {
						valid = append(valid, v)
					} else {
						delete(live, v)
					}
				}
				if _, err := p.GC(valid); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		keep := map[alloc.Attachment]bool{}
		for o := range live {
			keep[o] = true
		}
		if err := e.open(func(st alloc.PodIPStore) error { return CheckInvariants(st, ss, keep) }); err != nil {
			t.Fatalf("seed %d step %d: %v", seed, step, err)
		}
	}
}

// CheckInvariants walks the whole store: every attachment's addresses are
// recorded as its own, one per range set; no address is listed by two
// attachments; every held address is listed by its holder; and, when live
// is not nil, the attachments are exactly those of live.
func CheckInvariants(st alloc.PodIPStore, sets []alloc.PodRangeSet, live map[alloc.Attachment]bool) error {
	tx, err := st.Begin(false)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	return func() error {
		listed := map[netip.Addr]alloc.Attachment{}
		owners := 0
		err := tx.EachHolding(func(o alloc.Attachment, addrs []netip.Addr) error {
			owners++
			if live != nil && !live[o] {
				return fmt.Errorf("%s holds %v but is not live", o, addrs)
			}
			if len(addrs) != len(sets) {
				return fmt.Errorf("%s holds %v, not one per set", o, addrs)
			}
			perSet := make([]int, len(sets))
			for _, a := range addrs {
				for i, s := range sets {
					if _, ok := s.RangeOf(a); ok {
						perSet[i]++
					}
				}
				if prev, dup := listed[a]; dup {
					return fmt.Errorf("%s listed by %s and %s", a, prev, o)
				}
				listed[a] = o
				r, ok, err := tx.Record(a)
				if err != nil || !ok || !r.HeldBy(o) {
					return fmt.Errorf("%s of %s has record %+v (found %v, %v)", a, o, r, ok, err)
				}
			}
			for i, n := range perSet {
				if n != 1 {
					return fmt.Errorf("%s holds %v: %d addresses of set %d", o, addrs, n, i)
				}
			}
			return nil
		})
		if err != nil {
			return err
		}
		if live != nil && owners != len(live) {
			return fmt.Errorf("%d attachments recorded, %d live", owners, len(live))
		}
		check := func(a netip.Addr, r alloc.PodIPRecord) error {
			if r.ReleasedAt == 0 && listed[a] != r.Holder {
				return fmt.Errorf("%s is held by %s, who does not list it", a, r.Holder)
			}
			return nil
		}
		if err := tx.Records(netip.IPv4Unspecified(), netip.MustParseAddr("255.255.255.255"), check); err != nil {
			return err
		}
		return tx.Records(netip.IPv6Unspecified(), netip.MustParseAddr("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"), check)
	}()
}
