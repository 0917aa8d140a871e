package clusterdns

import (
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
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

// Index holds the Services, EndpointSlices and Pods the records are made
// from, with the lookups the resolver makes by name and by address. It
// is the informers' event handler: informers keep their own store, whose
// objects the Index shares (trimmed by Trim), and no indexers, whose
// per-value string sets would cost several times what the objects do.
// Its lists are copied on write, so that readers use them unlocked.
type Index struct {
	// HasSynced reports whether the handlers have had the informers'
	// initial lists (nil: synced). Once it has said so, Synced no longer
	// asks (informers take a lock to answer).
	HasSynced func() bool
	synced    atomic.Bool

	mu          sync.RWMutex
	services    map[objKey]*corev1.Service
	svcByIP     map[netip.Addr][]*corev1.Service
	slices      map[objKey]*discoveryv1.EndpointSlice
	slicesBySvc map[objKey][]*discoveryv1.EndpointSlice
	sliceByAddr map[netip.Addr][]*discoveryv1.EndpointSlice
	pods        map[objKey]*corev1.Pod
	podByIP     map[netip.Addr][]*corev1.Pod
	svcPerNS    map[string]int
	podsPerNS   map[string]int
}

// objKey is a namespaced name; its strings are the object's own.
type objKey struct{ ns, name string }

var (
	_ Source                     = (*Index)(nil)
	_ cache.ResourceEventHandler = (*Index)(nil)
)

// NewIndex returns an empty index.
func NewIndex() *Index {
	return &Index{
		services: map[objKey]*corev1.Service{}, svcByIP: map[netip.Addr][]*corev1.Service{},
		slices: map[objKey]*discoveryv1.EndpointSlice{}, slicesBySvc: map[objKey][]*discoveryv1.EndpointSlice{},
		sliceByAddr: map[netip.Addr][]*discoveryv1.EndpointSlice{},
		pods:        map[objKey]*corev1.Pod{}, podByIP: map[netip.Addr][]*corev1.Pod{},
		svcPerNS: map[string]int{}, podsPerNS: map[string]int{},
	}
}

// OnAdd implements cache.ResourceEventHandler.
func (x *Index) OnAdd(obj any, _ bool) { x.set(obj) }

// OnUpdate implements cache.ResourceEventHandler. The object the index
// holds under the new one's name is the one replaced.
func (x *Index) OnUpdate(_, obj any) { x.set(obj) }

// OnDelete implements cache.ResourceEventHandler.
func (x *Index) OnDelete(obj any) {
	if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = t.Obj
	}
	x.mu.Lock()
	defer x.mu.Unlock()
	switch o := obj.(type) {
	case *corev1.Service:
		x.dropService(objKey{o.Namespace, o.Name})
	case *discoveryv1.EndpointSlice:
		x.dropSlice(objKey{o.Namespace, o.Name})
	case *corev1.Pod:
		x.dropPod(objKey{o.Namespace, o.Name})
	}
	x.count()
}

func (x *Index) set(obj any) {
	x.mu.Lock()
	defer x.mu.Unlock()
	switch o := obj.(type) {
	case *corev1.Service:
		k := objKey{o.Namespace, o.Name}
		x.dropService(k)
		x.services[k] = o
		x.svcPerNS[o.Namespace]++
		for _, ip := range clusterIPs(o) {
			x.svcByIP[ip] = appendCopy(x.svcByIP[ip], o)
		}
	case *discoveryv1.EndpointSlice:
		k := objKey{o.Namespace, o.Name}
		x.dropSlice(k)
		x.slices[k] = o
		if svc := sliceService(o); svc != (objKey{}) {
			x.slicesBySvc[svc] = appendCopy(x.slicesBySvc[svc], o)
		}
		for _, ip := range sliceAddrs(o) {
			x.sliceByAddr[ip] = appendCopy(x.sliceByAddr[ip], o)
		}
	case *corev1.Pod:
		k := objKey{o.Namespace, o.Name}
		x.dropPod(k)
		x.pods[k] = o
		x.podsPerNS[o.Namespace]++
		for _, ip := range podIPs(o) {
			x.podByIP[ip] = appendCopy(x.podByIP[ip], o)
		}
	}
	x.count()
}

