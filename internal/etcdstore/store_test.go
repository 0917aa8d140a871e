package etcdstore_test

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"sync"
	"testing"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/duet-net/duet/internal/alloc"
	"github.com/duet-net/duet/internal/etcdstore"
	"github.com/duet-net/duet/internal/etcdstore/etcdtest"
)

func newStore(t *testing.T, prefix string) (*etcdstore.Store, *etcdtest.Server) {
	t.Helper()
	srv := etcdtest.Start(t)
	s, err := etcdstore.New(srv.Client, prefix)
	if err != nil {
		t.Fatal(err)
	}
	return s, srv
}

func list(t *testing.T, s alloc.Store, within string) []string {
	t.Helper()
	var got []string
	err := s.List(context.Background(), netip.MustParsePrefix(within), func(k netip.Prefix) error {
		got = append(got, k.String())
		return nil
	})
	if err != nil {
		t.Fatalf("List(%s): %v", within, err)
	}
	return got
}

func TestCreateConflictDelete(t *testing.T) {
	ctx := context.Background()
	s, _ := newStore(t, "/duet/allocations/nodecidrs")
	p := netip.MustParsePrefix("10.244.1.0/24")

	if err := s.Create(ctx, p); err != nil {
		t.Fatalf("first Create(%s): %v", p, err)
	}
	err := s.Create(ctx, p)
	if !errors.Is(err, alloc.ErrAllocated) {
		t.Fatalf("second Create(%s) = %v, want an error wrapping alloc.ErrAllocated", p, err)
	}
	if err.Error() != "10.244.1.0/24 is already allocated" {
		t.Errorf("conflict message = %q", err)
	}
	if err := s.Delete(ctx, p); err != nil {
		t.Fatalf("Delete(%s): %v", p, err)
	}
	if err := s.Delete(ctx, p); err != nil {
		t.Fatalf("deleting an absent record: %v", err)
	}
	if err := s.Create(ctx, p); err != nil {
		t.Fatalf("Create after Delete: %v", err)
	}
}

func TestRecordKeepsOwner(t *testing.T) {
	ctx := context.Background()
	s, srv := newStore(t, "/duet/allocations/nodecidrs/")
	p := netip.MustParsePrefix("fd00:0:0:3::/64")
	owner := alloc.Owner{Resource: "nodes", Name: "node-a"}
	if err := s.Create(alloc.WithOwner(ctx, owner), p); err != nil {
		t.Fatal(err)
	}
	r, ok, err := s.Get(ctx, p)
	if err != nil || !ok {
		t.Fatalf("Get(%s) = %v, %v, %v", p, r, ok, err)
	}
	if r.Prefix != p || r.Owner == nil || *r.Owner != owner {
		t.Errorf("Get(%s) = %+v (owner %+v), want owner %+v", p, r, r.Owner, owner)
	}
	// What an operator sees with etcdctl.
	resp, err := srv.Client.Get(ctx, "/duet/allocations/nodecidrs/v6/fd000000000000030000000000000000/064")
	if err != nil || len(resp.Kvs) != 1 {
		t.Fatalf("raw get: %v, %v", resp, err)
	}
	if got, want := string(resp.Kvs[0].Value), `{"prefix":"fd00:0:0:3::/64","owner":{"resource":"nodes","name":"node-a"}}`; got != want {
		t.Errorf("stored value = %s, want %s", got, want)
	}

	q := netip.MustParsePrefix("10.0.0.0/24")
	if err := s.Create(ctx, q); err != nil {
		t.Fatal(err)
	}
	if r, ok, err := s.Get(ctx, q); err != nil || !ok || r.Owner != nil {
		t.Errorf("record created without an owner: Get = %+v, %v, %v", r, ok, err)
	}
	if _, ok, err := s.Get(ctx, netip.MustParsePrefix("10.0.1.0/24")); err != nil || ok {
		t.Errorf("Get of an absent record = %v, %v", ok, err)
	}
}

