package service

import (
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/duet-net/duet/internal/apis/core"
)

func TestSetDefaults(t *testing.T) {
	timeout := corev1.DefaultClientIPServiceAffinitySeconds
	tests := []struct {
		name  string
		in    func(*corev1.ServiceSpec)
		check func(t *testing.T, s *corev1.ServiceSpec)
	}{
		{name: "an empty Service is a ClusterIP Service without affinity",
			check: func(t *testing.T, s *corev1.ServiceSpec) {
				if s.Type != corev1.ServiceTypeClusterIP || s.SessionAffinity != corev1.ServiceAffinityNone || s.SessionAffinityConfig != nil {
					t.Errorf("type %q affinity %q config %v", s.Type, s.SessionAffinity, s.SessionAffinityConfig)
				}
				if s.InternalTrafficPolicy == nil || *s.InternalTrafficPolicy != corev1.ServiceInternalTrafficPolicyCluster {
					t.Errorf("internalTrafficPolicy %v, want Cluster", s.InternalTrafficPolicy)
				}
				if s.ExternalTrafficPolicy != "" || s.AllocateLoadBalancerNodePorts != nil {
					t.Errorf("externalTrafficPolicy %q allocateLoadBalancerNodePorts %v on a ClusterIP Service", s.ExternalTrafficPolicy, s.AllocateLoadBalancerNodePorts)
				}
				if s.IPFamilyPolicy != nil || s.IPFamilies != nil {
					t.Errorf("family fields defaulted without the cluster: %v %v", s.IPFamilyPolicy, s.IPFamilies)
				}
			}},
		{name: "ports are TCP to the same port unless told",
			in: func(s *corev1.ServiceSpec) {
				s.Ports = []corev1.ServicePort{{Port: 80}, {Port: 53, Protocol: corev1.ProtocolUDP, TargetPort: intstr.FromString("dns")}, {Port: 443, TargetPort: intstr.FromString("")}}
			},
			check: func(t *testing.T, s *corev1.ServiceSpec) {
				want := []corev1.ServicePort{
					{Port: 80, Protocol: corev1.ProtocolTCP, TargetPort: intstr.FromInt32(80)},
					{Port: 53, Protocol: corev1.ProtocolUDP, TargetPort: intstr.FromString("dns")},
					{Port: 443, Protocol: corev1.ProtocolTCP, TargetPort: intstr.FromInt32(443)},
				}
				for i := range want {
					if s.Ports[i] != want[i] {
						t.Errorf("ports[%d] = %+v, want %+v", i, s.Ports[i], want[i])
					}
				}
			}},
		{name: "ClientIP affinity gets the three-hour timeout",
			in: func(s *corev1.ServiceSpec) { s.SessionAffinity = corev1.ServiceAffinityClientIP },
			check: func(t *testing.T, s *corev1.ServiceSpec) {
				if c := s.SessionAffinityConfig; c == nil || c.ClientIP == nil || c.ClientIP.TimeoutSeconds == nil || *c.ClientIP.TimeoutSeconds != timeout {
					t.Errorf("sessionAffinityConfig %+v, want a %d s timeout", c, timeout)
				}
			}},
		{name: "ClientIP affinity keeps its timeout",
			in: func(s *corev1.ServiceSpec) {
				d := int32(60)
				s.SessionAffinity = corev1.ServiceAffinityClientIP
				s.SessionAffinityConfig = &corev1.SessionAffinityConfig{ClientIP: &corev1.ClientIPConfig{TimeoutSeconds: &d}}
			},
			check: func(t *testing.T, s *corev1.ServiceSpec) {
				if *s.SessionAffinityConfig.ClientIP.TimeoutSeconds != 60 {
					t.Errorf("timeout %d, want 60", *s.SessionAffinityConfig.ClientIP.TimeoutSeconds)
				}
			}},
		{name: "no affinity drops an affinity config",
			in: func(s *corev1.ServiceSpec) {
				s.SessionAffinityConfig = &corev1.SessionAffinityConfig{ClientIP: &corev1.ClientIPConfig{}}
			},
			check: func(t *testing.T, s *corev1.ServiceSpec) {
				if s.SessionAffinityConfig != nil {
					t.Errorf("sessionAffinityConfig %+v kept", s.SessionAffinityConfig)
				}
			}},
		{name: "NodePort gets the Cluster external traffic policy",
			in: func(s *corev1.ServiceSpec) { s.Type = corev1.ServiceTypeNodePort },
			check: func(t *testing.T, s *corev1.ServiceSpec) {
				if s.ExternalTrafficPolicy != corev1.ServiceExternalTrafficPolicyCluster || s.AllocateLoadBalancerNodePorts != nil {
					t.Errorf("externalTrafficPolicy %q allocateLoadBalancerNodePorts %v", s.ExternalTrafficPolicy, s.AllocateLoadBalancerNodePorts)
				}
			}},
		{name: "a ClusterIP Service with external IPs is externally accessible",
			in: func(s *corev1.ServiceSpec) { s.ExternalIPs = []string{"192.0.2.10"} },
			check: func(t *testing.T, s *corev1.ServiceSpec) {
				if s.ExternalTrafficPolicy != corev1.ServiceExternalTrafficPolicyCluster {
					t.Errorf("externalTrafficPolicy %q, want Cluster", s.ExternalTrafficPolicy)
				}
			}},
		{name: "LoadBalancer allocates node ports unless told",
			in: func(s *corev1.ServiceSpec) { s.Type = corev1.ServiceTypeLoadBalancer },
			check: func(t *testing.T, s *corev1.ServiceSpec) {
				if s.AllocateLoadBalancerNodePorts == nil || !*s.AllocateLoadBalancerNodePorts || s.ExternalTrafficPolicy != corev1.ServiceExternalTrafficPolicyCluster {
					t.Errorf("allocateLoadBalancerNodePorts %v externalTrafficPolicy %q", s.AllocateLoadBalancerNodePorts, s.ExternalTrafficPolicy)
				}
			}},
		{name: "values given are kept",
			in: func(s *corev1.ServiceSpec) {
				no, local := false, corev1.ServiceInternalTrafficPolicyLocal
				s.Type = corev1.ServiceTypeLoadBalancer
				s.AllocateLoadBalancerNodePorts = &no
				s.ExternalTrafficPolicy = corev1.ServiceExternalTrafficPolicyLocal
				s.InternalTrafficPolicy = &local
			},
			check: func(t *testing.T, s *corev1.ServiceSpec) {
				if *s.AllocateLoadBalancerNodePorts || s.ExternalTrafficPolicy != corev1.ServiceExternalTrafficPolicyLocal || *s.InternalTrafficPolicy != corev1.ServiceInternalTrafficPolicyLocal {
					t.Errorf("defaults overwrote given values: %+v", s)
				}
			}},
		{name: "ExternalName gets no internal traffic policy",
			in: func(s *corev1.ServiceSpec) { s.Type = corev1.ServiceTypeExternalName },
			check: func(t *testing.T, s *corev1.ServiceSpec) {
				if s.InternalTrafficPolicy != nil {
					t.Errorf("internalTrafficPolicy %v on an ExternalName Service", *s.InternalTrafficPolicy)
				}
			}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			svc := &core.Service{}
			if tt.in != nil {
				tt.in(&svc.Spec.ServiceSpec)
			}
			SetDefaults(svc)
			tt.check(t, &svc.Spec.ServiceSpec)
		})
	}
}

