package clusterdns

import (
	"net/netip"
	"sort"
	"strings"
	"testing"

	"github.com/miekg/dns"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
)

// testOwned are duet up's default service and pod CIDRs.
var testOwned = []netip.Prefix{
	netip.MustParsePrefix("10.96.0.0/16"), netip.MustParsePrefix("fd00:10:96::/108"),
	netip.MustParsePrefix("10.244.0.0/16"), netip.MustParsePrefix("fd00:10:244::/56"),
}

func newSource() *Index { return NewIndex() }

// add puts objects in the index as informers do, failing on other kinds.
func (x *Index) add(t testing.TB, objs ...any) {
	t.Helper()
	for _, o := range objs {
		switch o.(type) {
		case *corev1.Service, *discoveryv1.EndpointSlice, *corev1.Pod:
			x.OnAdd(o, true)
		default:
			t.Fatalf("unexpected %T", o)
		}
	}
}

func service(ns, name string, ips ...string) *corev1.Service {
	svc := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}}
	if len(ips) > 0 {
		svc.Spec.ClusterIP, svc.Spec.ClusterIPs = ips[0], ips
	}
	return svc
}

func withPorts(svc *corev1.Service, ports ...corev1.ServicePort) *corev1.Service {
	svc.Spec.Ports = ports
	return svc
}

func port(name string, proto corev1.Protocol, n int32) corev1.ServicePort {
	return corev1.ServicePort{Name: name, Protocol: proto, Port: n}
}

// ep is an endpoint: ready unless notReady, with a hostname if given.
type ep struct {
	addr, hostname string
	notReady       bool
}

func slice(ns, svc, name string, family discoveryv1.AddressType, ports []discoveryv1.EndpointPort, eps ...ep) *discoveryv1.EndpointSlice {
	s := &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Namespace: ns, Name: name, Labels: map[string]string{discoveryv1.LabelServiceName: svc}},
		AddressType: family, Ports: ports,
	}
	for _, e := range eps {
		out := discoveryv1.Endpoint{Addresses: []string{e.addr}, Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(!e.notReady)}}
		if e.hostname != "" {
			out.Hostname = ptr.To(e.hostname)
		}
		s.Endpoints = append(s.Endpoints, out)
	}
	return s
}

func slicePort(name string, proto corev1.Protocol, n int32) discoveryv1.EndpointPort {
	return discoveryv1.EndpointPort{Name: ptr.To(name), Protocol: ptr.To(proto), Port: ptr.To(n)}
}

func pod(ns, name string, ips ...string) *corev1.Pod {
	p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}, Status: corev1.PodStatus{Phase: corev1.PodRunning}}
	for _, ip := range ips {
		p.Status.PodIPs = append(p.Status.PodIPs, corev1.PodIP{IP: ip})
	}
	if len(ips) > 0 {
		p.Status.PodIP = ips[0]
	}
	return p
}

// clusterSource is a small dual-stack cluster with every kind of record.
func clusterSource(t testing.TB) *Index {
	src := newSource()
	tcp, udp := corev1.ProtocolTCP, corev1.ProtocolUDP
	headless := func(svc *corev1.Service) *corev1.Service {
		svc.Spec.ClusterIP, svc.Spec.ClusterIPs = corev1.ClusterIPNone, []string{corev1.ClusterIPNone}
		return svc
	}
	external := func(svc *corev1.Service, target string) *corev1.Service {
		svc.Spec.Type, svc.Spec.ExternalName = corev1.ServiceTypeExternalName, target
		return svc
	}
	pub := headless(service("default", "pub"))
	pub.Spec.PublishNotReadyAddresses = true
	done := pod("default", "done", "10.244.0.9")
	done.Status.Phase = corev1.PodSucceeded
	hostnet := pod("default", "hostnet", "203.0.113.11", "2001:db8:0:1::11")
	hostnet.Spec.HostNetwork = true
	hlPorts := []discoveryv1.EndpointPort{slicePort("http", tcp, 8080)}
	src.add(t,
		withPorts(service("default", "web", "10.96.0.20", "fd00:10:96::20"), port("http", tcp, 80), port("dns", udp, 53), port("", tcp, 8080)),
		withPorts(service("default", "web4", "10.96.0.21"), port("http", tcp, 80)),
		withPorts(service("default", "web6", "fd00:10:96::21"), port("http", tcp, 80)),
		// Service names are RFC 1123 labels: they may start with a digit.
		withPorts(service("default", "1web", "10.96.0.22", "fd00:10:96::22"), port("https", tcp, 443)),
		withPorts(headless(service("default", "hl")), port("http", tcp, 80)),
		slice("default", "hl", "hl-v4", discoveryv1.AddressTypeIPv4, hlPorts,
			ep{addr: "10.244.0.5", hostname: "c"}, ep{addr: "10.244.1.6"}, ep{addr: "10.244.1.7", notReady: true}),
		slice("default", "hl", "hl-v6", discoveryv1.AddressTypeIPv6, hlPorts,
			ep{addr: "fd00:10:244::5", hostname: "c"}, ep{addr: "fd00:10:244:1::6"}, ep{addr: "fd00:10:244:1::7", notReady: true}),
		// A Service without selector whose slices (two, of different
		// ports) are written by someone else, its ports theirs alone.
		headless(service("default", "manual")),
		slice("default", "manual", "manual-1", discoveryv1.AddressTypeIPv4, []discoveryv1.EndpointPort{slicePort("http", tcp, 80)}, ep{addr: "192.0.2.1"}),
		slice("default", "manual", "manual-2", discoveryv1.AddressTypeIPv4, []discoveryv1.EndpointPort{slicePort("https", tcp, 443)}, ep{addr: "192.0.2.2"}),
		pub,
		slice("default", "pub", "pub-v4", discoveryv1.AddressTypeIPv4, nil, ep{addr: "10.244.1.8", notReady: true}),
		headless(service("default", "empty")),
		external(service("default", "ext"), "outside.example"),
		external(service("default", "alias"), "web.default.svc.cluster.local"),
		external(service("default", "loop"), "loop.default.svc.cluster.local."),
		service("kube-system", "kube-dns", "10.96.0.10", "fd00:10:96::a"),
		pod("default", "client", "10.244.0.5", "fd00:10:244::5"),
		pod("default", "solo", "10.244.0.7", "fd00:10:244::7"),
		done, hostnet,
	)
	return src
}

// rrText is a record without its owner and TTL: "A 10.96.0.20".
func rrText(rr dns.RR) string {
	hdr := rr.Header().String()
	return dns.TypeToString[rr.Header().Rrtype] + " " + strings.TrimPrefix(rr.String(), hdr)
}

// texts are the records as rrText, sorted.
func texts(rrs []dns.RR) []string {
	out := make([]string, 0, len(rrs))
	for _, rr := range rrs {
		if _, ok := rr.(*dns.OPT); ok {
			continue
		}
		out = append(out, rrText(rr))
	}
	sort.Strings(out)
	return out
}

// ownedTexts are the records as "owner type data", sorted.
func ownedTexts(rrs []dns.RR) []string {
	out := make([]string, 0, len(rrs))
	for _, rr := range rrs {
		out = append(out, rr.Header().Name+" "+rrText(rr))
	}
	sort.Strings(out)
	return out
}
