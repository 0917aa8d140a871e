package integration

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	apimeta "k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
)

func serviceCIDRReady(o *networkingv1.ServiceCIDR) error {
	c := apimeta.FindStatusCondition(o.Status.Conditions, networkingv1.ServiceCIDRConditionReady)
	if c == nil || c.Status != metav1.ConditionTrue {
		return fmt.Errorf("ServiceCIDR %s: Ready condition %+v", o.Name, c)
	}
	if !slices.Contains(o.Finalizers, "networking.k8s.io/service-cidr-finalizer") {
		return fmt.Errorf("ServiceCIDR %s: finalizers %v", o.Name, o.Finalizers)
	}
	return nil
}

// TestServiceCIDRs: the default ServiceCIDR holds --service-cluster-ip-range
// and cannot be deleted; an extra ServiceCIDR of the same family becomes
// Ready and serves chosen cluster IPs at once (upstream's "should create
// Services and serve on different Service CIDRs", without the pods), and
// drawn ones once the default range is full; its deletion waits for its
// cluster IPs to be released.
func TestServiceCIDRs(t *testing.T) {
	t.Parallel()
	// A /28: 14 usable addresses, one the kubernetes Service's, one kube-dns's.
	const small = "10.96.0.0/28"
	srv := StartServer(t, ServerOptions{ServiceRanges: small, ClusterCIDR: "10.244.0.0/16"})
	ctx := ctxT(t)
	cidrs := srv.Client.NetworkingV1().ServiceCIDRs()

	eventually(t, 30*time.Second, "the default ServiceCIDR is Ready", func() error {
		o, err := cidrs.Get(ctx, "kubernetes", metav1.GetOptions{})
		if err != nil {
			return err
		}
		if !slices.Equal(o.Spec.CIDRs, []string{small}) {
			t.Fatalf("default ServiceCIDR cidrs %v, want [%s]", o.Spec.CIDRs, small)
		}
		return serviceCIDRReady(o)
	})
	err := cidrs.Delete(ctx, "kubernetes", metav1.DeleteOptions{})
	if !apierrors.IsForbidden(err) || !strings.Contains(err.Error(), "the default ServiceCIDR holds --service-cluster-ip-range") {
		t.Errorf("deleting the default ServiceCIDR: %v, want a 403 saying why", err)
	}

	_, err = cidrs.Create(ctx, &networkingv1.ServiceCIDR{ObjectMeta: metav1.ObjectMeta{Name: "test-svc-cidr"},
		Spec: networkingv1.ServiceCIDRSpec{CIDRs: []string{"203.0.113.0/24"}}}, metav1.CreateOptions{})
	fatalIf(t, err)
	eventually(t, 10*time.Second, "the new ServiceCIDR is Ready", func() error {
		o, err := cidrs.Get(ctx, "test-svc-cidr", metav1.GetOptions{})
		if err != nil {
			return err
		}
		return serviceCIDRReady(o)
	})

	svcs := srv.Client.CoreV1().Services("default")
	svc := func(name, ip string) *corev1.Service {
		return &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: corev1.ServiceSpec{
			Type: corev1.ServiceTypeNodePort, ClusterIP: ip,
			Ports: []corev1.ServicePort{{Name: "http", Port: 80, Protocol: corev1.ProtocolTCP, TargetPort: intstr.FromInt32(9376)}},
		}}
	}
	chosen, err := svcs.Create(ctx, svc("cidr1-test", "203.0.113.10"), metav1.CreateOptions{})
	fatalIf(t, err)
	if chosen.Spec.ClusterIP != "203.0.113.10" {
		t.Errorf("clusterIP %s, want 203.0.113.10", chosen.Spec.ClusterIP)
	}
	ip, err := srv.Client.NetworkingV1().IPAddresses().Get(ctx, "203.0.113.10", metav1.GetOptions{})
	fatalIf(t, err)
	if ref := ip.Spec.ParentRef; ref == nil || ref.Resource != "services" || ref.Name != "cidr1-test" {
		t.Errorf("IPAddress 203.0.113.10 parentRef %+v", ref)
	}
	if _, err := svcs.Create(ctx, svc("outside", "198.51.100.10"), metav1.CreateOptions{}); !apierrors.IsInvalid(err) ||
		!strings.Contains(err.Error(), "The range of valid IPs is 10.96.0.0/28, 203.0.113.0/24") {
		t.Errorf("a cluster IP in no ServiceCIDR: %v, want a 422 naming both ranges", err)
	}

	t.Run("drawn addresses come from the extra range once the default one is full", func(t *testing.T) {
		extra := netip.MustParsePrefix("203.0.113.0/24")
		var fromExtra int
		for i := range 14 {
			s, err := svcs.Create(ctx, &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("fill-%d", i)},
				Spec: corev1.ServiceSpec{Ports: []corev1.ServicePort{{Port: 80}}}}, metav1.CreateOptions{})
			fatalIf(t, err)
			if extra.Contains(netip.MustParseAddr(s.Spec.ClusterIP)) {
				fromExtra++
			}
		}
		// 14 usable in the /28, less kubernetes and kube-dns: 12 from it.
		if fromExtra != 2 {
			t.Errorf("%d of 14 Services got an address of %s, want 2 (the default range holds 12)", fromExtra, extra)
		}
	})

	t.Run("deleting the extra ServiceCIDR waits for its cluster IPs", func(t *testing.T) {
		fatalIf(t, cidrs.Delete(ctx, "test-svc-cidr", metav1.DeleteOptions{}))
		eventually(t, 10*time.Second, "the ServiceCIDR says it is held back", func() error {
			o, err := cidrs.Get(ctx, "test-svc-cidr", metav1.GetOptions{})
			if err != nil {
				return err
			}
			c := apimeta.FindStatusCondition(o.Status.Conditions, networkingv1.ServiceCIDRConditionReady)
			if c == nil || c.Status != metav1.ConditionFalse || c.Reason != "Terminating" || !strings.Contains(c.Message, "203.0.113.10") {
				return fmt.Errorf("Ready condition %+v", c)
			}
			return nil
		})
		// While it is being deleted, it takes no new cluster IPs.
		if _, err := svcs.Create(ctx, svc("late", "203.0.113.99"), metav1.CreateOptions{}); !apierrors.IsInvalid(err) {
			t.Errorf("a cluster IP of a ServiceCIDR being deleted: %v, want a 422", err)
		}
		list, err := svcs.List(ctx, metav1.ListOptions{})
		fatalIf(t, err)
		for _, s := range list.Items {
			if s.Name != "kubernetes" && netip.MustParsePrefix("203.0.113.0/24").Contains(netip.MustParseAddr(s.Spec.ClusterIP)) {
				fatalIf(t, svcs.Delete(ctx, s.Name, metav1.DeleteOptions{}))
			}
		}
		eventually(t, 30*time.Second, "the ServiceCIDR is gone", func() error {
			_, err := cidrs.Get(ctx, "test-svc-cidr", metav1.GetOptions{})
			if apierrors.IsNotFound(err) {
				return nil
			}
			return fmt.Errorf("still there: %v", err)
		})
	})
}