func (x *Index) dropService(k objKey) {
	old, ok := x.services[k]
	if !ok {
		return
	}
	delete(x.services, k)
	decrement(x.svcPerNS, k.ns)
	for _, ip := range clusterIPs(old) {
		removeFrom(x.svcByIP, ip, old)
	}
}

func (x *Index) dropSlice(k objKey) {
	old, ok := x.slices[k]
	if !ok {
		return
	}
	delete(x.slices, k)
	if svc := sliceService(old); svc != (objKey{}) {
		removeFrom(x.slicesBySvc, svc, old)
	}
	for _, ip := range sliceAddrs(old) {
		removeFrom(x.sliceByAddr, ip, old)
	}
}

func (x *Index) dropPod(k objKey) {
	old, ok := x.pods[k]
	if !ok {
		return
	}
	delete(x.pods, k)
	decrement(x.podsPerNS, k.ns)
	for _, ip := range podIPs(old) {
		removeFrom(x.podByIP, ip, old)
	}
}

// count sets the index size gauges.
func (x *Index) count() {
	IndexObjects.WithLabelValues("services").Set(float64(len(x.services)))
	IndexObjects.WithLabelValues("endpointslices").Set(float64(len(x.slices)))
	IndexObjects.WithLabelValues("pods").Set(float64(len(x.pods)))
}

// appendCopy is list with o added, in a new array: readers may hold list.
func appendCopy[T any](list []*T, o *T) []*T {
	return append(slices.Clip(list), o)
}

// removeFrom drops o from m[k], in a new array, and the key once empty.
func removeFrom[K comparable, T any](m map[K][]*T, k K, o *T) {
	list := m[k]
	i := slices.Index(list, o)
	switch {
	case i < 0:
	case len(list) == 1:
		delete(m, k)
	default:
		m[k] = slices.Delete(slices.Clone(list), i, i+1)
	}
}

func decrement(m map[string]int, k string) {
	if m[k] <= 1 {
		delete(m, k)
	} else {
		m[k]--
	}
}

// sliceService is the Service an EndpointSlice belongs to (zero for none).
func sliceService(s *discoveryv1.EndpointSlice) objKey {
	name := s.Labels[discoveryv1.LabelServiceName]
	if name == "" {
		return objKey{}
	}
	return objKey{s.Namespace, name}
}

// sliceAddrs are the distinct addresses of an EndpointSlice's endpoints.
func sliceAddrs(s *discoveryv1.EndpointSlice) []netip.Addr {
	if s.AddressType == discoveryv1.AddressTypeFQDN {
		return nil
	}
	var out []netip.Addr
	for _, ep := range s.Endpoints {
		for _, a := range ep.Addresses {
			if ip, err := netip.ParseAddr(a); err == nil {
				out = append(out, ip.Unmap().WithZone(""))
			}
		}
	}
	return dedupeAddrs(out)
}

// podIPs are a Pod's distinct pod IPs.
func podIPs(p *corev1.Pod) []netip.Addr {
	var out []netip.Addr
	for _, a := range p.Status.PodIPs {
		if ip, err := netip.ParseAddr(a.IP); err == nil {
			out = append(out, ip.Unmap().WithZone(""))
		}
	}
	return dedupeAddrs(out)
}

func (x *Index) Service(ns, name string) *corev1.Service {
	x.mu.RLock()
	defer x.mu.RUnlock()
	return x.services[objKey{ns, name}]
}

func (x *Index) ServicesByIP(ip netip.Addr) []*corev1.Service {
	x.mu.RLock()
	defer x.mu.RUnlock()
	return x.svcByIP[ip.Unmap().WithZone("")]
}

