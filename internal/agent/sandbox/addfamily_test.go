package sandbox

import (
	"net/netip"
	"testing"
)

// A pod wired IPv4-only gains an IPv6 address in place: the same
// namespace and veth, its IPv4 address kept, and both families reach a
// dual-stack neighbour.
func TestAddFamilyGivesARunningPodTheSecondFamily(t *testing.T) {
	requireRoot(t)
	node := newNode(t)
	full := podReq("addfam-a", 2)
	v4only := full
	v4only.Addrs, v4only.Gateways = full.Addrs[:1], full.Gateways[:1]
	sb := newPod(t, node, v4only)
	peer := newPod(t, node, podReq("addfam-b", 3))
	if err := ping(t, sb.NetNS, peer.Addrs[1].Addr()); err == nil {
		t.Fatalf("an IPv4-only pod reached %s before it had an IPv6 address", peer.Addrs[1].Addr())
	}

	got, err := AddFamily(node, sb, full.Addrs[1], full.Gateways[1])
	if err != nil {
		t.Fatalf("AddFamily: %v", err)
	}
	if len(got.Addrs) != 2 || got.Addrs[0] != full.Addrs[0] || got.Addrs[1] != full.Addrs[1] || got.NetNS != sb.NetNS || got.HostVeth != sb.HostVeth {
		t.Fatalf("AddFamily returned %+v; want the same sandbox with %v", got, full.Addrs)
	}
	checkPodNS(t, node, got)
	for _, dst := range []netip.Addr{peer.Addrs[0].Addr(), peer.Addrs[1].Addr()} {
		if err := ping(t, sb.NetNS, dst); err != nil {
			t.Errorf("after AddFamily, ping %s: %v", dst, err)
		}
	}
	if err := tcpExchange(t, sb.NetNS, full.Addrs[1].Addr(), peer.NetNS, peer.Addrs[1].Addr()); err != nil {
		t.Errorf("TCP to the new address: %v", err)
	}
	// Again: a no-op; another address of the family: refused.
	if again, err := AddFamily(node, got, full.Addrs[1], full.Gateways[1]); err != nil || len(again.Addrs) != 2 {
		t.Errorf("AddFamily again = %+v, %v; want the sandbox unchanged", again, err)
	}
	other := netip.PrefixFrom(full.Addrs[1].Addr().Next(), 64)
	if _, err := AddFamily(node, got, other, full.Gateways[1]); err == nil {
		t.Errorf("AddFamily of a second IPv6 address succeeded")
	}
	if _, err := AddFamily(node, sb, full.Addrs[1], full.Addrs[1].Addr()); err == nil {
		t.Errorf("AddFamily with the pod's own address as gateway succeeded")
	}
}
