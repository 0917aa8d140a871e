package integration

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"

	"github.com/duet-net/duet/internal/controller/kubedns"
)

// want is the outcome of creating or updating a Service.
type want struct {
	err      string // the request must fail with a 422 whose message contains this
	external bool   // ExternalName: no cluster IP, no family fields
	policy   corev1.IPFamilyPolicy
	families []corev1.IPFamily
	ips      []string // exact cluster IPs, or nil for one drawn per family
}

func accept(p corev1.IPFamilyPolicy, fams ...corev1.IPFamily) want {
	return want{policy: p, families: fams}
}
func refused(msg string) want { return want{err: msg} }

const (
	single  = corev1.IPFamilyPolicySingleStack
	prefer  = corev1.IPFamilyPolicyPreferDualStack
	require = corev1.IPFamilyPolicyRequireDualStack
	none    = corev1.ClusterIPNone
)

// svcRow is one row of the Service matrix: a Service to create, on every
// shape, and what the shape must make of it.
type svcRow struct {
	name string
	// svc builds the request; legacy, when it returns a family, is sent as
	// the 1.16 spec.ipFamily.
	svc    func(sh shape, name string) *corev1.Service
	legacy func(sh shape) corev1.IPFamily
	// setup runs before the create (e.g. takes the address the row asks
	// for).
	setup func(t *testing.T, srv *Server, sh shape, name string)
	want  func(sh shape) want
}

func notConfigured(f corev1.IPFamily) string {
	return fmt.Sprintf(`spec.ipFamilies[0]: Invalid value: "%s": not configured on this cluster`, f)
}

const notDualStack = `spec.ipFamilyPolicy: Invalid value: "RequireDualStack": this cluster is not configured for dual-stack services`

func onlyFamilies(sh shape, f corev1.IPFamily) string {
	return fmt.Sprintf(`spec.ipFamily: Invalid value: "%s": only the following families are allowed: %s`, f, sh.primary())
}