func TestListWithin(t *testing.T) {
	ctx := context.Background()
	s, srv := newStore(t, "/duet/allocations/nodecidrs/")
	mem := alloc.NewMemStore()
	keys := []string{
		"10.243.255.0/24", "10.244.0.0/24", "10.244.1.0/24", "10.244.255.0/24", "10.244.0.0/16",
		"10.244.0.0/8", "10.245.0.0/24", "10.244.7.9/32",
		"fd00::/64", "fd00:0:0:1::/64", "fd00:0:1::/64", "fd01::/64", "::ffff:10.244.0.0/120",
		"0.0.0.0/0", "::/0",
	}
	for _, k := range keys {
		p := netip.MustParsePrefix(k)
		if err := s.Create(ctx, p); err != nil {
			t.Fatalf("Create(%s): %v", k, err)
		}
		_ = mem.Create(ctx, p)
	}
	// A store under another prefix never sees these records.
	other, err := etcdstore.New(srv.Client, "/duet/allocations/serviceips/")
	if err != nil {
		t.Fatal(err)
	}
	if got := list(t, other, "0.0.0.0/0"); len(got) != 0 {
		t.Errorf("store under another prefix lists %v", got)
	}

	for _, tc := range []struct {
		within string
		want   []string
	}{
		{"10.244.0.0/16", []string{"10.244.0.0/16", "10.244.0.0/24", "10.244.1.0/24", "10.244.7.9/32", "10.244.255.0/24"}},
		{"10.244.1.0/24", []string{"10.244.1.0/24"}},
		{"10.244.2.0/24", nil},
		{"fd00::/48", []string{"fd00::/64", "fd00:0:0:1::/64"}},
		{"fd00::/32", []string{"fd00::/64", "fd00:0:0:1::/64", "fd00:0:1::/64"}},
		{"0.0.0.0/0", []string{"0.0.0.0/0", "10.243.255.0/24", "10.244.0.0/8", "10.244.0.0/16", "10.244.0.0/24", "10.244.1.0/24", "10.244.7.9/32", "10.244.255.0/24", "10.245.0.0/24"}},
		{"::/0", []string{"::/0", "::ffff:10.244.0.0/120", "fd00::/64", "fd00:0:0:1::/64", "fd00:0:1::/64", "fd01::/64"}},
	} {
		got := list(t, s, tc.within)
		if !slices.Equal(got, tc.want) {
			t.Errorf("List(%s) = %v, want %v", tc.within, got, tc.want)
		}
		memGot := list(t, mem, tc.within)
		slices.Sort(memGot)
		sorted := slices.Clone(got)
		slices.Sort(sorted)
		if !slices.Equal(sorted, memGot) {
			t.Errorf("List(%s) = %v, but MemStore lists %v", tc.within, got, memGot)
		}
	}
}

