package ipam

import (
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/containernetworking/cni/pkg/types"

	"github.com/duet-net/duet/internal/alloc"
)

var t0 = time.Date(2026, 11, 28, 12, 0, 0, 0, time.UTC)

func sets(t testing.TB, ranges string) []RangeSet {
	t.Helper()
	c, err := Parse([]byte(conf(`{"ranges":`+ranges+`}`)), "")
	if err != nil {
		t.Fatal(err)
	}
	return c.RangeSets
}

const dualStack = `[[{"subnet":"10.244.1.0/24"}],[{"subnet":"fd00:10:244:1::/64"}]]`

// testStore opens a store in a fresh directory; reopen opens it again, as
// the next invocation would.
type testStore struct {
	t   testing.TB
	dir string
}

func newTestStore(t testing.TB) *testStore {
	return &testStore{t: t, dir: t.TempDir()}
}

func (ts *testStore) open() *Store {
	ts.t.Helper()
	s, err := Open(ts.dir, "pods", 5*time.Second)
	if err != nil {
		ts.t.Fatal(err)
	}
	return s
}

// do runs fn on the store as one invocation: open, fn, close.
func (ts *testStore) do(fn func(s *Store)) {
	ts.t.Helper()
	s := ts.open()
	defer s.Close()
	fn(s)
}

func (ts *testStore) reserve(o Owner, sets []RangeSet, now time.Time, cooldown time.Duration) string {
	ts.t.Helper()
	var got []netip.Addr
	ts.do(func(s *Store) {
		var err error
		if got, err = s.Reserve(o, sets, nil, now, cooldown); err != nil {
			ts.t.Fatalf("Reserve(%s): %v", o, err)
		}
	})
	return join(got)
}

func (ts *testStore) release(o Owner, now time.Time, cooldown time.Duration) string {
	ts.t.Helper()
	var got []netip.Addr
	ts.do(func(s *Store) {
		var err error
		if got, err = s.Release(o, now, cooldown); err != nil {
			ts.t.Fatalf("Release(%s): %v", o, err)
		}
	})
	return join(got)
}

func join(addrs []netip.Addr) string {
	s := make([]string, len(addrs))
	for i, a := range addrs {
		s[i] = a.String()
	}
	return strings.Join(s, ",")
}

func pod(n int) Owner { return Owner{ContainerID: fmt.Sprintf("pod%d", n), IfName: "eth0"} }

func TestReserveGivesOneAddressPerFamilyAfterTheGateway(t *testing.T) {
	ts := newTestStore(t)
	ss := sets(t, dualStack)
	if got := ts.reserve(pod(1), ss, t0, time.Minute); got != "10.244.1.2,fd00:10:244:1::2" {
		t.Fatalf("first pod got %s", got)
	}
	if got := ts.reserve(pod(2), ss, t0, time.Minute); got != "10.244.1.3,fd00:10:244:1::3" {
		t.Fatalf("second pod got %s", got)
	}
	if got := ts.reserve(Owner{"pod1", "net1"}, ss, t0, time.Minute); got != "10.244.1.4,fd00:10:244:1::4" {
		t.Fatalf("a second interface of pod1 got %s", got)
	}
}

func TestAddIsIdempotentForTheSameContainerAndInterface(t *testing.T) {
	ts := newTestStore(t)
	ss := sets(t, dualStack)
	first := ts.reserve(pod(1), ss, t0, time.Minute)
	for i := 0; i < 3; i++ {
		if got := ts.reserve(pod(1), ss, t0, time.Minute); got != first {
			t.Fatalf("repeated ADD got %s, first got %s", got, first)
		}
	}
	ts.do(func(s *Store) {
		if held, _, _ := s.Counts(); held != 2 {
			t.Fatalf("held = %d, want 2", held)
		}
	})
}