var serviceRows = []svcRow{
	{
		name: "unset policy defaults to SingleStack of the primary family",
		svc:  func(sh shape, n string) *corev1.Service { return newService(n) },
		want: func(sh shape) want { return accept(single, sh.primary()) },
	},
	{
		name: "SingleStack primary family",
		svc: func(sh shape, n string) *corev1.Service {
			return newService(n, policy(single), families(sh.primary()))
		},
		want: func(sh shape) want { return accept(single, sh.primary()) },
	},
	{
		name: "SingleStack other family",
		svc: func(sh shape, n string) *corev1.Service {
			return newService(n, policy(single), families(sh.other()))
		},
		want: func(sh shape) want {
			if sh.dual() {
				return accept(single, sh.other())
			}
			return refused(notConfigured(sh.other()))
		},
	},
	{
		name: "PreferDualStack",
		svc:  func(sh shape, n string) *corev1.Service { return newService(n, policy(prefer)) },
		want: func(sh shape) want { return accept(prefer, sh.families()...) },
	},
	{
		name: "PreferDualStack other family first",
		svc: func(sh shape, n string) *corev1.Service {
			return newService(n, policy(prefer), families(sh.other()))
		},
		want: func(sh shape) want {
			if sh.dual() {
				return accept(prefer, sh.other(), sh.primary())
			}
			return refused(notConfigured(sh.other()))
		},
	},
	{
		name: "RequireDualStack",
		svc:  func(sh shape, n string) *corev1.Service { return newService(n, policy(require)) },
		want: func(sh shape) want {
			if sh.dual() {
				return accept(require, sh.families()...)
			}
			return refused(notDualStack)
		},
	},
	{
		name: "RequireDualStack families in reverse order",
		svc: func(sh shape, n string) *corev1.Service {
			return newService(n, policy(require), families(sh.other(), sh.primary()))
		},
		want: func(sh shape) want {
			if sh.dual() {
				return accept(require, sh.other(), sh.primary())
			}
			return refused(notDualStack)
		},
	},
	{
		name: "headless with selector",
		svc:  func(sh shape, n string) *corev1.Service { return newService(n, clusterIPs(none)) },
		want: func(sh shape) want {
			w := accept(single, sh.primary())
			w.ips = []string{none}
			return w
		},
	},
	{
		name: "headless with selector PreferDualStack",
		svc:  func(sh shape, n string) *corev1.Service { return newService(n, clusterIPs(none), policy(prefer)) },
		want: func(sh shape) want {
			w := accept(prefer, sh.families()...)
			w.ips = []string{none}
			return w
		},
	},
	{
		name: "headless without selector takes both families on any cluster",
		svc:  func(sh shape, n string) *corev1.Service { return newService(n, clusterIPs(none), noSelector) },
		want: func(sh shape) want {
			w := accept(require, sh.primary(), sh.other())
			w.ips = []string{none}
			return w
		},
	},
	{
		name: "ExternalName",
		svc:  func(sh shape, n string) *corev1.Service { return newService(n, externalName) },
		want: func(sh shape) want { return want{external: true} },
	},
	{
		name: "user-chosen clusterIP",
		svc: func(sh shape, n string) *corev1.Service {
			// The 10th address is kube-dns's.
			return newService(n, clusterIPs(static(sh.primary(), 16)))
		},
		want: func(sh shape) want {
			w := accept(single, sh.primary())
			w.ips = []string{static(sh.primary(), 16)}
			return w
		},
	},
	{
		name: "user-chosen clusterIP already allocated",
		setup: func(t *testing.T, srv *Server, sh shape, n string) {
			_, err := srv.Client.CoreV1().Services("default").Create(ctxT(t), newService(n+"-holder", clusterIPs(static(sh.primary(), 11))), metav1.CreateOptions{})
			fatalIf(t, err)
		},
		svc: func(sh shape, n string) *corev1.Service {
			return newService(n, clusterIPs(static(sh.primary(), 11)))
		},
		want: func(sh shape) want {
			ip := static(sh.primary(), 11)
			return refused(fmt.Sprintf("failed to allocate IP %s: provided IP is already allocated", ip))
		},
	},
	{
		name: "user-chosen clusterIP outside the range",
		svc: func(sh shape, n string) *corev1.Service {
			return newService(n, clusterIPs(outside(sh.primary())))
		},
		want: func(sh shape) want {
			ip := outside(sh.primary())
			return refused(fmt.Sprintf("failed to allocate IP %s: the provided IP (%s) is not in the valid range. The range of valid IPs is %s",
				ip, ip, rangeOf(sh.primary())))
		},
	},
	{
		name: "user-chosen network address",
		svc: func(sh shape, n string) *corev1.Service {
			return newService(n, clusterIPs(static(sh.primary(), 0)))
		},
		want: func(sh shape) want {
			ip := static(sh.primary(), 0)
			return refused(fmt.Sprintf("failed to allocate IP %s: the provided IP (%s) is not in the valid range", ip, ip))
		},
	},
	{
		name: "user-chosen kubernetes Service address",
		svc: func(sh shape, n string) *corev1.Service {
			return newService(n, clusterIPs(static(sh.primary(), 1)))
		},
		want: func(sh shape) want {
			return refused(fmt.Sprintf("failed to allocate IP %s", static(sh.primary(), 1)))
		},
	},
	{
		name: "user-chosen clusterIPs of both families",
		svc: func(sh shape, n string) *corev1.Service {
			return newService(n, policy(require), clusterIPs(static(sh.primary(), 12), static(sh.other(), 12)))
		},
		want: func(sh shape) want {
			if !sh.dual() {
				return refused(fmt.Sprintf("%s is not configured on this cluster", sh.other()))
			}
			w := accept(require, sh.primary(), sh.other())
			w.ips = []string{static(sh.primary(), 12), static(sh.other(), 12)}
			return w
		},
	},
	{
		name: "user-chosen clusterIP of the other family",
		svc: func(sh shape, n string) *corev1.Service {
			return newService(n, clusterIPs(static(sh.other(), 13)))
		},
		want: func(sh shape) want {
			if !sh.dual() {
				return refused(fmt.Sprintf("%s is not configured on this cluster", sh.other()))
			}
			w := accept(single, sh.other())
			w.ips = []string{static(sh.other(), 13)}
			return w
		},
	},
	{
		name:   "1.16 ipFamily primary",
		svc:    func(sh shape, n string) *corev1.Service { return newService(n) },
		legacy: func(sh shape) corev1.IPFamily { return sh.primary() },
		want:   func(sh shape) want { return accept(single, sh.primary()) },
	},
	{
		name:   "1.16 ipFamily other",
		svc:    func(sh shape, n string) *corev1.Service { return newService(n) },
		legacy: func(sh shape) corev1.IPFamily { return sh.other() },
		want: func(sh shape) want {
			if sh.dual() {
				return accept(single, sh.other())
			}
			return refused(onlyFamilies(sh, sh.other()))
		},
	},
	{
		name: "1.16 ipFamily contradicting clusterIP",
		svc: func(sh shape, n string) *corev1.Service {
			return newService(n, clusterIPs(static(sh.primary(), 14)))
		},
		legacy: func(sh shape) corev1.IPFamily { return sh.other() },
		want: func(sh shape) want {
			if sh.dual() {
				return refused(fmt.Sprintf(`spec.ipFamily: Invalid value: "%s": does not match %s cluster IP`, sh.other(), sh.primary()))
			}
			return refused(onlyFamilies(sh, sh.other()))
		},
	},
	{
		name:   "1.16 ipFamily with PreferDualStack",
		svc:    func(sh shape, n string) *corev1.Service { return newService(n, policy(prefer)) },
		legacy: func(sh shape) corev1.IPFamily { return sh.primary() },
		want:   func(sh shape) want { return accept(prefer, sh.families()...) },
	},
	{
		name:   "1.16 ipFamily headless",
		svc:    func(sh shape, n string) *corev1.Service { return newService(n, clusterIPs(none)) },
		legacy: func(sh shape) corev1.IPFamily { return sh.primary() },
		want: func(sh shape) want {
			w := accept(single, sh.primary())
			w.ips = []string{none}
			return w
		},
	},
}

