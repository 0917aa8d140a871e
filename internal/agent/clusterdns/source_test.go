package clusterdns

import (
	"net/netip"
	"slices"
	"testing"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/tools/cache"
	"k8s.io/utils/ptr"
)

func names[T metav1.Object](objs []T) []string {
	var out []string
	for _, o := range objs {
		out = append(out, o.GetNamespace()+"/"+o.GetName())
	}
	slices.Sort(out)
	return out
}

// The index follows adds, updates and deletes of each kind, by name and
// by address, and never changes a list a reader holds.
func TestIndexFollowsEvents(t *testing.T) {
	x := NewIndex()
	a4, a6 := netip.MustParseAddr("10.96.0.20"), netip.MustParseAddr("fd00:10:96::20")
	b4 := netip.MustParseAddr("10.96.0.21")
	web := service("default", "web", "10.96.0.20", "fd00:10:96::20")
	other := service("other", "web", "10.96.0.20") // the same address in two Services (a repair in progress)
	x.OnAdd(web, true)
	x.OnAdd(other, true)
	if got := x.Service("default", "web"); got != web {
		t.Fatalf("Service = %v, want the one added", got)
	}
	held := x.ServicesByIP(a4)
	if got := names(held); !slices.Equal(got, []string{"default/web", "other/web"}) {
		t.Fatalf("ServicesByIP(%s) = %v", a4, got)
	}
	if got := names(x.ServicesByIP(netip.MustParseAddr("::ffff:10.96.0.20"))); len(got) != 2 {
		t.Errorf("an IPv4-mapped address finds %v, want both Services", got)
	}

	// An update moves the Service to its new addresses.
	moved := service("default", "web", "10.96.0.21")
	x.OnUpdate(web, moved)
	if got := names(x.ServicesByIP(a4)); !slices.Equal(got, []string{"other/web"}) {
		t.Errorf("after the update ServicesByIP(%s) = %v", a4, got)
	}
	if got := x.ServicesByIP(a6); got != nil {
		t.Errorf("after the update ServicesByIP(%s) = %v, want none", a6, names(got))
	}
	if got := x.ServicesByIP(b4); len(got) != 1 || got[0] != moved {
		t.Errorf("ServicesByIP(%s) = %v, want the updated Service", b4, names(got))
	}
	if got := names(held); !slices.Equal(got, []string{"default/web", "other/web"}) {
		t.Errorf("a list a reader held changed to %v", got)
	}

	// Deletes, one as a tombstone.
	x.OnDelete(cache.DeletedFinalStateUnknown{Key: "other/web", Obj: other})
	x.OnDelete(moved)
	if x.Service("default", "web") != nil || x.ServicesByIP(a4) != nil || x.ServicesByIP(b4) != nil || x.HasServices("default") || x.HasServices("other") {
		t.Errorf("deleted Services remain: %+v", x)
	}

	// EndpointSlices by Service and by address.
	s1 := slice("default", "hl", "hl-1", discoveryv1.AddressTypeIPv4, nil, ep{addr: "10.244.0.5"}, ep{addr: "10.244.0.6"})
	s2 := slice("default", "hl", "hl-2", discoveryv1.AddressTypeIPv6, nil, ep{addr: "fd00:10:244::5"})
	fqdn := slice("default", "hl", "hl-3", discoveryv1.AddressTypeFQDN, nil, ep{addr: "db.example"})
	x.OnAdd(s1, true)
	x.OnAdd(s2, true)
	x.OnAdd(fqdn, true)
	if got := names(x.Slices("default", "hl")); !slices.Equal(got, []string{"default/hl-1", "default/hl-2", "default/hl-3"}) {
		t.Errorf("Slices = %v", got)
	}
	if got := names(x.SlicesByAddr(netip.MustParseAddr("10.244.0.6"))); !slices.Equal(got, []string{"default/hl-1"}) {
		t.Errorf("SlicesByAddr = %v", got)
	}
	s1b := slice("default", "hl", "hl-1", discoveryv1.AddressTypeIPv4, nil, ep{addr: "10.244.0.5"})
	x.OnUpdate(s1, s1b)
	if got := x.SlicesByAddr(netip.MustParseAddr("10.244.0.6")); got != nil {
		t.Errorf("an address the slice no longer has finds %v", names(got))
	}
	if got := x.SlicesByAddr(netip.MustParseAddr("10.244.0.5")); len(got) != 1 || got[0] != s1b {
		t.Errorf("SlicesByAddr after the update = %v", names(got))
	}
	// A slice moving to another Service (its label changed).
	s2b := slice("default", "hl2", "hl-2", discoveryv1.AddressTypeIPv6, nil, ep{addr: "fd00:10:244::5"})
	x.OnUpdate(s2, s2b)
	if got := names(x.Slices("default", "hl")); !slices.Equal(got, []string{"default/hl-1", "default/hl-3"}) {
		t.Errorf("Slices(hl) after the move = %v", got)
	}
	if got := x.Slices("default", "hl2"); len(got) != 1 || got[0] != s2b {
		t.Errorf("Slices(hl2) after the move = %v", names(got))
	}
	for _, s := range []*discoveryv1.EndpointSlice{s1b, s2b, fqdn} {
		x.OnDelete(s)
	}
	if len(x.slices) != 0 || len(x.slicesBySvc) != 0 || len(x.sliceByAddr) != 0 {
		t.Errorf("deleted slices remain: %v %v %v", x.slices, x.slicesBySvc, x.sliceByAddr)
	}

	// Pods.
	p := pod("default", "client", "10.244.0.5", "fd00:10:244::5")
	x.OnAdd(p, true)
	if got := x.PodsByIP(netip.MustParseAddr("fd00:10:244::5")); len(got) != 1 || got[0] != p || !x.HasPods("default") {
		t.Errorf("PodsByIP = %v", names(got))
	}
	x.OnDelete(p)
	if x.PodsByIP(netip.MustParseAddr("10.244.0.5")) != nil || x.HasPods("default") {
		t.Error("a deleted pod remains")
	}
	if len(x.services)+len(x.svcByIP)+len(x.pods)+len(x.podByIP)+len(x.svcPerNS)+len(x.podsPerNS) != 0 {
		t.Errorf("the empty index holds %+v", x)
	}
}

