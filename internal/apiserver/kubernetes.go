//lint:file-ignore SA1019 core/v1 Endpoints are served and kept for compatibility although Kubernetes deprecates them.

package apiserver

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	networkingv1 "k8s.io/api/networking/v1"
	apiequality "k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"
	utilnet "k8s.io/apimachinery/pkg/util/net"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	"k8s.io/klog/v2"

	"github.com/duet-net/duet/internal/registry/service"
)

const (
	kubernetesServiceName = "kubernetes"
	// kubernetesServicePort is the Service's port, as in Kubernetes; it
	// targets the servers' --secure-port.
	kubernetesServicePort = 443
	// kubernetesSliceManager marks the EndpointSlices this reconciler
	// writes, so that it finds (and removes) exactly its own.
	kubernetesSliceManager = "duet-apiserver"
	// skipMirrorLabel keeps an EndpointSlice mirroring controller off the
	// Endpoints, as Kubernetes labels them: the slices are written here.
	skipMirrorLabel = "endpointslice.kubernetes.io/skip-mirror"

	// kubernetesServiceInterval is how often every server reconciles,
	// kube-apiserver's --endpoint-reconciler interval.
	kubernetesServiceInterval = 10 * time.Second
	// apiserverLeaseTTL is how long a server stays listed after it stops
	// renewing its lease, kube-apiserver's default for its master leases.
	apiserverLeaseTTL = 15 * time.Second
)

// kubernetesService keeps default/kubernetes and its endpoints right, as
// kube-apiserver's bootstrap controller does, every interval in every
// server: the Service is recreated when deleted and its spec put back
// when changed (type ClusterIP, no selector, single-stack with the first
// address of the primary range, port 443 named https targeting the
// servers' port); Endpoints (primary family, as the Endpoints controller
// writes them) and EndpointSlices (one per family the cluster serves, and
// per port when servers serve on different ones) list every live server:
// those whose lease (see etcdLeases) has not expired.
type kubernetesService struct {
	client kubernetes.Interface
	leases serverLeases
	self   serverEndpoint
	// ip is the Service's cluster IP: the first usable address of the
	// primary range, reserved for it.
	ip netip.Addr
	// families are the cluster's, primary first.
	families []corev1.IPFamily
	// currentFamilies, if set, gives families anew at every pass: the
	// cluster may gain a family while the server runs.
	currentFamilies func() []corev1.IPFamily
	interval        time.Duration
}

// Run reconciles every interval until ctx is done, then withdraws this
// server from the list of live ones, so the others drop it at their next
// pass rather than when its lease expires.
func (k *kubernetesService) Run(ctx context.Context) {
	// The bootstrap hook may still be creating the default namespace on
	// a fresh cluster; writing into it before then only logs errors.
	_ = wait.PollUntilContextCancel(ctx, 100*time.Millisecond, true, func(ctx context.Context) (bool, error) {
		_, err := k.client.CoreV1().Namespaces().Get(ctx, metav1.NamespaceDefault, metav1.GetOptions{})
		return err == nil, nil
	})
	wait.UntilWithContext(ctx, func(ctx context.Context) {
		if err := k.reconcile(ctx); err != nil {
			klog.ErrorS(err, "Reconciling the kubernetes Service")
		}
	}, k.interval)
	wctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := k.leases.Withdraw(wctx); err != nil {
		klog.ErrorS(err, "Withdrawing this API server from the kubernetes Service's endpoints; it goes when its lease expires")
	}
}

func (k *kubernetesService) reconcile(ctx context.Context) error {
	if k.currentFamilies != nil {
		k.families = k.currentFamilies()
	}
	if err := k.leases.Advertise(ctx); err != nil {
		// The others will drop this server when its lease expires; it
		// still lists itself below.
		klog.ErrorS(err, "Advertising this API server")
	}
	live, err := k.leases.List(ctx)
	if err != nil {
		return err
	}
	if !slices.ContainsFunc(live, func(e serverEndpoint) bool { return endpointKey(e) == endpointKey(k.self) }) {
		live = append(live, k.self)
	}
	port, err := k.ensureService(ctx, live)
	if err != nil {
		return err
	}
	if err := k.ensureEndpoints(ctx, live); err != nil {
		return err
	}
	return k.ensureSlices(ctx, live, port)
}

