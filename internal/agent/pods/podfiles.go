package pods

import (
	"net/netip"
	"slices"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/duet-net/duet/internal/agent/podroot"
)

// A running pod's /etc/hosts lists its addresses, and a ClusterFirst pod's
// /etc/resolv.conf has a nameserver line per cluster IP of kube-dns. When
// the cluster gains or drops a family both change under the pod: its
// addresses (followFamilies) and kube-dns's cluster IPs (the agent calls
// KubeDNSChanged). The pod's files are then written anew in place, as
// users expect of a family added or taken away live, though the kubelet
// writes them only when a pod starts.

// filesRewriter is the part of a World that writes the pod's /etc/hosts
// and /etc/resolv.conf anew; podroot's worlds have it.
type filesRewriter interface {
	RewriteFiles(spec *podroot.Spec) error
}

// filesSpec is what of spec a pod's /etc files are made from, kept while
// the pod runs: spec without its volumes' content.
func filesSpec(spec *podroot.Spec) *podroot.Spec {
	if spec == nil {
		return nil
	}
	s := *spec
	s.Volumes = nil
	return &s
}

// KubeDNSChanged is told that the kube-dns Service's cluster IPs changed:
// every running pod's resolv.conf is checked at its next sync.
func (m *Manager) KubeDNSChanged() {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.pokeRunningLocked()
}

// clusterDNSNow are the cluster DNS servers a pod's resolv.conf should
// name now: the configured ones, or kube-dns's cluster IPs as the
// Services lister has them. Without a lister, or without the Service (it
// may be on its way back), it keeps had.
func (m *Manager) clusterDNSNow(had []netip.Addr) []netip.Addr {
	if len(m.ClusterDNS) > 0 {
		return m.ClusterDNS
	}
	if m.Services == nil {
		return had
	}
	svc, err := m.Services.Services(metav1.NamespaceSystem).Get("kube-dns")
	if err != nil {
		return had
	}
	var out []netip.Addr
	for _, ip := range svc.Spec.ClusterIPs {
		if a, err := netip.ParseAddr(ip); err == nil {
			out = append(out, a)
		}
	}
	if len(out) == 0 {
		return had
	}
	return out
}

// refreshFiles rewrites a running pod's /etc/hosts and /etc/resolv.conf
// when its addresses or the cluster DNS servers differ from those they
// were written with.
func (m *Manager) refreshFiles(pod *corev1.Pod, run *podRun) error {
	m.mu.Lock()
	had, terminating := run.files, run.terminating
	m.mu.Unlock()
	rw, ok := run.world.(filesRewriter)
	if had == nil || terminating || !ok {
		return nil
	}
	want := *had
	want.Addrs = run.addrs()
	want.ClusterDNS = m.clusterDNSNow(had.ClusterDNS)
	if slices.Equal(want.Addrs, had.Addrs) && slices.Equal(want.ClusterDNS, had.ClusterDNS) {
		return nil
	}
	if err := rw.RewriteFiles(&want); err != nil {
		return err
	}
	m.mu.Lock()
	run.files = &want
	m.mu.Unlock()
	m.Log.Info("pod's /etc/hosts and /etc/resolv.conf rewritten", "pod", pod.Namespace+"/"+pod.Name, "ips", want.Addrs, "clusterDNS", want.ClusterDNS)
	return nil
}
