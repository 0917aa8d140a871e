package pods

import (
	"context"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"

	"github.com/duet-net/duet/internal/agent/podroot"
	"github.com/duet-net/duet/internal/agent/sandbox"
	"github.com/duet-net/duet/internal/alloc"
)

// RemoveFamily of the fake network: the family's address and gateway
// leave the sandbox.
func (f *fakeNetwork) RemoveFamily(_ string, sb *sandbox.Sandbox, is4 bool) (*sandbox.Sandbox, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := *sb
	out.Addrs = slices.DeleteFunc(slices.Clone(sb.Addrs), func(p netip.Prefix) bool { return p.Addr().Is4() == is4 })
	out.Gateways = slices.DeleteFunc(slices.Clone(sb.Gateways), func(a netip.Addr) bool { return a.Is4() == is4 })
	f.sandboxes[sb.ID] = &out
	return &out, nil
}

// RewriteFiles of the fake worlds: the spec replaces the one the world
// was made from, and is counted.
func (w fakeWorld) RewriteFiles(s *podroot.Spec) error {
	w.f.mu.Lock()
	defer w.f.mu.Unlock()
	w.f.specs[w.uid] = s
	if w.f.rewrites == nil {
		w.f.rewrites = map[string]int{}
	}
	w.f.rewrites[w.uid]++
	return nil
}

func (f *fakeWorlds) spec(uid string) (*podroot.Spec, int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.specs[uid], f.rewrites[uid]
}

var (
	dnsV4 = netip.MustParseAddr("10.96.0.10")
	dnsV6 = netip.MustParseAddr("fd00:10:96::a")
)

// kubeDNS is the kube-dns Service with the given cluster IPs, in the fake
// API and in a Services lister the test changes.
type kubeDNS struct {
	idx    cache.Indexer
	lister corelisters.ServiceLister
}

func newKubeDNS(t *testing.T, e *testEnv, ips ...netip.Addr) *kubeDNS {
	t.Helper()
	k := &kubeDNS{idx: cache.NewIndexer(cache.MetaNamespaceKeyFunc, cache.Indexers{cache.NamespaceIndex: cache.MetaNamespaceIndexFunc})}
	k.lister = corelisters.NewServiceLister(k.idx)
	svc := k.service(ips...)
	if _, err := e.client.CoreV1().Services(svc.Namespace).Create(context.Background(), svc, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	k.set(t, ips...)
	return k
}

func (k *kubeDNS) service(ips ...netip.Addr) *corev1.Service {
	svc := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: metav1.NamespaceSystem, Name: "kube-dns"},
		Spec: corev1.ServiceSpec{Ports: []corev1.ServicePort{{Name: "dns", Port: 53, Protocol: corev1.ProtocolUDP}}}}
	for _, a := range ips {
		svc.Spec.ClusterIPs = append(svc.Spec.ClusterIPs, a.String())
	}
	svc.Spec.ClusterIP = svc.Spec.ClusterIPs[0]
	return svc
}

// set changes the Service as the agent's informer sees it.
func (k *kubeDNS) set(t *testing.T, ips ...netip.Addr) {
	t.Helper()
	if err := k.idx.Update(k.service(ips...)); err != nil {
		t.Fatal(err)
	}
}