func (x *Index) Slices(ns, service string) []*discoveryv1.EndpointSlice {
	x.mu.RLock()
	defer x.mu.RUnlock()
	return x.slicesBySvc[objKey{ns, service}]
}

func (x *Index) SlicesByAddr(ip netip.Addr) []*discoveryv1.EndpointSlice {
	x.mu.RLock()
	defer x.mu.RUnlock()
	return x.sliceByAddr[ip.Unmap().WithZone("")]
}

func (x *Index) PodsByIP(ip netip.Addr) []*corev1.Pod {
	x.mu.RLock()
	defer x.mu.RUnlock()
	return x.podByIP[ip.Unmap().WithZone("")]
}

func (x *Index) HasServices(ns string) bool {
	x.mu.RLock()
	defer x.mu.RUnlock()
	return x.svcPerNS[ns] > 0
}

func (x *Index) HasPods(ns string) bool {
	x.mu.RLock()
	defer x.mu.RUnlock()
	return x.podsPerNS[ns] > 0
}

func (x *Index) Synced() bool {
	if x.synced.Load() {
		return true
	}
	if x.HasSynced == nil || x.HasSynced() {
		x.synced.Store(true)
		return true
	}
	return false
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
// records need, so that every node holding every Service, EndpointSlice
// and Pod of the cluster costs little memory. Trimmed objects are never
// written back.
func Trim(obj any) (any, error) {
	switch o := obj.(type) {
	case *corev1.Pod:
		out := &corev1.Pod{
			Spec:   corev1.PodSpec{HostNetwork: o.Spec.HostNetwork},
			Status: corev1.PodStatus{Phase: o.Status.Phase, PodIPs: o.Status.PodIPs},
		}
		trimMeta(&out.ObjectMeta, &o.ObjectMeta)
		return out, nil
	case *corev1.Service:
		out := &corev1.Service{Spec: corev1.ServiceSpec{
			Type: o.Spec.Type, ClusterIP: o.Spec.ClusterIP, ClusterIPs: o.Spec.ClusterIPs,
			ExternalName: o.Spec.ExternalName, PublishNotReadyAddresses: o.Spec.PublishNotReadyAddresses,
		}}
		// SRV records need a port's name, protocol and number.
		for _, p := range o.Spec.Ports {
			if p.Name != "" {
				out.Spec.Ports = append(out.Spec.Ports, corev1.ServicePort{Name: p.Name, Protocol: p.Protocol, Port: p.Port})
			}
		}
		trimMeta(&out.ObjectMeta, &o.ObjectMeta)
		return out, nil
	case *discoveryv1.EndpointSlice:
		out := &discoveryv1.EndpointSlice{AddressType: o.AddressType, Ports: o.Ports, Endpoints: make([]discoveryv1.Endpoint, len(o.Endpoints))}
		for i, ep := range o.Endpoints {
			out.Endpoints[i] = discoveryv1.Endpoint{Addresses: ep.Addresses, Hostname: ep.Hostname, Conditions: discoveryv1.EndpointConditions{Ready: sharedBool(ep.Conditions.Ready)}}
		}
		trimMeta(&out.ObjectMeta, &o.ObjectMeta)
		if name, ok := o.Labels[discoveryv1.LabelServiceName]; ok {
			out.Labels = map[string]string{discoveryv1.LabelServiceName: name}
		}
		return out, nil
	}
	if m, err := meta.Accessor(obj); err == nil {
		m.SetManagedFields(nil)
		m.SetAnnotations(nil)
	}
	return obj, nil
}

// trimMeta copies what informers need of an object's metadata.
func trimMeta(out, in *metav1.ObjectMeta) {
	out.Name, out.Namespace, out.UID, out.ResourceVersion = in.Name, in.Namespace, in.UID, in.ResourceVersion
}

// Every trimmed endpoint's readiness points at one of these, which are
// never written.
var (
	boolTrue, boolFalse = true, false
)

func sharedBool(b *bool) *bool {
	switch {
	case b == nil:
		return nil
	case *b:
		return &boolTrue
	default:
		return &boolFalse
	}
}
