package integration

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"

	"github.com/duet-net/duet/internal/alloc"
	"github.com/duet-net/duet/internal/etcdstore"
	"github.com/duet-net/duet/test/harness"
)

// TestRestartDropsAFamily is the upstream way back from dual-stack to
// IPv4-only: duet server restarted on its data directory (and etcd) with
// only the IPv4 entries of --service-cluster-ip-range and --cluster-cidr.
// While a RequireDualStack Service exists the server refuses to start,
// naming it and spec.ipFamilyPolicy; once it is gone, the restart turns
// every Service of two families SingleStack IPv4 (same IPv4 cluster IP),
// kube-dns too, LoadBalancer ingress IPv4 only, every Node's pod CIDRs its
// IPv4 one, and leaves nothing of the dropped ranges in etcd: no IPAddress,
// node CIDR or load balancer record, no field of any object. Records left
// by a server killed half way are cleaned up at the next start.
func TestRestartDropsAFamily(t *testing.T) {
	t.Parallel()
	const pods4, pods6 = "10.244.0.0/16", "fd00:10:244::/56"
	const pool4, pool6 = "192.0.2.0/28", "2001:db8:0:2::/124"
	// What no key or value of etcd may contain afterwards: the dropped
	// ranges' addresses as the API spells them.
	dropped := []string{"fd00:10:96:", "fd00:10:244:", "2001:db8:0:2:"}
	etcdURL := startEtcd(t)
	etcd, err := clientv3.New(clientv3.Config{Endpoints: []string{etcdURL}, DialTimeout: 10 * time.Second})
	fatalIf(t, err)
	t.Cleanup(func() { etcd.Close() })
	srv := StartServer(t, ServerOptions{
		ServiceRanges: v4Range + "," + v6Range, ClusterCIDR: pods4 + "," + pods6, EtcdServers: etcdURL, RepairFast: true,
		Extra: []string{"--load-balancer-ip-pool", pool4 + "," + pool6},
	})
	ctx := ctxT(t)

	nodeNames := []string{"node-a", "node-b"}
	for _, n := range nodeNames {
		_, err := srv.Client.CoreV1().Nodes().Create(ctx, newNode(n), metav1.CreateOptions{})
		fatalIf(t, err)
	}
	podCIDRs := map[string][]string{}
	eventually(t, controllerWait, "both Nodes get two pod CIDRs", func() error {
		for _, name := range nodeNames {
			n, err := srv.Client.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
			if err != nil {
				return err
			}
			if len(n.Spec.PodCIDRs) != 2 {
				return fmt.Errorf("%s has podCIDRs %v", name, n.Spec.PodCIDRs)
			}
			podCIDRs[name] = n.Spec.PodCIDRs
		}
		return nil
	})

	prefer, require := corev1.IPFamilyPolicyPreferDualStack, corev1.IPFamilyPolicyRequireDualStack
	asLB := func(s *corev1.Service) { s.Spec.Type = corev1.ServiceTypeLoadBalancer }
	headless := func(s *corev1.Service) { s.Spec.ClusterIP = corev1.ClusterIPNone }
	noSelector := func(s *corev1.Service) { s.Spec.Selector = nil }
	svcs := srv.Client.CoreV1().Services("default")
	created := map[string]*corev1.Service{}
	for _, s := range []*corev1.Service{
		newService("web", policy(prefer)),
		newService("single"),
		newService("lb", policy(prefer), asLB),
		newService("headless", policy(prefer), headless),
		newService("headless-any", headless, noSelector),
		newService("require", policy(require)),
	} {
		c, err := svcs.Create(ctx, s, metav1.CreateOptions{})
		fatalIf(t, err)
		created[s.Name] = c
	}
	if len(created["web"].Spec.ClusterIPs) != 2 || len(created["single"].Spec.ClusterIPs) != 1 {
		t.Fatalf("web %v, single %v: want two cluster IPs and one", created["web"].Spec.ClusterIPs, created["single"].Spec.ClusterIPs)
	}
	lbIngress := waitIngress(t, srv, "lb", 2)

	// A ready pod of both families behind web and headless, as an agent
	// reports it.
	pod4 := strings.TrimSuffix(podCIDRs["node-a"][0], "0/24") + "5"
	pod6 := strings.TrimSuffix(podCIDRs["node-a"][1], "/64") + "5"
	pod, err := srv.Client.CoreV1().Pods("default").Create(ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "web-1", Labels: map[string]string{"app": "web"}},
		Spec:       corev1.PodSpec{NodeName: "node-a", Containers: []corev1.Container{{Name: "c", Image: "agnhost"}}},
	}, metav1.CreateOptions{})
	fatalIf(t, err)
	setPodIPs(t, srv, pod, pod4, pod6)
	eventually(t, controllerWait, "web has EndpointSlices of both families", func() error {
		return sliceFamilies(ctx, srv, "web", "IPv4", "IPv6")
	})

	t.Run("refused while a RequireDualStack Service exists", func(t *testing.T) {
		fatalIf(t, srv.Stop())
		out, err := runServer(ctx, srv.DataDir, etcdURL, v4Range, pods4)
		var exit *exec.ExitError
		if !errors.As(err, &exit) || exit.ExitCode() <= 0 {
			t.Fatalf("server with IPv4 only: %v, want a non-zero exit:\n%s", err, out)
		}
		for _, want := range []string{"--service-cluster-ip-range", "cannot drop the IPv6 range " + v6Range, "spec.ipFamilyPolicy is RequireDualStack for default/require.", "PreferDualStack"} {
			if !strings.Contains(out, want) {
				t.Errorf("output lacks %q:\n%s", want, out)
			}
		}
		for _, exempt := range []string{"kube-dns", "default/web", "headless-any"} {
			if strings.Contains(out, exempt) {
				t.Errorf("the refusal names %s:\n%s", exempt, out)
			}
		}
		// Nothing changed: the dual-stack flags start, and the Service can
		// be deleted.
		srv.Restart(t)
		fatalIf(t, srv.Client.CoreV1().Services("default").Delete(ctx, "require", metav1.DeleteOptions{}))
	})
	if t.Failed() {
		return
	}

	fatalIf(t, srv.Stop())
	srv.SetFlag("--service-cluster-ip-range", v4Range)
	srv.SetFlag("--cluster-cidr", pods4)
	srv.SetFlag("--load-balancer-ip-pool", pool4)
	start := time.Now()
	srv.Restart(t)
	svcs = srv.Client.CoreV1().Services("default")
	single := corev1.IPFamilyPolicySingleStack
	wantV4 := func(s *corev1.Service, ip string) error {
		if s.Spec.IPFamilyPolicy == nil || *s.Spec.IPFamilyPolicy != single || !slices.Equal(s.Spec.IPFamilies, []corev1.IPFamily{corev1.IPv4Protocol}) ||
			!slices.Equal(s.Spec.ClusterIPs, []string{ip}) || s.Spec.ClusterIP != ip {
			return fmt.Errorf("%s/%s: %v %v %v, want SingleStack [IPv4] [%s]", s.Namespace, s.Name, s.Spec.IPFamilyPolicy, s.Spec.IPFamilies, s.Spec.ClusterIPs, ip)
		}
		return nil
	}
	eventually(t, controllerWait, "Services, Nodes and records lose IPv6", func() error {
		for _, name := range []string{"web", "lb", "single"} {
			s, err := svcs.Get(ctx, name, metav1.GetOptions{})
			if err != nil {
				return err
			}
			if err := wantV4(s, created[name].Spec.ClusterIPs[0]); err != nil {
				return err
			}
		}
		dns, err := srv.Client.CoreV1().Services("kube-system").Get(ctx, "kube-dns", metav1.GetOptions{})
		if err != nil {
			return err
		}
		if err := wantV4(dns, "10.96.0.10"); err != nil {
			return err
		}
		s, err := svcs.Get(ctx, "headless", metav1.GetOptions{})
		if err != nil {
			return err
		}
		if !slices.Equal(s.Spec.IPFamilies, []corev1.IPFamily{corev1.IPv4Protocol}) {
			return fmt.Errorf("headless: ipFamilies %v", s.Spec.IPFamilies)
		}
		lb, err := svcs.Get(ctx, "lb", metav1.GetOptions{})
		if err != nil {
			return err
		}
		if in := lb.Status.LoadBalancer.Ingress; len(in) != 1 || in[0].IP != lbIngress[1] && in[0].IP != lbIngress[0] || !netip.MustParseAddr(in[0].IP).Is4() {
			return fmt.Errorf("lb: ingress %v, want its IPv4 one of %v", in, lbIngress)
		}
		for _, name := range nodeNames {
			n, err := srv.Client.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
			if err != nil {
				return err
			}
			if !slices.Equal(n.Spec.PodCIDRs, podCIDRs[name][:1]) || n.Spec.PodCIDR != podCIDRs[name][0] {
				return fmt.Errorf("%s: podCIDRs %v podCIDR %s, want %s", name, n.Spec.PodCIDRs, n.Spec.PodCIDR, podCIDRs[name][0])
			}
		}
		return sliceFamilies(ctx, srv, "web", "IPv4")
	})
	t.Logf("IPv6 gone from Services and Nodes %v after the restart began", time.Since(start).Round(time.Millisecond))

	t.Run("what keeps its families", func(t *testing.T) {
		h, err := svcs.Get(ctx, "headless-any", metav1.GetOptions{})
		fatalIf(t, err)
		if len(h.Spec.IPFamilies) != 2 {
			t.Errorf("headless Service without selector: ipFamilies %v, want both (as on any cluster)", h.Spec.IPFamilies)
		}
		k, err := svcs.Get(ctx, "kubernetes", metav1.GetOptions{})
		fatalIf(t, err)
		if !slices.Equal(k.Spec.ClusterIPs, []string{"10.96.0.1"}) {
			t.Errorf("kubernetes: clusterIPs %v", k.Spec.ClusterIPs)
		}
	})

	t.Run("no trace of the dropped ranges in etcd", func(t *testing.T) {
		// The agent's part: pods lose their IPv6 address.
		pod, err := srv.Client.CoreV1().Pods("default").Get(ctx, "web-1", metav1.GetOptions{})
		fatalIf(t, err)
		setPodIPs(t, srv, pod, pod4)
		eventually(t, controllerWait, "etcd holds nothing of the dropped ranges", func() error {
			return noTrace(ctx, etcd, dropped)
		})
		v6, err := srv.Client.NetworkingV1().IPAddresses().List(ctx, metav1.ListOptions{LabelSelector: "ipaddress.kubernetes.io/ip-family=IPv6"})
		fatalIf(t, err)
		if len(v6.Items) != 0 {
			t.Errorf("%d IPv6 IPAddress objects left", len(v6.Items))
		}
	})

	t.Run("a killed server's leftovers go at the next start", func(t *testing.T) {
		// What a server killed half way leaves: a Node still of both
		// families and its IPv6 node CIDR record, an IPv6 IPAddress and
		// load balancer record of a Service that no longer holds them.
		n := newNode("node-late")
		n.Spec.PodCIDRs = []string{"10.244.200.0/24", "fd00:10:244:c8::/64"}
		_, err := srv.Client.CoreV1().Nodes().Create(ctx, n, metav1.CreateOptions{})
		fatalIf(t, err)
		_, err = srv.Client.NetworkingV1().IPAddresses().Create(ctx, &networkingv1.IPAddress{
			ObjectMeta: metav1.ObjectMeta{Name: "fd00:10:96::77", Labels: map[string]string{"ipaddress.kubernetes.io/ip-family": "IPv6", "ipaddress.kubernetes.io/managed-by": "ipallocator.k8s.io"}},
			Spec:       networkingv1.IPAddressSpec{ParentRef: &networkingv1.ParentReference{Resource: "services", Namespace: "default", Name: "web"}},
		}, metav1.CreateOptions{})
		fatalIf(t, err)
		owner := alloc.WithOwner(ctx, alloc.Owner{Resource: "services", Namespace: "default", Name: "lb"})
		for prefix, key := range map[string]string{"/duet/allocations/lbips/": "2001:db8:0:2::5/128", "/duet/allocations/nodecidrs/": "fd00:10:244:c8::/64"} {
			st, err := etcdstore.New(etcd, prefix)
			fatalIf(t, err)
			fatalIf(t, st.Create(owner, netip.MustParsePrefix(key)))
		}
		if noTrace(ctx, etcd, dropped) == nil {
			t.Fatal("the leftovers are not in etcd")
		}
		srv.Kill(t)
		srv.Restart(t)
		eventually(t, controllerWait, "the leftovers are gone", func() error {
			n, err := srv.Client.CoreV1().Nodes().Get(ctx, "node-late", metav1.GetOptions{})
			if err != nil {
				return err
			}
			if !slices.Equal(n.Spec.PodCIDRs, []string{"10.244.200.0/24"}) {
				return fmt.Errorf("node-late: podCIDRs %v", n.Spec.PodCIDRs)
			}
			return noTrace(ctx, etcd, dropped)
		})
	})

	t.Run("adding the family back", func(t *testing.T) {
		fatalIf(t, srv.Stop())
		srv.SetFlag("--service-cluster-ip-range", v4Range+","+v6Range)
		srv.SetFlag("--cluster-cidr", pods4+","+pods6)
		srv.Restart(t)
		eventually(t, controllerWait, "Nodes get an IPv6 pod CIDR again", func() error {
			n, err := srv.Client.CoreV1().Nodes().Get(ctx, "node-a", metav1.GetOptions{})
			if err != nil {
				return err
			}
			if len(n.Spec.PodCIDRs) != 2 || n.Spec.PodCIDRs[0] != podCIDRs["node-a"][0] {
				return fmt.Errorf("node-a: podCIDRs %v", n.Spec.PodCIDRs)
			}
			return nil
		})
		s, err := srv.Client.CoreV1().Services("default").Create(ctx, newService("again", policy(prefer)), metav1.CreateOptions{})
		fatalIf(t, err)
		if len(s.Spec.ClusterIPs) != 2 {
			t.Errorf("a PreferDualStack Service after adding IPv6 back: %v", s.Spec.ClusterIPs)
		}
	})
}

