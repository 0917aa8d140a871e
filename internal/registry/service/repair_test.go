package service

import (
	"context"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
	"k8s.io/client-go/tools/record"

	"github.com/duet-net/duet/internal/alloc"
	"github.com/duet-net/duet/internal/netaddr"
)

var repairStart = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

func repairService(name string, ips ...string) *corev1.Service {
	return &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: name, UID: types.UID("uid-" + name)},
		Spec:       corev1.ServiceSpec{ClusterIP: ips[0], ClusterIPs: ips},
	}
}

// repairRecord is the IPAddress of ip for Service default/owner, created
// at the given time.
func repairRecord(ip, owner string, created time.Time) *networkingv1.IPAddress {
	rec := NewIPAddress(netip.MustParseAddr(ip), alloc.Owner{Resource: "services", Namespace: "default", Name: owner})
	rec.TypeMeta = metav1.TypeMeta{}
	rec.UID = types.UID("uid-" + ip)
	rec.CreationTimestamp = metav1.NewTime(created)
	return rec
}

type repairFixture struct {
	client *fake.Clientset
	events *record.FakeRecorder
	repair *Repair
	now    time.Time
}

func newRepairFixture(t *testing.T, objs ...runtime.Object) *repairFixture {
	t.Helper()
	f := &repairFixture{client: fake.NewClientset(objs...), events: record.NewFakeRecorder(100), now: repairStart}
	ranges := map[netaddr.Family]*alloc.ServiceRange{}
	for i, p := range []netip.Prefix{v4Range, v6Range} {
		r, err := alloc.NewServiceRange(p, alloc.ServiceRangeOptions{Primary: i == 0, Store: alloc.NewMemStore()})
		if err != nil {
			t.Fatal(err)
		}
		ranges[r.Family()] = r
	}
	f.repair = &Repair{Client: f.client, Ranges: func() []*alloc.ServiceRange { return slices.Collect(maps.Values(ranges)) }, Recorder: f.events, Grace: time.Minute, Now: func() time.Time { return f.now }}
	return f
}

// pass runs one repair pass, later by step than the previous one, and
// returns the events it recorded.
func (f *repairFixture) pass(t *testing.T, step time.Duration) []string {
	t.Helper()
	f.now = f.now.Add(step)
	if err := f.repair.RunOnce(ctx); err != nil {
		t.Fatalf("RunOnce: %v", err)
	}
	var got []string
	for {
		select {
		case e := <-f.events.Events:
			got = append(got, e)
		default:
			return got
		}
	}
}