func TestDelIsIdempotentAndUnknownContainersAreFine(t *testing.T) {
	ts := newTestStore(t)
	ss := sets(t, dualStack)
	if got := ts.release(pod(9), t0, time.Minute); got != "" {
		t.Fatalf("releasing an unknown container released %s", got)
	}
	ts.reserve(pod(1), ss, t0, time.Minute)
	if got := ts.release(pod(1), t0, time.Minute); got != "10.244.1.2,fd00:10:244:1::2" {
		t.Fatalf("released %q", got)
	}
	if got := ts.release(pod(1), t0, time.Minute); got != "" {
		t.Fatalf("second DEL released %q", got)
	}
	ts.do(func(s *Store) {
		held, cooling, _ := s.Counts()
		if held != 0 || cooling != 2 {
			t.Fatalf("held %d cooling %d, want 0 and 2", held, cooling)
		}
		if addrs, _ := s.Lookup(pod(1)); addrs != nil {
			t.Fatalf("owner index still has %v", addrs)
		}
	})
}

func TestRoundRobinCursorSurvivesBetweenInvocations(t *testing.T) {
	ts := newTestStore(t)
	ss := sets(t, dualStack)
	ts.reserve(pod(1), ss, t0, 0)
	ts.release(pod(1), t0, 0) // no cool-down: only the cursor keeps .2 away
	if got := ts.reserve(pod(2), ss, t0, 0); got != "10.244.1.3,fd00:10:244:1::3" {
		t.Fatalf("after a release the next invocation went back to %s", got)
	}
}

func TestCooldownSurvivesBetweenInvocations(t *testing.T) {
	ts := newTestStore(t)
	// 10.0.0.0/29: gateway .1, pods .2 to .6.
	ss := sets(t, `[[{"subnet":"10.0.0.0/29"}]]`)
	const cd = time.Minute
	for i := 2; i <= 6; i++ {
		ts.reserve(pod(i), ss, t0, cd)
	}
	ts.release(pod(4), t0.Add(-2*cd), cd) // cooled down long ago
	ts.release(pod(3), t0, cd)            // just freed
	// The cursor wraps to .2 (held), .3 (cooling: skipped), .4 (free).
	if got := ts.reserve(pod(7), ss, t0.Add(time.Second), cd); got != "10.0.0.4" {
		t.Fatalf("got %s, want 10.0.0.4: a just-freed address was reused", got)
	}
	// Nothing is free now but .3, still cooling: it is handed out rather
	// than failing.
	if got := ts.reserve(pod(8), ss, t0.Add(2*time.Second), cd); got != "10.0.0.3" {
		t.Fatalf("got %s, want the cooling 10.0.0.3 when nothing else is free", got)
	}
	ts.release(pod(5), t0.Add(3*time.Second), cd)
	ts.release(pod(6), t0.Add(4*time.Second), cd)
	// Both cooling; the one released first comes first.
	if got := ts.reserve(pod(9), ss, t0.Add(5*time.Second), cd); got != "10.0.0.5" {
		t.Fatalf("got %s, want the longest-cooled 10.0.0.5", got)
	}
	// After its cool-down .6 is free again, and the round-robin finds it.
	if got := ts.reserve(pod(10), ss, t0.Add(4*time.Second+cd), cd); got != "10.0.0.6" {
		t.Fatalf("got %s, want 10.0.0.6 once cooled", got)
	}
	ts.do(func(s *Store) {
		held, cooling, _ := s.Counts()
		if held != 5 || cooling != 0 {
			t.Fatalf("held %d cooling %d, want 5 and 0", held, cooling)
		}
	})
}

func TestBothAddressesOrNeither(t *testing.T) {
	ts := newTestStore(t)
	// IPv6 first, then an IPv4 /30 with room for one pod.
	ss := sets(t, `[[{"subnet":"fd00::/64"}],[{"subnet":"10.0.0.0/30"}]]`)
	ts.reserve(pod(1), ss, t0, 0)
	ts.do(func(s *Store) {
		_, err := s.Reserve(pod(2), ss, nil, t0, 0)
		if !errors.Is(err, alloc.ErrFull) || !strings.Contains(err.Error(), "range set 1") {
			t.Fatalf("got %v, want range set 1 full", err)
		}
		if _, _, found, _ := s.Holder(netip.MustParseAddr("fd00::3")); found {
			t.Fatal("the IPv6 address of the failed ADD stayed reserved")
		}
		if addrs, _ := s.Lookup(pod(2)); addrs != nil {
			t.Fatalf("the failed ADD left an owner entry %v", addrs)
		}
		if held, _, _ := s.Counts(); held != 2 {
			t.Fatalf("held = %d, want 2", held)
		}
	})
}