// A pod of a dual-stack node loses its IPv6 address when the node's pod
// CIDRs shrink to IPv4: its IPv4 address and container stay, the store
// holds only the IPv4 address under the pod's key (the IPv6 one cools
// down), status.podIPs lists IPv4 alone, and its /etc files are rewritten
// once kube-dns lost its IPv6 cluster IP too. A hostNetwork pod loses the
// node's IPv6 address. Nothing changes on further syncs.
func TestRunningPodLosesTheDroppedFamily(t *testing.T) {
	e := newTestEnv(t, v4CIDR, v6CIDR)
	dns := newKubeDNS(t, e, dnsV4, dnsV6)
	e.m.Services = dns.lister
	e.create(t, newPod("web", corev1.RestartPolicyAlways, "app"))
	host := newPod("host", corev1.RestartPolicyAlways, "app")
	host.Spec.HostNetwork = true
	e.create(t, host)
	before := e.sync(t, "web")
	e.sync(t, "host")
	if len(before.Status.PodIPs) != 2 {
		t.Fatalf("podIPs before: %v", before.Status.PodIPs)
	}
	v4, v6 := netip.MustParseAddr(before.Status.PodIPs[0].IP), netip.MustParseAddr(before.Status.PodIPs[1].IP)
	if spec, _ := e.worlds.spec("uid-web"); !slices.Equal(spec.ClusterDNS, []netip.Addr{dnsV4, dnsV6}) {
		t.Fatalf("the world was made with cluster DNS %v", spec.ClusterDNS)
	}
	pid := e.container(t, types.UID("uid-web"), "app").proc.Pid()

	if err := e.m.SetPodCIDRs([]netip.Prefix{v4CIDR}); err != nil {
		t.Fatalf("SetPodCIDRs: %v", err)
	}
	if got := e.net.ensured[len(e.net.ensured)-1].PodCIDRs; !slices.Equal(got, []netip.Prefix{v4CIDR}) {
		t.Errorf("the bridge was prepared for %v; want the IPv4 pod CIDR alone", got)
	}
	e.m.SetHostIPs([]netip.Addr{hostV4})
	dns.set(t, dnsV4)
	e.m.KubeDNSChanged()
	after := e.sync(t, "web")
	if want := []corev1.PodIP{{IP: v4.String()}}; !slices.Equal(after.Status.PodIPs, want) || after.Status.PodIP != v4.String() {
		t.Fatalf("podIPs after %v (podIP %s); want %v", after.Status.PodIPs, after.Status.PodIP, want)
	}
	if want := []corev1.HostIP{{IP: hostV4.String()}}; !slices.Equal(after.Status.HostIPs, want) {
		t.Errorf("hostIPs after %v; want %v", after.Status.HostIPs, want)
	}
	if held := e.podAddrs(t, "uid-web"); !slices.Equal(held, []netip.Addr{v4}) {
		t.Errorf("the store holds %v for the pod; want its IPv4 address alone", held)
	}
	if o, cooling, found, err := e.ipsOf(t).Holder(v6); err != nil || !found || !cooling {
		t.Errorf("the dropped address %s: holder %v, cooling %v, found %v, %v; want it cooling down", v6, o, cooling, found, err)
	}
	sb, _ := e.net.sandbox("uid-web")
	if want := []netip.Prefix{netip.PrefixFrom(v4, v4CIDR.Bits())}; !slices.Equal(sb.Addrs, want) || !slices.Equal(sb.Gateways, []netip.Addr{sandbox.Gateway(v4CIDR).Addr()}) {
		t.Errorf("the sandbox has %v via %v; want %v", sb.Addrs, sb.Gateways, want)
	}
	if got := e.container(t, types.UID("uid-web"), "app").proc.Pid(); got != pid {
		t.Errorf("the container's process changed: pid %d, was %d", got, pid)
	}
	if e.net.setups != 1 {
		t.Errorf("%d sandboxes set up; want the first pod's only", e.net.setups)
	}
	spec, rewrites := e.worlds.spec("uid-web")
	if !slices.Equal(spec.Addrs, []netip.Addr{v4}) || !slices.Equal(spec.ClusterDNS, []netip.Addr{dnsV4}) || rewrites != 1 {
		t.Errorf("the pod's files were rewritten %d times, last with addresses %v and cluster DNS %v; want once, with %s and %s", rewrites, spec.Addrs, spec.ClusterDNS, v4, dnsV4)
	}
	h := e.sync(t, "host")
	if want := []corev1.PodIP{{IP: hostV4.String()}}; !slices.Equal(h.Status.PodIPs, want) {
		t.Errorf("hostNetwork pod's podIPs %v; want %v", h.Status.PodIPs, want)
	}

	// Once done, a sync changes nothing.
	e.sync(t, "web")
	if _, n := e.worlds.spec("uid-web"); n != 1 {
		t.Errorf("another sync rewrote the pod's files again (%d rewrites)", n)
	}
	// A new pod gets the IPv4 family only.
	e.create(t, newPod("new", corev1.RestartPolicyAlways, "app"))
	if n := e.sync(t, "new"); len(n.Status.PodIPs) != 1 || !v4CIDR.Contains(netip.MustParseAddr(n.Status.PodIP)) {
		t.Errorf("a new pod got %v", n.Status.PodIPs)
	}
}