// runServer runs duet server on dataDir until it exits (a refusal) or
// startTimeout passes, and returns its output.
func runServer(ctx context.Context, dataDir, etcdURL, svcRanges, clusterCIDR string) (string, error) {
	cctx, cancel := context.WithTimeout(ctx, startTimeout)
	defer cancel()
	out, err := exec.CommandContext(cctx, harness.Bin, "server", "--data-dir", dataDir, "--secure-port", "0", "--etcd-servers", etcdURL,
		"--service-cluster-ip-range", svcRanges, "--cluster-cidr", clusterCIDR).CombinedOutput()
	return string(out), err
}

// setPodIPs writes a ready pod's addresses, as its agent does.
func setPodIPs(t *testing.T, srv *Server, pod *corev1.Pod, ips ...string) {
	t.Helper()
	pod = pod.DeepCopy()
	now := metav1.Now()
	pod.Status.Phase = corev1.PodRunning
	pod.Status.PodIPs = nil
	for _, ip := range ips {
		pod.Status.PodIPs = append(pod.Status.PodIPs, corev1.PodIP{IP: ip})
	}
	pod.Status.PodIP = ips[0]
	pod.Status.Conditions = []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue, LastTransitionTime: now}}
	_, err := srv.Client.CoreV1().Pods(pod.Namespace).UpdateStatus(context.Background(), pod, metav1.UpdateOptions{})
	fatalIf(t, err)
}

