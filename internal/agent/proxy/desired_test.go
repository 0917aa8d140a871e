package proxy

import (
	"net/netip"
	"reflect"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
)

func svc(name string, mutate ...func(*corev1.Service)) *corev1.Service {
	s := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: name},
		Spec: corev1.ServiceSpec{
			Type:       corev1.ServiceTypeClusterIP,
			ClusterIP:  "10.96.0.10",
			ClusterIPs: []string{"10.96.0.10", "fd00:96::10"},
			Ports:      []corev1.ServicePort{{Name: "http", Port: 80, Protocol: corev1.ProtocolTCP}},
		},
	}
	for _, m := range mutate {
		m(s)
	}
	return s
}

type sliceEP struct {
	addr  string
	ready *bool
}

func slice(svcName string, at discoveryv1.AddressType, ports []discoveryv1.EndpointPort, eps ...sliceEP) *discoveryv1.EndpointSlice {
	s := &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Namespace: "ns", Name: svcName + "-" + string(at), Labels: map[string]string{discoveryv1.LabelServiceName: svcName}},
		AddressType: at,
		Ports:       ports,
	}
	for _, e := range eps {
		s.Endpoints = append(s.Endpoints, discoveryv1.Endpoint{Addresses: []string{e.addr}, Conditions: discoveryv1.EndpointConditions{Ready: e.ready}})
	}
	return s
}

func epPort(name string, port int32, proto corev1.Protocol) discoveryv1.EndpointPort {
	return discoveryv1.EndpointPort{Name: ptr.To(name), Port: ptr.To(port), Protocol: ptr.To(proto)}
}

func ep4(a string) Endpoint { return Endpoint{netip.MustParseAddr(a), 8080} }

