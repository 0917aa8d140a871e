package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// liveWait is how soon the running cluster must have taken a family up.
const liveWait = 10 * time.Second

// TestLiveAddFamily is the live way from IPv4-only to dual-stack: an IPv6
// ServiceCIDR and an IPv6 ClusterCIDR applied to a running IPv4 cluster
// turn it dual-stack with nothing restarted. Within 10 s every Node has an
// IPv6 pod CIDR appended (its IPv4 one first and unchanged), a
// PreferDualStack Service gets an IPv6 cluster IP, RequireDualStack is
// accepted, kube-dns has both families, and the record of the cluster's
// ranges shows both; existing Services keep their family until asked.
// Then kubectl delete of the IPv6 objects takes the family out again,
// live: refused while RequireDualStack Services exist, then every Service
// becomes SingleStack IPv4 keeping its address, the Nodes keep their IPv4
// pod CIDR alone, and nothing of IPv6 is left in the API or the record.
func TestLiveAddFamily(t *testing.T) {
	t.Parallel()
	const pods4, pods6, svc6 = "10.244.0.0/16", "fd00:10:244::/56", "fd00:10:96::/108"
	srv := StartServer(t, ServerOptions{ServiceRanges: v4Range, ClusterCIDR: pods4})
	pid := srv.PID()
	ctx := ctxT(t)
	nodes := srv.Client.CoreV1().Nodes()
	names := []string{"node-a", "node-b"}
	for _, n := range names {
		_, err := nodes.Create(ctx, newNode(n), metav1.CreateOptions{})
		fatalIf(t, err)
	}
	before := map[string]string{}
	eventually(t, controllerWait, "both Nodes get an IPv4 pod CIDR", func() error {
		for _, name := range names {
			n, err := nodes.Get(ctx, name, metav1.GetOptions{})
			if err != nil {
				return err
			}
			if len(n.Spec.PodCIDRs) != 1 {
				return fmt.Errorf("%s has podCIDRs %v", name, n.Spec.PodCIDRs)
			}
			before[name] = n.Spec.PodCIDRs[0]
		}
		return nil
	})
	svcs := srv.Client.CoreV1().Services("default")
	svc := func(name string, policy corev1.IPFamilyPolicy) *corev1.Service {
		return &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: corev1.ServiceSpec{
			IPFamilyPolicy: &policy, Ports: []corev1.ServicePort{{Port: 80, TargetPort: intstr.FromInt32(8080)}},
		}}
	}
	old, err := svcs.Create(ctx, svc("old", corev1.IPFamilyPolicySingleStack), metav1.CreateOptions{})
	fatalIf(t, err)
	if _, err := svcs.Create(ctx, svc("require-early", corev1.IPFamilyPolicyRequireDualStack), metav1.CreateOptions{}); !apierrors.IsInvalid(err) {
		t.Fatalf("RequireDualStack on the IPv4-only cluster: %v, want a 422", err)
	}

	// kubectl apply of the IPv6 ranges, nothing restarted.
	srv.MustKubectl(t, `apiVersion: networking.k8s.io/v1
kind: ServiceCIDR
metadata: {name: ipv6}
spec: {cidrs: ["`+svc6+`"]}
---
apiVersion: networking.duet.dev/v1alpha1
kind: ClusterCIDR
metadata: {name: ipv6}
spec: {cidr: "`+pods6+`", nodeMaskSize: 64}
`, "apply", "-f", "-")
	applied := time.Now()

	t.Run("Nodes get an IPv6 pod CIDR appended", func(t *testing.T) {
		after := map[string][]string{}
		eventually(t, liveWait, "both Nodes get a second pod CIDR", func() error {
			for _, name := range names {
				n, err := nodes.Get(ctx, name, metav1.GetOptions{})
				if err != nil {
					return err
				}
				if len(n.Spec.PodCIDRs) != 2 {
					return fmt.Errorf("%s has podCIDRs %v", name, n.Spec.PodCIDRs)
				}
				after[name] = n.Spec.PodCIDRs
			}
			return nil
		})
		t.Logf("IPv6 pod CIDRs on both Nodes %v after the apply", time.Since(applied).Round(time.Millisecond))
		v6 := netip.MustParsePrefix(pods6)
		for _, name := range names {
			if after[name][0] != before[name] {
				t.Errorf("%s: primary pod CIDR changed from %s to %s", name, before[name], after[name][0])
			}
			if p, err := netip.ParsePrefix(after[name][1]); err != nil || !v6.Contains(p.Addr()) || p.Bits() != 64 {
				t.Errorf("%s: podCIDRs[1] = %q, want a /64 of %s", name, after[name][1], v6)
			}
		}
		if after[names[0]][1] == after[names[1]][1] {
			t.Errorf("both Nodes got IPv6 pod CIDR %s", after[names[0]][1])
		}
		// A Node registered from now on gets both at once.
		_, err := nodes.Create(ctx, newNode("node-c"), metav1.CreateOptions{})
		fatalIf(t, err)
		eventually(t, liveWait, "a new Node gets both families", func() error {
			n, err := nodes.Get(ctx, "node-c", metav1.GetOptions{})
			if err != nil {
				return err
			}
			if len(n.Spec.PodCIDRs) != 2 {
				return fmt.Errorf("node-c has podCIDRs %v", n.Spec.PodCIDRs)
			}
			return nil
		})
	})

	t.Run("Services may be dual-stack at once", func(t *testing.T) {
		v6 := netip.MustParsePrefix(svc6)
		var prefer *corev1.Service
		eventually(t, liveWait, "a PreferDualStack Service gets an IPv6 cluster IP", func() error {
			_ = svcs.Delete(ctx, "prefer", metav1.DeleteOptions{})
			s, err := svcs.Create(ctx, svc("prefer", corev1.IPFamilyPolicyPreferDualStack), metav1.CreateOptions{})
			if err != nil {
				return err
			}
			if len(s.Spec.ClusterIPs) != 2 {
				return fmt.Errorf("prefer: clusterIPs %v", s.Spec.ClusterIPs)
			}
			prefer = s
			return nil
		})
		if !slices.Equal(prefer.Spec.IPFamilies, []corev1.IPFamily{corev1.IPv4Protocol, corev1.IPv6Protocol}) || !v6.Contains(netip.MustParseAddr(prefer.Spec.ClusterIPs[1])) {
			t.Errorf("prefer: ipFamilies %v clusterIPs %v, want IPv4 first and an IPv6 address of %s", prefer.Spec.IPFamilies, prefer.Spec.ClusterIPs, v6)
		}
		req, err := svcs.Create(ctx, svc("require", corev1.IPFamilyPolicyRequireDualStack), metav1.CreateOptions{})
		fatalIf(t, err)
		if len(req.Spec.ClusterIPs) != 2 {
			t.Errorf("require: clusterIPs %v", req.Spec.ClusterIPs)
		}
		// An existing Service keeps its family until asked, then upgrades
		// keeping its IPv4 address, as after the restart way.
		s, err := svcs.Get(ctx, "old", metav1.GetOptions{})
		fatalIf(t, err)
		if !slices.Equal(s.Spec.ClusterIPs, old.Spec.ClusterIPs) {
			t.Errorf("old: clusterIPs %v, were %v", s.Spec.ClusterIPs, old.Spec.ClusterIPs)
		}
		p := corev1.IPFamilyPolicyPreferDualStack
		s.Spec.IPFamilyPolicy = &p
		s, err = svcs.Update(ctx, s, metav1.UpdateOptions{})
		fatalIf(t, err)
		if len(s.Spec.ClusterIPs) != 2 || s.Spec.ClusterIPs[0] != old.Spec.ClusterIPs[0] || !v6.Contains(netip.MustParseAddr(s.Spec.ClusterIPs[1])) {
			t.Errorf("old upgraded: clusterIPs %v, want %s and an IPv6 address", s.Spec.ClusterIPs, old.Spec.ClusterIPs[0])
		}
	})

	t.Run("kube-dns gains the family", func(t *testing.T) {
		eventually(t, liveWait, "kube-dns has both families", func() error {
			dns, err := srv.Client.CoreV1().Services("kube-system").Get(ctx, "kube-dns", metav1.GetOptions{})
			if err != nil {
				return err
			}
			if !slices.Equal(dns.Spec.ClusterIPs, []string{"10.96.0.10", "fd00:10:96::a"}) {
				return fmt.Errorf("kube-dns clusterIPs %v", dns.Spec.ClusterIPs)
			}
			return nil
		})
	})

	t.Run("the record of the cluster's ranges shows both families", func(t *testing.T) {
		etcd := srv.EtcdClient(t)
		eventually(t, liveWait, "the record", func() error {
			cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			defer cancel()
			resp, err := etcd.Get(cctx, "/duet/cluster-ranges")
			if err != nil || len(resp.Kvs) == 0 {
				return fmt.Errorf("reading the record: %v", err)
			}
			var rec struct {
				ServiceRanges []string `json:"serviceRanges"`
				ClusterCIDRs  []string `json:"clusterCIDRs"`
				Flags         *struct {
					ServiceRanges []string `json:"serviceRanges"`
				} `json:"flags"`
			}
			fatalIf(t, json.Unmarshal(resp.Kvs[0].Value, &rec))
			if !slices.Equal(rec.ServiceRanges, []string{v4Range, svc6}) || !slices.Equal(rec.ClusterCIDRs, []string{pods4, pods6}) {
				return fmt.Errorf("record %s", resp.Kvs[0].Value)
			}
			if rec.Flags == nil || !slices.Equal(rec.Flags.ServiceRanges, []string{v4Range}) {
				return fmt.Errorf("record keeps no flags of the start: %s", resp.Kvs[0].Value)
			}
			return nil
		})
	})

	if srv.PID() != pid {
		t.Errorf("the server restarted: pid %d, was %d", srv.PID(), pid)
	}

	// The server restarted with its original flags keeps the family: the
	// objects, not the flags, are the cluster's ranges.
	t.Run("a restart with the IPv4-only flags keeps the family", func(t *testing.T) {
		fatalIf(t, srv.Stop())
		srv.Restart(t)
		s, err := srv.Client.CoreV1().Services("default").Create(ctx, svc("after-restart", corev1.IPFamilyPolicyRequireDualStack), metav1.CreateOptions{})
		fatalIf(t, err)
		if len(s.Spec.ClusterIPs) != 2 {
			t.Errorf("after-restart: clusterIPs %v", s.Spec.ClusterIPs)
		}
	})

	t.Run("kubectl delete removes the family live", func(t *testing.T) {
		pid := srv.PID()
		etcd := srv.EtcdClient(t)
		// The restarted server has clients of its own, and leads once the
		// lease of the one before expires: a Node given pod CIDRs (node
		// IPAM runs in the leader) says it does.
		svcs, nodes := srv.Client.CoreV1().Services("default"), srv.Client.CoreV1().Nodes()
		_, err := nodes.Create(ctx, newNode("node-d"), metav1.CreateOptions{})
		fatalIf(t, err)
		names := append(slices.Clone(names), "node-c")
		eventually(t, time.Minute, "the restarted server leads", func() error {
			n, err := nodes.Get(ctx, "node-d", metav1.GetOptions{})
			if err != nil {
				return err
			}
			if len(n.Spec.PodCIDRs) != 2 {
				return fmt.Errorf("node-d has podCIDRs %v", n.Spec.PodCIDRs)
			}
			before["node-d"] = n.Spec.PodCIDRs[0]
			return nil
		})
		names = append(names, "node-d")
		for _, name := range names[len(names)-2:] {
			n, err := nodes.Get(ctx, name, metav1.GetOptions{})
			fatalIf(t, err)
			before[name] = n.Spec.PodCIDRs[0]
		}
		_, stderr, err := srv.Kubectl("", "delete", "servicecidr", "ipv6")
		if err == nil || !strings.Contains(stderr, "default/require (spec.ipFamilyPolicy is RequireDualStack)") {
			t.Fatalf("kubectl delete servicecidr ipv6 with RequireDualStack Services: %v %s, want a refusal naming them", err, stderr)
		}
		srv.MustKubectl(t, "", "patch", "service", "require", "-p", `{"spec":{"ipFamilyPolicy":"PreferDualStack"}}`)
		srv.MustKubectl(t, "", "delete", "service", "after-restart")
		kept := map[string]string{}
		for _, name := range []string{"old", "prefer", "require"} {
			s, err := svcs.Get(ctx, name, metav1.GetOptions{})
			fatalIf(t, err)
			kept[name] = s.Spec.ClusterIPs[0]
		}
		srv.MustKubectl(t, "", "delete", "--wait=false", "servicecidr/ipv6", "clustercidr/ipv6")
		deleted := time.Now()
		eventually(t, liveWait, "Services are SingleStack IPv4 with their addresses", func() error {
			for name, ip := range kept {
				s, err := svcs.Get(ctx, name, metav1.GetOptions{})
				if err != nil {
					return err
				}
				if p := s.Spec.IPFamilyPolicy; p == nil || *p != corev1.IPFamilyPolicySingleStack || !slices.Equal(s.Spec.ClusterIPs, []string{ip}) {
					return fmt.Errorf("%s: policy %v clusterIPs %v, want SingleStack [%s]", name, p, s.Spec.ClusterIPs, ip)
				}
			}
			dns, err := srv.Client.CoreV1().Services("kube-system").Get(ctx, "kube-dns", metav1.GetOptions{})
			if err != nil {
				return err
			}
			if !slices.Equal(dns.Spec.ClusterIPs, []string{"10.96.0.10"}) {
				return fmt.Errorf("kube-dns clusterIPs %v", dns.Spec.ClusterIPs)
			}
			return nil
		})
		eventually(t, liveWait, "the Nodes keep their IPv4 pod CIDR alone", func() error {
			for _, name := range names {
				n, err := nodes.Get(ctx, name, metav1.GetOptions{})
				if err != nil {
					return err
				}
				if !slices.Equal(n.Spec.PodCIDRs, []string{before[name]}) {
					return fmt.Errorf("%s has podCIDRs %v, want [%s]", name, n.Spec.PodCIDRs, before[name])
				}
			}
			return nil
		})
		t.Logf("Services and Nodes IPv4-only %v after the delete", time.Since(deleted).Round(time.Millisecond))
		eventually(t, liveWait, "nothing of IPv6 is left in the API or etcd", func() error {
			ips, err := srv.Client.NetworkingV1().IPAddresses().List(ctx, metav1.ListOptions{})
			if err != nil {
				return err
			}
			for _, ip := range ips.Items {
				if netip.MustParseAddr(ip.Name).Is6() {
					return fmt.Errorf("IPAddress %s is left", ip.Name)
				}
			}
			if _, err := srv.Client.NetworkingV1().ServiceCIDRs().Get(ctx, "ipv6", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
				return fmt.Errorf("ServiceCIDR ipv6 is still there: %v", err)
			}
			// Nor anything else in etcd: objects, allocation records, the
			// record of the cluster's ranges.
			cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			defer cancel()
			return noTrace(cctx, etcd, []string{"fd00:10:96:", "fd00:10:244:"})
		})
		if _, err := svcs.Create(ctx, svc("require-late", corev1.IPFamilyPolicyRequireDualStack), metav1.CreateOptions{}); !apierrors.IsInvalid(err) {
			t.Errorf("RequireDualStack after the removal: %v, want a 422", err)
		}
		if srv.PID() != pid {
			t.Errorf("the server restarted: pid %d, was %d", srv.PID(), pid)
		}
	})
}