func (f *repairFixture) record(t *testing.T, ip string) *networkingv1.IPAddress {
	t.Helper()
	rec, err := f.client.NetworkingV1().IPAddresses().Get(ctx, ip, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	return rec
}

func reasons(events []string) []string {
	var out []string
	for _, e := range events {
		if f := strings.Fields(e); len(f) > 1 {
			out = append(out, f[1])
		}
	}
	return out
}

// A Service whose create completes while a pass reads (record first, then
// the Service, as the allocator writes them) is consistent, whichever of
// the two reads it falls between: no event, nothing written.
func TestRepairServiceCreatedDuringPass(t *testing.T) {
	f := newRepairFixture(t, repairService("old", "10.96.0.10"), repairRecord("10.96.0.10", "old", repairStart))
	created := false
	f.client.PrependReactor("list", "services", func(k8stesting.Action) (bool, runtime.Object, error) {
		if !created {
			created = true
			// The create lands just before the Services are read.
			if err := f.client.Tracker().Add(repairRecord("10.96.0.20", "new", repairStart)); err != nil {
				t.Fatal(err)
			}
			if err := f.client.Tracker().Add(repairService("new", "10.96.0.20")); err != nil {
				t.Fatal(err)
			}
		}
		return false, nil, nil
	})
	for i := range 3 {
		if got := f.pass(t, 10*time.Second); len(got) != 0 {
			t.Errorf("pass %d: events %q for Services whose records all exist", i, got)
		}
	}
	for _, a := range f.client.Actions() {
		if a.GetVerb() == "create" || a.GetVerb() == "delete" {
			t.Errorf("repair wrote although nothing was inconsistent: %s %s", a.GetVerb(), a.GetResource().Resource)
		}
	}
}

// A Service that holds an IP without its record gets the record back, and
// exactly one ClusterIPNotAllocated event however many passes follow.
func TestRepairMissingRecordOnce(t *testing.T) {
	f := newRepairFixture(t, repairService("lost", "10.96.0.10", "fd00:96::10"), repairRecord("fd00:96::10", "lost", repairStart))
	var all []string
	for range 3 {
		all = append(all, f.pass(t, 10*time.Second)...)
	}
	if want := []string{"ClusterIPNotAllocated"}; !slices.Equal(reasons(all), want) {
		t.Errorf("events %q, want one ClusterIPNotAllocated", all)
	}
	rec := f.record(t, "10.96.0.10")
	if rec == nil || rec.Spec.ParentRef == nil || rec.Spec.ParentRef.Name != "lost" || rec.Labels[LabelManagedBy] != ManagedBy {
		t.Errorf("record after repair: %+v, want one naming default/lost", rec)
	}
}

// What looked inconsistent in a pass's snapshot but is not so any more
// when looked at again is left alone.
func TestRepairSecondLook(t *testing.T) {
	for _, tc := range []struct {
		name string
		// meanwhile runs when the repair reads the candidate again.
		meanwhile func(t *testing.T, f *repairFixture)
		wantRec   bool
	}{
		{"record written meanwhile (another replica repaired it)", func(t *testing.T, f *repairFixture) {
			if err := f.client.Tracker().Add(repairRecord("10.96.0.10", "svc", repairStart)); err != nil {
				t.Fatal(err)
			}
		}, true},
		{"Service deleted meanwhile", func(t *testing.T, f *repairFixture) {
			if err := f.client.Tracker().Delete(corev1.SchemeGroupVersion.WithResource("services"), "default", "svc"); err != nil {
				t.Fatal(err)
			}
		}, false},
		{"Service recreated under the same name meanwhile", func(t *testing.T, f *repairFixture) {
			svc := repairService("svc", "10.96.0.10")
			svc.UID = "another"
			if err := f.client.Tracker().Update(corev1.SchemeGroupVersion.WithResource("services"), svc, "default"); err != nil {
				t.Fatal(err)
			}
		}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newRepairFixture(t, repairService("svc", "10.96.0.10"))
			done := false
			f.client.PrependReactor("get", "services", func(k8stesting.Action) (bool, runtime.Object, error) {
				if !done {
					done = true
					tc.meanwhile(t, f)
				}
				return false, nil, nil
			})
			if got := f.pass(t, 0); len(got) != 0 {
				t.Errorf("events %q for an inconsistency gone by the second look", got)
			}
			if got := f.record(t, "10.96.0.10") != nil; got != tc.wantRec {
				t.Errorf("record of 10.96.0.10 exists: %v, want %v", got, tc.wantRec)
			}
		})
	}
}

// A record no Service holds is released only once two passes in a row
// found it so, it is older than the grace period, and its Service, read
// again, does not hold it: until then its Service may be being created.
func TestRepairOrphans(t *testing.T) {
	for _, tc := range []struct {
		name string
		rec  *networkingv1.IPAddress
		// steps between passes; the record is released by the last one or
		// by none.
		steps    []time.Duration
		released bool
		// meanwhile, if set, runs when the last pass reads the Service the
		// record names.
		meanwhile func(t *testing.T, f *repairFixture)
	}{
		{"old orphan seen once is kept", repairRecord("10.96.0.10", "gone", repairStart.Add(-time.Hour)),
			[]time.Duration{0}, false, nil},
		{"old orphan seen twice is released", repairRecord("10.96.0.10", "gone", repairStart.Add(-time.Hour)),
			[]time.Duration{0, time.Second}, true, nil},
		{"young orphan seen twice is kept", repairRecord("10.96.0.10", "gone", repairStart),
			[]time.Duration{0, 30 * time.Second}, false, nil},
		{"orphan seen twice, past the grace period, is released", repairRecord("10.96.0.10", "gone", repairStart),
			[]time.Duration{0, 30 * time.Second, 31 * time.Second}, true, nil},
		{"orphan whose Service is stored by the second look is kept", repairRecord("10.96.0.10", "late", repairStart.Add(-time.Hour)),
			[]time.Duration{0, time.Second}, false, func(t *testing.T, f *repairFixture) {
				if err := f.client.Tracker().Add(repairService("late", "10.96.0.10")); err != nil {
					t.Fatal(err)
				}
			}},
		{"record of another allocator is never released", func() *networkingv1.IPAddress {
			rec := repairRecord("10.96.0.10", "gone", repairStart.Add(-time.Hour))
			rec.Labels[LabelManagedBy] = "someone-else"
			return rec
		}(), []time.Duration{0, time.Second, time.Hour}, false, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newRepairFixture(t, tc.rec)
			var all []string
			for i, step := range tc.steps {
				if i == len(tc.steps)-1 && tc.meanwhile != nil {
					f.client.PrependReactor("get", "services", func(k8stesting.Action) (bool, runtime.Object, error) {
						tc.meanwhile(t, f)
						return false, nil, nil
					})
				}
				all = append(all, f.pass(t, step)...)
				if i < len(tc.steps)-1 && f.record(t, tc.rec.Name) == nil {
					t.Fatalf("released by pass %d of %d", i+1, len(tc.steps))
				}
			}
			if gone := f.record(t, tc.rec.Name) == nil; gone != tc.released {
				t.Errorf("released: %v, want %v (events %q)", gone, tc.released, all)
			}
			want := []string(nil)
			if tc.released {
				want = []string{"IPAddressOrphaned"}
			}
			if !slices.Equal(reasons(all), want) {
				t.Errorf("events %q, want reasons %v", all, want)
			}
		})
	}
}

