//lint:file-ignore SA1019 the legacy Endpoints are what the reconciler writes.

package apiserver

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/duet-net/duet/internal/etcdstore/etcdtest"
)

// fakeLeases is a serverLeases whose live servers the test sets.
type fakeLeases struct {
	mu        sync.Mutex
	live      []serverEndpoint
	withdrawn bool
}

func (f *fakeLeases) Advertise(context.Context) error { return nil }
func (f *fakeLeases) List(context.Context) ([]serverEndpoint, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.live), nil
}
func (f *fakeLeases) Withdraw(context.Context) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.withdrawn = true
	return nil
}

func ep(port int, addrs ...string) serverEndpoint {
	e := serverEndpoint{Port: port}
	for _, a := range addrs {
		e.Addrs = append(e.Addrs, netip.MustParseAddr(a))
	}
	return e
}

func newKubernetesService(families ...corev1.IPFamily) (*kubernetesService, *fake.Clientset, *fakeLeases) {
	client := fake.NewClientset()
	leases := &fakeLeases{}
	ip := netip.MustParseAddr("10.96.0.1")
	if families[0] == corev1.IPv6Protocol {
		ip = netip.MustParseAddr("fd00:96::1")
	}
	return &kubernetesService{client: client, leases: leases, self: ep(6443, "127.0.0.1"), ip: ip, families: families, interval: time.Hour}, client, leases
}

func (k *kubernetesService) mustReconcile(t *testing.T) {
	t.Helper()
	if err := k.reconcile(context.Background()); err != nil {
		t.Fatalf("reconcile: %v", err)
	}
}

