package clusterdns

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/miekg/dns"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/utils/ptr"

	"github.com/duet-net/duet/internal/testutil/roottest"
)

// Serve follows the API: a Service created is resolvable at once, one
// deleted is gone, and a headless Service's answer follows its endpoints'
// readiness.
func TestServeFollowsTheAPI(t *testing.T) {
	client := fake.NewClientset()
	l, err := Listen("", loopback, 0)
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addrs()[0].String()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Serve(ctx, client, l, Options{Owned: testOwned}) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	})
	// answer polls until the question gets want (rcode and records), and
	// returns how long that took.
	answer := func(qname string, qtype uint16, rcode int, want ...string) time.Duration {
		t.Helper()
		start := time.Now()
		roottest.Eventually(t, 5*time.Second, fmt.Sprintf("%s %s = %s %v", qname, dns.TypeToString[qtype], dns.RcodeToString[rcode], want), func() error {
			resp := ask(t, addr, "udp", qname, qtype, 0)
			if got := texts(resp.Answer); resp.Rcode != rcode || !slices.Equal(got, want) {
				return fmt.Errorf("got %s %v", dns.RcodeToString[resp.Rcode], got)
			}
			return nil
		})
		return time.Since(start)
	}
	// Synced: a missing name is NXDOMAIN, no longer SERVFAIL.
	answer("web.default.svc.cluster.local.", dns.TypeA, dns.RcodeNameError)

	svcs := client.CoreV1().Services("default")
	web := service("default", "web", "10.96.0.20", "fd00:10:96::20")
	if _, err := svcs.Create(ctx, web, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if took := answer("web.default.svc.cluster.local.", dns.TypeAAAA, dns.RcodeSuccess, "AAAA fd00:10:96::20"); took > time.Second {
		t.Errorf("a new Service took %v to resolve, want under 1s", took)
	}
	answer("20.0.96.10.in-addr.arpa.", dns.TypePTR, dns.RcodeSuccess, "PTR web.default.svc.cluster.local.")
	if err := svcs.Delete(ctx, "web", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	if took := answer("web.default.svc.cluster.local.", dns.TypeA, dns.RcodeNameError); took > time.Second {
		t.Errorf("a deleted Service took %v to go, want under 1s", took)
	}
	answer("20.0.96.10.in-addr.arpa.", dns.TypePTR, dns.RcodeNameError)

	// A headless Service follows its endpoints' readiness.
	hl := service("default", "hl")
	hl.Spec.ClusterIP, hl.Spec.ClusterIPs = corev1.ClusterIPNone, []string{corev1.ClusterIPNone}
	if _, err := svcs.Create(ctx, hl, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	slices := client.DiscoveryV1().EndpointSlices("default")
	v6 := slice("default", "hl", "hl-v6", discoveryv1.AddressTypeIPv6, nil, ep{addr: "fd00:10:244::5", hostname: "c", notReady: true})
	if _, err := slices.Create(ctx, v6, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	answer("hl.default.svc.cluster.local.", dns.TypeAAAA, dns.RcodeSuccess)
	answer("c.hl.default.svc.cluster.local.", dns.TypeAAAA, dns.RcodeNameError)
	v6.Endpoints[0].Conditions.Ready = ptr.To(true)
	if _, err := slices.Update(ctx, v6, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	answer("hl.default.svc.cluster.local.", dns.TypeAAAA, dns.RcodeSuccess, "AAAA fd00:10:244::5")
	answer("c.hl.default.svc.cluster.local.", dns.TypeAAAA, dns.RcodeSuccess, "AAAA fd00:10:244::5")
	v6.Endpoints[0].Conditions.Ready = ptr.To(false)
	if _, err := slices.Update(ctx, v6, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	answer("hl.default.svc.cluster.local.", dns.TypeAAAA, dns.RcodeSuccess)

	// Pods.
	p := pod("default", "client", "10.244.0.5", "fd00:10:244::5")
	if _, err := client.CoreV1().Pods("default").Create(ctx, p, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	answer("fd00-10-244--5.default.pod.cluster.local.", dns.TypeAAAA, dns.RcodeSuccess, "AAAA fd00:10:244::5")
	answer("5.0.244.10.in-addr.arpa.", dns.TypePTR, dns.RcodeSuccess, "PTR 10-244-0-5.default.pod.cluster.local.")
}