// TestIPAddressAPI is upstream's conformance test "should support
// IPAddress API operations": users may create, patch, update, list by
// label, watch, delete and delete collections of IPAddress objects.
func TestIPAddressAPI(t *testing.T) {
	t.Parallel()
	srv := StartServer(t, ServerOptions{ServiceRanges: v4Range})
	ctx := ctxT(t)
	api := srv.Client.NetworkingV1().IPAddresses()
	ref := &networkingv1.ParentReference{Group: "mygroup", Resource: "myresources", Namespace: "foo", Name: "bar"}
	ip4 := &networkingv1.IPAddress{ObjectMeta: metav1.ObjectMeta{Name: "255.255.255.255", Labels: map[string]string{"type": "broadcast"}},
		Spec: networkingv1.IPAddressSpec{ParentRef: ref}}
	ip6 := &networkingv1.IPAddress{ObjectMeta: metav1.ObjectMeta{Name: "fe80::42:1dff:fe84:f9e2", Labels: map[string]string{"type": "link-local"}},
		Spec: networkingv1.IPAddressSpec{ParentRef: ref}}
	created, err := api.Create(ctx, ip4, metav1.CreateOptions{})
	fatalIf(t, err)
	_, err = api.Create(ctx, ip6, metav1.CreateOptions{})
	fatalIf(t, err)
	patched, err := api.Patch(ctx, ip4.Name, types.MergePatchType, []byte(`{"metadata":{"annotations":{"patched":"true"}}}`), metav1.PatchOptions{})
	fatalIf(t, err)
	if patched.Annotations["patched"] != "true" || patched.ResourceVersion == created.ResourceVersion {
		t.Errorf("patch: annotations %v resourceVersion %s (was %s)", patched.Annotations, patched.ResourceVersion, created.ResourceVersion)
	}
	patched.Annotations["updated"] = "true"
	updated, err := api.Update(ctx, patched, metav1.UpdateOptions{})
	fatalIf(t, err)
	if updated.Annotations["updated"] != "true" {
		t.Errorf("update: annotations %v", updated.Annotations)
	}
	list, err := api.List(ctx, metav1.ListOptions{LabelSelector: "type=broadcast"})
	fatalIf(t, err)
	if len(list.Items) != 1 {
		t.Errorf("list by label: %d items", len(list.Items))
	}
	w, err := api.Watch(ctx, metav1.ListOptions{LabelSelector: "type=broadcast"})
	fatalIf(t, err)
	w.Stop()
	fatalIf(t, api.Delete(ctx, ip4.Name, metav1.DeleteOptions{}))
	fatalIf(t, api.DeleteCollection(ctx, metav1.DeleteOptions{}, metav1.ListOptions{LabelSelector: "type=link-local"}))
	list, err = api.List(ctx, metav1.ListOptions{LabelSelector: "type=link-local"})
	fatalIf(t, err)
	if len(list.Items) != 0 {
		t.Errorf("after deletecollection: %d items", len(list.Items))
	}
}