// An orphan that is deleted and recorded again between two passes (a new
// UID) starts over: the second pass is its first sighting.
func TestRepairOrphanRecordedAnew(t *testing.T) {
	old := repairRecord("10.96.0.10", "gone", repairStart.Add(-time.Hour))
	f := newRepairFixture(t, old)
	f.pass(t, 0)
	anew := old.DeepCopy()
	anew.UID = "anew"
	if err := f.client.Tracker().Update(networkingv1.SchemeGroupVersion.WithResource("ipaddresses"), anew, ""); err != nil {
		t.Fatal(err)
	}
	if got := f.pass(t, time.Second); len(got) != 0 || f.record(t, "10.96.0.10") == nil {
		t.Errorf("a record seen orphaned once (under its new UID) was released (events %q)", got)
	}
	if got := f.pass(t, time.Second); !slices.Equal(reasons(got), []string{"IPAddressOrphaned"}) {
		t.Errorf("third pass: events %q, want the release", got)
	}
}

// A record naming another object than the Service holding its IP is
// written again for that Service, once.
func TestRepairMisownedRecord(t *testing.T) {
	f := newRepairFixture(t, repairService("svc", "10.96.0.10"), repairRecord("10.96.0.10", "other", repairStart))
	var all []string
	for range 3 {
		all = append(all, f.pass(t, 10*time.Second)...)
	}
	if want := []string{"ClusterIPAlreadyAllocated"}; !slices.Equal(reasons(all), want) {
		t.Errorf("events %q, want one ClusterIPAlreadyAllocated", all)
	}
	if rec := f.record(t, "10.96.0.10"); rec == nil || rec.Spec.ParentRef.Name != "svc" {
		t.Errorf("record after repair: %+v, want one naming default/svc", rec)
	}
}

// The records are read at the revision of the Services list.
func TestRepairReadsRecordsAtTheServicesRevision(t *testing.T) {
	f := newRepairFixture(t, repairService("svc", "10.96.0.10"), repairRecord("10.96.0.10", "svc", repairStart))
	f.client.PrependReactor("list", "services", func(k8stesting.Action) (bool, runtime.Object, error) {
		return true, &corev1.ServiceList{ListMeta: metav1.ListMeta{ResourceVersion: "4242"}, Items: []corev1.Service{*repairService("svc", "10.96.0.10")}}, nil
	})
	var revs []int64
	f.repair.Records = func(_ context.Context, rev int64) ([]networkingv1.IPAddress, error) {
		revs = append(revs, rev)
		return []networkingv1.IPAddress{*repairRecord("10.96.0.10", "svc", repairStart)}, nil
	}
	if got := f.pass(t, 0); len(got) != 0 {
		t.Errorf("events %q", got)
	}
	if !slices.Equal(revs, []int64{4242}) {
		t.Errorf("records read at revisions %v, want [4242], the Services list's resourceVersion", revs)
	}

	// Without Records, the API is asked for exactly that resourceVersion.
	f.repair.Records = nil
	var opts []string
	f.client.PrependReactor("list", "ipaddresses", func(a k8stesting.Action) (bool, runtime.Object, error) {
		r := a.(k8stesting.ListActionImpl).GetListOptions()
		opts = append(opts, fmt.Sprintf("%s/%s", r.ResourceVersion, r.ResourceVersionMatch))
		return false, nil, nil
	})
	f.pass(t, 0)
	if want := []string{"4242/Exact"}; !slices.Equal(opts, want) {
		t.Errorf("IPAddresses listed with resourceVersion/match %v, want %v", opts, want)
	}
}
