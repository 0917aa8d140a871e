package agent

import (
	"context"
	"errors"
	"net/netip"
	"slices"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"
)

func node(name string, cidrs ...string) *corev1.Node {
	return &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: corev1.NodeSpec{PodCIDRs: cidrs}}
}

func TestClusterCIDRsFor(t *testing.T) {
	v4 := []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16")}
	for _, tt := range []struct {
		name  string
		flag  []netip.Prefix
		nodes []*corev1.Node
		want  string
	}{
		{"single-stack stays", v4, []*corev1.Node{node("a", "10.244.1.0/24"), node("b", "10.244.2.0/24")}, "[10.244.0.0/16]"},
		{"the nodes' CIDRs of a new family, sorted, once each", v4,
			[]*corev1.Node{node("b", "10.244.2.0/24", "fd00:10:244:2::/64"), node("a", "10.244.1.0/24", "fd00:10:244:1::/64"), node("c", "10.244.3.0/24", "fd00:10:244:1::/64")},
			"[10.244.0.0/16 fd00:10:244:1::/64 fd00:10:244:2::/64]"},
		{"a node without the new family yet", v4, []*corev1.Node{node("a", "10.244.1.0/24", "fd00:10:244:1::/64"), node("b", "10.244.2.0/24")},
			"[10.244.0.0/16 fd00:10:244:1::/64]"},
		{"garbage is skipped", v4, []*corev1.Node{node("a", "10.244.1.0/24", "nonsense")}, "[10.244.0.0/16]"},
		{"dual-stack flag: nothing added", append(slices.Clone(v4), netip.MustParsePrefix("fd00:10:244::/56")),
			[]*corev1.Node{node("a", "10.244.1.0/24", "fd00:10:244:1::/64")}, "[10.244.0.0/16 fd00:10:244::/56]"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			got := clusterCIDRsFor(tt.flag, tt.nodes)
			if s := fmtPrefixes(got); s != tt.want {
				t.Errorf("got %s, want %s", s, tt.want)
			}
		})
	}
}

func fmtPrefixes(ps []netip.Prefix) string {
	s := "["
	for i, p := range ps {
		if i > 0 {
			s += " "
		}
		s += p.String()
	}
	return s + "]"
}

func TestSendLatestKeepsTheNewest(t *testing.T) {
	c := make(chan int, 1)
	for i := range 5 {
		sendLatest(c, i)
	}
	if got := <-c; got != 4 {
		t.Errorf("got %d, want the last value sent, 4", got)
	}
	select {
	case v := <-c:
		t.Errorf("a second value %d was queued", v)
	default:
	}
}

func TestWithNodeFamilies(t *testing.T) {
	v4 := netip.MustParseAddr("203.0.113.11")
	v6 := netip.MustParseAddr("2001:db8:0:1::11")
	find := func(is4 bool) (netip.Addr, error) {
		if is4 {
			return netip.Addr{}, errors.New("none")
		}
		return v6, nil
	}
	cfg := Config{NodeName: "node1", InternalIPs: []netip.Addr{v4}}
	for _, tt := range []struct {
		name  string
		nodes []runtime.Object
		want  []netip.Addr
	}{
		{"no Node yet", nil, []netip.Addr{v4}},
		{"a Node of the flag's family", []runtime.Object{node("node1", "10.244.1.0/24")}, []netip.Addr{v4}},
		{"a Node that gained IPv6", []runtime.Object{node("node1", "10.244.1.0/24", "fd00:10:244:1::/64")}, []netip.Addr{v4, v6}},
		{"another node's CIDRs do not count", []runtime.Object{node("node2", "10.244.1.0/24", "fd00:10:244:1::/64")}, []netip.Addr{v4}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			got := withNodeFamilies(context.Background(), fake.NewClientset(tt.nodes...), cfg, find).InternalIPs
			if !slices.Equal(got, tt.want) {
				t.Errorf("got %v, want %v", got, tt.want)
			}
		})
	}
	// A family the node has no address of stays out.
	v6cfg := Config{NodeName: "node1", InternalIPs: []netip.Addr{v6}}
	got := withNodeFamilies(context.Background(), fake.NewClientset(node("node1", "fd00:10:244:1::/64", "10.244.1.0/24")), v6cfg, find).InternalIPs
	if !slices.Equal(got, []netip.Addr{v6}) {
		t.Errorf("got %v, want %v", got, []netip.Addr{v6})
	}
}