// Deleting what the index does not hold (a delete after a missed add)
// changes nothing.
func TestIndexDeleteUnknown(t *testing.T) {
	x := NewIndex()
	web := service("default", "web", "10.96.0.20")
	x.OnAdd(web, true)
	x.OnDelete(service("default", "nope", "10.96.0.20"))
	x.OnDelete(pod("default", "nope", "10.244.0.5"))
	x.OnDelete(cache.DeletedFinalStateUnknown{Key: "default/x", Obj: nil})
	if got := x.ServicesByIP(netip.MustParseAddr("10.96.0.20")); len(got) != 1 || got[0] != web || !x.HasServices("default") {
		t.Errorf("ServicesByIP = %v", names(got))
	}
}

// Trim keeps what the records use and drops the rest.
func TestTrim(t *testing.T) {
	svc := withPorts(service("default", "web", "10.96.0.20", "fd00:10:96::20"),
		corev1.ServicePort{Name: "http", Protocol: corev1.ProtocolTCP, Port: 80, TargetPort: intstr.FromInt32(8080), NodePort: 30080},
		corev1.ServicePort{Port: 81})
	svc.Labels, svc.Annotations = map[string]string{"app": "web"}, map[string]string{"a": "b"}
	svc.Spec.Selector = map[string]string{"app": "web"}
	svc.Spec.Type, svc.Spec.PublishNotReadyAddresses = corev1.ServiceTypeNodePort, true
	svc.ResourceVersion, svc.UID = "7", "u"
	got, err := Trim(svc)
	if err != nil {
		t.Fatal(err)
	}
	ts := got.(*corev1.Service)
	if ts.Name != "web" || ts.Namespace != "default" || ts.ResourceVersion != "7" || ts.UID != "u" || ts.Labels != nil || ts.Annotations != nil ||
		ts.Spec.Selector != nil || ts.Spec.Type != corev1.ServiceTypeNodePort || !ts.Spec.PublishNotReadyAddresses ||
		!slices.Equal(ts.Spec.ClusterIPs, svc.Spec.ClusterIPs) || ts.Spec.ClusterIP != "10.96.0.20" ||
		!slices.Equal(ts.Spec.Ports, []corev1.ServicePort{{Name: "http", Protocol: corev1.ProtocolTCP, Port: 80}}) {
		t.Errorf("Trim(Service) = %+v", ts)
	}

	s := slice("default", "hl", "hl-1", discoveryv1.AddressTypeIPv6, []discoveryv1.EndpointPort{slicePort("http", corev1.ProtocolTCP, 80)},
		ep{addr: "fd00:10:244::5", hostname: "c"}, ep{addr: "fd00:10:244::6", notReady: true})
	s.Labels[discoveryv1.LabelManagedBy] = "controller"
	s.Endpoints[0].TargetRef = &corev1.ObjectReference{Kind: "Pod", Name: "c"}
	s.Endpoints[0].NodeName = ptr.To("node1")
	s.Endpoints = append(s.Endpoints, discoveryv1.Endpoint{Addresses: []string{"fd00:10:244::7"}})
	got, err = Trim(s)
	if err != nil {
		t.Fatal(err)
	}
	tsl := got.(*discoveryv1.EndpointSlice)
	if tsl.Name != "hl-1" || len(tsl.Labels) != 1 || tsl.Labels[discoveryv1.LabelServiceName] != "hl" || tsl.AddressType != discoveryv1.AddressTypeIPv6 || len(tsl.Ports) != 1 {
		t.Errorf("Trim(EndpointSlice) = %+v", tsl)
	}
	want := []discoveryv1.Endpoint{
		{Addresses: []string{"fd00:10:244::5"}, Hostname: ptr.To("c"), Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(true)}},
		{Addresses: []string{"fd00:10:244::6"}, Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(false)}},
		{Addresses: []string{"fd00:10:244::7"}},
	}
	if len(tsl.Endpoints) != len(want) {
		t.Fatalf("Trim(EndpointSlice) endpoints = %+v", tsl.Endpoints)
	}
	for i, e := range tsl.Endpoints {
		w := want[i]
		if !slices.Equal(e.Addresses, w.Addresses) || ptr.Deref(e.Hostname, "") != ptr.Deref(w.Hostname, "") ||
			(e.Conditions.Ready == nil) != (w.Conditions.Ready == nil) || ptr.Deref(e.Conditions.Ready, false) != ptr.Deref(w.Conditions.Ready, false) ||
			e.TargetRef != nil || e.NodeName != nil {
			t.Errorf("endpoint %d = %+v, want %+v", i, e, w)
		}
	}

	p := pod("default", "client", "10.244.0.5")
	p.Spec.Containers = []corev1.Container{{Name: "c", Image: "busybox"}}
	got, err = Trim(p)
	if err != nil {
		t.Fatal(err)
	}
	if tp := got.(*corev1.Pod); tp.Spec.Containers != nil || tp.Status.Phase != corev1.PodRunning || len(tp.Status.PodIPs) != 1 || tp.Name != "client" {
		t.Errorf("Trim(Pod) = %+v", tp)
	}
}