func TestSetDefaultsIngressIPMode(t *testing.T) {
	svc := &core.Service{}
	svc.Spec.Type = corev1.ServiceTypeLoadBalancer
	svc.Status.LoadBalancer.Ingress = []corev1.LoadBalancerIngress{{IP: "192.0.2.1"}, {Hostname: "lb.example.com"}}
	SetDefaults(svc)
	if m := svc.Status.LoadBalancer.Ingress[0].IPMode; m == nil || *m != corev1.LoadBalancerIPModeVIP {
		t.Errorf("ingress IP mode %v, want VIP", m)
	}
	if svc.Status.LoadBalancer.Ingress[1].IPMode != nil {
		t.Error("a hostname ingress got an IP mode")
	}
}

func TestDefaultOnRead(t *testing.T) {
	tests := []struct {
		name     string
		shape    string
		svc      func(*core.Service)
		policy   corev1.IPFamilyPolicy
		families string
	}{
		{name: "a Service stored with clusterIP only", shape: "IPv4,IPv6",
			svc: func(s *core.Service) { s.Spec.ClusterIP = "10.96.0.10" }, policy: single, families: "IPv4"},
		{name: "a Service stored with two cluster IPs and no families", shape: "IPv6,IPv4",
			svc: func(s *core.Service) {
				s.Spec.ClusterIP, s.Spec.ClusterIPs = "10.96.0.10", []string{"10.96.0.10", "fd00:96::10"}
			}, policy: require, families: v4v6},
		{name: "a headless Service without selector", shape: "IPv4",
			svc: func(s *core.Service) { s.Spec.ClusterIP, s.Spec.Selector = "None", nil }, policy: require, families: v4v6},
		{name: "a headless Service with a selector", shape: "IPv6,IPv4",
			svc: func(s *core.Service) { s.Spec.ClusterIP = "None" }, policy: single, families: "IPv6"},
		{name: "a complete Service is left alone", shape: "IPv4,IPv6",
			svc: func(s *core.Service) {
				p := prefer
				s.Spec.ClusterIP, s.Spec.ClusterIPs = "fd00:96::10", []string{"fd00:96::10"}
				s.Spec.IPFamilies, s.Spec.IPFamilyPolicy = []corev1.IPFamily{v6}, &p
			}, policy: prefer, families: "IPv6"},
		{name: "an ExternalName Service", shape: "IPv4",
			svc: func(s *core.Service) {
				p := corev1.ServiceInternalTrafficPolicyCluster
				s.Spec.Type, s.Spec.InternalTrafficPolicy = corev1.ServiceTypeExternalName, &p
			}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			svc := &core.Service{}
			svc.Spec.Type = corev1.ServiceTypeClusterIP
			svc.Spec.Selector = map[string]string{"app": "web"}
			tt.svc(svc)
			DefaultOnRead(svc, shapeByName(t, tt.shape))
			if got := policyString(svc); got != string(tt.policy) {
				t.Errorf("ipFamilyPolicy = %q, want %q", got, tt.policy)
			}
			if got := famString(svc.Spec.IPFamilies); got != tt.families {
				t.Errorf("ipFamilies = %q, want %q", got, tt.families)
			}
			checkLegacyIPFamily(t, svc)
			if svc.Spec.Type == corev1.ServiceTypeExternalName && svc.Spec.InternalTrafficPolicy != nil {
				t.Error("an ExternalName Service read back with an internalTrafficPolicy")
			}
			if svc.Spec.ClusterIP != "" && (len(svc.Spec.ClusterIPs) == 0 || svc.Spec.ClusterIPs[0] != svc.Spec.ClusterIP) {
				t.Errorf("clusterIP %q clusterIPs %q", svc.Spec.ClusterIP, svc.Spec.ClusterIPs)
			}
		})
	}
}