// createService creates svc in default, through the typed client, or
// through the dynamic client with the 1.16 spec.ipFamily when legacy is set.
func createService(ctx context.Context, srv *Server, svc *corev1.Service, legacy corev1.IPFamily) (*corev1.Service, error) {
	if legacy == "" {
		return srv.Client.CoreV1().Services("default").Create(ctx, svc, metav1.CreateOptions{})
	}
	obj, err := runtime.DefaultUnstructuredConverter.ToUnstructured(svc)
	if err != nil {
		return nil, err
	}
	u := &unstructured.Unstructured{Object: obj}
	u.SetAPIVersion("v1")
	u.SetKind("Service")
	if err := unstructured.SetNestedField(u.Object, string(legacy), "spec", "ipFamily"); err != nil {
		return nil, err
	}
	got, err := srv.Dynamic.Resource(serviceGVR).Namespace("default").Create(ctx, u, metav1.CreateOptions{})
	if err != nil {
		return nil, err
	}
	out := &corev1.Service{}
	return out, runtime.DefaultUnstructuredConverter.FromUnstructured(got.Object, out)
}

// expectOutcome checks the result of a create or update against w.
func expectOutcome(t *testing.T, srv *Server, sh shape, got *corev1.Service, err error, w want) {
	t.Helper()
	if w.err != "" {
		if err == nil {
			var spec corev1.ServiceSpec
			if got != nil {
				spec = got.Spec
			}
			t.Fatalf("accepted (clusterIPs %v, ipFamilies %v), want a 422 with %q", spec.ClusterIPs, spec.IPFamilies, w.err)
		}
		if !apierrors.IsInvalid(err) || !strings.Contains(err.Error(), w.err) {
			t.Fatalf("error %q (reason %s), want a 422 (Invalid) containing %q", err, apierrors.ReasonForError(err), w.err)
		}
		return
	}
	if err != nil {
		t.Fatalf("refused: %v", err)
	}
	checkService(t, srv, sh, got, w)
}

