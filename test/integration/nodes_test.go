package integration

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apiequality "k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// controllerWait bounds how long the node IPAM controller may take.
const controllerWait = 90 * time.Second

func newNode(name string) *corev1.Node {
	return &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name}}
}

// TestNodePodCIDRs (needs the node IPAM controller): with --cluster-cidr of
// both families, each Node gets one pod CIDR per cluster CIDR in that
// order, unique; controller-set podCIDRs cannot be changed; exhaustion
// leaves a Node waiting with a CIDRNotAvailable event, and deleting a Node
// frees its CIDRs for it.
func TestNodePodCIDRs(t *testing.T) {
	t.Parallel()
	// Four node CIDRs per family: /22 in /24s, /62 in /64s.
	for _, order := range []struct{ name, cidrs string }{
		{"v4+v6", "10.244.0.0/22,fd00:10:244::/62"},
		{"v6+v4", "fd00:10:244::/62,10.244.0.0/22"},
	} {
		t.Run(order.name, func(t *testing.T) {
			t.Parallel()
			srv := StartServer(t, ServerOptions{ServiceRanges: v4Range + "," + v6Range, ClusterCIDR: order.cidrs})
			cluster := mustPrefixes(order.cidrs)
			nodes := srv.Client.CoreV1().Nodes()
			ctx := ctxT(t)

			for i := range 4 {
				_, err := nodes.Create(ctx, newNode(fmt.Sprintf("node-%d", i)), metav1.CreateOptions{})
				fatalIf(t, err)
			}
			assigned := map[string][]string{}
			eventually(t, controllerWait, "4 Nodes get podCIDRs", func() error {
				for i := range 4 {
					name := fmt.Sprintf("node-%d", i)
					n, err := nodes.Get(ctx, name, metav1.GetOptions{})
					if err != nil {
						return err
					}
					if len(n.Spec.PodCIDRs) != len(cluster) {
						return fmt.Errorf("%s has podCIDRs %v", name, n.Spec.PodCIDRs)
					}
					assigned[name] = n.Spec.PodCIDRs
					if n.Spec.PodCIDR != n.Spec.PodCIDRs[0] {
						t.Errorf("%s: podCIDR %q != podCIDRs[0] %q", name, n.Spec.PodCIDR, n.Spec.PodCIDRs[0])
					}
				}
				return nil
			})
			seen := map[string]string{}
			for name, cidrs := range assigned {
				for i, c := range cidrs {
					p, err := netip.ParsePrefix(c)
					if err != nil {
						t.Errorf("%s: podCIDRs[%d] = %q: %v", name, i, c, err)
						continue
					}
					wantBits := 24
					if p.Addr().Is6() {
						wantBits = 64
					}
					if p.Bits() != wantBits || !cluster[i].Contains(p.Addr()) || p.Masked() != p {
						t.Errorf("%s: podCIDRs[%d] = %s, want a /%d of cluster CIDR %s (index-aligned with --cluster-cidr)", name, i, p, wantBits, cluster[i])
					}
					if other, dup := seen[c]; dup {
						t.Errorf("pod CIDR %s given to both %s and %s", c, other, name)
					}
					seen[c] = name
				}
			}

			t.Run("podCIDRs are immutable", func(t *testing.T) {
				n, err := nodes.Get(ctx, "node-0", metav1.GetOptions{})
				fatalIf(t, err)
				for _, change := range [][]string{
					{n.Spec.PodCIDRs[1], n.Spec.PodCIDRs[0]},
					{n.Spec.PodCIDRs[0]},
					{assigned["node-1"][0], n.Spec.PodCIDRs[1]},
				} {
					m := n.DeepCopy()
					m.Spec.PodCIDRs = change
					m.Spec.PodCIDR = change[0]
					_, err := nodes.Update(ctx, m, metav1.UpdateOptions{})
					if !apierrors.IsInvalid(err) || !strings.Contains(err.Error(), "node updates may not change podCIDR") {
						t.Errorf("changing podCIDRs %v to %v: %v, want a 422 saying node updates may not change podCIDR", n.Spec.PodCIDRs, change, err)
					}
				}
			})

			t.Run("exhaustion, then release on delete", func(t *testing.T) {
				_, err := nodes.Create(ctx, newNode("node-4"), metav1.CreateOptions{})
				fatalIf(t, err)
				eventually(t, controllerWait, "CIDRNotAvailable event for node-4", func() error {
					evs, err := srv.Client.CoreV1().Events("").List(ctx, metav1.ListOptions{})
					if err != nil {
						return err
					}
					for _, e := range evs.Items {
						if e.InvolvedObject.Kind == "Node" && e.InvolvedObject.Name == "node-4" && e.Reason == "CIDRNotAvailable" {
							return nil
						}
					}
					return fmt.Errorf("none among %d events", len(evs.Items))
				})
				n4, err := nodes.Get(ctx, "node-4", metav1.GetOptions{})
				fatalIf(t, err)
				if len(n4.Spec.PodCIDRs) != 0 {
					t.Fatalf("node-4 got podCIDRs %v although every node CIDR is taken", n4.Spec.PodCIDRs)
				}
				fatalIf(t, nodes.Delete(ctx, "node-1", metav1.DeleteOptions{}))
				eventually(t, controllerWait, "node-4 gets node-1's freed podCIDRs", func() error {
					n, err := nodes.Get(ctx, "node-4", metav1.GetOptions{})
					if err != nil {
						return err
					}
					if !slices.Equal(n.Spec.PodCIDRs, assigned["node-1"]) {
						return fmt.Errorf("node-4 podCIDRs %v, node-1 had %v", n.Spec.PodCIDRs, assigned["node-1"])
					}
					return nil
				})
			})
		})
	}
}