func TestServicePorts(t *testing.T) {
	http := []discoveryv1.EndpointPort{epPort("http", 8080, corev1.ProtocolTCP)}
	v4 := func(eps ...sliceEP) *discoveryv1.EndpointSlice {
		return slice("web", discoveryv1.AddressTypeIPv4, http, eps...)
	}
	v6 := func(eps ...sliceEP) *discoveryv1.EndpointSlice {
		return slice("web", discoveryv1.AddressTypeIPv6, http, eps...)
	}
	name := ServicePortName{Namespace: "ns", Name: "web", Port: "http", Protocol: TCP}
	base4 := ServicePort{Name: name, ClusterIP: netip.MustParseAddr("10.96.0.10"), Port: 80}
	with := func(p ServicePort, m func(*ServicePort)) []ServicePort { m(&p); return []ServicePort{p} }

	tests := []struct {
		name   string
		fam    Family
		svc    *corev1.Service
		slices []*discoveryv1.EndpointSlice
		want   []ServicePort
	}{
		{
			name: "dual-stack service: the IPv4 proxier takes the IPv4 cluster IP and IPv4 slices only",
			fam:  IPv4, svc: svc("web"),
			slices: []*discoveryv1.EndpointSlice{v4(sliceEP{addr: "10.244.1.12"}, sliceEP{addr: "10.244.1.11"}), v6(sliceEP{addr: "fd00:10:244:1::11"})},
			want:   with(base4, func(p *ServicePort) { p.Endpoints = []Endpoint{ep4("10.244.1.11"), ep4("10.244.1.12")} }),
		},
		{
			name: "dual-stack service: the IPv6 proxier takes the IPv6 side",
			fam:  IPv6, svc: svc("web"),
			slices: []*discoveryv1.EndpointSlice{v4(sliceEP{addr: "10.244.1.11"}), v6(sliceEP{addr: "fd00:10:244:1::11"})},
			want: []ServicePort{{Name: name, ClusterIP: netip.MustParseAddr("fd00:96::10"), Port: 80,
				Endpoints: []Endpoint{{netip.MustParseAddr("fd00:10:244:1::11"), 8080}}}},
		},
		{
			name: "SingleStack IPv4 service gets nothing from the IPv6 proxier",
			fam:  IPv6,
			svc: svc("web", func(s *corev1.Service) {
				s.Spec.ClusterIPs = []string{"10.96.0.10"}
				s.Spec.ExternalIPs = []string{"2001:db8:100::1"}
			}),
			slices: []*discoveryv1.EndpointSlice{v6(sliceEP{addr: "fd00:10:244:1::11"})},
		},
		{
			name: "an endpoint whose ready condition is false is left out; unset ready counts as ready",
			fam:  IPv4, svc: svc("web"),
			slices: []*discoveryv1.EndpointSlice{v4(sliceEP{addr: "10.244.1.11", ready: ptr.To(false)}, sliceEP{addr: "10.244.1.12", ready: ptr.To(true)}, sliceEP{addr: "10.244.1.13"})},
			want:   with(base4, func(p *ServicePort) { p.Endpoints = []Endpoint{ep4("10.244.1.12"), ep4("10.244.1.13")} }),
		},
		{
			name: "no ready endpoint: the port is still there, to be rejected",
			fam:  IPv4, svc: svc("web"),
			slices: []*discoveryv1.EndpointSlice{v4(sliceEP{addr: "10.244.1.11", ready: ptr.To(false)})},
			want:   []ServicePort{base4},
		},
		{
			name: "endpoints are matched to ports by name and protocol",
			fam:  IPv4,
			svc: svc("web", func(s *corev1.Service) {
				s.Spec.Ports = []corev1.ServicePort{{Name: "dns", Port: 53, Protocol: corev1.ProtocolUDP}, {Name: "dns-tcp", Port: 53, Protocol: corev1.ProtocolTCP}}
			}),
			slices: []*discoveryv1.EndpointSlice{slice("web", discoveryv1.AddressTypeIPv4,
				[]discoveryv1.EndpointPort{epPort("dns", 5353, corev1.ProtocolUDP), epPort("dns-tcp", 5354, corev1.ProtocolTCP), epPort("dns", 9999, corev1.ProtocolTCP)},
				sliceEP{addr: "10.244.1.11"})},
			want: []ServicePort{
				{Name: ServicePortName{"ns", "web", "dns", UDP}, ClusterIP: base4.ClusterIP, Port: 53, Endpoints: []Endpoint{{netip.MustParseAddr("10.244.1.11"), 5353}}},
				{Name: ServicePortName{"ns", "web", "dns-tcp", TCP}, ClusterIP: base4.ClusterIP, Port: 53, Endpoints: []Endpoint{{netip.MustParseAddr("10.244.1.11"), 5354}}},
			},
		},
		{
			name: "a slice of another service, or without the label, is ignored",
			fam:  IPv4, svc: svc("web"),
			slices: []*discoveryv1.EndpointSlice{
				slice("other", discoveryv1.AddressTypeIPv4, http, sliceEP{addr: "10.244.1.99"}),
				func() *discoveryv1.EndpointSlice { s := v4(sliceEP{addr: "10.244.1.98"}); s.Labels = nil; return s }(),
				v4(sliceEP{addr: "10.244.1.11"}),
			},
			want: with(base4, func(p *ServicePort) { p.Endpoints = []Endpoint{ep4("10.244.1.11")} }),
		},
		{
			name: "the same endpoint in two slices is one endpoint",
			fam:  IPv4, svc: svc("web"),
			slices: []*discoveryv1.EndpointSlice{v4(sliceEP{addr: "10.244.1.11"}), func() *discoveryv1.EndpointSlice {
				s := v4(sliceEP{addr: "10.244.1.11"})
				s.Name += "-2"
				return s
			}()},
			want: with(base4, func(p *ServicePort) { p.Endpoints = []Endpoint{ep4("10.244.1.11")} }),
		},
		{
			name: "headless service gets no rules",
			fam:  IPv4,
			svc: svc("web", func(s *corev1.Service) {
				s.Spec.ClusterIP, s.Spec.ClusterIPs = corev1.ClusterIPNone, []string{corev1.ClusterIPNone}
			}),
			slices: []*discoveryv1.EndpointSlice{v4(sliceEP{addr: "10.244.1.11"})},
		},
		{
			name: "ExternalName service gets no rules",
			fam:  IPv4,
			svc: svc("web", func(s *corev1.Service) {
				s.Spec.Type, s.Spec.ExternalName = corev1.ServiceTypeExternalName, "example.com"
			}),
		},
		{
			name: "a NodePort service gets its node port",
			fam:  IPv4,
			svc: svc("web", func(s *corev1.Service) {
				s.Spec.Type = corev1.ServiceTypeNodePort
				s.Spec.Ports[0].NodePort = 30080
			}),
			want: with(base4, func(p *ServicePort) { p.NodePort = 30080 }),
		},
		{
			name: "a ClusterIP service's stray nodePort is ignored",
			fam:  IPv4,
			svc:  svc("web", func(s *corev1.Service) { s.Spec.Ports[0].NodePort = 30080 }),
			want: []ServicePort{base4},
		},
		{
			name: "a LoadBalancer gets its ingress IPs of the family, external IPs of the family, and its node port",
			fam:  IPv4,
			svc: svc("web", func(s *corev1.Service) {
				s.Spec.Type = corev1.ServiceTypeLoadBalancer
				s.Spec.Ports[0].NodePort = 30080
				s.Spec.ExternalIPs = []string{"198.51.100.7", "2001:db8::7", "not-an-ip"}
				s.Status.LoadBalancer.Ingress = []corev1.LoadBalancerIngress{
					{IP: "203.0.113.5"}, {IP: "2001:db8:100::5"}, {Hostname: "lb.example.com"},
					{IP: "203.0.113.6", IPMode: ptr.To(corev1.LoadBalancerIPModeProxy)},
				}
			}),
			want: with(base4, func(p *ServicePort) {
				p.NodePort = 30080
				p.ExternalIPs = []netip.Addr{netip.MustParseAddr("198.51.100.7"), netip.MustParseAddr("203.0.113.5")}
			}),
		},
		{
			name: "load balancer status of a service that is no longer a LoadBalancer is ignored",
			fam:  IPv4,
			svc: svc("web", func(s *corev1.Service) {
				s.Status.LoadBalancer.Ingress = []corev1.LoadBalancerIngress{{IP: "203.0.113.5"}}
			}),
			want: []ServicePort{base4},
		},
		{
			name: "ClientIP affinity defaults to 10800 s",
			fam:  IPv4,
			svc:  svc("web", func(s *corev1.Service) { s.Spec.SessionAffinity = corev1.ServiceAffinityClientIP }),
			want: with(base4, func(p *ServicePort) { p.Affinity = 3 * time.Hour }),
		},
		{
			name: "ClientIP affinity with a timeout",
			fam:  IPv4,
			svc: svc("web", func(s *corev1.Service) {
				s.Spec.SessionAffinity = corev1.ServiceAffinityClientIP
				s.Spec.SessionAffinityConfig = &corev1.SessionAffinityConfig{ClientIP: &corev1.ClientIPConfig{TimeoutSeconds: ptr.To[int32](60)}}
			}),
			want: with(base4, func(p *ServicePort) { p.Affinity = time.Minute }),
		},
		{
			name: "an old service with only spec.clusterIP",
			fam:  IPv4,
			svc:  svc("web", func(s *corev1.Service) { s.Spec.ClusterIPs = nil }),
			want: []ServicePort{base4},
		},
		{
			name: "an unnamed port matches an unnamed slice port; protocol defaults to TCP",
			fam:  IPv4,
			svc: svc("web", func(s *corev1.Service) {
				s.Spec.Ports = []corev1.ServicePort{{Port: 80}}
			}),
			slices: []*discoveryv1.EndpointSlice{slice("web", discoveryv1.AddressTypeIPv4,
				[]discoveryv1.EndpointPort{{Port: ptr.To[int32](8080)}}, sliceEP{addr: "10.244.1.11"})},
			want: []ServicePort{{Name: ServicePortName{"ns", "web", "", TCP}, ClusterIP: base4.ClusterIP, Port: 80, Endpoints: []Endpoint{ep4("10.244.1.11")}}},
		},
		{
			name: "SCTP is served",
			fam:  IPv4,
			svc: svc("web", func(s *corev1.Service) {
				s.Spec.Ports = []corev1.ServicePort{{Name: "sctp", Port: 9, Protocol: corev1.ProtocolSCTP}}
			}),
			want: []ServicePort{{Name: ServicePortName{"ns", "web", "sctp", SCTP}, ClusterIP: base4.ClusterIP, Port: 9}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := ServicePorts(tt.fam, tt.svc, tt.slices)
			for i := range got {
				// nil and empty lists are the same to the proxier.
				if len(got[i].ExternalIPs) == 0 {
					got[i].ExternalIPs = nil
				}
				if len(got[i].Endpoints) == 0 {
					got[i].Endpoints = nil
				}
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("ServicePorts:\n got %+v\nwant %+v", got, tt.want)
			}
		})
	}
}
