package lbipam

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/client-go/tools/record"

	"github.com/duet-net/duet/internal/etcdstore"
	"github.com/duet-net/duet/internal/etcdstore/etcdtest"
)

var (
	pool4 = netip.MustParsePrefix("192.0.2.0/29")
	pool6 = netip.MustParsePrefix("2001:db8:0:2::/125")
)

type harness struct {
	client   *fake.Clientset
	store    *etcdstore.Store
	recorder *record.FakeRecorder
	stop     context.CancelFunc
}

// start runs a controller over client and store, as a newly elected
// leader would.
func start(t *testing.T, client *fake.Clientset, store *etcdstore.Store, pools ...netip.Prefix) *harness {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	factory := informers.NewSharedInformerFactory(client, 0)
	rec := record.NewFakeRecorder(1000)
	c, err := New(client, factory.Core().V1().Services(), pools, store, rec)
	if err != nil {
		t.Fatal(err)
	}
	factory.Start(ctx.Done())
	done := make(chan struct{})
	go func() { defer close(done); c.Run(ctx, 2) }()
	h := &harness{client: client, store: store, recorder: rec, stop: func() { cancel(); <-done; factory.Shutdown() }}
	t.Cleanup(h.stop)
	return h
}

func newStore(t *testing.T) *etcdstore.Store {
	s, err := etcdstore.New(etcdtest.Start(t).Client, "/duet/allocations/lbips/")
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func lbService(name string, policy corev1.IPFamilyPolicy, fams ...corev1.IPFamily) *corev1.Service {
	return &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: name},
		Spec: corev1.ServiceSpec{
			Type: corev1.ServiceTypeLoadBalancer, IPFamilyPolicy: &policy, IPFamilies: fams,
			Ports: []corev1.ServicePort{{Port: 80}},
		},
	}
}

func (h *harness) ingress(t *testing.T, name string, n int) []string {
	t.Helper()
	var got []string
	err := wait.PollUntilContextTimeout(context.Background(), 10*time.Millisecond, 10*time.Second, true, func(ctx context.Context) (bool, error) {
		svc, err := h.client.CoreV1().Services("default").Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return false, nil
		}
		got = nil
		for _, in := range svc.Status.LoadBalancer.Ingress {
			got = append(got, in.IP)
		}
		return len(got) == n, nil
	})
	if err != nil {
		t.Fatalf("%s: ingress %v, want %d addresses", name, got, n)
	}
	return got
}

func (h *harness) records(t *testing.T) map[string]string {
	t.Helper()
	out := map[string]string{}
	for _, p := range []netip.Prefix{pool4, pool6} {
		if err := h.store.ListRecords(context.Background(), p, func(r etcdstore.Record) error {
			owner := ""
			if r.Owner != nil {
				owner = r.Owner.Namespace + "/" + r.Owner.Name
			}
			out[r.Prefix.Addr().String()] = owner
			return nil
		}); err != nil {
			t.Fatal(err)
		}
	}
	return out
}

func (h *harness) waitEvent(t *testing.T, substr string) string {
	t.Helper()
	timeout := time.After(10 * time.Second)
	for {
		select {
		case e := <-h.recorder.Events:
			if strings.Contains(e, substr) {
				return e
			}
		case <-timeout:
			t.Fatalf("no event containing %q", substr)
		}
	}
}

