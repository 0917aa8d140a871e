package endpointslice

import (
	"testing"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
)

// TestHostNetworkPodsAreEndpoints checks that Pods on the node's network,
// whose pod IPs the agent reports as the node's InternalIPs, back a
// Service with those addresses in each family, and that readiness still
// decides their condition.
func TestHostNetworkPodsAreEndpoints(t *testing.T) {
	hostNet := func(p *v1.Pod) *v1.Pod {
		p.Spec.HostNetwork = true
		return p
	}
	c := startedCluster(t, testOptions(),
		node("n1", nil), node("n2", nil),
		service("web", v6v4),
		hostNet(pod("h1", "web", "n1", true, 8080, "192.168.10.1", "fd00:192:168:10::1")),
		hostNet(pod("h2", "web", "n2", false, 8080, "fd00:192:168:10::2", "192.168.10.2")),
		pod("p", "web", "n1", true, 8080, "10.0.0.1", "fd00::1"),
	)
	c.waitEndpoints("web", map[discovery.AddressType][]string{
		ipv4: {
			readyEP("10.0.0.1", "p", "n1", "-", "http:8080"),
			readyEP("192.168.10.1", "h1", "n1", "-", "http:8080"),
			ep("192.168.10.2", "h2", false, false, false, "n2", "-", "http:8080"),
		},
		ipv6: {
			readyEP("fd00:192:168:10::1", "h1", "n1", "-", "http:8080"),
			ep("fd00:192:168:10::2", "h2", false, false, false, "n2", "-", "http:8080"),
			readyEP("fd00::1", "p", "n1", "-", "http:8080"),
		},
	})
}