// sliceFamilies says whether the EndpointSlices of default/svc are of
// exactly the address types want.
func sliceFamilies(ctx context.Context, srv *Server, svc string, want ...string) error {
	list, err := srv.Client.DiscoveryV1().EndpointSlices("default").List(ctx, metav1.ListOptions{
		LabelSelector: labels.Set{"kubernetes.io/service-name": svc}.String()})
	if err != nil {
		return err
	}
	var got []string
	for _, s := range list.Items {
		got = append(got, string(s.AddressType))
	}
	slices.Sort(got)
	if !slices.Equal(slices.Compact(got), want) || len(got) != len(want) {
		return fmt.Errorf("EndpointSlices of %s are of %v, want %v", svc, got, want)
	}
	return nil
}

// noTrace scans every key and value of etcd, but the Events (a log that
// expires), for the dropped strings, and the allocation records for keys
// of IPv6 (their keys spell addresses in hex).
func noTrace(ctx context.Context, etcd *clientv3.Client, dropped []string) error {
	var found []string
	err := etcdstore.Scan(ctx, etcd, "\x00", "\xff", false, func(key, value []byte) error {
		k := string(key)
		if strings.HasPrefix(k, "/registry/events/") {
			return nil
		}
		if strings.HasPrefix(k, "/duet/allocations/") && strings.Contains(k, "/v6/") {
			found = append(found, k)
			return nil
		}
		for _, d := range dropped {
			if strings.Contains(k, d) || strings.Contains(string(value), d) {
				found = append(found, fmt.Sprintf("%s (%s)", k, d))
				break
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	if len(found) > 0 {
		return fmt.Errorf("etcd still holds the dropped ranges in %d keys: %v", len(found), found)
	}
	return nil
}
