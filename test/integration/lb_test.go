package integration

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
)

func waitIngress(t *testing.T, srv *Server, name string, n int) []string {
	t.Helper()
	var got []string
	err := wait.PollUntilContextTimeout(context.Background(), 50*time.Millisecond, 20*time.Second, true, func(ctx context.Context) (bool, error) {
		svc, err := srv.Client.CoreV1().Services("default").Get(ctx, name, metav1.GetOptions{})
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
		t.Fatalf("%s: ingress %v, want %d", name, got, n)
	}
	return got
}

// TestLoadBalancersNodePortsAndSlices: one server with pools of both
// families hands out ingress IPs per family and node ports from the range,
// keeps both across a kill -9, and keeps EndpointSlices per family.
func TestLoadBalancersNodePortsAndSlices(t *testing.T) {
	ctx := context.Background()
	srv := StartServer(t, ServerOptions{
		ServiceRanges: v4Range + "," + v6Range, ClusterCIDR: "10.244.0.0/16,fd00:10:244::/56",
		Extra: []string{"--load-balancer-ip-pool", "192.0.2.0/28,2001:db8:0:2::/124", "--service-node-port-range", "30000-30099"},
	})
	svcs := srv.Client.CoreV1().Services("default")
	lb := newService("lb", policy(corev1.IPFamilyPolicyRequireDualStack), func(s *corev1.Service) {
		s.Spec.Type = corev1.ServiceTypeLoadBalancer
		s.Spec.IPFamilies = []corev1.IPFamily{corev1.IPv6Protocol, corev1.IPv4Protocol}
	})
	created, err := svcs.Create(ctx, lb, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	np := created.Spec.Ports[0].NodePort
	if np < 30000 || np > 30099 {
		t.Fatalf("nodePort %d not in 30000-30099", np)
	}
	ips := waitIngress(t, srv, "lb", 2)
	if ips[0] != "2001:db8:0:2::1" || ips[1] != "192.0.2.1" {
		t.Fatalf("ingress %v, want the lowest of each pool, IPv6 first", ips)
	}
	// The same node port, asked for by another Service, is refused.
	clash := newService("clash", func(s *corev1.Service) {
		s.Spec.Type = corev1.ServiceTypeNodePort
		s.Spec.Ports[0].NodePort = np
	})
	_, err = svcs.Create(ctx, clash, metav1.CreateOptions{})
	if err == nil || !strings.Contains(err.Error(), fmt.Sprintf("spec.ports[0].nodePort: Invalid value: %d: provided port is already allocated", np)) {
		t.Fatalf("duplicate nodePort: %v", err)
	}

	// A pod of each family's address behind it gets slices per family.
	node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n1"}}
	if _, err := srv.Client.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "p", Labels: map[string]string{"app": "lb"}},
		Spec: corev1.PodSpec{NodeName: "n1", Containers: []corev1.Container{{Name: "c", Image: "x"}}}}
	pod, err = srv.Client.CoreV1().Pods("default").Create(ctx, pod, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	pod.Status.Phase = corev1.PodRunning
	pod.Status.PodIPs = []corev1.PodIP{{IP: "10.244.0.5"}, {IP: "fd00:10:244::5"}}
	pod.Status.Conditions = []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}}
	if _, err := srv.Client.CoreV1().Pods("default").UpdateStatus(ctx, pod, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	var last string
	if err := wait.PollUntilContextTimeout(ctx, 50*time.Millisecond, 20*time.Second, true, func(ctx context.Context) (bool, error) {
		list, err := srv.Client.DiscoveryV1().EndpointSlices("default").List(ctx, metav1.ListOptions{LabelSelector: discoveryv1.LabelServiceName + "=lb"})
		if err != nil {
			return false, nil
		}
		got := map[discoveryv1.AddressType]string{}
		for _, s := range list.Items {
			for _, e := range s.Endpoints {
				got[s.AddressType] += strings.Join(e.Addresses, ",")
			}
		}
		last = fmt.Sprint(got)
		return got[discoveryv1.AddressTypeIPv4] == "10.244.0.5" && got[discoveryv1.AddressTypeIPv6] == "fd00:10:244::5" && len(got) == 2, nil
	}); err != nil {
		t.Fatalf("EndpointSlices of lb: %s, want one per family with the pod's address", last)
	}

	// kill -9 and restart: nothing is handed out twice, nothing moves.
	srv.Kill(t)
	srv.Restart(t)
	svcs = srv.Client.CoreV1().Services("default")
	if _, err := srv.Client.CoreV1().Services("default").Create(ctx, newService("lb2", policy(corev1.IPFamilyPolicyRequireDualStack), func(s *corev1.Service) {
		s.Spec.Type = corev1.ServiceTypeLoadBalancer
	}), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	ips2 := waitIngress(t, srv, "lb2", 2)
	for _, ip := range ips2 {
		for _, old := range ips {
			if ip == old {
				t.Fatalf("after restart lb2 got %s, which lb holds", ip)
			}
		}
		if !netip.MustParseAddr(ip).IsValid() {
			t.Fatal(ip)
		}
	}
	if got := waitIngress(t, srv, "lb", 2); got[0] != ips[0] || got[1] != ips[1] {
		t.Fatalf("lb's ingress moved across a restart: %v → %v", ips, got)
	}
	lb2, err := svcs.Get(ctx, "lb2", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if lb2.Spec.Ports[0].NodePort == np {
		t.Fatalf("after restart lb2 got node port %d, which lb holds", np)
	}
	// Changing the type gives the addresses and node port back.
	cur, err := svcs.Get(ctx, "lb", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	cur.Spec.Type = corev1.ServiceTypeClusterIP
	if _, err := svcs.Update(ctx, cur, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitIngress(t, srv, "lb", 0)
	clash.Name = "reuse"
	if _, err := svcs.Create(ctx, clash, metav1.CreateOptions{}); err != nil {
		t.Fatalf("node port %d not released with the type change: %v", np, err)
	}
}
