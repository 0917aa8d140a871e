//lint:file-ignore SA1019 this controller exists to write core/v1 Endpoints, which Kubernetes deprecates but clients still read.
package endpoints

import (
	"cmp"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"

	v1 "k8s.io/api/core/v1"
	"k8s.io/endpointslice"
	endpointsliceutil "k8s.io/endpointslice/util"
	"k8s.io/klog/v2"
	"k8s.io/utils/ptr"
)

// desiredSubsets returns the subsets of a Service's Endpoints: one per
// distinct set of resolved ports (Pods whose named target ports resolve
// to different numbers land in different subsets), each Pod once, by its
// address of the Service's primary family. Everything is in a canonical
// order, so that an unchanged Service compares equal to what was written.
func desiredSubsets(logger klog.Logger, svc *v1.Service, pods []*v1.Pod) []v1.EndpointSubset {
	type group struct {
		ports           []v1.EndpointPort
		ready, notReady []v1.EndpointAddress
	}
	groups := map[string]*group{}
	for _, pod := range pods {
		// Terminating Pods are left out unless not-ready ones are
		// published, as Kubernetes does.
		if !endpointsliceutil.ShouldPodBeInEndpoints(pod, svc.Spec.PublishNotReadyAddresses) {
			continue
		}
		ip, ok := podAddress(svc, pod)
		if !ok {
			logger.V(4).Info("Pod has no address of the Service's primary family", "pod", klog.KObj(pod), "service", klog.KObj(svc))
			continue
		}
		addr := v1.EndpointAddress{
			IP:        ip.String(),
			TargetRef: &v1.ObjectReference{Kind: "Pod", Namespace: pod.Namespace, Name: pod.Name, UID: pod.UID},
		}
		if pod.Spec.NodeName != "" {
			addr.NodeName = ptr.To(pod.Spec.NodeName)
		}
		if endpointsliceutil.ShouldSetHostname(pod, svc) {
			addr.Hostname = pod.Spec.Hostname
		}

		var ports []v1.EndpointPort
		if len(svc.Spec.Ports) == 0 {
			if svc.Spec.ClusterIP != v1.ClusterIPNone {
				continue // only a headless Service may have no ports
			}
		} else {
			for i := range svc.Spec.Ports {
				sp := &svc.Spec.Ports[i]
				n, err := endpointslice.FindPort(pod, sp)
				if err != nil {
					continue // the Pod does not serve this port
				}
				ports = append(ports, v1.EndpointPort{Name: sp.Name, Port: int32(n), Protocol: sp.Protocol, AppProtocol: sp.AppProtocol})
			}
			if len(ports) == 0 {
				continue
			}
		}
		slices.SortFunc(ports, comparePorts)
		key := portsKey(ports)
		g, ok := groups[key]
		if !ok {
			g = &group{ports: ports}
			groups[key] = g
		}
		if svc.Spec.PublishNotReadyAddresses || endpointsliceutil.IsPodReady(pod) {
			g.ready = append(g.ready, addr)
		} else {
			g.notReady = append(g.notReady, addr)
		}
	}

	subsets := []v1.EndpointSubset{}
	for _, key := range slices.Sorted(maps.Keys(groups)) {
		g := groups[key]
		slices.SortFunc(g.ready, compareAddresses)
		slices.SortFunc(g.notReady, compareAddresses)
		subsets = append(subsets, v1.EndpointSubset{Addresses: g.ready, NotReadyAddresses: g.notReady, Ports: g.ports})
	}
	return subsets
}

// podAddress returns a Pod's address of the Service's primary family.
func podAddress(svc *v1.Service, pod *v1.Pod) (netip.Addr, bool) {
	want6 := primaryIsIPv6(svc, pod)
	ips := pod.Status.PodIPs
	if len(ips) == 0 && pod.Status.PodIP != "" {
		ips = []v1.PodIP{{IP: pod.Status.PodIP}}
	}
	for _, p := range ips {
		ip, err := netip.ParseAddr(p.IP)
		if err != nil || ip.Zone() != "" {
			continue
		}
		ip = ip.Unmap()
		if ip.Is6() == want6 {
			return ip, true
		}
	}
	return netip.Addr{}, false
}