// targetPort is the port the Service targets: the current one while a
// live server serves on it, else the lowest port a live server serves on.
// Servers sharing an etcd normally share --secure-port; when they do not,
// this rule has them agree instead of rewriting the Service in turn.
func targetPort(current *corev1.Service, live []serverEndpoint) int {
	ports := map[int]bool{}
	lowest := 0
	for _, e := range live {
		ports[e.Port] = true
		if lowest == 0 || e.Port < lowest {
			lowest = e.Port
		}
	}
	if current != nil && len(current.Spec.Ports) == 1 {
		if tp := current.Spec.Ports[0].TargetPort; tp.Type == intstr.Int && ports[tp.IntValue()] {
			return tp.IntValue()
		}
	}
	return lowest
}

func (k *kubernetesService) desiredService(port int) *corev1.Service {
	single := corev1.IPFamilyPolicySingleStack
	ip := k.ip.String()
	return &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: kubernetesServiceName, Namespace: metav1.NamespaceDefault,
			Labels: map[string]string{"component": "apiserver", "provider": "kubernetes"}},
		Spec: corev1.ServiceSpec{
			Type: corev1.ServiceTypeClusterIP, ClusterIP: ip, ClusterIPs: []string{ip},
			IPFamilyPolicy: &single, IPFamilies: []corev1.IPFamily{k.families[0]},
			Ports:           desiredPorts(port),
			SessionAffinity: corev1.ServiceAffinityNone,
		},
	}
}

func desiredPorts(port int) []corev1.ServicePort {
	return []corev1.ServicePort{{Name: "https", Protocol: corev1.ProtocolTCP, Port: kubernetesServicePort, TargetPort: intstr.FromInt32(int32(port))}}
}

// ensureService creates, repairs or recreates default/kubernetes and
// returns the port it targets.
func (k *kubernetesService) ensureService(ctx context.Context, live []serverEndpoint) (int, error) {
	services := k.client.CoreV1().Services(metav1.NamespaceDefault)
	cur, err := services.Get(ctx, kubernetesServiceName, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		port := targetPort(nil, live)
		klog.InfoS("Creating the kubernetes Service", "clusterIP", k.ip, "targetPort", port)
		return port, k.createService(ctx, port)
	case err != nil:
		return 0, fmt.Errorf("reading the kubernetes Service: %w", err)
	}
	port := targetPort(cur, live)
	if ip, err := netip.ParseAddr(cur.Spec.ClusterIP); err != nil || ip != k.ip {
		// The cluster IP cannot be changed in place; the kubernetes
		// Service owns the reserved address, which the serving
		// certificate names.
		klog.InfoS("Recreating the kubernetes Service with its reserved cluster IP", "clusterIP", cur.Spec.ClusterIP, "want", k.ip)
		uid := cur.UID
		err := services.Delete(ctx, kubernetesServiceName, metav1.DeleteOptions{Preconditions: &metav1.Preconditions{UID: &uid}})
		if err != nil && !apierrors.IsNotFound(err) && !apierrors.IsConflict(err) {
			return 0, fmt.Errorf("deleting the kubernetes Service to recreate it: %w", err)
		}
		return port, k.createService(ctx, port)
	}
	want := cur.DeepCopy()
	want.Spec.Type = corev1.ServiceTypeClusterIP
	want.Spec.Selector = nil
	want.Spec.Ports = desiredPorts(port)
	if p := want.Spec.IPFamilyPolicy; p == nil || *p != corev1.IPFamilyPolicySingleStack || len(want.Spec.IPFamilies) != 1 {
		single := corev1.IPFamilyPolicySingleStack
		want.Spec.IPFamilyPolicy = &single
		want.Spec.IPFamilies = []corev1.IPFamily{k.families[0]}
		want.Spec.ClusterIPs = []string{k.ip.String()}
	}
	if apiequality.Semantic.DeepEqual(want.Spec, cur.Spec) {
		return port, nil
	}
	klog.InfoS("Resetting the kubernetes Service's spec", "targetPort", port)
	if _, err := services.Update(ctx, want, metav1.UpdateOptions{}); err != nil && !apierrors.IsConflict(err) {
		return 0, fmt.Errorf("resetting the kubernetes Service: %w", err)
	}
	return port, nil
}

