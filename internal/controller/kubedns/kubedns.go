// Package kubedns keeps the cluster's DNS Service, kube-system/kube-dns,
// and its EndpointSlices. Duet serves cluster DNS from every node's agent
// (port 53 of the node's InternalIPs, see internal/agent/clusterdns), so
// kube-dns has no selector: its slices, one per family, list the Ready
// nodes whose agents say they serve DNS (the duet.dev/cluster-dns
// annotation), and the service proxy on every node spreads queries to the
// kube-dns cluster IPs over them.
//
// The Service is created at bootstrap with the 10th address of each
// service range (10.96.0.10, fd00:10:96::a), RequireDualStack on a
// dual-stack cluster, and put back if deleted. A user who gives it a
// selector (to run DNS pods of their own) takes it over: the controller
// removes its slices and leaves the Service alone.
package kubedns

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apiequality "k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
	"k8s.io/klog/v2"
	"k8s.io/utils/ptr"

	"github.com/duet-net/duet/internal/agent/clusterdns"
	"github.com/duet-net/duet/internal/netaddr"
)

// The Service's name, as every Kubernetes cluster has it.
const (
	Namespace = metav1.NamespaceSystem
	Name      = "kube-dns"
	// ControllerName names the controller in logs and as the field
	// manager of its writes.
	ControllerName = "kube-dns-controller"
	// ManagedBy is the endpointslice.kubernetes.io/managed-by value of
	// the controller's slices; the EndpointSlice controller leaves slices
	// of other managers alone.
	ManagedBy = "kube-dns-controller.duet.dev"
	// ipIndex is which address of a service range kube-dns gets: the
	// 10th, as kubeadm and most installers give it.
	ipIndex = 10
)

// ServiceIP is kube-dns's cluster IP in a service range: its 10th address,
// or false when the range has no usable 10th address.
func ServiceIP(r netip.Prefix) (netip.Addr, bool) {
	r = r.Masked()
	a := r.Addr()
	for range ipIndex {
		a = a.Next()
	}
	if !a.IsValid() || !r.Contains(a) {
		return netip.Addr{}, false
	}
	// The IPv4 broadcast address is never handed out.
	if a.Is4() {
		if last := lastAddr(r); a == last {
			return netip.Addr{}, false
		}
	}
	return a, true
}

func lastAddr(p netip.Prefix) netip.Addr {
	b := p.Addr().AsSlice()
	bits := p.Bits()
	for i := range b {
		keep := min(max(bits-8*i, 0), 8)
		b[i] |= byte(0xff >> keep)
	}
	a, _ := netip.AddrFromSlice(b)
	return a
}

// Service is kube-dns as Duet creates it for the cluster's service ranges
// (primary first): a cluster IP of each family, ports dns (53/UDP) and
// dns-tcp (53/TCP), no selector.
func Service(ranges []netip.Prefix) *corev1.Service {
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{
			Namespace: Namespace, Name: Name,
			Labels: map[string]string{
				"k8s-app": "kube-dns", "kubernetes.io/name": "CoreDNS", "kubernetes.io/cluster-service": "true",
			},
		},
		Spec: corev1.ServiceSpec{
			Type: corev1.ServiceTypeClusterIP,
			Ports: []corev1.ServicePort{
				{Name: "dns", Protocol: corev1.ProtocolUDP, Port: clusterdns.Port, TargetPort: intstr.FromInt32(clusterdns.Port)},
				{Name: "dns-tcp", Protocol: corev1.ProtocolTCP, Port: clusterdns.Port, TargetPort: intstr.FromInt32(clusterdns.Port)},
			},
		},
	}
	policy := corev1.IPFamilyPolicySingleStack
	if len(ranges) > 1 {
		policy = corev1.IPFamilyPolicyRequireDualStack
	}
	svc.Spec.IPFamilyPolicy = &policy
	for _, r := range ranges {
		svc.Spec.IPFamilies = append(svc.Spec.IPFamilies, corev1.IPFamily(netaddr.FamilyOf(r.Addr())))
		if ip, ok := ServiceIP(r); ok {
			svc.Spec.ClusterIPs = append(svc.Spec.ClusterIPs, ip.String())
		}
	}
	if len(svc.Spec.ClusterIPs) != len(ranges) {
		// A range too small for a 10th address: every IP dynamic, since
		// clusterIPs must name the families in order.
		svc.Spec.ClusterIPs = nil
	}
	if len(svc.Spec.ClusterIPs) > 0 {
		svc.Spec.ClusterIP = svc.Spec.ClusterIPs[0]
	}
	return svc
}