// slicesOf renders the kubernetes EndpointSlices as "name type port: addrs".
func slicesOf(t *testing.T, client *fake.Clientset) []string {
	t.Helper()
	list, err := client.DiscoveryV1().EndpointSlices("default").List(context.Background(), metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, s := range list.Items {
		if s.Labels[discoveryv1.LabelServiceName] != "kubernetes" {
			continue
		}
		var addrs []string
		for _, e := range s.Endpoints {
			if e.Conditions.Ready == nil || !*e.Conditions.Ready {
				t.Errorf("slice %s: endpoint %v not ready", s.Name, e.Addresses)
			}
			addrs = append(addrs, e.Addresses...)
		}
		port := "none"
		if len(s.Ports) == 1 && s.Ports[0].Port != nil && s.Ports[0].Name != nil && *s.Ports[0].Name == "https" {
			port = fmt.Sprint(*s.Ports[0].Port)
		}
		out = append(out, fmt.Sprintf("%s %s %s: %s", s.Name, s.AddressType, port, strings.Join(addrs, ",")))
	}
	sort.Strings(out)
	return out
}

// endpointsOf renders the kubernetes Endpoints as "port: addrs" per subset.
func endpointsOf(t *testing.T, client *fake.Clientset) []string {
	t.Helper()
	e, err := client.CoreV1().Endpoints("default").Get(context.Background(), "kubernetes", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if e.Labels[skipMirrorLabel] != "true" {
		t.Errorf("Endpoints labels %v, want %s=true", e.Labels, skipMirrorLabel)
	}
	var out []string
	for _, s := range e.Subsets {
		var addrs []string
		for _, a := range s.Addresses {
			addrs = append(addrs, a.IP)
		}
		out = append(out, fmt.Sprintf("%d: %s", s.Ports[0].Port, strings.Join(addrs, ",")))
	}
	return out
}

func getKubernetesService(t *testing.T, client *fake.Clientset) *corev1.Service {
	t.Helper()
	svc, err := client.CoreV1().Services("default").Get(context.Background(), "kubernetes", metav1.GetOptions{})
	if err != nil {
		t.Fatalf("the kubernetes Service: %v", err)
	}
	return svc
}

func checkKubernetesSpec(t *testing.T, svc *corev1.Service, ip string, fam corev1.IPFamily, port int) {
	t.Helper()
	s := svc.Spec
	want := desiredPorts(port)
	if s.Type != corev1.ServiceTypeClusterIP || s.ClusterIP != ip || !slices.Equal(s.ClusterIPs, []string{ip}) || s.Selector != nil ||
		s.IPFamilyPolicy == nil || *s.IPFamilyPolicy != corev1.IPFamilyPolicySingleStack || !slices.Equal(s.IPFamilies, []corev1.IPFamily{fam}) ||
		!slices.Equal(s.Ports, want) {
		t.Errorf("kubernetes Service spec %+v, want ClusterIP %s single-stack %s, no selector, ports %+v", s, ip, fam, want)
	}
}

// Deleted, the Service comes back, recorded before it is created; changed,
// its spec is put back.
func TestKubernetesServiceIsKept(t *testing.T) {
	k, client, _ := newKubernetesService(corev1.IPv4Protocol, corev1.IPv6Protocol)
	k.mustReconcile(t)
	checkKubernetesSpec(t, getKubernetesService(t, client), "10.96.0.1", corev1.IPv4Protocol, 6443)
	rec, err := client.NetworkingV1().IPAddresses().Get(context.Background(), "10.96.0.1", metav1.GetOptions{})
	if err != nil || rec.Spec.ParentRef == nil || rec.Spec.ParentRef.Name != "kubernetes" {
		t.Errorf("IPAddress 10.96.0.1: %+v, %v; want one naming default/kubernetes", rec, err)
	}
	var order []string
	for _, a := range client.Actions() {
		if a.GetVerb() == "create" {
			order = append(order, a.GetResource().Resource)
		}
	}
	if i, j := slices.Index(order, "ipaddresses"), slices.Index(order, "services"); i < 0 || j < 0 || i > j {
		t.Errorf("creates in order %v: the IPAddress must come before the Service", order)
	}

	for _, tc := range []struct {
		name   string
		change func(*corev1.Service)
	}{
		{"ports", func(s *corev1.Service) {
			s.Spec.Ports = []corev1.ServicePort{{Name: "http", Protocol: corev1.ProtocolTCP, Port: 80, TargetPort: intstr.FromInt32(8080)}}
		}},
		{"a selector", func(s *corev1.Service) { s.Spec.Selector = map[string]string{"app": "mine"} }},
		{"type NodePort", func(s *corev1.Service) { s.Spec.Type = corev1.ServiceTypeNodePort }},
		{"PreferDualStack", func(s *corev1.Service) {
			p := corev1.IPFamilyPolicyPreferDualStack
			s.Spec.IPFamilyPolicy, s.Spec.IPFamilies, s.Spec.ClusterIPs = &p, []corev1.IPFamily{corev1.IPv4Protocol, corev1.IPv6Protocol}, []string{"10.96.0.1", "fd00:96::7"}
		}},
		{"another cluster IP", func(s *corev1.Service) {
			s.Spec.ClusterIP, s.Spec.ClusterIPs = "10.96.0.9", []string{"10.96.0.9"}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			svc := getKubernetesService(t, client)
			tc.change(svc)
			if _, err := client.CoreV1().Services("default").Update(context.Background(), svc, metav1.UpdateOptions{}); err != nil {
				t.Fatal(err)
			}
			k.mustReconcile(t)
			checkKubernetesSpec(t, getKubernetesService(t, client), "10.96.0.1", corev1.IPv4Protocol, 6443)
		})
	}

	if err := client.CoreV1().Services("default").Delete(context.Background(), "kubernetes", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	k.mustReconcile(t)
	checkKubernetesSpec(t, getKubernetesService(t, client), "10.96.0.1", corev1.IPv4Protocol, 6443)

	// Nothing to do: nothing written.
	client.ClearActions()
	k.mustReconcile(t)
	for _, a := range client.Actions() {
		if v := a.GetVerb(); v != "get" && v != "list" {
			t.Errorf("a pass with nothing to do wrote: %s %s", v, a.GetResource().Resource)
		}
	}
}

// Endpoints list the live servers of the primary family, a subset per
// port; EndpointSlices one per family the cluster serves and port.
func TestKubernetesServiceEndpoints(t *testing.T) {
	for _, tc := range []struct {
		name      string
		families  []corev1.IPFamily
		live      []serverEndpoint
		endpoints []string
		slices    []string
	}{
		{"this server alone (its lease not listed yet)", []corev1.IPFamily{"IPv4", "IPv6"}, nil,
			[]string{"6443: 127.0.0.1"}, []string{"kubernetes IPv4 6443: 127.0.0.1"}},
		{"two servers, one port", []corev1.IPFamily{"IPv4", "IPv6"}, []serverEndpoint{ep(6443, "127.0.0.1"), ep(6443, "10.0.0.2")},
			[]string{"6443: 10.0.0.2,127.0.0.1"}, []string{"kubernetes IPv4 6443: 10.0.0.2,127.0.0.1"}},
		{"dual-stack servers", []corev1.IPFamily{"IPv4", "IPv6"}, []serverEndpoint{ep(6443, "127.0.0.1"), ep(6443, "10.0.0.2", "fd00::2"), ep(6443, "fd00::3")},
			[]string{"6443: 10.0.0.2,127.0.0.1"},
			[]string{"kubernetes IPv4 6443: 10.0.0.2,127.0.0.1", "kubernetes-ipv6 IPv6 6443: fd00::2,fd00::3"}},
		{"IPv6 primary", []corev1.IPFamily{"IPv6", "IPv4"}, []serverEndpoint{ep(6443, "127.0.0.1"), ep(6443, "10.0.0.2", "fd00::2")},
			[]string{"6443: fd00::2"},
			[]string{"kubernetes IPv6 6443: fd00::2", "kubernetes-ipv4 IPv4 6443: 10.0.0.2,127.0.0.1"}},
		{"single-stack cluster leaves the other family out", []corev1.IPFamily{"IPv4"}, []serverEndpoint{ep(6443, "127.0.0.1"), ep(6443, "fd00::2")},
			[]string{"6443: 127.0.0.1"}, []string{"kubernetes IPv4 6443: 127.0.0.1"}},
		{"servers on different ports", []corev1.IPFamily{"IPv4", "IPv6"}, []serverEndpoint{ep(6443, "127.0.0.1"), ep(6444, "127.0.0.1"), ep(6443, "::1")},
			[]string{"6443: 127.0.0.1", "6444: 127.0.0.1"},
			[]string{"kubernetes IPv4 6443: 127.0.0.1", "kubernetes-6444 IPv4 6444: 127.0.0.1", "kubernetes-ipv6 IPv6 6443: ::1"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			k, client, leases := newKubernetesService(tc.families...)
			if tc.families[0] == corev1.IPv6Protocol {
				k.self = ep(6443, "127.0.0.1")
			}
			leases.live = tc.live
			k.mustReconcile(t)
			if got := endpointsOf(t, client); !slices.Equal(got, tc.endpoints) {
				t.Errorf("Endpoints %q, want %q", got, tc.endpoints)
			}
			if got := slicesOf(t, client); !slices.Equal(got, tc.slices) {
				t.Errorf("EndpointSlices %q, want %q", got, tc.slices)
			}
		})
	}
}

// A server whose lease is gone leaves the endpoints at the next pass,
// slices it alone filled included; the Service's target port stays while
// a live server serves on it.
func TestKubernetesServiceFollowsLiveServers(t *testing.T) {
	k, client, leases := newKubernetesService(corev1.IPv4Protocol, corev1.IPv6Protocol)
	k.self = ep(6444, "127.0.0.1")
	leases.live = []serverEndpoint{ep(6443, "127.0.0.1"), ep(6443, "fd00::2"), ep(6444, "127.0.0.1")}
	k.mustReconcile(t)
	checkKubernetesSpec(t, getKubernetesService(t, client), "10.96.0.1", corev1.IPv4Protocol, 6443)
	if got, want := slicesOf(t, client), []string{"kubernetes IPv4 6443: 127.0.0.1", "kubernetes-6444 IPv4 6444: 127.0.0.1", "kubernetes-ipv6 IPv6 6443: fd00::2"}; !slices.Equal(got, want) {
		t.Fatalf("EndpointSlices %q, want %q", got, want)
	}

	// The servers on 6443 are gone: the Service now targets 6444, whose
	// slice is the unsuffixed one.
	leases.live = []serverEndpoint{ep(6444, "127.0.0.1")}
	k.mustReconcile(t)
	checkKubernetesSpec(t, getKubernetesService(t, client), "10.96.0.1", corev1.IPv4Protocol, 6444)
	if got, want := slicesOf(t, client), []string{"kubernetes IPv4 6444: 127.0.0.1"}; !slices.Equal(got, want) {
		t.Errorf("EndpointSlices %q, want %q", got, want)
	}
	if got, want := endpointsOf(t, client), []string{"6444: 127.0.0.1"}; !slices.Equal(got, want) {
		t.Errorf("Endpoints %q, want %q", got, want)
	}

	// Another server on 6443 joins: the Service keeps targeting 6444.
	leases.live = []serverEndpoint{ep(6443, "10.0.0.2"), ep(6444, "127.0.0.1")}
	k.mustReconcile(t)
	checkKubernetesSpec(t, getKubernetesService(t, client), "10.96.0.1", corev1.IPv4Protocol, 6444)
}

// Stopped, the reconciler withdraws this server.
func TestKubernetesServiceRunWithdraws(t *testing.T) {
	k, client, leases := newKubernetesService(corev1.IPv4Protocol)
	if _, err := client.CoreV1().Namespaces().Create(context.Background(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "default"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		k.Run(ctx)
	}()
	deadline := time.Now().Add(30 * time.Second)
	for {
		if _, err := client.CoreV1().Services("default").Get(context.Background(), "kubernetes", metav1.GetOptions{}); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no kubernetes Service after 30s of Run")
		}
		time.Sleep(10 * time.Millisecond) // poll interval
	}
	cancel()
	<-done
	leases.mu.Lock()
	defer leases.mu.Unlock()
	if !leases.withdrawn {
		t.Error("Run ended without withdrawing this server's lease")
	}
}

func TestAdvertisedAddrs(t *testing.T) {
	for _, tc := range []struct {
		bind string
		want []string
	}{
		{"127.0.0.1", []string{"127.0.0.1"}},
		{"127.0.0.2", []string{"127.0.0.2"}},
		{"::1", []string{"::1"}},
		{"2001:db8::5", []string{"2001:db8::5"}},
	} {
		var got []string
		for _, a := range advertisedAddrs(net.ParseIP(tc.bind)) {
			got = append(got, a.String())
		}
		if !slices.Equal(got, tc.want) {
			t.Errorf("advertisedAddrs(%s) = %v, want %v", tc.bind, got, tc.want)
		}
	}
	// Unspecified: whatever the host has, at most one of each family,
	// never the unspecified address itself.
	for _, bind := range []string{"0.0.0.0", "::"} {
		got := advertisedAddrs(net.ParseIP(bind))
		if len(got) == 0 || len(got) > 2 || (len(got) == 2 && got[0].Is4() == got[1].Is4()) || slices.ContainsFunc(got, netip.Addr.IsUnspecified) {
			t.Errorf("advertisedAddrs(%s) = %v, want one address per family the host has", bind, got)
		}
	}
}

// Servers sharing an etcd see each other through their leases; one that
// stops renewing (its client gone, as when killed) drops out once the TTL
// has passed, one that withdraws drops out at once.
func TestEtcdLeases(t *testing.T) {
	srv := etcdtest.Start(t)
	ctx := context.Background()
	const ttl = 2 * time.Second // etcd's minimum with its default timing
	newServer := func(id string, e serverEndpoint) *etcdLeases {
		t.Helper()
		l, err := newEtcdLeases(ctx, srv.Client, id, e, ttl)
		if err != nil {
			t.Fatal(err)
		}
		return l
	}
	a := newServer("a", ep(6443, "127.0.0.1"))
	c := newServer("c", ep(6445, "10.0.0.3", "fd00::3"))
	// b has an etcd client of its own, so that closing it stops b's
	// keep-alives as a kill would.
	bClient, err := clientv3.New(clientv3.Config{Endpoints: srv.Endpoints, DialTimeout: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	b, err := newEtcdLeases(ctx, bClient, "b", ep(6444, "127.0.0.2"), ttl)
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range []*etcdLeases{a, b, c} {
		if err := l.Advertise(ctx); err != nil {
			t.Fatal(err)
		}
	}
	keys := func() []string {
		t.Helper()
		live, err := a.List(ctx)
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, e := range live {
			out = append(out, endpointKey(e))
		}
		return out
	}
	if got, want := keys(), []string{"10.0.0.3,fd00::3,6445", "127.0.0.1,6443", "127.0.0.2,6444"}; !slices.Equal(got, want) {
		t.Fatalf("live servers %q, want %q", got, want)
	}

	bClient.Close()
	deadline := time.Now().Add(30 * time.Second)
	for slices.Contains(keys(), "127.0.0.2,6444") {
		if time.Now().After(deadline) {
			t.Fatal("a server that stopped renewing its lease is still listed 30s later")
		}
		time.Sleep(100 * time.Millisecond) // poll interval
	}
	// a and c, past the TTL too, are still listed: their leases are kept
	// alive in the background.
	if got, want := keys(), []string{"10.0.0.3,fd00::3,6445", "127.0.0.1,6443"}; !slices.Equal(got, want) {
		t.Errorf("after b stopped: live servers %q, want %q", got, want)
	}

	if err := c.Withdraw(ctx); err != nil {
		t.Fatal(err)
	}
	if got, want := keys(), []string{"127.0.0.1,6443"}; !slices.Equal(got, want) {
		t.Errorf("right after c withdrew: live servers %q, want %q", got, want)
	}

	// A key deleted behind a server's back comes back at its next
	// Advertise.
	if _, err := srv.Client.Delete(ctx, apiserverLeasePrefix+"a"); err != nil {
		t.Fatal(err)
	}
	if err := a.Advertise(ctx); err != nil {
		t.Fatal(err)
	}
	if got, want := keys(), []string{"127.0.0.1,6443"}; !slices.Equal(got, want) {
		t.Errorf("after re-advertising: live servers %q, want %q", got, want)
	}
}
