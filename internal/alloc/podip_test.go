package alloc_test

import (
	"net/netip"
	"testing"

	"github.com/duet-net/duet/internal/alloc"
	"github.com/duet-net/duet/internal/alloc/podiptest"
)

// The pod-IP policy over the in-memory store passes the store conformance
// suite that the bbolt store passes too.
func TestPodIPsOverMemStore(t *testing.T) {
	podiptest.Run(t, func(*testing.T) podiptest.Opener {
		st := alloc.NewMemPodIPStore()
		return func(fn func(alloc.PodIPStore) error) error { return fn(st) }
	}, podiptest.Options{ChurnSteps: 2000, Seeds: 8})
}

// A rolled-back transaction leaves the in-memory store as it was, as a
// failed bbolt transaction leaves the file.
func TestMemPodIPStoreRollsBackAFailedUpdate(t *testing.T) {
	st := alloc.NewMemPodIPStore()
	sets := podiptest.DualStack(t)
	p, err := alloc.NewPodIPs(st, sets, alloc.PodIPOptions{Cooldown: alloc.DefaultPodIPCooldown})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.Reserve(podiptest.Pod(1), nil); err != nil {
		t.Fatal(err)
	}
	a4, a6 := netip.MustParseAddr("10.244.1.9"), netip.MustParseAddr("fd00:10:244:1::9")
	tx, err := st.Begin(true)
	if err != nil {
		t.Fatal(err)
	}
	for _, step := range []func() error{
		func() error { return tx.PutRecord(a4, alloc.PodIPRecord{Holder: podiptest.Pod(2)}) },
		func() error { return tx.PutRecord(a6, alloc.PodIPRecord{ReleasedAt: 7}) },
		func() error { return tx.Enqueue(7, a6) },
		func() error { return tx.DeleteRecord(netip.MustParseAddr("10.244.1.2")) },
		func() error { return tx.PutHoldings(podiptest.Pod(2), []netip.Addr{a4}) },
		func() error { return tx.DeleteHoldings(podiptest.Pod(1)) },
		func() error { return tx.PutCursor(sets[0].String(), a4) },
	} {
		if err := step(); err != nil {
			t.Fatal(err)
		}
	}
	if err := tx.Rollback(); err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(); err == nil {
		t.Fatal("Commit after Rollback succeeded")
	}
	if err := podiptest.CheckInvariants(st, sets, map[alloc.Attachment]bool{podiptest.Pod(1): true}); err != nil {
		t.Fatalf("after the rollback: %v", err)
	}
	if held, cooling, _ := p.Counts(); held != 2 || cooling != 0 {
		t.Fatalf("held %d cooling %d after the rollback, want 2 and 0", held, cooling)
	}
	// The cursor is back too: the next pod gets .3, not .10.
	if got, err := p.Reserve(podiptest.Pod(3), nil); err != nil || podiptest.Join(got) != "10.244.1.3,fd00:10:244:1::3" {
		t.Fatalf("next reservation %v, %v", got, err)
	}
	ro, _ := st.Begin(false)
	defer ro.Rollback()
	if err := ro.PutCursor("x", a4); err == nil {
		t.Fatal("a write in a read-only transaction succeeded")
	}
}

// The in-memory store carves transaction handles and holdings from slabs;
// neither may be shared: a stale handle's deferred Rollback must not undo
// a later transaction, and holdings a caller kept must not change when
// others are written.
func TestMemPodIPStoreSlabsAreNotShared(t *testing.T) {
	st := alloc.NewMemPodIPStore()
	a := netip.MustParseAddr("10.244.1.2")
	first, err := st.Begin(true)
	if err != nil {
		t.Fatal(err)
	}
	if err := first.PutHoldings(podiptest.Pod(1), []netip.Addr{a}); err != nil {
		t.Fatal(err)
	}
	kept, _ := first.Holdings(podiptest.Pod(1))
	if err := first.Commit(); err != nil {
		t.Fatal(err)
	}
	for i := range 300 { // more than a slab of handles and of addresses
		tx, err := st.Begin(true)
		if err != nil {
			t.Fatal(err)
		}
		b := netip.AddrFrom4([4]byte{10, 244, 2, byte(i)})
		if err := tx.PutHoldings(podiptest.Pod(2+i), []netip.Addr{b}); err != nil {
			t.Fatal(err)
		}
		if err := first.Rollback(); err != nil {
			t.Fatal(err)
		}
		if err := first.PutRecord(b, alloc.PodIPRecord{Holder: podiptest.Pod(1)}); err == nil {
			t.Fatal("a write through an ended transaction succeeded")
		}
		if err := tx.Commit(); err != nil {
			t.Fatalf("transaction %d: %v", i, err)
		}
	}
	if len(kept) != 1 || kept[0] != a {
		t.Fatalf("holdings kept from the first transaction became %v", kept)
	}
	tx, err := st.Begin(false)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback()
	n := 0
	if err := tx.EachHolding(func(alloc.Attachment, []netip.Addr) error { n++; return nil }); err != nil {
		t.Fatal(err)
	}
	if n != 301 {
		t.Fatalf("%d attachments hold addresses, want 301 (a stale Rollback undid a later transaction?)", n)
	}
}