// Ensure creates kube-dns unless it exists, and gives an existing one the
// family a restarted server's ranges added (see addedFamilies). When its addresses are taken
// (a Service created before Duet served DNS holds one), it is created
// with addresses the allocator picks.
func Ensure(ctx context.Context, client kubernetes.Interface, ranges []netip.Prefix) error {
	svcs := client.CoreV1().Services(Namespace)
	if have, err := svcs.Get(ctx, Name, metav1.GetOptions{}); err == nil {
		// The server serves without it: DNS of the new family is missing
		// until the next start, not the cluster.
		if err := upgrade(ctx, client, have, ranges); err != nil {
			klog.FromContext(ctx).Error(err, "kube-dns keeps its families")
		}
		return nil
	} else if !apierrors.IsNotFound(err) {
		return err
	}
	want := Service(ranges)
	_, err := svcs.Create(ctx, want, metav1.CreateOptions{FieldManager: ControllerName})
	if apierrors.IsInvalid(err) && len(want.Spec.ClusterIPs) > 0 && strings.Contains(err.Error(), "allocated") {
		klog.FromContext(ctx).Info("kube-dns's usual cluster IPs are taken; creating it with others", "clusterIPs", want.Spec.ClusterIPs, "err", err)
		want.Spec.ClusterIP, want.Spec.ClusterIPs = "", nil
		_, err = svcs.Create(ctx, want, metav1.CreateOptions{FieldManager: ControllerName})
	}
	if err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("creating Service %s/%s: %w", Namespace, Name, err)
	}
	return nil
}

// sliceName is the controller's slice of a family.
func sliceName(f corev1.IPFamily) string { return Name + "-" + strings.ToLower(string(f)) }

// serves reports whether node's agent answers DNS and the node is Ready.
func serves(node *corev1.Node) bool {
	if node.DeletionTimestamp != nil || node.Annotations[clusterdns.NodeAnnotation] != "true" {
		return false
	}
	for _, c := range node.Status.Conditions {
		if c.Type == corev1.NodeReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// desiredSlices are the slices kube-dns must have: for each of its
// families, the InternalIP of that family of every node that serves DNS,
// at the Service's ports that lead to port 53.
func desiredSlices(svc *corev1.Service, nodes []*corev1.Node) []*discoveryv1.EndpointSlice {
	var ports []discoveryv1.EndpointPort
	for _, p := range svc.Spec.Ports {
		target := p.TargetPort.IntValue()
		if p.TargetPort.Type == intstr.String || (target == 0 && p.Port != clusterdns.Port) || (target != 0 && target != clusterdns.Port) {
			continue // the agents listen on 53 only
		}
		ports = append(ports, discoveryv1.EndpointPort{Name: ptr.To(p.Name), Protocol: ptr.To(p.Protocol), Port: ptr.To[int32](clusterdns.Port)})
	}
	nodes = slices.Clone(nodes)
	slices.SortFunc(nodes, func(a, b *corev1.Node) int { return strings.Compare(a.Name, b.Name) })
	var out []*discoveryv1.EndpointSlice
	for _, f := range svc.Spec.IPFamilies {
		s := &discoveryv1.EndpointSlice{
			ObjectMeta: metav1.ObjectMeta{
				Namespace: Namespace, Name: sliceName(f),
				Labels: map[string]string{discoveryv1.LabelServiceName: Name, discoveryv1.LabelManagedBy: ManagedBy},
				OwnerReferences: []metav1.OwnerReference{{
					APIVersion: "v1", Kind: "Service", Name: svc.Name, UID: svc.UID,
					Controller: ptr.To(true), BlockOwnerDeletion: ptr.To(true),
				}},
			},
			AddressType: discoveryv1.AddressType(f),
			Ports:       ports,
			Endpoints:   []discoveryv1.Endpoint{},
		}
		for _, n := range nodes {
			if !serves(n) {
				continue
			}
			for _, a := range n.Status.Addresses {
				ip, err := netip.ParseAddr(a.Address)
				if a.Type != corev1.NodeInternalIP || err != nil || string(netaddr.FamilyOf(ip)) != string(f) {
					continue
				}
				s.Endpoints = append(s.Endpoints, discoveryv1.Endpoint{
					Addresses:  []string{ip.String()},
					Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(true), Serving: ptr.To(true), Terminating: ptr.To(false)},
					NodeName:   ptr.To(n.Name),
				})
				break
			}
		}
		out = append(out, s)
	}
	return out
}

// sameSlice reports whether have already holds what want says.
func sameSlice(have, want *discoveryv1.EndpointSlice) bool {
	return have.AddressType == want.AddressType &&
		apiequality.Semantic.DeepEqual(have.Ports, want.Ports) && apiequality.Semantic.DeepEqual(have.Endpoints, want.Endpoints) &&
		have.Labels[discoveryv1.LabelServiceName] == Name && have.Labels[discoveryv1.LabelManagedBy] == ManagedBy &&
		len(have.OwnerReferences) == 1 && have.OwnerReferences[0].UID == want.OwnerReferences[0].UID
}