func TestGCReleasesEveryAttachmentNotValid(t *testing.T) {
	ts := newTestStore(t)
	ss := sets(t, dualStack)
	for i := 1; i <= 4; i++ {
		ts.reserve(pod(i), ss, t0, time.Minute)
	}
	ts.do(func(s *Store) {
		released, err := s.GC([]types.GCAttachment{{ContainerID: "pod2", IfName: "eth0"}, {ContainerID: "pod4", IfName: "eth0"}, {ContainerID: "gone", IfName: "eth0"}}, t0, time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		if len(released) != 2 || released[0] != pod(1) || released[1] != pod(3) {
			t.Fatalf("released %v, want pod1 and pod3", released)
		}
		for _, o := range []Owner{pod(2), pod(4)} {
			if _, err := s.Check(o, ss); err != nil {
				t.Fatalf("a valid attachment lost its reservation: %v", err)
			}
		}
		held, cooling, _ := s.Counts()
		if held != 4 || cooling != 4 {
			t.Fatalf("held %d cooling %d, want 4 and 4 (released ones cool down too)", held, cooling)
		}
	})
}

func TestAvailableFailsOnlyWhenARangeSetIsExhausted(t *testing.T) {
	ts := newTestStore(t)
	ss := sets(t, `[[{"subnet":"10.0.0.0/30"}],[{"subnet":"fd00::/64"}]]`)
	ts.do(func(s *Store) {
		if err := s.Available(ss); err != nil {
			t.Fatalf("empty store: %v", err)
		}
	})
	ts.reserve(pod(1), ss, t0, time.Minute)
	ts.do(func(s *Store) {
		err := s.Available(ss)
		if !errors.Is(err, alloc.ErrFull) || !strings.Contains(err.Error(), "range set 0: range is full: all 1 usable addresses of 10.0.0.0/30") {
			t.Fatalf("got %v", err)
		}
	})
	ts.release(pod(1), t0, time.Minute)
	ts.do(func(s *Store) {
		if err := s.Available(ss); err != nil {
			t.Fatalf("a cooling address can still be handed out, yet: %v", err)
		}
	})
}

func TestCheckVerifiesTheReservation(t *testing.T) {
	ts := newTestStore(t)
	ss := sets(t, dualStack)
	ts.reserve(pod(1), ss, t0, 0)
	ts.do(func(s *Store) {
		if _, err := s.Check(pod(1), ss); err != nil {
			t.Fatal(err)
		}
		var cniErr *types.Error
		if _, err := s.Check(pod(2), ss); !errors.As(err, &cniErr) || cniErr.Code != types.ErrUnknownContainer {
			t.Fatalf("unknown container: %v", err)
		}
		other := sets(t, `[[{"subnet":"10.9.0.0/24"}],[{"subnet":"fd00:10:244:1::/64"}]]`)
		if _, err := s.Check(pod(1), other); err == nil || !strings.Contains(err.Error(), "does not match the network's range sets") {
			t.Fatalf("changed ranges: %v", err)
		}
	})
}

func TestChangedRangesGiveANewReservation(t *testing.T) {
	ts := newTestStore(t)
	ts.reserve(pod(1), sets(t, dualStack), t0, time.Minute)
	moved := sets(t, `[[{"subnet":"10.244.9.0/24"}],[{"subnet":"fd00:10:244:1::/64"}]]`)
	if got := ts.reserve(pod(1), moved, t0, time.Minute); got != "10.244.9.2,fd00:10:244:1::3" {
		t.Fatalf("got %s", got)
	}
	ts.do(func(s *Store) {
		if _, cooling, found, _ := s.Holder(netip.MustParseAddr("10.244.1.2")); !found || !cooling {
			t.Fatal("the old address was not released into its cool-down")
		}
	})
}

func TestRequestedAddresses(t *testing.T) {
	ts := newTestStore(t)
	ss := sets(t, dualStack)
	want := []netip.Addr{netip.MustParseAddr("10.244.1.77"), netip.MustParseAddr("fd00:10:244:1::77")}
	ts.do(func(s *Store) {
		got, err := s.Reserve(pod(1), ss, want, t0, 0)
		if err != nil || join(got) != join(want) {
			t.Fatalf("got %v, %v", got, err)
		}
		if got, err := s.Reserve(pod(1), ss, want, t0, 0); err != nil || join(got) != join(want) {
			t.Fatalf("repeated: %v, %v", got, err)
		}
		_, err = s.Reserve(pod(2), ss, want[:1], t0, 0)
		if !errors.Is(err, alloc.ErrAllocated) || !strings.Contains(err.Error(), "held by container pod1 interface eth0") {
			t.Fatalf("taken: %v", err)
		}
		_, err = s.Reserve(pod(3), ss, []netip.Addr{netip.MustParseAddr("10.244.1.8"), netip.MustParseAddr("10.244.1.9")}, t0, 0)
		if err == nil || !strings.Contains(err.Error(), "requested IP 10.244.1.9 was not allocated") {
			t.Fatalf("two requested in one set: %v", err)
		}
		_, err = s.Reserve(pod(2), ss, []netip.Addr{netip.MustParseAddr("10.244.1.1")}, t0, 0)
		if !errors.Is(err, alloc.ErrReserved) || !strings.Contains(err.Error(), "the gateway") {
			t.Fatalf("gateway: %v", err)
		}
	})
}

func TestImportsHostLocalReservations(t *testing.T) {
	ts := newTestStore(t)
	dir := filepath.Join(ts.dir, "pods")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	files := map[string]string{
		"10.244.1.2":         "live\r\neth0",
		"fd00:10:244:1::2":   "live\r\neth0",
		"10.244.1.3":         "", // host-local's empty file after a failed write
		"last_reserved_ip.0": "10.244.1.2",
		"lock":               "",
	}
	for name, data := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	ss := sets(t, dualStack)
	ts.do(func(s *Store) {
		if got, err := s.Check(Owner{"live", "eth0"}, ss); err != nil || join(got) != "10.244.1.2,fd00:10:244:1::2" {
			t.Fatalf("imported %v, %v", got, err)
		}
	})
	if got := ts.reserve(pod(1), ss, t0, 0); got != "10.244.1.3,fd00:10:244:1::3" {
		t.Fatalf("a new pod got %s", got)
	}
	if got := ts.release(Owner{"live", "eth0"}, t0, 0); got != "10.244.1.2,fd00:10:244:1::2" {
		t.Fatalf("DEL of the imported pod released %q", got)
	}
}

func TestOpenTimesOutWhileAnotherInvocationHoldsTheLock(t *testing.T) {
	ts := newTestStore(t)
	holder := ts.open()
	_, err := Open(ts.dir, "pods", 20*time.Millisecond)
	var lt *LockTimeoutError
	if !errors.As(err, &lt) || !strings.Contains(err.Error(), "fuser") {
		t.Fatalf("got %v, want a lock timeout that says how to find the holder", err)
	}
	holder.Close()
	ts.do(func(*Store) {})
}

func TestConcurrentReservationsAreUnique(t *testing.T) {
	ts := newTestStore(t)
	ss := sets(t, dualStack)
	const n = 50
	got := make([][]netip.Addr, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s, err := Open(ts.dir, "pods", 30*time.Second)
			if err != nil {
				errs[i] = err
				return
			}
			defer s.Close()
			got[i], errs[i] = s.Reserve(pod(i), ss, nil, t0, time.Minute)
		}()
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
	ts.do(func(s *Store) {
		if held, _, _ := s.Counts(); held != 2*n {
			t.Fatalf("held = %d, want %d", held, 2*n)
		}
	})
}

// TestRandomChurnNeverGivesAnAddressTwoOwners runs random ADD, DEL and GC
// calls on small ranges, reopening the store for each, and checks the
// store's invariants after every call.
func TestRandomChurnNeverGivesAnAddressTwoOwners(t *testing.T) {
	ts := newTestStore(t)
	ss := sets(t, `[[{"subnet":"10.0.0.0/28"}],[{"subnet":"fd00::/124"}]]`) // 13 and 14 pods
	rng := rand.New(rand.NewPCG(1, 2))
	now := t0
	live := map[Owner]bool{}
	for step := 0; step < 400; step++ {
		now = now.Add(time.Duration(rng.IntN(3000)) * time.Millisecond)
		o := pod(rng.IntN(20))
		ts.do(func(s *Store) {
			switch op := rng.IntN(10); {
			case op < 6:
				_, err := s.Reserve(o, ss, nil, now, 5*time.Second)
				if err == nil {
					live[o] = true
				} else if !errors.Is(err, alloc.ErrFull) {
					t.Fatalf("step %d: %v", step, err)
				}
			case op < 9:
				if _, err := s.Release(o, now, 5*time.Second); err != nil {
					t.Fatal(err)
				}
				delete(live, o)
			default:
				var valid []types.GCAttachment
				for v := range live {
					if rng.IntN(4) > 0 {
						valid = append(valid, types.GCAttachment{ContainerID: v.ContainerID, IfName: v.IfName})
					} else {
						delete(live, v)
					}
				}
				if _, err := s.GC(valid, now, 5*time.Second); err != nil {
					t.Fatal(err)
				}
			}
			checkInvariants(t, s, ss, live)
		})
	}
}

// checkInvariants walks the whole file: every owner's addresses are
// recorded as its own, one per set; every held address is listed by its
// owner; the owners are exactly the live attachments.
func checkInvariants(t *testing.T, s *Store, ss []RangeSet, live map[Owner]bool) {
	t.Helper()
	err := s.db.View(func(tx *bolt.Tx) error {
		tn := newTxn(tx)
		listed := map[netip.Addr]Owner{}
		owners := 0
		err := tn.owners.ForEach(func(k, v []byte) error {
			o := ownerFromKey(k)
			owners++
			if !live[o] {
				return fmt.Errorf("%s holds addresses but is not live", o)
			}
			var rec ownerRecord
			if err := json.Unmarshal(v, &rec); err != nil {
				return err
			}
			if _, ok := arrange(rec.IPs, ss); !ok {
				return fmt.Errorf("%s holds %v, not one per set", o, rec.IPs)
			}
			for _, a := range rec.IPs {
				if prev, dup := listed[a]; dup {
					return fmt.Errorf("%s listed by %s and %s", a, prev, o)
				}
				listed[a] = o
				r, ok, err := tn.record(a)
				if err != nil || !ok || !r.heldBy(o) {
					return fmt.Errorf("%s of %s has record %+v (%v)", a, o, r, ok)
				}
			}
			return nil
		})
		if err != nil {
			return err
		}
		if owners != len(live) {
			return fmt.Errorf("%d owners recorded, %d live", owners, len(live))
		}
		for _, b := range []*bolt.Bucket{tn.v4, tn.v6} {
			err := b.ForEach(func(k, v []byte) error {
				a, _ := netip.AddrFromSlice(k)
				var r addrRecord
				if err := json.Unmarshal(v, &r); err != nil {
					return err
				}
				if r.ReleasedAt == 0 && listed[a] != (Owner{r.ContainerID, r.IfName}) {
					return fmt.Errorf("%s is held by %s/%s, who does not list it", a, r.ContainerID, r.IfName)
				}
				return nil
			})
			if err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