func primaryIsIPv6(svc *v1.Service, pod *v1.Pod) bool {
	if len(svc.Spec.IPFamilies) > 0 {
		return svc.Spec.IPFamilies[0] == v1.IPv6Protocol
	}
	// A Service stored before ipFamilies existed: the family of its
	// cluster IP or, if headless, of the Pod's primary IP.
	ip := svc.Spec.ClusterIP
	if ip == "" || ip == v1.ClusterIPNone {
		ip = pod.Status.PodIP
	}
	a, err := netip.ParseAddr(ip)
	return err == nil && a.Unmap().Is6()
}

func comparePorts(a, b v1.EndpointPort) int {
	return cmp.Or(
		cmp.Compare(a.Name, b.Name),
		cmp.Compare(a.Port, b.Port),
		cmp.Compare(a.Protocol, b.Protocol),
		cmp.Compare(ptr.Deref(a.AppProtocol, ""), ptr.Deref(b.AppProtocol, "")),
	)
}

func portsKey(ports []v1.EndpointPort) string {
	var b strings.Builder
	for _, p := range ports {
		fmt.Fprintf(&b, "%s/%d/%s/%s;", p.Name, p.Port, p.Protocol, ptr.Deref(p.AppProtocol, ""))
	}
	return b.String()
}

func compareAddresses(a, b v1.EndpointAddress) int {
	ia, _ := netip.ParseAddr(a.IP)
	ib, _ := netip.ParseAddr(b.IP)
	return cmp.Or(ia.Compare(ib), cmp.Compare(targetName(a), targetName(b)))
}

func targetName(a v1.EndpointAddress) string {
	if a.TargetRef == nil {
		return ""
	}
	return a.TargetRef.Name + "/" + string(a.TargetRef.UID)
}

// endpointsLabels returns the labels of a Service's Endpoints: the
// Service's own, and the headless marker when it has no cluster IP.
func endpointsLabels(svc *v1.Service) map[string]string {
	out := maps.Clone(svc.Labels)
	if out == nil {
		out = map[string]string{}
	}
	if svc.Spec.ClusterIP == "" || svc.Spec.ClusterIP == v1.ClusterIPNone {
		out[v1.IsHeadlessService] = ""
	} else {
		delete(out, v1.IsHeadlessService)
	}
	return out
}

// truncate cuts subsets down to MaxCapacity addresses in all, and reports
// whether it had to. As in Kubernetes, ready addresses are kept before
// not-ready ones, and the addresses kept of the kind that is cut are
// spread over the subsets in proportion to their size. Subsets are sorted
// by address, so the same addresses are kept from one sync to the next.
func truncate(subsets []v1.EndpointSubset) ([]v1.EndpointSubset, bool) {
	var ready, notReady int
	for _, s := range subsets {
		ready += len(s.Addresses)
		notReady += len(s.NotReadyAddresses)
	}
	if ready+notReady <= MaxCapacity {
		return subsets, false
	}
	// Cut ready addresses if they alone are too many (and then drop every
	// not-ready one), else only not-ready ones.
	cutReady := ready > MaxCapacity
	budget, total := MaxCapacity-ready, notReady
	if cutReady {
		budget, total = MaxCapacity, ready
	}
	left := budget
	for i := range subsets {
		s := &subsets[i]
		list := &s.NotReadyAddresses
		if cutReady {
			list = &s.Addresses
			s.NotReadyAddresses = nil
		}
		// A share rounded up, so that the last subsets get what is left.
		share := min((len(*list)*budget+total-1)/total, left)
		*list = (*list)[:share]
		left -= share
	}
	// A subset left with no address at all is invalid in the API.
	return slices.DeleteFunc(subsets, func(s v1.EndpointSubset) bool {
		return len(s.Addresses) == 0 && len(s.NotReadyAddresses) == 0
	}), true
}
