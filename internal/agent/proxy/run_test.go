package proxy

import (
	"context"
	"log/slog"
	"net/netip"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"
)

// Run, fed by the API: a dual-stack Service is served in both tables, a
// SingleStack IPv4 one only in the ip table; changes to slices and
// Services reach the tables; a table deleted behind the proxy's back is
// rebuilt by the periodic check.
func TestRun(t *testing.T) {
	n := newTestNet(t, "a", "b", "client")
	client := fake.NewClientset()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- Run(ctx, client, Options{
			NodeName: "node", NetNS: nsPath(n.node), NodeIPs: []netip.Addr{nodeIP4, nodeIP6},
			ClusterCIDRs: testClusterCIDRs, FullSyncPeriod: 300 * time.Millisecond,
			Log: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})),
		})
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})

	web := svc("web", func(s *corev1.Service) {
		s.Spec.ClusterIPs = []string{vip4.String(), vip6.String()}
		s.Spec.ClusterIP = vip4.String()
		s.Spec.IPFamilies = []corev1.IPFamily{corev1.IPv4Protocol, corev1.IPv6Protocol}
	})
	v4only := svc("v4only", func(s *corev1.Service) {
		s.Spec.ClusterIPs = []string{"10.96.0.11"}
		s.Spec.ClusterIP = "10.96.0.11"
	})
	http := []discoveryv1.EndpointPort{epPort("http", serverPort, corev1.ProtocolTCP)}
	slice4 := slice("web", discoveryv1.AddressTypeIPv4, http, sliceEP{addr: n.pods["a"].v4.String()}, sliceEP{addr: n.pods["b"].v4.String()})
	slice6 := slice("web", discoveryv1.AddressTypeIPv6, http, sliceEP{addr: n.pods["a"].v6.String()}, sliceEP{addr: n.pods["b"].v6.String()})
	slice4only := slice("v4only", discoveryv1.AddressTypeIPv4, http, sliceEP{addr: n.pods["a"].v4.String()})
	create(t, client, web, v4only, slice4, slice6, slice4only)

	from := n.pods["client"].ns
	seesAll(t, from, "tcp", netip.AddrPortFrom(vip4, 80), "a", "b")
	seesAll(t, from, "tcp", netip.AddrPortFrom(vip6, 80), "a", "b")
	seesAll(t, from, "tcp", netip.AddrPortFrom(netip.MustParseAddr("10.96.0.11"), 80), "a")
	// The IPv6 proxier has one port, ns/web's; ns/v4only is not even a
	// port without endpoints there.
	l := nftList(t, n.node, IPv6)
	frontends := map[string]bool{}
	for _, m := range regexp.MustCompile(`(\S+) \. tcp \. 80`).FindAllStringSubmatch(l, -1) {
		frontends[m[1]] = true
	}
	if len(frontends) != 1 || !frontends[vip6.String()] {
		t.Errorf("the ip6 table should have ns/web's frontend only, has %v:\n%s", frontends, l)
	}

	// b is no longer ready.
	slice6.Endpoints[1].Conditions.Ready = new(bool)
	update(t, client, slice6)
	eventually(t, "IPv6 traffic only to a once b is not ready", func() (string, error) {
		got, err := answers(from, "tcp", netip.AddrPortFrom(vip6, 80), 10)
		if got["b"] > 0 {
			return "b answered", err
		}
		return "", err
	}, func(s string) bool { return s == "" })

	// The table deleted behind the proxy's back comes back.
	run(t, "ip", "netns", "exec", n.node, "nft", "delete", "table", "ip6", TableName)
	seesAll(t, from, "tcp", netip.AddrPortFrom(vip6, 80), "a")

	// The Service deleted, its rules go.
	if err := client.CoreV1().Services("ns").Delete(context.Background(), "web", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	for _, f := range []Family{IPv4, IPv6} {
		eventually(t, "rules of a deleted Service removed", func() (string, error) { return nftList(t, n.node, f), nil },
			func(l string) bool {
				return strings.Contains(l, "chain services") && !strings.Contains(l, vip4.String()+" . tcp") && !strings.Contains(l, vip6.String()+" . tcp")
			})
	}
}

func create(t *testing.T, c *fake.Clientset, objs ...any) {
	t.Helper()
	for _, o := range objs {
		var err error
		switch o := o.(type) {
		case *corev1.Service:
			_, err = c.CoreV1().Services(o.Namespace).Create(context.Background(), o, metav1.CreateOptions{})
		case *discoveryv1.EndpointSlice:
			_, err = c.DiscoveryV1().EndpointSlices(o.Namespace).Create(context.Background(), o, metav1.CreateOptions{})
		}
		if err != nil {
			t.Fatal(err)
		}
	}
}

func update(t *testing.T, c *fake.Clientset, s *discoveryv1.EndpointSlice) {
	t.Helper()
	if _, err := c.DiscoveryV1().EndpointSlices(s.Namespace).Update(context.Background(), s, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
}