// checkService checks a stored Service's family fields and cluster IPs,
// that each allocated IP has an IPAddress naming the Service, and the 1.16
// ipFamily as served.
func checkService(t *testing.T, srv *Server, sh shape, svc *corev1.Service, w want) {
	t.Helper()
	spec := svc.Spec
	if w.external {
		if spec.ClusterIP != "" || len(spec.ClusterIPs) != 0 || len(spec.IPFamilies) != 0 || spec.IPFamilyPolicy != nil {
			t.Errorf("ExternalName Service has clusterIPs %v, ipFamilies %v, ipFamilyPolicy %v; want none", spec.ClusterIPs, spec.IPFamilies, ptrStr(spec.IPFamilyPolicy))
		}
	} else {
		if got := ptrStr(spec.IPFamilyPolicy); got != string(w.policy) {
			t.Errorf("ipFamilyPolicy %s, want %s", got, w.policy)
		}
		if !slices.Equal(spec.IPFamilies, w.families) {
			t.Errorf("ipFamilies %v, want %v", spec.IPFamilies, w.families)
		}
		if w.ips != nil {
			if !slices.Equal(spec.ClusterIPs, w.ips) {
				t.Errorf("clusterIPs %v, want %v", spec.ClusterIPs, w.ips)
			}
		} else if len(spec.ClusterIPs) != len(w.families) {
			t.Errorf("clusterIPs %v, want one per family of %v", spec.ClusterIPs, w.families)
		} else {
			for i, s := range spec.ClusterIPs {
				a, err := netip.ParseAddr(s)
				if err != nil || familyOf(a) != w.families[i] || !rangeOf(w.families[i]).Contains(a) {
					t.Errorf("clusterIPs[%d] = %q, want an %s address in %s", i, s, w.families[i], rangeOf(w.families[i]))
				}
			}
		}
		if len(spec.ClusterIPs) > 0 && spec.ClusterIP != spec.ClusterIPs[0] {
			t.Errorf("clusterIP %q != clusterIPs[0] %q", spec.ClusterIP, spec.ClusterIPs[0])
		}
	}
	ctx := ctxT(t)
	for _, s := range spec.ClusterIPs {
		if s == none {
			continue
		}
		ip, err := srv.Client.NetworkingV1().IPAddresses().Get(ctx, s, metav1.GetOptions{})
		if err != nil {
			t.Errorf("IPAddress %s: %v", s, err)
			continue
		}
		if r := ip.Spec.ParentRef; r == nil || r.Group != "" || r.Resource != "services" || r.Namespace != svc.Namespace || r.Name != svc.Name {
			t.Errorf("IPAddress %s parentRef %+v, want services %s/%s", s, r, svc.Namespace, svc.Name)
		}
	}
	u, err := srv.Dynamic.Resource(serviceGVR).Namespace(svc.Namespace).Get(ctx, svc.Name, metav1.GetOptions{})
	if err != nil {
		t.Errorf("reading back: %v", err)
	} else if err := legacyAgrees(u); err != nil {
		t.Errorf("read back: %v", err)
	}
}

func ptrStr[T ~string](p *T) string {
	if p == nil {
		return "<nil>"
	}
	return string(*p)
}