// TestLiveAddFamilyIPv6Primary: the same on an IPv6-only cluster gaining
// IPv4, which stays second everywhere.
func TestLiveAddFamilyIPv6Primary(t *testing.T) {
	t.Parallel()
	srv := StartServer(t, ServerOptions{ServiceRanges: v6Range, ClusterCIDR: "fd00:10:244::/56"})
	ctx := ctxT(t)
	_, err := srv.Client.CoreV1().Nodes().Create(ctx, newNode("n1"), metav1.CreateOptions{})
	fatalIf(t, err)
	srv.MustKubectl(t, `apiVersion: networking.k8s.io/v1
kind: ServiceCIDR
metadata: {name: ipv4}
spec: {cidrs: ["`+v4Range+`"]}
---
apiVersion: networking.duet.dev/v1alpha1
kind: ClusterCIDR
metadata: {name: ipv4}
spec: {cidr: "10.244.0.0/16"}
`, "apply", "-f", "-")
	eventually(t, liveWait, "n1 gets an IPv4 pod CIDR after its IPv6 one", func() error {
		n, err := srv.Client.CoreV1().Nodes().Get(ctx, "n1", metav1.GetOptions{})
		if err != nil {
			return err
		}
		if len(n.Spec.PodCIDRs) != 2 || !netip.MustParsePrefix(n.Spec.PodCIDRs[0]).Addr().Is6() || !netip.MustParsePrefix(n.Spec.PodCIDRs[1]).Addr().Is4() {
			return fmt.Errorf("podCIDRs %v", n.Spec.PodCIDRs)
		}
		return nil
	})
	p := corev1.IPFamilyPolicyPreferDualStack
	s, err := srv.Client.CoreV1().Services("default").Create(ctx, &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "web"},
		Spec: corev1.ServiceSpec{IPFamilyPolicy: &p, Ports: []corev1.ServicePort{{Port: 80}}}}, metav1.CreateOptions{})
	fatalIf(t, err)
	if !slices.Equal(s.Spec.IPFamilies, []corev1.IPFamily{corev1.IPv6Protocol, corev1.IPv4Protocol}) {
		t.Errorf("ipFamilies %v, want IPv6 first", s.Spec.IPFamilies)
	}
}