// kube-dns gaining a family reaches running pods' resolv.conf, as losing
// one does; a kube-dns that disappears leaves them as they are.
func TestResolvConfFollowsKubeDNS(t *testing.T) {
	e := newTestEnv(t, v4CIDR)
	dns := newKubeDNS(t, e, dnsV4)
	e.m.Services = dns.lister
	e.create(t, newPod("web", corev1.RestartPolicyAlways, "app"))
	e.sync(t, "web")
	for _, step := range []struct {
		name string
		ips  []netip.Addr
		want []netip.Addr
	}{
		{"gained IPv6", []netip.Addr{dnsV4, dnsV6}, []netip.Addr{dnsV4, dnsV6}},
		{"lost IPv6", []netip.Addr{dnsV4}, []netip.Addr{dnsV4}},
		{"gone", nil, []netip.Addr{dnsV4}},
	} {
		if step.ips == nil {
			if err := dns.idx.Delete(dns.service(dnsV4)); err != nil {
				t.Fatal(err)
			}
		} else {
			dns.set(t, step.ips...)
		}
		e.m.KubeDNSChanged()
		e.sync(t, "web")
		if spec, _ := e.worlds.spec("uid-web"); !slices.Equal(spec.ClusterDNS, step.want) {
			t.Errorf("%s: the pod's resolv.conf names %v; want %v", step.name, spec.ClusterDNS, step.want)
		}
	}
	if _, n := e.worlds.spec("uid-web"); n != 2 {
		t.Errorf("the pod's files were rewritten %d times; want 2", n)
	}
}

// A Node whose pod CIDRs lose the pod's primary family (which the server
// never does) leaves the pod alone: its addresses, and the store's.
func TestThePrimaryIsNeverDropped(t *testing.T) {
	e := newTestEnv(t, v4CIDR, v6CIDR)
	e.create(t, newPod("web", corev1.RestartPolicyAlways, "app"))
	before := e.sync(t, "web")
	if err := e.m.SetPodCIDRs([]netip.Prefix{v6CIDR}); err != nil {
		t.Fatal(err)
	}
	p := e.get(t, "web")
	err := e.m.Sync(context.Background(), p.UID, p)
	if err == nil || !strings.Contains(err.Error(), "primary") {
		t.Errorf("Sync = %v; want an error about the pod's primary address", err)
	}
	if held := e.podAddrs(t, "uid-web"); len(held) != 2 {
		t.Errorf("the store holds %v; want both addresses kept", held)
	}
	if sb, _ := e.net.sandbox("uid-web"); len(sb.Addrs) != 2 || sb.Addrs[0].Addr().String() != before.Status.PodIP {
		t.Errorf("the sandbox has %v", sb.Addrs)
	}
}

// An agent killed while the node's pod CIDRs shrank starts again over a
// pod that holds its IPv6 address in the store and in its namespace
// (killed before anything was done), or in its namespace only (killed
// between the store's transaction and the interface): it keeps the IPv4
// address and drops the IPv6 one from both.
func TestRestartedAgentDropsTheRemovedFamily(t *testing.T) {
	for _, tc := range []struct {
		name         string
		storeHasBoth bool
	}{{"killed before anything", true}, {"killed after the store", false}} {
		t.Run(tc.name, func(t *testing.T) {
			e := newTestEnv(t, v4CIDR, v6CIDR)
			e.create(t, newPod("web", corev1.RestartPolicyAlways, "app"))
			before := e.sync(t, "web")
			sb, _ := e.net.sandbox("uid-web")
			dual := *sb
			stopAll(e.m) // releases the addresses; the killed agent would not have
			v4, v6 := netip.MustParseAddr(before.Status.PodIPs[0].IP), netip.MustParseAddr(before.Status.PodIPs[1].IP)
			// The store as the killed agent left it.
			p, want := e.ipsOf(t), []netip.Addr{v4, v6}
			if !tc.storeHasBoth {
				ranges, _ := alloc.NodePodRanges([]netip.Prefix{v4CIDR})
				p, _ = alloc.NewPodIPs(e.store, ranges, alloc.PodIPOptions{})
				want = want[:1]
			}
			if got, err := p.Reserve(podAttachment("uid-web"), want); err != nil || !slices.Equal(got, want) {
				t.Fatalf("reserving %v again: %v, %v", want, got, err)
			}
			e.net.mu.Lock()
			e.net.sandboxes["uid-web"] = &dual // the namespace outlived the agent
			e.net.mu.Unlock()

			e.m = newTestManager(t, e, []netip.Addr{hostV4})
			if err := e.m.SetPodCIDRs([]netip.Prefix{v4CIDR}); err != nil {
				t.Fatal(err)
			}
			after := e.sync(t, "web")
			if want := []corev1.PodIP{{IP: v4.String()}}; !slices.Equal(after.Status.PodIPs, want) {
				t.Errorf("after a restart podIPs %v; want %v", after.Status.PodIPs, want)
			}
			if held := e.podAddrs(t, "uid-web"); !slices.Equal(held, []netip.Addr{v4}) {
				t.Errorf("the store holds %v for the pod; want %s alone", held, v4)
			}
			if o, _, found, _ := e.ipsOf(t).Holder(v6); found && o == podAttachment("uid-web") {
				t.Errorf("%s is still the pod's in the store", v6)
			}
			if sb, _ := e.net.sandbox("uid-web"); len(sb.Addrs) != 1 || sb.Addrs[0].Addr() != v4 {
				t.Errorf("the sandbox has %v; want %s alone", sb.Addrs, v4)
			}
		})
	}
}