// TestNodeAndPodValidation: podCIDRs and podIPs at most one per family,
// podCIDRs immutable once set (by anyone), podIP == podIPs[0].
func TestNodeAndPodValidation(t *testing.T) {
	t.Parallel()
	srv := StartServer(t, ServerOptions{ServiceRanges: v4Range + "," + v6Range})
	ctx := ctxT(t)
	nodes := srv.Client.CoreV1().Nodes()

	n := newNode("manual")
	n.Spec.PodCIDRs = []string{"fd00:10:244:7::/64", "10.244.7.0/24"}
	got, err := nodes.Create(ctx, n, metav1.CreateOptions{})
	fatalIf(t, err)
	if got.Spec.PodCIDR != "fd00:10:244:7::/64" {
		t.Errorf("podCIDR %q, want podCIDRs[0]", got.Spec.PodCIDR)
	}
	m := got.DeepCopy()
	m.Spec.PodCIDRs = []string{"fd00:10:244:8::/64", "10.244.7.0/24"}
	m.Spec.PodCIDR = m.Spec.PodCIDRs[0]
	_, err = nodes.Update(ctx, m, metav1.UpdateOptions{})
	if !apierrors.IsInvalid(err) || !strings.Contains(err.Error(), `spec.podCIDRs: Forbidden: node updates may not change podCIDR except from "" to valid`) {
		t.Errorf("changing podCIDRs: %v, want a 422 Forbidden", err)
	}
	two := newNode("two-v4")
	two.Spec.PodCIDRs = []string{"10.244.1.0/24", "10.244.2.0/24"}
	_, err = nodes.Create(ctx, two, metav1.CreateOptions{})
	if !apierrors.IsInvalid(err) || !strings.Contains(err.Error(), "may specify no more than one CIDR for each IP family") {
		t.Errorf("two IPv4 podCIDRs: %v, want a 422", err)
	}

	pods := srv.Client.CoreV1().Pods("default")
	pod, err := pods.Create(ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "p"},
		Spec:       corev1.PodSpec{NodeName: "manual", Containers: []corev1.Container{{Name: "c", Image: "busybox"}}},
	}, metav1.CreateOptions{})
	fatalIf(t, err)
	for _, tc := range []struct {
		name   string
		podIP  string
		podIPs []string
		err    string
	}{
		{"two IPv4", "10.244.7.5", []string{"10.244.7.5", "10.244.7.6"}, "may specify no more than one IP for each IP family"},
		{"two IPv6", "fd00:10:244:7::5", []string{"fd00:10:244:7::5", "fd00:10:244:7::6"}, "may specify no more than one IP for each IP family"},
		{"podIP not podIPs[0]", "10.244.7.9", []string{"10.244.7.5"}, "status.podIP"},
		{"one per family, IPv6 first", "fd00:10:244:7::5", []string{"fd00:10:244:7::5", "10.244.7.5"}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cur, err := pods.Get(ctx, pod.Name, metav1.GetOptions{})
			fatalIf(t, err)
			cur.Status.PodIP = tc.podIP
			cur.Status.PodIPs = nil
			for _, ip := range tc.podIPs {
				cur.Status.PodIPs = append(cur.Status.PodIPs, corev1.PodIP{IP: ip})
			}
			got, err := pods.UpdateStatus(ctx, cur, metav1.UpdateOptions{})
			if tc.err != "" {
				if !apierrors.IsInvalid(err) || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("UpdateStatus podIPs %v: %v, want a 422 containing %q", tc.podIPs, err, tc.err)
				}
				return
			}
			fatalIf(t, err)
			var ips []string
			for _, ip := range got.Status.PodIPs {
				ips = append(ips, ip.IP)
			}
			if !slices.Equal(ips, tc.podIPs) || got.Status.PodIP != tc.podIPs[0] {
				t.Errorf("read back podIP %q podIPs %v, want %v in that order", got.Status.PodIP, ips, tc.podIPs)
			}
		})
	}
}

