package nodestatus

import (
	"context"
	"net/netip"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"
)

func TestRegisterAndHeartbeat(t *testing.T) {
	ctx := context.Background()
	clock := time.Unix(1000, 0)
	// An existing Node (a restarted agent) with pod CIDRs and a stale address.
	client := fake.NewClientset(&corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: "n2", Labels: map[string]string{"keep": "me"}},
		Spec:       corev1.NodeSpec{PodCIDRs: []string{"fd00:10:244:1::/64", "10.244.1.0/24"}},
		Status:     corev1.NodeStatus{Addresses: []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: "192.0.2.99"}}},
	})
	for _, tt := range []struct {
		name string
		ips  []string
	}{
		{"n1", []string{"203.0.113.11", "2001:db8::11"}},
		{"n2", []string{"2001:db8::12", "203.0.113.12"}},
	} {
		r := &Reporter{Client: client, NodeName: tt.name, Version: "v1.37.0-duet", Now: func() time.Time { return clock }}
		for _, ip := range tt.ips {
			r.InternalIPs = append(r.InternalIPs, netip.MustParseAddr(ip))
		}
		node, err := r.Register(ctx)
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, a := range node.Status.Addresses {
			if a.Type == corev1.NodeInternalIP {
				got = append(got, a.Address)
			}
		}
		if len(got) != 2 || got[0] != tt.ips[0] || got[1] != tt.ips[1] {
			t.Fatalf("%s InternalIPs = %v, want %v", tt.name, got, tt.ips)
		}
		ready := false
		for _, c := range node.Status.Conditions {
			ready = ready || c.Type == corev1.NodeReady && c.Status == corev1.ConditionTrue
		}
		if !ready || node.Labels[corev1.LabelHostname] != tt.name {
			t.Fatalf("%s not Ready or unlabelled: %+v", tt.name, node)
		}
		if node.Status.Allocatable.Cpu().Value() < 1 || node.Status.Allocatable.Memory().Value() <= 0 || node.Status.Allocatable.Pods().Value() != MaxPods ||
			!node.Status.Capacity.Cpu().Equal(*node.Status.Allocatable.Cpu()) {
			t.Fatalf("%s reports capacity %v, allocatable %v: want the machine's cpu, memory and %d pods", tt.name, node.Status.Capacity, node.Status.Allocatable, MaxPods)
		}
		if tt.name == "n2" && (node.Labels["keep"] != "me" || len(node.Spec.PodCIDRs) != 2) {
			t.Fatalf("re-registration lost existing fields: %+v", node)
		}
		if err := r.RenewLease(ctx); err != nil {
			t.Fatal(err)
		}
		clock = clock.Add(RenewInterval)
		if err := r.RenewLease(ctx); err != nil {
			t.Fatal(err)
		}
		lease, err := client.CoordinationV1().Leases(corev1.NamespaceNodeLease).Get(ctx, tt.name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if *lease.Spec.HolderIdentity != tt.name || !lease.Spec.RenewTime.Time.Equal(clock) {
			t.Fatalf("lease %+v, want renewed at %v", lease.Spec, clock)
		}
	}
}
