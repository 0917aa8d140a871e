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