// TestSchedulerKeepsPodSpec: the scheduler binds a Pod without nodeName to
// a node, and binding changes nothing else of the Pod. The controllers'
// informers keep trimmed Pods, so a bind written from such a copy would
// erase the containers' images, commands and environment, the volumes and
// the annotations; this test fails if one ever does.
func TestSchedulerKeepsPodSpec(t *testing.T) {
	t.Parallel()
	srv := StartServer(t, ServerOptions{ServiceRanges: v4Range})
	ctx := ctxT(t)
	startFakeAgent(t, srv.Client, "only", nil) // a node must report Ready and allocatable to be scheduled to
	pods := srv.Client.CoreV1().Pods("default")
	want, err := pods.Create(ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "full", Annotations: map[string]string{"note": "kept"}, Labels: map[string]string{"app": "web"}},
		Spec: corev1.PodSpec{
			Volumes: []corev1.Volume{{Name: "scratch", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}}},
			Containers: []corev1.Container{{
				Name: "c", Image: "busybox", Command: []string{"sleep", "3600"},
				Env:          []corev1.EnvVar{{Name: "GREETING", Value: "hello"}},
				VolumeMounts: []corev1.VolumeMount{{Name: "scratch", MountPath: "/scratch"}},
			}},
		},
	}, metav1.CreateOptions{})
	fatalIf(t, err)
	var got *corev1.Pod
	eventually(t, controllerWait, "the pod to be scheduled", func() error {
		got, err = pods.Get(ctx, "full", metav1.GetOptions{})
		if err != nil {
			return err
		}
		if got.Spec.NodeName != "only" {
			return fmt.Errorf("nodeName %q", got.Spec.NodeName)
		}
		return nil
	})
	c := got.Spec.Containers[0]
	if c.Image != "busybox" || !slices.Equal(c.Command, []string{"sleep", "3600"}) || len(c.Env) != 1 || c.Env[0].Value != "hello" ||
		!apiequality.Semantic.DeepEqual(c.VolumeMounts, want.Spec.Containers[0].VolumeMounts) {
		t.Errorf("container changed by binding: %+v", c)
	}
	// As created: scratch, and the API credentials admission added.
	if len(got.Spec.Volumes) != 2 || got.Spec.Volumes[0].Name != "scratch" || got.Spec.Volumes[1].Name != want.Spec.Volumes[1].Name || got.Annotations["note"] != "kept" || got.Labels["app"] != "web" {
		t.Errorf("pod changed by binding: volumes %v, annotations %v, labels %v", got.Spec.Volumes, got.Annotations, got.Labels)
	}
	if got.UID != want.UID {
		t.Errorf("pod replaced: uid %s, was %s", got.UID, want.UID)
	}
}