func TestAssignsOnePerFamilyAndSurvivesRestart(t *testing.T) {
	ctx := context.Background()
	client := fake.NewClientset()
	store := newStore(t)
	h := start(t, client, store, pool4, pool6)

	if _, err := client.CoreV1().Services("default").Create(ctx, lbService("a", corev1.IPFamilyPolicyRequireDualStack, corev1.IPv6Protocol, corev1.IPv4Protocol), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if got := h.ingress(t, "a", 2); !slices.Equal(got, []string{"2001:db8:0:2::1", "192.0.2.1"}) {
		t.Fatalf("a: ingress %v, want IPv6 then IPv4, lowest first", got)
	}
	// A leader change: a new controller learns from the records alone.
	h.stop()
	h = start(t, client, store, pool4, pool6)
	if _, err := client.CoreV1().Services("default").Create(ctx, lbService("b", corev1.IPFamilyPolicySingleStack, corev1.IPv4Protocol), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if got := h.ingress(t, "b", 1); got[0] != "192.0.2.2" {
		t.Fatalf("b after restart: %v, want 192.0.2.2", got)
	}
	if got := h.ingress(t, "a", 2); got[1] != "192.0.2.1" {
		t.Fatalf("a changed after restart: %v", got)
	}
	want := map[string]string{"192.0.2.1": "default/a", "2001:db8:0:2::1": "default/a", "192.0.2.2": "default/b"}
	if got := h.records(t); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("records %v, want %v", got, want)
	}

	// Type change releases, and the status forgets the address.
	a, _ := client.CoreV1().Services("default").Get(ctx, "a", metav1.GetOptions{})
	a.Spec.Type = corev1.ServiceTypeClusterIP
	if _, err := client.CoreV1().Services("default").Update(ctx, a, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	h.ingress(t, "a", 0)
	// Deleting b releases too.
	if err := client.CoreV1().Services("default").Delete(ctx, "b", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := wait.PollUntilContextTimeout(ctx, 10*time.Millisecond, 10*time.Second, true, func(context.Context) (bool, error) {
		return len(h.records(t)) == 0, nil
	}); err != nil {
		t.Fatalf("records left after type change and delete: %v", h.records(t))
	}
}

func TestReleasesForServicesDeletedWhileNoOneLed(t *testing.T) {
	ctx := context.Background()
	client := fake.NewClientset()
	store := newStore(t)
	h := start(t, client, store, pool4)
	if _, err := client.CoreV1().Services("default").Create(ctx, lbService("gone", corev1.IPFamilyPolicySingleStack, corev1.IPv4Protocol), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	h.ingress(t, "gone", 1)
	h.stop()
	if err := client.CoreV1().Services("default").Delete(ctx, "gone", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	h = start(t, client, store, pool4)
	if err := wait.PollUntilContextTimeout(ctx, 10*time.Millisecond, 10*time.Second, true, func(context.Context) (bool, error) {
		return len(h.records(t)) == 0, nil
	}); err != nil {
		t.Fatalf("record of a Service deleted while no controller ran: %v", h.records(t))
	}
}

func TestRequestsAndMissingPools(t *testing.T) {
	ctx := context.Background()
	client := fake.NewClientset()
	h := start(t, client, newStore(t), pool4)
	svcs := client.CoreV1().Services("default")

	req := lbService("req", corev1.IPFamilyPolicySingleStack, corev1.IPv4Protocol)
	req.Spec.LoadBalancerIP = "192.0.2.5"
	if _, err := svcs.Create(ctx, req, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if got := h.ingress(t, "req", 1); got[0] != "192.0.2.5" {
		t.Fatalf("requested 192.0.2.5, got %v", got)
	}
	clash := lbService("clash", corev1.IPFamilyPolicySingleStack, corev1.IPv4Protocol)
	clash.Annotations = map[string]string{IPsAnnotation: "192.0.2.5"}
	if _, err := svcs.Create(ctx, clash, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	h.waitEvent(t, "requested load balancer IP 192.0.2.5 is already allocated to another Service")
	outside := lbService("outside", corev1.IPFamilyPolicySingleStack, corev1.IPv4Protocol)
	outside.Spec.LoadBalancerIP = "198.51.100.7"
	if _, err := svcs.Create(ctx, outside, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	h.waitEvent(t, "198.51.100.7 is not in any IPv4 pool (192.0.2.0/29)")

	if _, err := svcs.Create(ctx, lbService("prefer", corev1.IPFamilyPolicyPreferDualStack, corev1.IPv6Protocol, corev1.IPv4Protocol), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if got := h.ingress(t, "prefer", 1); !netip.MustParseAddr(got[0]).Is4() {
		t.Fatalf("PreferDualStack with only an IPv4 pool got %v", got)
	}
	h.waitEvent(t, "PreferDualStack: no load balancer IP pool of family IPv6, assigning IPv4 only")

	if _, err := svcs.Create(ctx, lbService("require", corev1.IPFamilyPolicyRequireDualStack, corev1.IPv4Protocol, corev1.IPv6Protocol), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	h.waitEvent(t, "no load balancer IP pool of family IPv6 (--load-balancer-ip-pool); RequireDualStack Services need one for each of ipFamilies [IPv4 IPv6]")
	if svc, _ := svcs.Get(ctx, "require", metav1.GetOptions{}); len(svc.Status.LoadBalancer.Ingress) != 0 {
		t.Fatalf("RequireDualStack without an IPv6 pool got %v", svc.Status.LoadBalancer.Ingress)
	}
	// The pool of 6 addresses: req holds .5, prefer one more; four left.
	for i := range 4 {
		if _, err := svcs.Create(ctx, lbService(fmt.Sprintf("fill%d", i), corev1.IPFamilyPolicySingleStack, corev1.IPv4Protocol), metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 4 {
		h.ingress(t, fmt.Sprintf("fill%d", i), 1)
	}
	if _, err := svcs.Create(ctx, lbService("full", corev1.IPFamilyPolicySingleStack, corev1.IPv4Protocol), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	h.waitEvent(t, "is full")
	seen := map[string]bool{}
	list, _ := svcs.List(ctx, metav1.ListOptions{})
	for _, s := range list.Items {
		for _, in := range s.Status.LoadBalancer.Ingress {
			if seen[in.IP] {
				t.Fatalf("%s handed out twice", in.IP)
			}
			seen[in.IP] = true
		}
	}
}
