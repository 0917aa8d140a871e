package service

import (
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/duet-net/duet/internal/apis/core"
)

func ports(p ...corev1.ServicePort) func(*core.Service) {
	return func(s *core.Service) { s.Spec.Ports = p }
}

// TestValidateService covers Kubernetes' ValidateService rules that do not
// depend on the cluster, on an IPv4 cluster.
func TestValidateService(t *testing.T) {
	local := corev1.ServiceInternalTrafficPolicyLocal
	tests := []struct {
		name string
		mods []func(*core.Service) // before SetDefaults, as the client sent it
		post func(*core.Service)   // after SetDefaults
		errs []string
	}{
		{name: "a ClusterIP Service"},
		{name: "a headless Service needs no port", mods: []func(*core.Service){headless, ports()}},
		{name: "ExternalName with a fully qualified name", mods: []func(*core.Service){externalName, func(s *core.Service) { s.Spec.ExternalName = "db.example.com." }}},
		{name: "the same port over TCP and UDP",
			mods: []func(*core.Service){ports(corev1.ServicePort{Name: "dns", Port: 53}, corev1.ServicePort{Name: "dns-udp", Port: 53, Protocol: corev1.ProtocolUDP})}},

		// Metadata.
		{name: "no name", mods: []func(*core.Service){named("ns", "")},
			errs: []string{"metadata.name: Required value: name or generateName is required"}},
		{name: "a name that starts with a digit (an RFC 1123 label)", mods: []func(*core.Service){named("ns", "1web")}},
		{name: "a name that is not an RFC 1123 label", mods: []func(*core.Service){named("ns", "web_1")},
			errs: []string{`metadata.name: Invalid value: "web_1": a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')`}},
		{name: "a name that ends with a dash", mods: []func(*core.Service){named("ns", "web-")},
			errs: []string{`metadata.name: Invalid value: "web-": a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')`}},
		{name: "no namespace", mods: []func(*core.Service){named("", "web")},
			errs: []string{"metadata.namespace: Required value"}},
		{name: "topology annotations that disagree",
			mods: []func(*core.Service){func(s *core.Service) {
				s.Annotations = map[string]string{corev1.DeprecatedAnnotationTopologyAwareHints: "Auto", corev1.AnnotationTopologyMode: "Disabled"}
			}},
			errs: []string{`metadata.annotations[service.kubernetes.io/topology-mode]: Invalid value: "Disabled": must match annotations[service.kubernetes.io/topology-aware-hints] when both are specified`}},

		// Ports.
		{name: "no port", mods: []func(*core.Service){ports()}, errs: []string{"spec.ports: Required value"}},
		{name: "two ports without names",
			mods: []func(*core.Service){ports(corev1.ServicePort{Port: 80}, corev1.ServicePort{Port: 443})},
			errs: []string{"spec.ports[0].name: Required value", "spec.ports[1].name: Required value"}},
		{name: "two ports with one name",
			mods: []func(*core.Service){ports(corev1.ServicePort{Name: "web", Port: 80}, corev1.ServicePort{Name: "web", Port: 443})},
			errs: []string{`spec.ports[1].name: Duplicate value: "web"`}},
		{name: "a port name that is not a DNS-1123 label",
			mods: []func(*core.Service){ports(corev1.ServicePort{Name: "Web", Port: 80})},
			errs: []string{`spec.ports[0].name: Invalid value: "Web": a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')`}},
		{name: "port 0", mods: []func(*core.Service){ports(corev1.ServicePort{})},
			errs: []string{
				"spec.ports[0].port: Invalid value: 0: must be between 1 and 65535, inclusive",
				"spec.ports[0].targetPort: Invalid value: 0: must be between 1 and 65535, inclusive",
			}},
		{name: "an unknown protocol", mods: []func(*core.Service){ports(corev1.ServicePort{Port: 80, Protocol: "ICMP"})},
			errs: []string{`spec.ports[0].protocol: Unsupported value: "ICMP": supported values: "SCTP", "TCP", "UDP"`}},
		{name: "a targetPort name that is not a port name",
			mods: []func(*core.Service){ports(corev1.ServicePort{Port: 80, TargetPort: intstr.FromString("http_web")})},
			errs: []string{`spec.ports[0].targetPort: Invalid value: "http_web": must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)`}},
		{name: "an appProtocol that is not a qualified name",
			mods: []func(*core.Service){func(s *core.Service) { p := "-h2c"; s.Spec.Ports[0].AppProtocol = &p }},
			errs: []string{`spec.ports[0].appProtocol: Invalid value: "-h2c": name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')`}},
		{name: "one port and protocol twice",
			mods: []func(*core.Service){ports(corev1.ServicePort{Name: "a", Port: 80}, corev1.ServicePort{Name: "b", Port: 80, TargetPort: intstr.FromInt32(8080)})},
			errs: []string{`spec.ports[1]: Duplicate value: {"protocol":"TCP","port":80,"targetPort":0}`}},
		{name: "a nodePort on a ClusterIP Service",
			mods: []func(*core.Service){ports(corev1.ServicePort{Port: 80, NodePort: 30080})},
			errs: []string{"spec.ports[0].nodePort: Forbidden: may not be used when `type` is 'ClusterIP'"}},
		{name: "one nodePort twice",
			mods: []func(*core.Service){typ(corev1.ServiceTypeNodePort), ports(corev1.ServicePort{Name: "a", Port: 80, NodePort: 30080}, corev1.ServicePort{Name: "b", Port: 81, NodePort: 30080})},
			errs: []string{"spec.ports[1].nodePort: Duplicate value: 30080"}},

		// Type and type-specific fields.
		{name: "an unknown type", mods: []func(*core.Service){typ("Internal")},
			errs: []string{`spec.type: Unsupported value: "Internal": supported values: "ClusterIP", "ExternalName", "LoadBalancer", "NodePort"`}},
		{name: "a headless NodePort Service", mods: []func(*core.Service){typ(corev1.ServiceTypeNodePort), headless},
			errs: []string{`spec.clusterIPs[0]: Invalid value: "None": may not be set to 'None' for NodePort services`}},
		{name: "a headless LoadBalancer Service", mods: []func(*core.Service){typ(corev1.ServiceTypeLoadBalancer), headless},
			errs: []string{`spec.clusterIPs[0]: Invalid value: "None": may not be set to 'None' for LoadBalancer services`}},
		{name: "ExternalName without a name", mods: []func(*core.Service){externalName, func(s *core.Service) { s.Spec.ExternalName = "" }},
			errs: []string{"spec.externalName: Required value"}},
		{name: "ExternalName that is not a DNS name", mods: []func(*core.Service){externalName, func(s *core.Service) { s.Spec.ExternalName = "db_1.example.com" }},
			errs: []string{`spec.externalName: Invalid value: "db_1.example.com": a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')`}},
		{name: "loadBalancerSourceRanges on a ClusterIP Service",
			mods: []func(*core.Service){func(s *core.Service) { s.Spec.LoadBalancerSourceRanges = []string{"10.0.0.0/8"} }},
			errs: []string{"spec.LoadBalancerSourceRanges: Forbidden: may only be used when `type` is 'LoadBalancer'"}},
		{name: "a source range that is not a CIDR",
			mods: []func(*core.Service){typ(corev1.ServiceTypeLoadBalancer), func(s *core.Service) { s.Spec.LoadBalancerSourceRanges = []string{" 10.0.0.0/8", "10.0.0.1"} }},
			errs: []string{`spec.LoadBalancerSourceRanges[1]: Invalid value: "10.0.0.1": must be a valid CIDR value, (e.g. 10.9.8.0/24 or 2001:db8::/64)`}},
		{name: "the source-ranges annotation on a ClusterIP Service",
			mods: []func(*core.Service){func(s *core.Service) {
				s.Annotations = map[string]string{corev1.AnnotationLoadBalancerSourceRangesKey: "10.0.0.0/8"}
			}},
			errs: []string{"metadata.annotations[service.beta.kubernetes.io/load-balancer-source-ranges]: Forbidden: may only be used when `type` is 'LoadBalancer'"}},
		{name: "allocateLoadBalancerNodePorts on a ClusterIP Service",
			post: func(s *core.Service) { b := true; s.Spec.AllocateLoadBalancerNodePorts = &b },
			errs: []string{"spec.allocateLoadBalancerNodePorts: Forbidden: may only be used when `type` is 'LoadBalancer'"}},
		{name: "loadBalancerClass on a NodePort Service",
			mods: []func(*core.Service){typ(corev1.ServiceTypeNodePort), func(s *core.Service) { c := "example.com/lb"; s.Spec.LoadBalancerClass = &c }},
			errs: []string{"spec.loadBalancerClass: Forbidden: may only be used when `type` is 'LoadBalancer'"}},
		{name: "a LoadBalancer Service with a class",
			mods: []func(*core.Service){typ(corev1.ServiceTypeLoadBalancer), func(s *core.Service) { c := "example.com/lb"; s.Spec.LoadBalancerClass = &c }}},

		// Session affinity.
		{name: "an unknown session affinity", mods: []func(*core.Service){func(s *core.Service) { s.Spec.SessionAffinity = "Cookie" }},
			errs: []string{`spec.sessionAffinity: Unsupported value: "Cookie": supported values: "ClientIP", "None"`}},
		{name: "a ClientIP timeout of 0",
			mods: []func(*core.Service){func(s *core.Service) {
				s.Spec.SessionAffinity = corev1.ServiceAffinityClientIP
				s.Spec.SessionAffinityConfig = &corev1.SessionAffinityConfig{ClientIP: &corev1.ClientIPConfig{TimeoutSeconds: new(int32)}}
			}},
			errs: []string{"spec.sessionAffinityConfig.clientIP.timeoutSeconds: Invalid value: 0: must be greater than 0 and less than 86400"}},
		{name: "a ClientIP timeout of a day and a second",
			mods: []func(*core.Service){func(s *core.Service) {
				d := int32(86401)
				s.Spec.SessionAffinity = corev1.ServiceAffinityClientIP
				s.Spec.SessionAffinityConfig = &corev1.SessionAffinityConfig{ClientIP: &corev1.ClientIPConfig{TimeoutSeconds: &d}}
			}},
			errs: []string{"spec.sessionAffinityConfig.clientIP.timeoutSeconds: Invalid value: 86401: must be greater than 0 and less than 86400"}},
		{name: "a ClientIP config without session affinity",
			post: func(s *core.Service) {
				s.Spec.SessionAffinityConfig = &corev1.SessionAffinityConfig{ClientIP: &corev1.ClientIPConfig{}}
			},
			errs: []string{"spec.sessionAffinityConfig: Forbidden: must not be set when session affinity is None"}},

		// Selector and addresses.
		{name: "a selector that is not a label set",
			mods: []func(*core.Service){func(s *core.Service) { s.Spec.Selector = map[string]string{"app": "web!"} }},
			errs: []string{`spec.selector: Invalid value: "web!": a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')`}},
		{name: "a loopback external IP",
			mods: []func(*core.Service){func(s *core.Service) { s.Spec.ExternalIPs = []string{"127.0.0.1"} }},
			errs: []string{`spec.externalIPs[0]: Invalid value: "127.0.0.1": may not be in the loopback range (127.0.0.0/8, ::1/128)`}},
		{name: "a link-local external IPv6 address",
			mods: []func(*core.Service){func(s *core.Service) { s.Spec.ExternalIPs = []string{"fe80::1"} }},
			errs: []string{`spec.externalIPs[0]: Invalid value: "fe80::1": may not be in the link-local range (169.254.0.0/16, fe80::/10)`}},
		{name: "an external IP that is not an address",
			mods: []func(*core.Service){func(s *core.Service) { s.Spec.ExternalIPs = []string{"example.com"} }},
			errs: []string{`spec.externalIPs[0]: Invalid value: "example.com": must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)`}},

		// Traffic policies.
		{name: "externalTrafficPolicy on an internal Service",
			post: func(s *core.Service) { s.Spec.ExternalTrafficPolicy = corev1.ServiceExternalTrafficPolicyLocal },
			errs: []string{`spec.externalTrafficPolicy: Invalid value: "Local": may only be set for externally-accessible services`}},
		{name: "an unknown externalTrafficPolicy",
			mods: []func(*core.Service){typ(corev1.ServiceTypeNodePort), func(s *core.Service) { s.Spec.ExternalTrafficPolicy = "Nearest" }},
			errs: []string{`spec.externalTrafficPolicy: Unsupported value: "Nearest": supported values: "Cluster", "Local"`}},
		{name: "a healthCheckNodePort without the Local policy",
			mods: []func(*core.Service){typ(corev1.ServiceTypeLoadBalancer), func(s *core.Service) { s.Spec.HealthCheckNodePort = 30000 }},
			errs: []string{"spec.healthCheckNodePort: Invalid value: 30000: may only be set when `type` is 'LoadBalancer' and `externalTrafficPolicy` is 'Local'"}},
		{name: "a LoadBalancer Service with the Local policy",
			mods: []func(*core.Service){typ(corev1.ServiceTypeLoadBalancer), func(s *core.Service) {
				s.Spec.ExternalTrafficPolicy = corev1.ServiceExternalTrafficPolicyLocal
				s.Spec.InternalTrafficPolicy = &local
			}}},
		{name: "an unknown internalTrafficPolicy",
			mods: []func(*core.Service){func(s *core.Service) {
				p := corev1.ServiceInternalTrafficPolicy("Node")
				s.Spec.InternalTrafficPolicy = &p
			}},
			errs: []string{`spec.internalTrafficPolicy: Unsupported value: "Node": supported values: "Cluster", "Local"`}},
		{name: "no internalTrafficPolicy", post: func(s *core.Service) { s.Spec.InternalTrafficPolicy = nil },
			errs: []string{"spec.internalTrafficPolicy: Required value"}},
		{name: "an unknown trafficDistribution",
			mods: []func(*core.Service){func(s *core.Service) { d := "Anywhere"; s.Spec.TrafficDistribution = &d }},
			errs: []string{`spec.trafficDistribution: Unsupported value: "Anywhere": supported values: "PreferClose", "PreferSameNode", "PreferSameZone"`}},
	}
	cfg := shapeByName(t, "IPv4")
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			svc := newService(tt.mods...)
			if tt.post != nil {
				tt.post(svc)
			}
			PrepareForCreate(svc, cfg)
			checkErrs(t, ValidateCreate(svc, cfg), tt.errs)
		})
	}
}