// TestDeletedDefaultClusterCIDRStaysDeleted: on a cluster started
// dual-stack by its flags, kubectl delete of the ClusterCIDR default-ipv6
// takes IPv6 from the Nodes live, and a restart with the same flags, as
// after a crash, does not bring it back: the server acts on what its
// flags changed since the last start, not on the objects.
func TestDeletedDefaultClusterCIDRStaysDeleted(t *testing.T) {
	t.Parallel()
	srv := StartServer(t, ServerOptions{ServiceRanges: v4Range + "," + v6Range, ClusterCIDR: "10.244.0.0/16,fd00:10:244::/56"})
	ctx := ctxT(t)
	_, err := srv.Client.CoreV1().Nodes().Create(ctx, newNode("n1"), metav1.CreateOptions{})
	fatalIf(t, err)
	podCIDRs := func(n int) func() error {
		return func() error {
			node, err := srv.Client.CoreV1().Nodes().Get(ctx, "n1", metav1.GetOptions{})
			if err != nil {
				return err
			}
			if len(node.Spec.PodCIDRs) != n {
				return fmt.Errorf("podCIDRs %v, want %d", node.Spec.PodCIDRs, n)
			}
			return nil
		}
	}
	eventually(t, controllerWait, "n1 gets both pod CIDRs", podCIDRs(2))
	srv.MustKubectl(t, "", "delete", "clustercidr", "default-ipv6")
	eventually(t, liveWait, "n1 keeps its IPv4 pod CIDR alone", podCIDRs(1))

	fatalIf(t, srv.Stop())
	srv.Restart(t)
	if out, _, err := srv.Kubectl("", "get", "clustercidr", "default-ipv6"); err == nil {
		t.Errorf("default-ipv6 is back after a restart with the same flags:\n%s", out)
	}
	// A Node registered now gets IPv4 alone, and n1 keeps one pod CIDR.
	_, err = srv.Client.CoreV1().Nodes().Create(ctx, newNode("n2"), metav1.CreateOptions{})
	fatalIf(t, err)
	eventually(t, time.Minute, "n2 gets an IPv4 pod CIDR alone", func() error {
		node, err := srv.Client.CoreV1().Nodes().Get(ctx, "n2", metav1.GetOptions{})
		if err != nil {
			return err
		}
		if len(node.Spec.PodCIDRs) != 1 || !netip.MustParsePrefix(node.Spec.PodCIDRs[0]).Addr().Is4() {
			return fmt.Errorf("n2 podCIDRs %v", node.Spec.PodCIDRs)
		}
		return nil
	})
	fatalIf(t, podCIDRs(1)())
}
