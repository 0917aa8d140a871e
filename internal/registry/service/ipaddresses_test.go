package service

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"sync"
	"testing"

	clientv3 "go.etcd.io/etcd/client/v3"
	networkingv1 "k8s.io/api/networking/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer"

	"github.com/duet-net/duet/internal/alloc"
	"github.com/duet-net/duet/internal/etcdstore/etcdtest"
)

const testIPPrefix = "/registry/networking.k8s.io/ipaddresses/"

func newTestIPAddressStore(t *testing.T) (*IPAddressStore, *clientv3.Client, serializer.CodecFactory) {
	t.Helper()
	scheme := runtime.NewScheme()
	if err := networkingv1.AddToScheme(scheme); err != nil {
		t.Fatal(err)
	}
	codecs := serializer.NewCodecFactory(scheme)
	srv := etcdtest.Start(t)
	s, err := NewIPAddressStore(srv.Client, testIPPrefix, codecs.LegacyCodec(networkingv1.SchemeGroupVersion))
	if err != nil {
		t.Fatal(err)
	}
	return s, srv.Client, codecs
}

func ownerCtx(name string) context.Context {
	return alloc.WithOwner(context.Background(), alloc.Owner{Resource: "services", Namespace: "default", Name: name})
}

// Many concurrent creates share transactions; each must still get its own
// answer: taken keys refused, the rest recorded once, naming its owner.
func TestIPAddressStoreConcurrentCreates(t *testing.T) {
	s, client, codecs := newTestIPAddressStore(t)
	ctx := context.Background()
	// Another replica already holds every tenth address.
	for i := 0; i < 300; i += 10 {
		ip := netip.AddrFrom4([4]byte{10, 96, byte(i >> 8), byte(i)})
		if err := s.Create(ownerCtx("other"), netip.PrefixFrom(ip, 32)); err != nil {
			t.Fatalf("seeding %s: %v", ip, err)
		}
	}
	errs := make([]error, 300)
	var wg sync.WaitGroup
	for i := range 300 {
		wg.Go(func() {
			ip := netip.AddrFrom4([4]byte{10, 96, byte(i >> 8), byte(i)})
			errs[i] = s.Create(ownerCtx(fmt.Sprintf("s-%d", i)), netip.PrefixFrom(ip, 32))
		})
	}
	wg.Wait()
	for i, err := range errs {
		switch {
		case i%10 == 0 && !errors.Is(err, alloc.ErrAllocated):
			t.Errorf("create of held address %d: got %v, want ErrAllocated", i, err)
		case i%10 != 0 && err != nil:
			t.Errorf("create of free address %d: %v", i, err)
		}
	}
	for _, i := range []int{0, 7, 255, 299} {
		ip := netip.AddrFrom4([4]byte{10, 96, byte(i >> 8), byte(i)})
		resp, err := client.Get(ctx, testIPPrefix+ip.String())
		if err != nil || len(resp.Kvs) != 1 {
			t.Fatalf("reading %s: %v, %d keys", ip, err, len(resp.Kvs))
		}
		obj, _, err := codecs.UniversalDeserializer().Decode(resp.Kvs[0].Value, nil, nil)
		if err != nil {
			t.Fatalf("decoding %s: %v", ip, err)
		}
		rec := obj.(*networkingv1.IPAddress)
		want := fmt.Sprintf("s-%d", i)
		if i%10 == 0 {
			want = "other"
		}
		if rec.Name != ip.String() || rec.Spec.ParentRef == nil || rec.Spec.ParentRef.Name != want || rec.UID == "" || rec.CreationTimestamp.IsZero() || rec.Labels[LabelIPFamily] != "IPv4" {
			t.Errorf("record of %s: %+v", ip, rec)
		}
	}
	var n int
	if err := s.List(ctx, netip.MustParsePrefix("10.96.0.0/16"), func(netip.Prefix) error { n++; return nil }); err != nil {
		t.Fatal(err)
	}
	if n != 300 {
		t.Errorf("List: %d records, want 300", n)
	}
}

func TestIPAddressStoreListDelete(t *testing.T) {
	s, _, _ := newTestIPAddressStore(t)
	ctx := ownerCtx("a")
	ips := []string{"10.96.0.5", "10.96.3.1", "fd00::5", "10.97.0.1"}
	for _, ip := range ips {
		a := netip.MustParseAddr(ip)
		if err := s.Create(ctx, netip.PrefixFrom(a, a.BitLen())); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Create(context.Background(), netip.MustParsePrefix("10.96.0.9/32")); err == nil {
		t.Error("Create without an owner succeeded")
	}
	list := func(within string) []string {
		var got []string
		if err := s.List(ctx, netip.MustParsePrefix(within), func(p netip.Prefix) error { got = append(got, p.Addr().String()); return nil }); err != nil {
			t.Fatal(err)
		}
		slices.Sort(got)
		return got
	}
	if got := list("10.96.0.0/16"); !slices.Equal(got, []string{"10.96.0.5", "10.96.3.1"}) {
		t.Errorf("List(10.96.0.0/16) = %v", got)
	}
	if got := list("fd00::/64"); !slices.Equal(got, []string{"fd00::5"}) {
		t.Errorf("List(fd00::/64) = %v", got)
	}
	all, err := s.ListAll(context.Background(), 0)
	if err != nil {
		t.Fatal(err)
	}
	before, err := s.kv.Get(context.Background(), testIPPrefix, clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, ip := range all {
		names = append(names, ip.Name)
		if ip.Spec.ParentRef == nil || ip.Spec.ParentRef.Name != "a" || ip.UID == "" {
			t.Errorf("ListAll: %s = %+v", ip.Name, ip)
		}
	}
	slices.Sort(names)
	if want := []string{"10.96.0.5", "10.96.3.1", "10.97.0.1", "fd00::5"}; !slices.Equal(names, want) {
		t.Errorf("ListAll names = %v, want %v", names, want)
	}
	for range 2 { // deleting an absent record is not an error
		if err := s.Delete(ctx, netip.MustParsePrefix("10.96.0.5/32")); err != nil {
			t.Fatal(err)
		}
	}
	if got := list("10.96.0.0/16"); !slices.Equal(got, []string{"10.96.3.1"}) {
		t.Errorf("after Delete, List = %v", got)
	}
	// At the revision before the delete, the record is still there.
	then, err := s.ListAll(context.Background(), before.Header.Revision)
	if err != nil {
		t.Fatal(err)
	}
	if len(then) != 4 || !slices.ContainsFunc(then, func(ip networkingv1.IPAddress) bool { return ip.Name == "10.96.0.5" }) {
		t.Errorf("ListAll at the revision before the delete: %v, want the 4 records, 10.96.0.5 among them", then)
	}
	if err := s.Create(ctx, netip.MustParsePrefix("10.96.0.5/32")); err != nil {
		t.Errorf("re-creating a deleted record: %v", err)
	}
}