// createService records the reserved cluster IP, then creates the
// Service: the allocator records every cluster IP before its Service is
// stored, and the repair loop takes a Service without its record for a
// lost record.
func (k *kubernetesService) createService(ctx context.Context, port int) error {
	ip := k.ip.String()
	_, err := k.client.NetworkingV1().IPAddresses().Create(ctx, &networkingv1.IPAddress{
		ObjectMeta: metav1.ObjectMeta{Name: ip, Labels: map[string]string{
			service.LabelIPFamily: string(k.families[0]), service.LabelManagedBy: service.ManagedBy,
		}},
		Spec: networkingv1.IPAddressSpec{ParentRef: &networkingv1.ParentReference{Resource: "services", Namespace: metav1.NamespaceDefault, Name: kubernetesServiceName}},
	}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("recording the kubernetes Service's cluster IP: %w", err)
	}
	_, err = k.client.CoreV1().Services(metav1.NamespaceDefault).Create(ctx, k.desiredService(port), metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("creating the kubernetes Service: %w", err)
	}
	return nil
}

func familyOf(a netip.Addr) corev1.IPFamily {
	if a.Is4() {
		return corev1.IPv4Protocol
	}
	return corev1.IPv6Protocol
}

// byPort groups the live servers' addresses of family fam by port, each
// list sorted, without duplicates.
func byPort(live []serverEndpoint, fam corev1.IPFamily) map[int][]netip.Addr {
	out := map[int][]netip.Addr{}
	for _, e := range live {
		for _, a := range e.Addrs {
			if familyOf(a) == fam && !slices.Contains(out[e.Port], a) {
				out[e.Port] = append(out[e.Port], a)
			}
		}
	}
	for _, addrs := range out {
		slices.SortFunc(addrs, netip.Addr.Compare)
	}
	return out
}

func sortedPorts(m map[int][]netip.Addr) []int {
	ports := make([]int, 0, len(m))
	for p := range m {
		ports = append(ports, p)
	}
	sort.Ints(ports)
	return ports
}

// desiredEndpoints lists the live servers of the primary family, one
// subset per port.
func (k *kubernetesService) desiredEndpoints(live []serverEndpoint) []corev1.EndpointSubset {
	groups := byPort(live, k.families[0])
	var subsets []corev1.EndpointSubset
	for _, port := range sortedPorts(groups) {
		s := corev1.EndpointSubset{Ports: []corev1.EndpointPort{{Name: "https", Protocol: corev1.ProtocolTCP, Port: int32(port)}}}
		for _, a := range groups[port] {
			s.Addresses = append(s.Addresses, corev1.EndpointAddress{IP: a.String()})
		}
		subsets = append(subsets, s)
	}
	return subsets
}