func TestValidateUpdateImmutableFields(t *testing.T) {
	cfg := shapeByName(t, "IPv4")
	lb := func(class string) func(*core.Service) {
		return func(s *core.Service) {
			s.Spec.Type = corev1.ServiceTypeLoadBalancer
			s.Spec.LoadBalancerClass = &class
			s.Spec.ExternalTrafficPolicy = corev1.ServiceExternalTrafficPolicyLocal
			s.Spec.HealthCheckNodePort = 30000
		}
	}
	tests := []struct {
		name   string
		update func(*core.Service)
		errs   []string
	}{
		{name: "relabelling", update: relabel},
		{name: "the name", update: named("ns", "web2"),
			errs: []string{`metadata.name: Invalid value: "web2": field is immutable`}},
		{name: "the loadBalancerClass", update: func(s *core.Service) { c := "example.com/other"; s.Spec.LoadBalancerClass = &c },
			errs: []string{`spec.loadBalancerClass: Invalid value: "example.com/other": may not change once set`}},
		{name: "the healthCheckNodePort", update: func(s *core.Service) { s.Spec.HealthCheckNodePort = 30001 },
			errs: []string{"spec.healthCheckNodePort: Forbidden: field is immutable"}},
		{name: "leaving LoadBalancer drops the class and the health check port",
			update: func(s *core.Service) { s.Spec.Type = corev1.ServiceTypeNodePort }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			old := newService(lb("example.com/lb"))
			PrepareForCreate(old, cfg)
			old.ResourceVersion = "1"
			if errs := ValidateCreate(old, cfg); len(errs) != 0 {
				t.Fatal(errs)
			}
			svc := old.DeepCopy()
			tt.update(svc)
			SetDefaults(svc)
			PrepareForUpdate(svc, old, cfg)
			checkErrs(t, ValidateUpdate(svc, old, cfg), tt.errs)
		})
	}
}
