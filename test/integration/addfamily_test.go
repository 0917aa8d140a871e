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

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/duet-net/duet/test/harness"
)

// TestRestartAddsAFamily is the upstream way from IPv4-only to dual-stack:
// duet server restarted on its data directory with an IPv6 range appended
// to --service-cluster-ip-range and --cluster-cidr. Existing Nodes get an
// IPv6 pod CIDR appended (their IPv4 one unchanged), existing Services keep
// their family and IP, new ones may be dual-stack; only appending the
// missing family to podCIDRs is allowed; and a restart that would change
// the primary family is refused naming the flag.
func TestRestartAddsAFamily(t *testing.T) {
	t.Parallel()
	const pods4, pods6 = "10.244.0.0/16", "fd00:10:244::/56"
	srv := StartServer(t, ServerOptions{ServiceRanges: v4Range, ClusterCIDR: pods4})
	ctx := ctxT(t)
	nodes := srv.Client.CoreV1().Nodes()
	names := []string{"node-a", "node-b"}
	for _, n := range names {
		_, err := nodes.Create(ctx, newNode(n), metav1.CreateOptions{})
		fatalIf(t, err)
	}
	before := map[string][]string{}
	eventually(t, controllerWait, "both Nodes get an IPv4 pod CIDR", func() error {
		for _, name := range names {
			n, err := nodes.Get(ctx, name, metav1.GetOptions{})
			if err != nil {
				return err
			}
			if len(n.Spec.PodCIDRs) != 1 {
				return fmt.Errorf("%s has podCIDRs %v", name, n.Spec.PodCIDRs)
			}
			before[name] = n.Spec.PodCIDRs
		}
		return nil
	})
	svcs := srv.Client.CoreV1().Services("default")
	svc := func(name string, policy *corev1.IPFamilyPolicy) *corev1.Service {
		return &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: corev1.ServiceSpec{
			IPFamilyPolicy: policy, Ports: []corev1.ServicePort{{Port: 80, TargetPort: intstr.FromInt32(8080)}},
		}}
	}
	prefer := corev1.IPFamilyPolicyPreferDualStack
	old, err := svcs.Create(ctx, svc("old", nil), metav1.CreateOptions{})
	fatalIf(t, err)
	oldPrefer, err := svcs.Create(ctx, svc("old-prefer", &prefer), metav1.CreateOptions{})
	fatalIf(t, err)
	if len(oldPrefer.Spec.ClusterIPs) != 1 {
		t.Fatalf("PreferDualStack on an IPv4-only cluster got %v", oldPrefer.Spec.ClusterIPs)
	}

	t.Run("only appending the missing family is allowed", func(t *testing.T) {
		// A Node given an IPv4 pod CIDR by hand, as a single-stack client
		// would, may get the IPv6 one appended by hand too. (Before the
		// restart: after it, the controller would race to append one.)
		n, err := nodes.Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node-manual"}, Spec: corev1.NodeSpec{PodCIDR: "10.99.0.0/24"}}, metav1.CreateOptions{})
		fatalIf(t, err)
		m := n.DeepCopy()
		m.Spec.PodCIDRs = []string{"10.99.0.0/24", "fd00:99::/64"}
		if _, err := nodes.Update(ctx, m, metav1.UpdateOptions{}); err != nil {
			t.Errorf("appending the missing family: %v", err)
		}
	})

	fatalIf(t, srv.Stop())
	srv.SetFlag("--service-cluster-ip-range", v4Range+","+v6Range)
	srv.SetFlag("--cluster-cidr", pods4+","+pods6)
	srv.Restart(t)
	nodes = srv.Client.CoreV1().Nodes()
	svcs = srv.Client.CoreV1().Services("default")

	t.Run("existing Nodes get an IPv6 pod CIDR appended", func(t *testing.T) {
		after := map[string][]string{}
		eventually(t, controllerWait, "both Nodes get a second pod CIDR", func() error {
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
		v6 := netip.MustParsePrefix(pods6)
		for _, name := range names {
			if after[name][0] != before[name][0] {
				t.Errorf("%s: primary pod CIDR changed from %s to %s", name, before[name][0], after[name][0])
			}
			if p, err := netip.ParsePrefix(after[name][1]); err != nil || !v6.Contains(p.Addr()) || p.Bits() != 64 {
				t.Errorf("%s: podCIDRs[1] = %q, want a /64 of %s", name, after[name][1], v6)
			}
		}
		if after[names[0]][1] == after[names[1]][1] {
			t.Errorf("both Nodes got IPv6 pod CIDR %s", after[names[0]][1])
		}

		n, err := nodes.Get(ctx, "node-a", metav1.GetOptions{})
		fatalIf(t, err)
		other := after["node-b"]
		for _, change := range [][]string{
			{n.Spec.PodCIDRs[1], n.Spec.PodCIDRs[0]}, // the primary swapped
			{n.Spec.PodCIDRs[0]},                     // the new family dropped
			{n.Spec.PodCIDRs[0], other[1]},           // another IPv6 CIDR
			{other[0], n.Spec.PodCIDRs[1]},           // another IPv4 CIDR
		} {
			m := n.DeepCopy()
			m.Spec.PodCIDRs, m.Spec.PodCIDR = change, change[0]
			_, err := nodes.Update(ctx, m, metav1.UpdateOptions{})
			if !apierrors.IsInvalid(err) || !strings.Contains(err.Error(), "spec.podCIDRs") {
				t.Errorf("changing podCIDRs %v to %v: %v, want a 422 naming spec.podCIDRs", n.Spec.PodCIDRs, change, err)
			}
		}
		m := n.DeepCopy()
		m.Spec.PodCIDRs = append(slices.Clone(n.Spec.PodCIDRs), "fd00:99::/64")
		if _, err := nodes.Update(ctx, m, metav1.UpdateOptions{}); !apierrors.IsInvalid(err) {
			t.Errorf("a third pod CIDR: %v, want a 422", err)
		}
	})

	t.Run("Services keep their family; new ones may be dual-stack", func(t *testing.T) {
		for _, was := range []*corev1.Service{old, oldPrefer} {
			s, err := svcs.Get(ctx, was.Name, metav1.GetOptions{})
			fatalIf(t, err)
			if !slices.Equal(s.Spec.ClusterIPs, was.Spec.ClusterIPs) || !slices.Equal(s.Spec.IPFamilies, was.Spec.IPFamilies) {
				t.Errorf("%s: clusterIPs %v ipFamilies %v after the restart, were %v %v", s.Name, s.Spec.ClusterIPs, s.Spec.IPFamilies, was.Spec.ClusterIPs, was.Spec.IPFamilies)
			}
		}
		s, err := svcs.Create(ctx, svc("new-prefer", &prefer), metav1.CreateOptions{})
		fatalIf(t, err)
		if !slices.Equal(s.Spec.IPFamilies, []corev1.IPFamily{corev1.IPv4Protocol, corev1.IPv6Protocol}) || len(s.Spec.ClusterIPs) != 2 {
			t.Errorf("new PreferDualStack Service: ipFamilies %v clusterIPs %v, want both, IPv4 first", s.Spec.IPFamilies, s.Spec.ClusterIPs)
		}
		// An existing Service upgrades when asked to, as upstream: by
		// setting ipFamilyPolicy PreferDualStack, keeping its IPv4 address.
		s, err = svcs.Get(ctx, "old", metav1.GetOptions{})
		fatalIf(t, err)
		s.Spec.IPFamilyPolicy = &prefer
		s, err = svcs.Update(ctx, s, metav1.UpdateOptions{})
		fatalIf(t, err)
		if len(s.Spec.ClusterIPs) != 2 || s.Spec.ClusterIPs[0] != old.Spec.ClusterIPs[0] || !netip.MustParseAddr(s.Spec.ClusterIPs[1]).Is6() {
			t.Errorf("old with PreferDualStack: clusterIPs %v, want %s and an IPv6 one", s.Spec.ClusterIPs, old.Spec.ClusterIPs[0])
		}
	})

	t.Run("kube-dns gains the new family", func(t *testing.T) {
		dns, err := srv.Client.CoreV1().Services("kube-system").Get(ctx, "kube-dns", metav1.GetOptions{})
		fatalIf(t, err)
		if !slices.Equal(dns.Spec.ClusterIPs, []string{"10.96.0.10", "fd00:10:96::a"}) {
			t.Errorf("kube-dns clusterIPs %v, want 10.96.0.10 and fd00:10:96::a", dns.Spec.ClusterIPs)
		}
	})

	t.Run("changing the primary family is refused", func(t *testing.T) {
		fatalIf(t, srv.Stop())
		for _, tc := range []struct{ svc, pods, want string }{
			{v6Range + "," + v4Range, pods4 + "," + pods6, "--service-cluster-ip-range: the primary family cannot change"},
			{v4Range + "," + v6Range, pods6 + "," + pods4, "--cluster-cidr: the primary family cannot change"},
			{v4Range + "," + v6Range, "", "--cluster-cidr: the cluster ran with"},
		} {
			cctx, cancel := context.WithTimeout(ctx, startTimeout)
			out, err := exec.CommandContext(cctx, harness.Bin, "server", "--data-dir", srv.DataDir, "--secure-port", "0",
				"--service-cluster-ip-range", tc.svc, "--cluster-cidr", tc.pods).CombinedOutput()
			cancel()
			var exit *exec.ExitError
			if !errors.As(err, &exit) || exit.ExitCode() <= 0 {
				t.Fatalf("server with %s %s: %v, want a non-zero exit:\n%s", tc.svc, tc.pods, err, out)
			}
			if !strings.Contains(string(out), tc.want) {
				t.Errorf("server with --service-cluster-ip-range %s --cluster-cidr %s: output lacks %q:\n%s", tc.svc, tc.pods, tc.want, out)
			}
		}
		// The refusals changed nothing: the dual-stack flags still start.
		start := time.Now()
		srv.Restart(t)
		t.Logf("restarted in %v", time.Since(start).Round(time.Millisecond))
		n, err := srv.Client.CoreV1().Nodes().Get(ctx, "node-a", metav1.GetOptions{})
		fatalIf(t, err)
		if len(n.Spec.PodCIDRs) != 2 {
			t.Errorf("node-a podCIDRs %v after the refused restarts", n.Spec.PodCIDRs)
		}
	})
}
