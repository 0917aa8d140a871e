package core

import (
	"context"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apiserver/pkg/authentication/user"
	genericapirequest "k8s.io/apiserver/pkg/endpoints/request"

	"github.com/duet-net/duet/internal/netaddr"
)

// Only the server's own client may shrink a Node's pod CIDRs, and only by
// the CIDRs of families the cluster CIDRs no longer have.
func TestNodePodCIDRsShrinkOnlyByADroppedFamily(t *testing.T) {
	server := genericapirequest.WithUser(context.Background(), &user.DefaultInfo{Name: user.APIServerUser, Groups: []string{user.SystemPrivilegedGroup}})
	admin := genericapirequest.WithUser(context.Background(), &user.DefaultInfo{Name: "duet-admin", Groups: []string{user.SystemPrivilegedGroup}})
	node := func(cidrs ...string) *corev1.Node {
		n := &corev1.Node{Spec: corev1.NodeSpec{PodCIDRs: cidrs}}
		if len(cidrs) > 0 {
			n.Spec.PodCIDR = cidrs[0]
		}
		return n
	}
	dual := node("10.244.1.0/24", "fd00:244:1::/64")
	v4 := []netaddr.Family{netaddr.IPv4}
	for _, tc := range []struct {
		name     string
		ctx      context.Context
		old, new *corev1.Node
		families []netaddr.Family
		allowed  bool
	}{
		{"the server drops IPv6 the cluster no longer has", server, dual, node("10.244.1.0/24"), v4, true},
		{"the server drops IPv4 from an IPv6-primary Node", server, node("fd00:244:1::/64", "10.244.1.0/24"), node("fd00:244:1::/64"), []netaddr.Family{netaddr.IPv6}, true},
		{"the server drops a family the cluster still has", server, dual, node("10.244.1.0/24"), []netaddr.Family{netaddr.IPv4, netaddr.IPv6}, false},
		{"the server keeps the dropped family, drops the kept one", server, dual, node("fd00:244:1::/64"), v4, false},
		{"the server drops everything", server, dual, node(), v4, false},
		{"the server changes the kept CIDR too", server, dual, node("10.244.9.0/24"), v4, false},
		{"an admin drops the family", admin, dual, node("10.244.1.0/24"), v4, false},
		{"no user", context.Background(), dual, node("10.244.1.0/24"), v4, false},
		{"no cluster CIDRs", server, dual, node("10.244.1.0/24"), nil, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			drops := podCIDRFamilyDrop(tc.ctx, tc.new, tc.old, tc.families)
			if drops != tc.allowed {
				t.Fatalf("podCIDRFamilyDrop = %v, want %v", drops, tc.allowed)
			}
			errs := validateNodeUpdate(tc.new, tc.old, drops)
			if tc.allowed && len(errs) > 0 {
				t.Errorf("refused: %v", errs)
			}
			if !tc.allowed && len(errs) == 0 {
				t.Error("allowed")
			}
		})
	}
	// Without the exception a shrink stays forbidden, naming the field.
	errs := validateNodeUpdate(node("10.244.1.0/24"), dual, false)
	if len(errs) != 1 || errs[0].Field != "spec.podCIDRs" {
		t.Errorf("shrink without the exception: %v", errs)
	}
}
