package boltstore

import (
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/duet-net/duet/internal/alloc"
	"github.com/duet-net/duet/internal/alloc/podiptest"
)

var t0 = podiptest.T0

// policy opens the store of network "pods" under dir and runs fn on the
// policy for sets at the time now, as one invocation.
func policy(t testing.TB, dir string, sets []alloc.PodRangeSet, now time.Time, fn func(p *alloc.PodIPs)) {
	t.Helper()
	s, err := Open(dir, "pods", 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	p, err := alloc.NewPodIPs(s, sets, alloc.PodIPOptions{Cooldown: time.Minute, Now: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	fn(p)
}

// writeSample makes, in dataDir/pods, a store holding every kind of record
// the format has: host-local's reservations taken over, held addresses of
// both families, requested ones, a second interface, cooling addresses and
// their queue, and the cursors of two networks' range sets. The file in
// testdata/ccc4dc5 was written by this same sequence of calls run against
// duet-ipam as of commit ccc4dc5 (its internal/cni/ipam Store).
func writeSample(t *testing.T, dataDir string) {
	dir := filepath.Join(dataDir, "pods")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for name, data := range map[string]string{"10.244.1.50": "hl\r\neth0", "fd00:10:244:1::50": "hl\r\neth0"} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	ss := podiptest.DualStack(t)
	small := podiptest.Sets(t, "10.9.0.0/29")
	at := func(s int) time.Time { return t0.Add(time.Duration(s) * time.Second) }
	must := func(_ []netip.Addr, err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	for i := 1; i <= 5; i++ {
		policy(t, dataDir, ss, at(i), func(p *alloc.PodIPs) { must(p.Reserve(podiptest.Pod(i), nil)) })
	}
	policy(t, dataDir, ss, at(10), func(p *alloc.PodIPs) { must(p.Release(podiptest.Pod(2))) })
	policy(t, dataDir, ss, at(11), func(p *alloc.PodIPs) {
		must(p.Reserve(podiptest.Pod(6), []netip.Addr{netip.MustParseAddr("10.244.1.77"), netip.MustParseAddr("fd00:10:244:1::77")}))
	})
	policy(t, dataDir, ss, at(12), func(p *alloc.PodIPs) {
		must(p.Reserve(alloc.Attachment{ContainerID: "pod1", IfName: "net1"}, nil))
	})
	policy(t, dataDir, small, at(13), func(p *alloc.PodIPs) { must(p.Reserve(podiptest.Pod(7), nil)) })
	policy(t, dataDir, small, at(14), func(p *alloc.PodIPs) { must(p.Release(podiptest.Pod(7))) })
}

// dump lists every bucket's keys and values, hex-encoded, in order.
func dump(t *testing.T, path string) string {
	t.Helper()
	db, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true, Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var b strings.Builder
	err = db.View(func(tx *bolt.Tx) error {
		return tx.ForEach(func(name []byte, bk *bolt.Bucket) error {
			return bk.ForEach(func(k, v []byte) error {
				fmt.Fprintf(&b, "%s %s %s\n", name, hex.EncodeToString(k), v)
				return nil
			})
		})
	})
	if err != nil {
		t.Fatal(err)
	}
	return b.String()
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	data, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Dir(to), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, data, 0o600); err != nil {
		t.Fatal(err)
	}
}

// The store writes what duet-ipam always wrote: the same calls leave the
// same keys and values, byte for byte, as in a file the original code made.
func TestTheFormatIsUnchanged(t *testing.T) {
	dataDir := t.TempDir()
	writeSample(t, dataDir)
	got := dump(t, filepath.Join(dataDir, "pods", DBFile))
	want := dump(t, filepath.Join("testdata", "ccc4dc5", "pods", DBFile))
	if got != want {
		t.Fatalf("the new code wrote\n%s\nthe original code wrote\n%s", got, want)
	}
	for _, bucket := range []string{"v4 ", "v6 ", "owners ", "cursors ", "cooling ", "meta "} {
		if !strings.Contains(want, "\n"+bucket) && !strings.HasPrefix(want, bucket) {
			t.Errorf("the sample has no %s record: it does not cover the format", bucket)
		}
	}
}

// A store written by the original code opens and goes on: what it holds is
// held, what cools is cooling, and the cursors continue where they were.
func TestAStoreWrittenByTheOriginalCodeOpens(t *testing.T) {
	dataDir := t.TempDir()
	copyFile(t, filepath.Join("testdata", "ccc4dc5", "pods", DBFile), filepath.Join(dataDir, "pods", DBFile))
	ss := podiptest.DualStack(t)
	small := podiptest.Sets(t, "10.9.0.0/29")
	now := t0.Add(20 * time.Second)
	policy(t, dataDir, ss, now, func(p *alloc.PodIPs) {
		for o, want := range map[alloc.Attachment]string{
			podiptest.Pod(1):                      "10.244.1.2,fd00:10:244:1::2",
			podiptest.Pod(6):                      "10.244.1.77,fd00:10:244:1::77",
			{ContainerID: "pod1", IfName: "net1"}: "10.244.1.7,fd00:10:244:1::7",
			{ContainerID: "hl", IfName: "eth0"}:   "10.244.1.50,fd00:10:244:1::50", // host-local's, taken over
		} {
			if got, err := p.Check(o); err != nil || podiptest.Join(got) != want {
				t.Errorf("Check(%s) = %v, %v; want %s", o, got, err, want)
			}
		}
		if _, err := p.Check(podiptest.Pod(2)); !errors.Is(err, alloc.ErrUnknownAttachment) {
			t.Errorf("released pod2: %v", err)
		}
		if _, cooling, found, err := p.Holder(netip.MustParseAddr("10.244.1.3")); err != nil || !found || !cooling {
			t.Errorf("pod2's address: cooling %v found %v (%v), want cooling", cooling, found, err)
		}
		if held, cooling, err := p.Counts(); err != nil || held != 14 || cooling != 3 {
			t.Errorf("held %d cooling %d (%v), want 14 and 3", held, cooling, err)
		}
		// The cursor was at .7: the next pod gets .8, not pod2's cooling .3.
		if got, err := p.Reserve(podiptest.Pod(8), nil); err != nil || podiptest.Join(got) != "10.244.1.8,fd00:10:244:1::8" {
			t.Errorf("next reservation %v, %v", got, err)
		}
		if got, err := p.Release(podiptest.Pod(1)); err != nil || podiptest.Join(got) != "10.244.1.2,fd00:10:244:1::2" {
			t.Errorf("releasing pod1: %v, %v", got, err)
		}
	})
	policy(t, dataDir, small, now, func(p *alloc.PodIPs) {
		// The other network's cursor was at .2 (pod7's, cooling).
		if got, err := p.Reserve(podiptest.Pod(9), nil); err != nil || podiptest.Join(got) != "10.9.0.3" {
			t.Errorf("reservation in the second range set %v, %v", got, err)
		}
	})
	// After its cool-down pod2's address goes, and the store is whole.
	policy(t, dataDir, ss, now.Add(time.Hour), func(p *alloc.PodIPs) {
		if _, err := p.Reserve(podiptest.Pod(10), nil); err != nil {
			t.Fatal(err)
		}
		if _, _, found, _ := p.Holder(netip.MustParseAddr("10.244.1.3")); found {
			t.Error("pod2's address still cools an hour later")
		}
	})
}

func TestImportsHostLocalReservations(t *testing.T) {
	dataDir := t.TempDir()
	dir := filepath.Join(dataDir, "pods")
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
	ss := podiptest.DualStack(t)
	live := alloc.Attachment{ContainerID: "live", IfName: "eth0"}
	policy(t, dataDir, ss, t0, func(p *alloc.PodIPs) {
		if got, err := p.Check(live); err != nil || podiptest.Join(got) != "10.244.1.2,fd00:10:244:1::2" {
			t.Fatalf("imported %v, %v", got, err)
		}
	})
	policy(t, dataDir, ss, t0, func(p *alloc.PodIPs) {
		if got, err := p.Reserve(podiptest.Pod(1), nil); err != nil || podiptest.Join(got) != "10.244.1.3,fd00:10:244:1::3" {
			t.Fatalf("a new pod got %v, %v", got, err)
		}
	})
	policy(t, dataDir, ss, t0, func(p *alloc.PodIPs) {
		if got, err := p.Release(live); err != nil || podiptest.Join(got) != "10.244.1.2,fd00:10:244:1::2" {
			t.Fatalf("DEL of the imported pod released %v, %v", got, err)
		}
	})
}

func TestOpenTimesOutWhileAnotherInvocationHoldsTheLock(t *testing.T) {
	dataDir := t.TempDir()
	holder, err := Open(dataDir, "pods", time.Second)
	if err != nil {
		t.Fatal(err)
	}
	_, err = Open(dataDir, "pods", 20*time.Millisecond)
	var lt *LockTimeoutError
	if !errors.As(err, &lt) || !strings.Contains(err.Error(), "fuser") {
		t.Fatalf("got %v, want a lock timeout that says how to find the holder", err)
	}
	holder.Close()
	s, err := Open(dataDir, "pods", time.Second)
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
}

// Every failure of the file or the disk comes back as an
// *alloc.StoreError, which duet-ipam reports as an I/O failure.
func TestStoreFailuresAreStoreErrors(t *testing.T) {
	dataDir := t.TempDir()
	// The database's path is a directory: opening it fails.
	if err := os.MkdirAll(filepath.Join(dataDir, "pods", DBFile), 0o755); err != nil {
		t.Fatal(err)
	}
	_, err := Open(dataDir, "pods", time.Second)
	var se *alloc.StoreError
	if !errors.As(err, &se) || !strings.Contains(err.Error(), "opening ") {
		t.Fatalf("opening a directory as the store: %v, want a StoreError", err)
	}
	// The data directory cannot be made: a file is in the way.
	file := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(file, "pods", time.Second); !errors.As(err, &se) || !errors.Is(err, syscall.ENOTDIR) {
		t.Fatalf("a file as the data directory: %v, want a StoreError wrapping ENOTDIR", err)
	}
	// A record that does not decode is the store's failure too.
	s, err := Open(t.TempDir(), "pods", time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	err = s.db.Update(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketV4).Put(netip.MustParseAddr("10.244.1.2").AsSlice(), []byte("{not json"))
	})
	if err != nil {
		t.Fatal(err)
	}
	p, err := alloc.NewPodIPs(s, podiptest.DualStack(t), alloc.PodIPOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if _, _, _, err := p.Holder(netip.MustParseAddr("10.244.1.2")); !errors.As(err, &se) || !strings.Contains(err.Error(), "record of 10.244.1.2") {
		t.Fatalf("a corrupt record: %v, want a StoreError naming it", err)
	}
}