func (k *kubernetesService) ensureEndpoints(ctx context.Context, live []serverEndpoint) error {
	endpoints := k.client.CoreV1().Endpoints(metav1.NamespaceDefault)
	want := k.desiredEndpoints(live)
	cur, err := endpoints.Get(ctx, kubernetesServiceName, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		_, err := endpoints.Create(ctx, &corev1.Endpoints{
			ObjectMeta: metav1.ObjectMeta{Name: kubernetesServiceName, Namespace: metav1.NamespaceDefault, Labels: map[string]string{skipMirrorLabel: "true"}},
			Subsets:    want,
		}, metav1.CreateOptions{})
		if err != nil && !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("creating the kubernetes Endpoints: %w", err)
		}
		return nil
	case err != nil:
		return fmt.Errorf("reading the kubernetes Endpoints: %w", err)
	}
	if apiequality.Semantic.DeepEqual(cur.Subsets, want) && cur.Labels[skipMirrorLabel] == "true" {
		return nil
	}
	upd := cur.DeepCopy()
	upd.Subsets = want
	if upd.Labels == nil {
		upd.Labels = map[string]string{}
	}
	upd.Labels[skipMirrorLabel] = "true"
	if _, err := endpoints.Update(ctx, upd, metav1.UpdateOptions{}); err != nil && !apierrors.IsConflict(err) {
		return fmt.Errorf("updating the kubernetes Endpoints: %w", err)
	}
	return nil
}

// sliceName is "kubernetes" for the primary family's servers on the
// Service's target port, as in Kubernetes, and says the family and the
// port otherwise: kubernetes-ipv6, kubernetes-6444, kubernetes-ipv6-6444.
func (k *kubernetesService) sliceName(fam corev1.IPFamily, port, target int) string {
	name := kubernetesServiceName
	if fam != k.families[0] {
		name += "-" + strings.ToLower(string(fam))
	}
	if port != target {
		name += "-" + strconv.Itoa(port)
	}
	return name
}

// desiredSlices are the EndpointSlices of the live servers: one per family
// the cluster serves and port, each endpoint one server's address.
func (k *kubernetesService) desiredSlices(live []serverEndpoint, target int) map[string]*discoveryv1.EndpointSlice {
	out := map[string]*discoveryv1.EndpointSlice{}
	ready := true
	for _, fam := range k.families {
		groups := byPort(live, fam)
		for _, port := range sortedPorts(groups) {
			name, proto, p := "https", corev1.ProtocolTCP, int32(port)
			s := &discoveryv1.EndpointSlice{
				ObjectMeta: metav1.ObjectMeta{Name: k.sliceName(fam, port, target), Namespace: metav1.NamespaceDefault, Labels: map[string]string{
					discoveryv1.LabelServiceName: kubernetesServiceName,
					discoveryv1.LabelManagedBy:   kubernetesSliceManager,
				}},
				AddressType: discoveryv1.AddressType(fam),
				Ports:       []discoveryv1.EndpointPort{{Name: &name, Protocol: &proto, Port: &p}},
			}
			for _, a := range groups[port] {
				s.Endpoints = append(s.Endpoints, discoveryv1.Endpoint{Addresses: []string{a.String()}, Conditions: discoveryv1.EndpointConditions{Ready: &ready}})
			}
			out[s.Name] = s
		}
	}
	return out
}

