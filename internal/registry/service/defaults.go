package service

import (
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/duet-net/duet/internal/apis/core"
)

// SetDefaults applies the defaults Kubernetes applies when it decodes a
// core/v1 Service, on create and on update alike. None of them depends on
// the cluster: the IP family fields are settled by PrepareForCreate and
// PrepareForUpdate.
func SetDefaults(svc *core.Service) {
	spec := &svc.Spec
	if spec.SessionAffinity == "" {
		spec.SessionAffinity = corev1.ServiceAffinityNone
	}
	if spec.SessionAffinity == corev1.ServiceAffinityNone {
		spec.SessionAffinityConfig = nil
	}
	if spec.SessionAffinity == corev1.ServiceAffinityClientIP {
		c := spec.SessionAffinityConfig
		if c == nil || c.ClientIP == nil || c.ClientIP.TimeoutSeconds == nil {
			timeout := corev1.DefaultClientIPServiceAffinitySeconds
			spec.SessionAffinityConfig = &corev1.SessionAffinityConfig{
				ClientIP: &corev1.ClientIPConfig{TimeoutSeconds: &timeout},
			}
		}
	}
	if spec.Type == "" {
		spec.Type = corev1.ServiceTypeClusterIP
	}
	for i := range spec.Ports {
		p := &spec.Ports[i]
		if p.Protocol == "" {
			p.Protocol = corev1.ProtocolTCP
		}
		if p.TargetPort == intstr.FromInt32(0) || p.TargetPort == intstr.FromString("") {
			p.TargetPort = intstr.FromInt32(p.Port)
		}
	}
	if externallyAccessible(svc) && spec.ExternalTrafficPolicy == "" {
		spec.ExternalTrafficPolicy = corev1.ServiceExternalTrafficPolicyCluster
	}
	if spec.InternalTrafficPolicy == nil {
		switch spec.Type {
		case corev1.ServiceTypeClusterIP, corev1.ServiceTypeNodePort, corev1.ServiceTypeLoadBalancer:
			p := corev1.ServiceInternalTrafficPolicyCluster
			spec.InternalTrafficPolicy = &p
		}
	}
	if spec.Type == corev1.ServiceTypeLoadBalancer {
		if spec.AllocateLoadBalancerNodePorts == nil {
			allocate := true
			spec.AllocateLoadBalancerNodePorts = &allocate
		}
		for i := range svc.Status.LoadBalancer.Ingress {
			if ing := &svc.Status.LoadBalancer.Ingress[i]; ing.IP != "" && ing.IPMode == nil {
				mode := corev1.LoadBalancerIPModeVIP
				ing.IPMode = &mode
			}
		}
	}
}

// DefaultOnRead completes a stored Service for a reader, as Kubernetes does
// for objects written before a field existed: clusterIPs from clusterIP,
// ipFamilies and ipFamilyPolicy from the cluster IPs, spec.ipFamily from
// ipFamilies[0]; ExternalName Services carry no family and no
// internalTrafficPolicy. Services Duet stored are already complete, so it
// changes nothing for them.
func DefaultOnRead(svc *core.Service, cfg Config) {
	normalizeClusterIPs(svc, nil)
	spec := &svc.Spec
	if !needsClusterIP(svc) {
		spec.InternalTrafficPolicy = nil
		spec.IPFamily = nil
		return
	}
	if len(spec.IPFamilies) == 0 {
		single, require := corev1.IPFamilyPolicySingleStack, corev1.IPFamilyPolicyRequireDualStack
		switch {
		case spec.ClusterIP == corev1.ClusterIPNone && len(spec.Selector) == 0:
			// The user's endpoints may be of either family.
			spec.IPFamilyPolicy = &require
			spec.IPFamilies = []corev1.IPFamily{cfg.primaryFamily(), otherFamily(cfg.primaryFamily())}
		case spec.ClusterIP == corev1.ClusterIPNone:
			spec.IPFamilyPolicy = &single
			spec.IPFamilies = []corev1.IPFamily{cfg.primaryFamily()}
		default:
			for _, ip := range spec.ClusterIPs {
				spec.IPFamilies = append(spec.IPFamilies, familyOfIP(ip))
			}
			switch len(spec.IPFamilies) {
			case 1:
				spec.IPFamilyPolicy = &single
			case 2:
				spec.IPFamilyPolicy = &require
			}
		}
	}
	if spec.IPFamily == nil && len(spec.IPFamilies) > 0 {
		f := spec.IPFamilies[0]
		spec.IPFamily = &f
	}
}