func TestDropsFamily(t *testing.T) {
	for _, tt := range []struct {
		old, now []netip.Prefix
		want     bool
	}{
		{[]netip.Prefix{v4CIDR, v6CIDR}, []netip.Prefix{v4CIDR}, true},
		{[]netip.Prefix{v6CIDR, v4CIDR}, []netip.Prefix{v6CIDR}, true},
		{[]netip.Prefix{v4CIDR, v6CIDR}, []netip.Prefix{v6CIDR}, false},
		{[]netip.Prefix{v4CIDR, v6CIDR}, []netip.Prefix{v4CIDR, v6CIDR}, false},
		{[]netip.Prefix{v4CIDR}, []netip.Prefix{v4CIDR}, false},
		{nil, []netip.Prefix{v4CIDR}, false},
		{[]netip.Prefix{v4CIDR, v6CIDR}, []netip.Prefix{netip.MustParsePrefix("10.9.0.0/24")}, false},
	} {
		if got := dropsFamily(tt.old, tt.now); got != tt.want {
			t.Errorf("dropsFamily(%v, %v) = %v, want %v", tt.old, tt.now, got, tt.want)
		}
	}
}

// ipsOf is the pod-IP policy over the test's store with both families'
// ranges, for looking at any address.
func (e *testEnv) ipsOf(t *testing.T) *alloc.PodIPs {
	t.Helper()
	ranges, err := alloc.NodePodRanges([]netip.Prefix{v4CIDR, v6CIDR})
	if err != nil {
		t.Fatal(err)
	}
	p, err := alloc.NewPodIPs(e.store, ranges, alloc.PodIPOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// hookStore runs a hook at the first writable transaction.
type hookStore struct {
	alloc.PodIPStore
	once func()
}

func (s *hookStore) Begin(writable bool) (alloc.PodIPTxn, error) {
	if f := s.once; writable && f != nil {
		s.once = nil
		f()
	}
	return s.PodIPStore.Begin(writable)
}

// A pod that starts while the node's pod CIDRs shrink is wired with the
// addresses of the CIDRs it reserved them for, and asks for a sync that
// takes the dropped family away.
func TestPodStartingWhileAFamilyIsDropped(t *testing.T) {
	e := newTestEnv(t, v4CIDR, v6CIDR)
	var mu sync.Mutex
	var poked []string
	e.m.OnChange = func(ns, name string) { mu.Lock(); poked = append(poked, name); mu.Unlock() }
	e.m.PodIPStore = &hookStore{PodIPStore: e.store, once: func() {
		if err := e.m.SetPodCIDRs([]netip.Prefix{v4CIDR}); err != nil {
			t.Error(err)
		}
	}}
	e.create(t, newPod("web", corev1.RestartPolicyAlways, "app"))
	first := e.sync(t, "web")
	mu.Lock()
	wasPoked := slices.Contains(poked, "web")
	mu.Unlock()
	if len(first.Status.PodIPs) != 2 || !wasPoked {
		t.Fatalf("the pod started with %v and asked for syncs of %v; want both families and a sync of web", first.Status.PodIPs, poked)
	}
	if after := e.sync(t, "web"); len(after.Status.PodIPs) != 1 || after.Status.PodIP != first.Status.PodIP {
		t.Errorf("the next sync left podIPs %v; want %s alone", after.Status.PodIPs, first.Status.PodIP)
	}
	if held := e.podAddrs(t, "uid-web"); len(held) != 1 {
		t.Errorf("the store holds %v for the pod", held)
	}
}
