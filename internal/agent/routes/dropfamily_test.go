package routes

import (
	"slices"
	"testing"

	corev1 "k8s.io/api/core/v1"
)

// A family the cluster drops leaves the routes as soon as either half of
// a node's part goes: its pod CIDR of the family (the server's change) or
// its InternalIP of the family (its agent's), whichever comes first.
func TestDesiredAfterAFamilyIsDropped(t *testing.T) {
	self := node("self", []string{"10.244.0.0/24"}, "203.0.113.10")
	for _, tc := range []struct {
		name string
		b    *corev1.Node
		want []string
	}{
		{"both families", node("b", []string{"10.244.1.0/24", "fd00:10:244:1::/64"}, "203.0.113.11", "2001:db8::11"),
			[]string{"10.244.1.0/24 via 203.0.113.11", "fd00:10:244:1::/64 via 2001:db8::11"}},
		{"the pod CIDR went first", node("b", []string{"10.244.1.0/24"}, "203.0.113.11", "2001:db8::11"),
			[]string{"10.244.1.0/24 via 203.0.113.11"}},
		{"the InternalIP went first", node("b", []string{"10.244.1.0/24", "fd00:10:244:1::/64"}, "203.0.113.11"),
			[]string{"10.244.1.0/24 via 203.0.113.11"}},
		{"both went", node("b", []string{"10.244.1.0/24"}, "203.0.113.11"),
			[]string{"10.244.1.0/24 via 203.0.113.11"}},
	} {
		var got []string
		for _, r := range Desired("self", []*corev1.Node{self, tc.b}) {
			got = append(got, r.String())
		}
		if !slices.Equal(got, tc.want) {
			t.Errorf("%s: Desired = %v, want %v", tc.name, got, tc.want)
		}
	}
}