func TestListPagesAtOneRevision(t *testing.T) {
	ctx := context.Background()
	s, _ := newStore(t, "/duet/allocations/podips/")
	const n = 2500 // more than two pages
	base := netip.MustParseAddr("fd00::")
	var want []netip.Prefix
	a := base
	for range n {
		want = append(want, netip.PrefixFrom(a, 128))
		a = a.Next()
	}
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < n; i += 8 {
				if err := s.Create(ctx, want[i]); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}

	// Records created while List runs are not seen: the snapshot is the
	// revision of the first page.
	var got []netip.Prefix
	err := s.List(ctx, netip.MustParsePrefix("fd00::/64"), func(k netip.Prefix) error {
		if len(got) == 0 {
			if err := s.Create(ctx, netip.MustParsePrefix("fd00::ffff:0/128")); err != nil {
				return err
			}
		}
		got = append(got, k)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(got, want) {
		t.Fatalf("List returned %d records (first %v), want the %d created in order", len(got), got[:min(3, len(got))], n)
	}

	stop := errors.New("stop")
	calls := 0
	err = s.List(ctx, netip.MustParsePrefix("fd00::/64"), func(netip.Prefix) error {
		calls++
		return stop
	})
	if !errors.Is(err, stop) || calls != 1 {
		t.Errorf("List did not stop at fn's error: err %v after %d calls", err, calls)
	}
}

// ScanAt reads the keys as they were at the revision given, over several
// pages, whatever was created or deleted since; 0 reads the current ones.
func TestScanAtRevision(t *testing.T) {
	ctx := context.Background()
	srv := etcdtest.Start(t)
	const prefix = "/scan/"
	put := func(i int) {
		t.Helper()
		if _, err := srv.Client.Put(ctx, fmt.Sprintf("%s%05d", prefix, i), "v"); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 2100 { // three pages
		put(i)
	}
	resp, err := srv.Client.Get(ctx, prefix, clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil {
		t.Fatal(err)
	}
	rev := resp.Header.Revision
	put(5000)
	if _, err := srv.Client.Delete(ctx, fmt.Sprintf("%s%05d", prefix, 1500)); err != nil {
		t.Fatal(err)
	}
	count := func(rev int64) (n int, has1500, has5000 bool) {
		t.Helper()
		err := etcdstore.ScanAt(ctx, srv.Client, rev, prefix, clientv3.GetPrefixRangeEnd(prefix), true, func(k, _ []byte) error {
			n++
			has1500 = has1500 || string(k) == prefix+"01500"
			has5000 = has5000 || string(k) == prefix+"05000"
			return nil
		})
		if err != nil {
			t.Fatalf("ScanAt(%d): %v", rev, err)
		}
		return n, has1500, has5000
	}
	if n, has1500, has5000 := count(rev); n != 2100 || !has1500 || has5000 {
		t.Errorf("ScanAt(revision of the first 2100 puts): %d keys (deleted key there: %v, later key there: %v), want 2100, true, false", n, has1500, has5000)
	}
	if n, has1500, has5000 := count(0); n != 2100 || has1500 || !has5000 {
		t.Errorf("ScanAt(0): %d keys (deleted key there: %v, later key there: %v), want 2100, false, true", n, has1500, has5000)
	}
}

func TestNewRefusesBadPrefix(t *testing.T) {
	srv := etcdtest.Start(t)
	for _, p := range []string{"", "/"} {
		if _, err := etcdstore.New(srv.Client, p); err == nil {
			t.Errorf("New(%q) accepted", p)
		}
	}
	if _, err := etcdstore.New(nil, "/x/"); err == nil {
		t.Error("New without a client accepted")
	}
}

// Two server replicas, each with its own etcd client and its own node CIDR
// allocator over the same records, allocating at the same time: no prefix
// is handed out twice, and every one handed out is recorded.
func TestReplicasNeverShareANodeCIDR(t *testing.T) {
	ctx := context.Background()
	srv := etcdtest.Start(t)
	cluster := netip.MustParsePrefix("10.244.0.0/20") // 16 node CIDRs of /24
	const replicas, perReplica = 2, 12                // 24 requests for 16 CIDRs

	allocators := make([]*alloc.NodeCIDRs, replicas)
	for i := range allocators {
		s, err := etcdstore.New(srv.NewClient(t), "/duet/allocations/nodecidrs/")
		if err != nil {
			t.Fatal(err)
		}
		allocators[i], err = alloc.NewNodeCIDRs(cluster, 24, s)
		if err != nil {
			t.Fatal(err)
		}
	}

	var mu sync.Mutex
	owner := map[netip.Prefix]string{}
	full := 0
	var wg sync.WaitGroup
	for r, a := range allocators {
		for w := range 3 { // several goroutines per replica too
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := w; i < perReplica; i += 3 {
					name := fmt.Sprintf("replica%d-node%d", r, i)
					p, err := a.AllocateNext(alloc.WithOwner(ctx, alloc.Owner{Resource: "nodes", Name: name}))
					mu.Lock()
					switch {
					case errors.Is(err, alloc.ErrFull):
						full++
					case err != nil:
						t.Errorf("%s: %v", name, err)
					case owner[p] != "":
						t.Errorf("%s handed to both %s and %s", p, owner[p], name)
					default:
						owner[p] = name
					}
					mu.Unlock()
				}
			}()
		}
	}
	wg.Wait()
	if len(owner) != 16 || full != replicas*perReplica-16 {
		t.Errorf("%d CIDRs handed out and %d requests refused as full, want 16 and %d", len(owner), full, replicas*perReplica-16)
	}

	check, err := etcdstore.New(srv.Client, "/duet/allocations/nodecidrs/")
	if err != nil {
		t.Fatal(err)
	}
	err = check.ListRecords(ctx, cluster, func(r etcdstore.Record) error {
		if r.Owner == nil || owner[r.Prefix] != r.Owner.Name {
			t.Errorf("record of %s names owner %+v, but it was handed to %q", r.Prefix, r.Owner, owner[r.Prefix])
		}
		delete(owner, r.Prefix)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(owner) != 0 {
		t.Errorf("handed out but not recorded: %v", owner)
	}

	// A restarted replica learns every allocation from etcd.
	s, _ := etcdstore.New(srv.NewClient(t), "/duet/allocations/nodecidrs/")
	fresh, _ := alloc.NewNodeCIDRs(cluster, 24, s)
	if err := fresh.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	if fresh.Used() != 16 {
		t.Errorf("after Sync a new replica sees %d node CIDRs in use, want 16", fresh.Used())
	}
	if _, err := fresh.AllocateNext(ctx); !errors.Is(err, alloc.ErrFull) {
		t.Errorf("AllocateNext on a full cluster CIDR after Sync = %v, want ErrFull", err)
	}
}
