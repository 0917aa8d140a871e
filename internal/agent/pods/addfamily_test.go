package pods

import (
	"net/netip"
	"slices"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/duet-net/duet/internal/agent/sandbox"
	"github.com/duet-net/duet/internal/alloc"
)

// AddFamily of the fake network: the address is appended to the sandbox.
func (f *fakeNetwork) AddFamily(_ string, sb *sandbox.Sandbox, addr netip.Prefix, gw netip.Addr) (*sandbox.Sandbox, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := *sb
	out.Addrs = append(slices.Clone(sb.Addrs), addr)
	out.Gateways = append(slices.Clone(sb.Gateways), gw)
	f.sandboxes[sb.ID] = &out
	return &out, nil
}

// A pod of an IPv4-only node gains an IPv6 address when the node gains an
// IPv6 pod CIDR: its IPv4 address and container stay, the store holds
// both under the pod's key, and status.podIPs lists IPv4 first. A hostNetwork
// pod gets the node's new address.
func TestRunningPodGainsTheNewFamily(t *testing.T) {
	e := newTestEnv(t, v4CIDR)
	e.m.SetHostIPs([]netip.Addr{hostV4})
	e.create(t, newPod("web", corev1.RestartPolicyAlways, "app"))
	host := newPod("host", corev1.RestartPolicyAlways, "app")
	host.Spec.HostNetwork = true
	e.create(t, host)
	before := e.sync(t, "web")
	e.sync(t, "host")
	if len(before.Status.PodIPs) != 1 {
		t.Fatalf("podIPs before: %v", before.Status.PodIPs)
	}
	pid := e.container(t, types.UID("uid-web"), "app").proc.Pid()

	if err := e.m.SetPodCIDRs([]netip.Prefix{v4CIDR, v6CIDR}); err != nil {
		t.Fatalf("SetPodCIDRs: %v", err)
	}
	e.m.SetHostIPs([]netip.Addr{hostV4, hostV6})
	after := e.sync(t, "web")
	if len(after.Status.PodIPs) != 2 || after.Status.PodIPs[0] != before.Status.PodIPs[0] || after.Status.PodIP != before.Status.PodIP {
		t.Fatalf("podIPs after %v (podIP %s); want %v then an IPv6 address", after.Status.PodIPs, after.Status.PodIP, before.Status.PodIPs)
	}
	v6 := netip.MustParseAddr(after.Status.PodIPs[1].IP)
	if !v6CIDR.Contains(v6) {
		t.Errorf("new address %s is not of %s", v6, v6CIDR)
	}
	held := e.podAddrs(t, "uid-web")
	if !slices.Contains(held, v6) || !slices.Contains(held, netip.MustParseAddr(before.Status.PodIP)) || len(held) != 2 {
		t.Errorf("the store holds %v for the pod; want its two addresses", held)
	}
	if got := e.container(t, types.UID("uid-web"), "app").proc.Pid(); got != pid {
		t.Errorf("the container's process changed: pid %d, was %d", got, pid)
	}
	if e.net.setups != 1 {
		t.Errorf("%d sandboxes set up; want the one of the first pod (hostNetwork pods have none)", e.net.setups)
	}
	h := e.sync(t, "host")
	if want := []corev1.PodIP{{IP: hostV4.String()}, {IP: hostV6.String()}}; !slices.Equal(h.Status.PodIPs, want) {
		t.Errorf("hostNetwork pod's podIPs %v; want %v", h.Status.PodIPs, want)
	}
	// A new pod gets both, and not the address just given.
	e.create(t, newPod("new", corev1.RestartPolicyAlways, "app"))
	n := e.sync(t, "new")
	if len(n.Status.PodIPs) != 2 || n.Status.PodIPs[1].IP == v6.String() || n.Status.PodIP == before.Status.PodIP {
		t.Errorf("a new pod got %v", n.Status.PodIPs)
	}
}

// After an agent restart in the middle of the change (the Node has both
// pod CIDRs, the store only the pod's first address), the restarted pod
// keeps its first address and gains the second.
func TestRestartedAgentKeepsTheFirstAddress(t *testing.T) {
	e := newTestEnv(t, v4CIDR)
	e.create(t, newPod("web", corev1.RestartPolicyAlways, "app"))
	before := e.sync(t, "web")
	stopAll(e.m) // releases the address; the killed agent would not have
	keep := netip.MustParseAddr(before.Status.PodIP)
	ranges, err := alloc.NodePodRanges([]netip.Prefix{v4CIDR})
	if err != nil {
		t.Fatal(err)
	}
	p, err := alloc.NewPodIPs(e.store, ranges, alloc.PodIPOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.Reserve(podAttachment("uid-web"), []netip.Addr{keep}); err != nil {
		t.Fatal(err)
	}
	e.m = newTestManager(t, e, []netip.Addr{hostV4, hostV6})
	if err := e.m.SetPodCIDRs([]netip.Prefix{v4CIDR, v6CIDR}); err != nil {
		t.Fatal(err)
	}
	after := e.sync(t, "web")
	if after.Status.PodIP != keep.String() || len(after.Status.PodIPs) != 2 {
		t.Errorf("after a restart podIPs %v; want %s first and an IPv6 address", after.Status.PodIPs, keep)
	}
}

func TestAppendsFamily(t *testing.T) {
	for _, tt := range []struct {
		old, now []netip.Prefix
		want     bool
	}{
		{[]netip.Prefix{v4CIDR}, []netip.Prefix{v4CIDR, v6CIDR}, true},
		{[]netip.Prefix{v6CIDR}, []netip.Prefix{v6CIDR, v4CIDR}, true},
		{nil, []netip.Prefix{v4CIDR, v6CIDR}, false},
		{[]netip.Prefix{v4CIDR}, []netip.Prefix{v6CIDR, v4CIDR}, false},
		{[]netip.Prefix{v4CIDR}, []netip.Prefix{v4CIDR, netip.MustParsePrefix("10.9.0.0/24")}, false},
		{[]netip.Prefix{v4CIDR, v6CIDR}, []netip.Prefix{v4CIDR, v6CIDR}, false},
	} {
		if got := appendsFamily(tt.old, tt.now); got != tt.want {
			t.Errorf("appendsFamily(%v, %v) = %v, want %v", tt.old, tt.now, got, tt.want)
		}
	}
}