func (k *kubernetesService) ensureSlices(ctx context.Context, live []serverEndpoint, target int) error {
	slicesAPI := k.client.DiscoveryV1().EndpointSlices(metav1.NamespaceDefault)
	want := k.desiredSlices(live, target)
	list, err := slicesAPI.List(ctx, metav1.ListOptions{LabelSelector: labels.Set{
		discoveryv1.LabelServiceName: kubernetesServiceName, discoveryv1.LabelManagedBy: kubernetesSliceManager,
	}.String()})
	if err != nil {
		return fmt.Errorf("listing the kubernetes EndpointSlices: %w", err)
	}
	have := map[string]*discoveryv1.EndpointSlice{}
	for i := range list.Items {
		have[list.Items[i].Name] = &list.Items[i]
	}
	var errs []error
	for name, s := range want {
		cur, ok := have[name]
		if !ok {
			_, err := slicesAPI.Create(ctx, s, metav1.CreateOptions{})
			if apierrors.IsAlreadyExists(err) {
				// Someone else's slice of that name (or another server's,
				// just written): take it over.
				if cur, err = slicesAPI.Get(ctx, name, metav1.GetOptions{}); err == nil {
					err = k.updateSlice(ctx, cur, s)
				}
			}
			if err != nil {
				errs = append(errs, fmt.Errorf("writing EndpointSlice %s: %w", name, err))
			}
			continue
		}
		if err := k.updateSlice(ctx, cur, s); err != nil {
			errs = append(errs, fmt.Errorf("updating EndpointSlice %s: %w", name, err))
		}
	}
	for name, cur := range have {
		if _, ok := want[name]; ok {
			continue
		}
		uid := cur.UID
		err := slicesAPI.Delete(ctx, name, metav1.DeleteOptions{Preconditions: &metav1.Preconditions{UID: &uid}})
		if err != nil && !apierrors.IsNotFound(err) && !apierrors.IsConflict(err) {
			errs = append(errs, fmt.Errorf("deleting EndpointSlice %s: %w", name, err))
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("kubernetes EndpointSlices: %v", errs)
	}
	return nil
}

// updateSlice makes cur what want says; a slice of another address type
// is replaced, since the type cannot change.
func (k *kubernetesService) updateSlice(ctx context.Context, cur, want *discoveryv1.EndpointSlice) error {
	slicesAPI := k.client.DiscoveryV1().EndpointSlices(metav1.NamespaceDefault)
	if cur.AddressType != want.AddressType {
		uid := cur.UID
		if err := slicesAPI.Delete(ctx, cur.Name, metav1.DeleteOptions{Preconditions: &metav1.Preconditions{UID: &uid}}); err != nil && !apierrors.IsNotFound(err) {
			return err
		}
		_, err := slicesAPI.Create(ctx, want, metav1.CreateOptions{})
		return err
	}
	if apiequality.Semantic.DeepEqual(cur.Endpoints, want.Endpoints) && apiequality.Semantic.DeepEqual(cur.Ports, want.Ports) &&
		cur.Labels[discoveryv1.LabelServiceName] == kubernetesServiceName && cur.Labels[discoveryv1.LabelManagedBy] == kubernetesSliceManager {
		return nil
	}
	upd := cur.DeepCopy()
	upd.Endpoints, upd.Ports = want.Endpoints, want.Ports
	if upd.Labels == nil {
		upd.Labels = map[string]string{}
	}
	for k, v := range want.Labels {
		upd.Labels[k] = v
	}
	_, err := slicesAPI.Update(ctx, upd, metav1.UpdateOptions{})
	if apierrors.IsConflict(err) {
		return nil // another server wrote it meanwhile; the next pass looks again
	}
	return err
}

// advertisedAddrs are the addresses this server is reachable at, for the
// kubernetes Service's endpoints: the bind address itself, or, when it is
// unspecified (0.0.0.0 or ::, which Go serves on both families), the
// address of each family on the host's default route, as kube-apiserver
// picks its advertise address; loopback when the host has no default
// route.
func advertisedAddrs(bind net.IP) []netip.Addr {
	if a, ok := netip.AddrFromSlice(bind); ok && !bind.IsUnspecified() {
		return []netip.Addr{a.Unmap()}
	}
	var out []netip.Addr
	for _, probe := range []net.IP{net.IPv4zero, net.IPv6unspecified} {
		ip, err := utilnet.ResolveBindAddress(probe)
		if err != nil {
			continue
		}
		a, ok := netip.AddrFromSlice(ip)
		a = a.Unmap()
		// ResolveBindAddress falls back to the other family.
		if ok && a.Is4() == (probe.To4() != nil) && !slices.Contains(out, a) {
			out = append(out, a)
		}
	}
	if len(out) == 0 {
		out = []netip.Addr{netip.MustParseAddr("127.0.0.1")}
	}
	return out
}
