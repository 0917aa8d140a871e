package proxy

import (
	"net/netip"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
)

// DefaultAffinityTimeout is Kubernetes' default for
// sessionAffinityConfig.clientIP.timeoutSeconds.
const DefaultAffinityTimeout = 10800 * time.Second

// ServicePorts returns what family fam programs for svc: one ServicePort
// per port of svc, if svc has a cluster IP of fam. ExternalName and
// headless Services get none. slices are svc's EndpointSlices (as
// labelled with kubernetes.io/service-name); those of another address
// type are ignored, as are endpoints whose conditions.ready is false.
// Endpoints are matched to a port by the port's name and protocol.
func ServicePorts(fam Family, svc *corev1.Service, slices []*discoveryv1.EndpointSlice) []ServicePort {
	if svc.Spec.Type == corev1.ServiceTypeExternalName {
		return nil
	}
	ips := svc.Spec.ClusterIPs
	if len(ips) == 0 && svc.Spec.ClusterIP != "" {
		ips = []string{svc.Spec.ClusterIP}
	}
	var clusterIP netip.Addr
	for _, s := range ips {
		if s == corev1.ClusterIPNone {
			return nil
		}
		if a, err := netip.ParseAddr(s); err == nil && fam.Has(a) {
			clusterIP = a
			break
		}
	}
	if !clusterIP.IsValid() {
		return nil
	}

	var external []netip.Addr
	for _, s := range svc.Spec.ExternalIPs {
		if a, err := netip.ParseAddr(s); err == nil && fam.Has(a) {
			external = append(external, a)
		}
	}
	if svc.Spec.Type == corev1.ServiceTypeLoadBalancer {
		for _, in := range svc.Status.LoadBalancer.Ingress {
			// A load balancer in Proxy mode sends traffic to node ports,
			// not to its IP.
			if in.IPMode != nil && *in.IPMode == corev1.LoadBalancerIPModeProxy {
				continue
			}
			if a, err := netip.ParseAddr(in.IP); err == nil && fam.Has(a) {
				external = append(external, a)
			}
		}
	}
	var affinity time.Duration
	if svc.Spec.SessionAffinity == corev1.ServiceAffinityClientIP {
		affinity = DefaultAffinityTimeout
		if c := svc.Spec.SessionAffinityConfig; c != nil && c.ClientIP != nil && c.ClientIP.TimeoutSeconds != nil && *c.ClientIP.TimeoutSeconds > 0 {
			affinity = time.Duration(*c.ClientIP.TimeoutSeconds) * time.Second
		}
	}
	addrType := discoveryv1.AddressTypeIPv4
	if fam == IPv6 {
		addrType = discoveryv1.AddressTypeIPv6
	}

	var out []ServicePort
	for _, p := range svc.Spec.Ports {
		proto, ok := protocolOf(p.Protocol)
		if !ok || p.Port <= 0 || p.Port > 65535 {
			continue
		}
		sp := ServicePort{
			Name:        ServicePortName{Namespace: svc.Namespace, Name: svc.Name, Port: p.Name, Protocol: proto},
			ClusterIP:   clusterIP,
			Port:        uint16(p.Port),
			ExternalIPs: append([]netip.Addr(nil), external...),
			Affinity:    affinity,
		}
		if (svc.Spec.Type == corev1.ServiceTypeNodePort || svc.Spec.Type == corev1.ServiceTypeLoadBalancer) && p.NodePort > 0 && p.NodePort <= 65535 {
			sp.NodePort = uint16(p.NodePort)
		}
		for _, sl := range slices {
			if sl.AddressType != addrType || sl.Namespace != svc.Namespace || sl.Labels[discoveryv1.LabelServiceName] != svc.Name {
				continue
			}
			for _, ep := range sl.Ports {
				name, epProto := "", corev1.ProtocolTCP
				if ep.Name != nil {
					name = *ep.Name
				}
				if ep.Protocol != nil {
					epProto = *ep.Protocol
				}
				if pr, _ := protocolOf(epProto); name != p.Name || pr != proto || ep.Port == nil || *ep.Port <= 0 || *ep.Port > 65535 {
					continue
				}
				for _, e := range sl.Endpoints {
					if e.Conditions.Ready != nil && !*e.Conditions.Ready || len(e.Addresses) == 0 {
						continue
					}
					// The addresses of an endpoint are one backend; kube-proxy
					// uses the first.
					if a, err := netip.ParseAddr(e.Addresses[0]); err == nil && fam.Has(a) {
						sp.Endpoints = append(sp.Endpoints, Endpoint{Addr: a, Port: uint16(*ep.Port)})
					}
				}
			}
		}
		sp.Normalize()
		out = append(out, sp)
	}
	return out
}

func protocolOf(p corev1.Protocol) (Protocol, bool) {
	switch p {
	case corev1.ProtocolTCP, "":
		return TCP, true
	case corev1.ProtocolUDP:
		return UDP, true
	case corev1.ProtocolSCTP:
		return SCTP, true
	}
	return 0, false
}