// TestServices runs the Service matrix on every cluster shape: creation
// rows, update flows, the kubernetes Service, kubectl for some shapes, and
// the allocation invariants at the end.
func TestServices(t *testing.T) {
	for _, sh := range shapes {
		t.Run(sh.name, func(t *testing.T) {
			t.Parallel()
			srv := StartServer(t, ServerOptions{ServiceRanges: sh.flag(), Extra: sh.extra})
			t.Run("kubernetes Service", func(t *testing.T) { testKubernetesService(t, srv, sh) })
			for i, row := range serviceRows {
				t.Run(row.name, func(t *testing.T) {
					name := fmt.Sprintf("row%02d", i)
					if row.setup != nil {
						row.setup(t, srv, sh, name)
					}
					var legacy corev1.IPFamily
					if row.legacy != nil {
						legacy = row.legacy(sh)
					}
					got, err := createService(ctxT(t), srv, row.svc(sh, name), legacy)
					expectOutcome(t, srv, sh, got, err, row.want(sh))
				})
			}
			for _, u := range updateFlows {
				t.Run(u.name, func(t *testing.T) { u.run(t, srv, sh) })
			}
			if sh.kubectl {
				t.Run("kubectl", func(t *testing.T) { testKubectl(t, srv, sh) })
			}
			t.Run("allocations consistent", func(t *testing.T) {
				fatalIf(t, checkAllocations(ctxT(t), srv.Client, srv.Dynamic, allocationCheck{ranges: sh.ranges, noOrphans: true}))
			})
			t.Run("deleting Services deletes their IPAddresses", func(t *testing.T) {
				ctx := ctxT(t)
				list, err := srv.Client.CoreV1().Services("default").List(ctx, metav1.ListOptions{FieldSelector: "metadata.name!=kubernetes"})
				fatalIf(t, err)
				if len(list.Items) == 0 {
					t.Fatal("no Services to delete: the matrix created none")
				}
				for _, svc := range list.Items {
					fatalIf(t, svcs(srv).Delete(ctx, svc.Name, metav1.DeleteOptions{}))
				}
				eventually(t, 30*time.Second, "IPAddresses of deleted Services gone", func() error {
					names, err := ipRecords(ctx, srv.Client)
					if err != nil {
						return err
					}
					// Those of default/kubernetes and kube-system/kube-dns stay.
					keep := []string{static(sh.primary(), 1)}
					for _, r := range sh.ranges {
						if ip, ok := kubedns.ServiceIP(r); ok && (sh.dual() || r == sh.ranges[0]) {
							keep = append(keep, ip.String())
						}
					}
					names = slices.DeleteFunc(names, func(n string) bool { return slices.Contains(keep, n) })
					if len(names) > 0 {
						return fmt.Errorf("IPAddresses left: %v", names)
					}
					return nil
				})
			})
		})
	}
}

// testKubernetesService: default/kubernetes holds the first usable address
// of the primary range, single-stack, recorded by an IPAddress.
func testKubernetesService(t *testing.T, srv *Server, sh shape) {
	ctx := ctxT(t)
	var svc *corev1.Service
	// The bootstrap hook creates it before /readyz is ok.
	svc, err := srv.Client.CoreV1().Services("default").Get(ctx, "kubernetes", metav1.GetOptions{})
	fatalIf(t, err)
	first := static(sh.primary(), 1)
	if svc.Spec.ClusterIP != first || !slices.Equal(svc.Spec.ClusterIPs, []string{first}) {
		t.Errorf("kubernetes Service clusterIPs %v, want [%s]", svc.Spec.ClusterIPs, first)
	}
	if !slices.Equal(svc.Spec.IPFamilies, []corev1.IPFamily{sh.primary()}) || ptrStr(svc.Spec.IPFamilyPolicy) != string(single) {
		t.Errorf("kubernetes Service ipFamilies %v policy %s, want [%s] SingleStack", svc.Spec.IPFamilies, ptrStr(svc.Spec.IPFamilyPolicy), sh.primary())
	}
	ip, err := srv.Client.NetworkingV1().IPAddresses().Get(ctx, first, metav1.GetOptions{})
	if err != nil {
		t.Errorf("IPAddress %s of the kubernetes Service (Kubernetes records it like any other): %v", first, err)
	} else if r := ip.Spec.ParentRef; r == nil || r.Resource != "services" || r.Namespace != "default" || r.Name != "kubernetes" {
		t.Errorf("IPAddress %s parentRef %+v, want services default/kubernetes", first, r)
	}
}

type updateFlow struct {
	name string
	run  func(t *testing.T, srv *Server, sh shape)
}

