package clusterdns

import (
	"net/netip"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/client-go/tools/cache"
)

// Source is what the records are made from: the cluster's Services,
// EndpointSlices and Pods, looked up by name and by address. Objects it
// returns are shared and must not be changed.
type Source interface {
	Service(ns, name string) *corev1.Service
	// ServicesByIP are the Services with ip among their cluster IPs.
	ServicesByIP(ip netip.Addr) []*corev1.Service
	// Slices are the EndpointSlices of a Service.
	Slices(ns, service string) []*discoveryv1.EndpointSlice
	// SlicesByAddr are the EndpointSlices with an endpoint at ip.
	SlicesByAddr(ip netip.Addr) []*discoveryv1.EndpointSlice
	// PodsByIP are the Pods with ip among their pod IPs.
	PodsByIP(ip netip.Addr) []*corev1.Pod
	// HasServices and HasPods report whether the namespace has any.
	HasServices(ns string) bool
	HasPods(ns string) bool
	// Synced reports whether the source holds what the API held when it
	// started; until then the resolver answers SERVFAIL rather than
	// NXDOMAIN for names it does not know yet.
	Synced() bool
}

// Index names on the informers' indexers.
const (
	indexClusterIP = "clusterIP"
	indexService   = "service"
	indexAddr      = "addr"
	indexPodIP     = "podIP"
)

// ServiceIndexers index Services by cluster IP. IndexSource also needs
// cache.NamespaceIndex, which informers have from the start.
func ServiceIndexers() cache.Indexers {
	return cache.Indexers{
		indexClusterIP: func(obj any) ([]string, error) {
			svc, ok := obj.(*corev1.Service)
			if !ok {
				return nil, nil
			}
			var out []string
			for _, ip := range clusterIPs(svc) {
				out = append(out, canonical(ip))
			}
			return out, nil
		},
	}
}

// SliceIndexers index EndpointSlices by their Service (namespace/name)
// and by endpoint address.
func SliceIndexers() cache.Indexers {
	return cache.Indexers{
		indexService: func(obj any) ([]string, error) {
			s, ok := obj.(*discoveryv1.EndpointSlice)
			if !ok || s.Labels[discoveryv1.LabelServiceName] == "" {
				return nil, nil
			}
			return []string{s.Namespace + "/" + s.Labels[discoveryv1.LabelServiceName]}, nil
		},
		indexAddr: func(obj any) ([]string, error) {
			s, ok := obj.(*discoveryv1.EndpointSlice)
			if !ok || s.AddressType == discoveryv1.AddressTypeFQDN {
				return nil, nil
			}
			var out []string
			for _, ep := range s.Endpoints {
				for _, a := range ep.Addresses {
					if ip, err := netip.ParseAddr(a); err == nil {
						out = append(out, canonical(ip))
					}
				}
			}
			return out, nil
		},
	}
}

// PodIndexers index Pods by pod IP (and, as for Services, IndexSource
// needs cache.NamespaceIndex).
func PodIndexers() cache.Indexers {
	return cache.Indexers{
		indexPodIP: func(obj any) ([]string, error) {
			p, ok := obj.(*corev1.Pod)
			if !ok {
				return nil, nil
			}
			var out []string
			for _, a := range p.Status.PodIPs {
				if ip, err := netip.ParseAddr(a.IP); err == nil {
					out = append(out, canonical(ip))
				}
			}
			return out, nil
		},
	}
}

// canonical is the index key of an address: one spelling per address.
func canonical(ip netip.Addr) string { return ip.Unmap().WithZone("").String() }

// IndexSource is a Source over informer indexers built with
// ServiceIndexers, SliceIndexers and PodIndexers.
type IndexSource struct {
	ServiceIndex, SliceIndex, PodIndex cache.Indexer
	// HasSynced reports the informers' initial sync (nil: synced).
	HasSynced func() bool
}

var _ Source = (*IndexSource)(nil)

func (s *IndexSource) Service(ns, name string) *corev1.Service {
	obj, ok, err := s.ServiceIndex.GetByKey(ns + "/" + name)
	if err != nil || !ok {
		return nil
	}
	svc, _ := obj.(*corev1.Service)
	return svc
}

func (s *IndexSource) ServicesByIP(ip netip.Addr) []*corev1.Service {
	return byIndex[*corev1.Service](s.ServiceIndex, indexClusterIP, canonical(ip))
}

func (s *IndexSource) Slices(ns, service string) []*discoveryv1.EndpointSlice {
	return byIndex[*discoveryv1.EndpointSlice](s.SliceIndex, indexService, ns+"/"+service)
}

func (s *IndexSource) SlicesByAddr(ip netip.Addr) []*discoveryv1.EndpointSlice {
	return byIndex[*discoveryv1.EndpointSlice](s.SliceIndex, indexAddr, canonical(ip))
}

func (s *IndexSource) PodsByIP(ip netip.Addr) []*corev1.Pod {
	return byIndex[*corev1.Pod](s.PodIndex, indexPodIP, canonical(ip))
}

func (s *IndexSource) HasServices(ns string) bool { return hasAny(s.ServiceIndex, ns) }
func (s *IndexSource) HasPods(ns string) bool     { return hasAny(s.PodIndex, ns) }

func (s *IndexSource) Synced() bool { return s.HasSynced == nil || s.HasSynced() }

func hasAny(idx cache.Indexer, ns string) bool {
	keys, err := idx.IndexKeys(cache.NamespaceIndex, ns)
	return err == nil && len(keys) > 0
}

func byIndex[T any](idx cache.Indexer, index, value string) []T {
	objs, err := idx.ByIndex(index, value)
	if err != nil || len(objs) == 0 {
		return nil
	}
	out := make([]T, 0, len(objs))
	for _, o := range objs {
		if t, ok := o.(T); ok {
			out = append(out, t)
		}
	}
	return out
}

// clusterIPs are a Service's cluster IPs (none for headless and
// ExternalName Services).
func clusterIPs(svc *corev1.Service) []netip.Addr {
	ips := svc.Spec.ClusterIPs
	if len(ips) == 0 && svc.Spec.ClusterIP != "" {
		ips = []string{svc.Spec.ClusterIP}
	}
	var out []netip.Addr
	for _, s := range ips {
		if ip, err := netip.ParseAddr(s); err == nil {
			out = append(out, ip.Unmap())
		}
	}
	return out
}

// Trim is the informers' transform: it keeps of each object what the
// records need, so that every node holding every Pod of the cluster costs
// little memory. Trimmed objects are never written back.
func Trim(obj any) (any, error) {
	switch o := obj.(type) {
	case *corev1.Pod:
		out := &corev1.Pod{
			Spec:   corev1.PodSpec{HostNetwork: o.Spec.HostNetwork},
			Status: corev1.PodStatus{Phase: o.Status.Phase, PodIPs: o.Status.PodIPs},
		}
		m := &out.ObjectMeta
		m.Name, m.Namespace, m.UID, m.ResourceVersion = o.Name, o.Namespace, o.UID, o.ResourceVersion
		return out, nil
	case *corev1.Service:
		o.ManagedFields, o.Annotations, o.Status = nil, nil, corev1.ServiceStatus{}
		o.Spec.Selector = nil
		return o, nil
	}
	if m, err := meta.Accessor(obj); err == nil {
		m.SetManagedFields(nil)
		m.SetAnnotations(nil)
	}
	return obj, nil
}