func svcs(srv *Server) interface {
	Create(context.Context, *corev1.Service, metav1.CreateOptions) (*corev1.Service, error)
	Update(context.Context, *corev1.Service, metav1.UpdateOptions) (*corev1.Service, error)
	Get(context.Context, string, metav1.GetOptions) (*corev1.Service, error)
	Delete(context.Context, string, metav1.DeleteOptions) error
} {
	return srv.Client.CoreV1().Services("default")
}

func mustCreate(t *testing.T, srv *Server, svc *corev1.Service) *corev1.Service {
	t.Helper()
	got, err := svcs(srv).Create(ctxT(t), svc, metav1.CreateOptions{})
	fatalIf(t, err)
	return got
}

// recordGone waits for the IPAddress of ip to be deleted.
func recordGone(t *testing.T, srv *Server, ip string) {
	t.Helper()
	eventually(t, 30*time.Second, "IPAddress "+ip+" deleted", func() error {
		_, err := srv.Client.NetworkingV1().IPAddresses().Get(ctxT(t), ip, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return nil
		}
		if err == nil {
			return fmt.Errorf("still there")
		}
		return err
	})
}

var updateFlows = []updateFlow{
	{"re-apply without clusterIP keeps IPs", func(t *testing.T, srv *Server, sh shape) {
		for i, manifest := range []*corev1.Service{
			newService("reapply-default"),
			newService("reapply-prefer", policy(prefer)),
			newService("reapply-require", policy(require)),
		} {
			if i == 2 && !sh.dual() {
				continue
			}
			created := mustCreate(t, srv, manifest.DeepCopy())
			cur, err := svcs(srv).Get(ctxT(t), manifest.Name, metav1.GetOptions{})
			fatalIf(t, err)
			again := manifest.DeepCopy()
			again.ResourceVersion = cur.ResourceVersion
			got, err := svcs(srv).Update(ctxT(t), again, metav1.UpdateOptions{})
			if err != nil {
				t.Errorf("%s: re-applying the manifest: %v", manifest.Name, err)
				continue
			}
			if !slices.Equal(got.Spec.ClusterIPs, created.Spec.ClusterIPs) || !slices.Equal(got.Spec.IPFamilies, created.Spec.IPFamilies) {
				t.Errorf("%s: re-applied: clusterIPs %v ipFamilies %v, were %v %v", manifest.Name, got.Spec.ClusterIPs, got.Spec.IPFamilies, created.Spec.ClusterIPs, created.Spec.IPFamilies)
			}
			checkService(t, srv, sh, got, want{policy: *created.Spec.IPFamilyPolicy, families: created.Spec.IPFamilies, ips: created.Spec.ClusterIPs})
		}
	}},
	{"upgrade to PreferDualStack then downgrade to SingleStack", func(t *testing.T, srv *Server, sh shape) {
		created := mustCreate(t, srv, newService("upgrade"))
		up := created.DeepCopy()
		up.Spec.IPFamilyPolicy = ptr(prefer)
		got, err := svcs(srv).Update(ctxT(t), up, metav1.UpdateOptions{})
		fatalIf(t, err)
		w := accept(prefer, sh.families()...)
		if !sh.dual() {
			w.ips = created.Spec.ClusterIPs
		}
		checkService(t, srv, sh, got, w)
		if got.Spec.ClusterIPs[0] != created.Spec.ClusterIPs[0] {
			t.Fatalf("upgrade changed the primary cluster IP %s to %s", created.Spec.ClusterIPs[0], got.Spec.ClusterIPs[0])
		}
		if !sh.dual() {
			return
		}
		// Dropping the secondary family without SingleStack is refused.
		bad := got.DeepCopy()
		bad.Spec.IPFamilies = bad.Spec.IPFamilies[:1]
		bad.Spec.ClusterIPs = bad.Spec.ClusterIPs[:1]
		_, err = svcs(srv).Update(ctxT(t), bad, metav1.UpdateOptions{})
		expectOutcome(t, srv, sh, nil, err, refused("must be 'SingleStack' to release the secondary"))

		secondary := got.Spec.ClusterIPs[1]
		down := got.DeepCopy()
		down.Spec.IPFamilyPolicy = ptr(single)
		got, err = svcs(srv).Update(ctxT(t), down, metav1.UpdateOptions{})
		fatalIf(t, err)
		w = accept(single, sh.primary())
		w.ips = created.Spec.ClusterIPs
		checkService(t, srv, sh, got, w)
		recordGone(t, srv, secondary)
	}},
	{"upgrade to RequireDualStack", func(t *testing.T, srv *Server, sh shape) {
		created := mustCreate(t, srv, newService("require-up"))
		up := created.DeepCopy()
		up.Spec.IPFamilyPolicy = ptr(require)
		got, err := svcs(srv).Update(ctxT(t), up, metav1.UpdateOptions{})
		if !sh.dual() {
			expectOutcome(t, srv, sh, got, err, refused(notDualStack))
			return
		}
		fatalIf(t, err)
		checkService(t, srv, sh, got, accept(require, sh.families()...))
	}},
	{"ExternalName releases and ClusterIP allocates again", func(t *testing.T, srv *Server, sh shape) {
		created := mustCreate(t, srv, newService("switch", policy(prefer)))
		ext := created.DeepCopy()
		ext.Spec.Type = corev1.ServiceTypeExternalName
		ext.Spec.ExternalName = "db.example.com"
		got, err := svcs(srv).Update(ctxT(t), ext, metav1.UpdateOptions{})
		fatalIf(t, err)
		checkService(t, srv, sh, got, want{external: true})
		for _, ip := range created.Spec.ClusterIPs {
			recordGone(t, srv, ip)
		}
		back := got.DeepCopy()
		back.Spec.Type = corev1.ServiceTypeClusterIP
		back.Spec.ExternalName = ""
		got, err = svcs(srv).Update(ctxT(t), back, metav1.UpdateOptions{})
		fatalIf(t, err)
		// Back to ClusterIP: the unset policy defaults again.
		checkService(t, srv, sh, got, accept(single, sh.primary()))
	}},
	{"primary clusterIP is immutable", func(t *testing.T, srv *Server, sh shape) {
		created := mustCreate(t, srv, newService("immutable"))
		chg := created.DeepCopy()
		chg.Spec.ClusterIP = static(sh.primary(), 20)
		chg.Spec.ClusterIPs = []string{chg.Spec.ClusterIP}
		got, err := svcs(srv).Update(ctxT(t), chg, metav1.UpdateOptions{})
		expectOutcome(t, srv, sh, got, err, refused("may not change once set"))
	}},
	{"1.16 ipFamily is immutable and kept by GA clients", func(t *testing.T, srv *Server, sh shape) {
		ctx := ctxT(t)
		_, err := createService(ctx, srv, newService("legacy-imm"), sh.primary())
		fatalIf(t, err)
		// A GA client (no ipFamily field) updates it: ipFamily stays.
		cur, err := svcs(srv).Get(ctx, "legacy-imm", metav1.GetOptions{})
		fatalIf(t, err)
		cur.Labels = map[string]string{"touched": "yes"}
		_, err = svcs(srv).Update(ctx, cur, metav1.UpdateOptions{})
		fatalIf(t, err)
		u, err := srv.Dynamic.Resource(serviceGVR).Namespace("default").Get(ctx, "legacy-imm", metav1.GetOptions{})
		fatalIf(t, err)
		if fam, _, _ := unstructured.NestedString(u.Object, "spec", "ipFamily"); fam != string(sh.primary()) {
			t.Errorf("after a GA update ipFamily = %q, want %s", fam, sh.primary())
		}
		fatalIf(t, unstructured.SetNestedField(u.Object, string(sh.other()), "spec", "ipFamily"))
		_, err = srv.Dynamic.Resource(serviceGVR).Namespace("default").Update(ctx, u, metav1.UpdateOptions{})
		expectOutcome(t, srv, sh, nil, err, refused(fmt.Sprintf(`spec.ipFamily: Invalid value: "%s": field is immutable`, sh.other())))
	}},
}

func ptr[T any](v T) *T { return &v }
