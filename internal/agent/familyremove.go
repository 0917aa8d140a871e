package agent

import (
	"net/netip"
	"slices"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/cache"

	"github.com/duet-net/duet/internal/agent/clusterdns"
	"github.com/duet-net/duet/internal/agent/pods"
	"github.com/duet-net/duet/internal/agent/proxy"
)

// A cluster may also drop its second family (duet server restarted with
// one): the Node's pod CIDRs shrink to the primary, and so do the other
// Nodes'. The agent follows without a restart, the reverse of adding:
//   - pods: followPodCIDRs hands the shorter list to the pod manager,
//     which takes the family's gateway off the bridge and every running
//     pod's address of the family off its interface, in place;
//   - routes to the other nodes' pod CIDRs of the family go with their
//     Nodes' CIDRs (routes.Desired);
//   - node IPs: the node's address of the family leaves the Node's
//     InternalIPs (it stays on the node's interface: the underlay's), and
//     hostNetwork pods' podIPs and every pod's hostIPs with it;
//   - the service proxy is restarted with the remaining family, and once
//     the old one has returned its table of the dropped family is deleted
//     (the remaining family's is adopted as it is, never flushed);
//     masquerading is restarted with the remaining cluster CIDRs, and
//     deletes the dropped family's table itself (masq.SetFamilies);
//     cluster DNS stops listening on the node's dropped address.
//
// The families the agent serves are those of its Node's pod CIDRs, which
// it reads before registering too (withNodeFamilies): an agent restarted
// after the change, or killed in its middle, leaves out the --node-ip and
// --cluster-cidr entries of the dropped family, and deletes the proxy
// table of a family it does not serve as it starts.

// ofFamilies keeps the xs whose address (addr) is of a family of cidrs.
// With no cidrs (the Node has none yet), or none of xs left, it returns
// xs: an agent is never left without its primary address.
func ofFamilies[T any](xs []T, cidrs []netip.Prefix, addr func(T) netip.Addr) []T {
	if len(cidrs) == 0 {
		return xs
	}
	out := slices.DeleteFunc(slices.Clone(xs), func(x T) bool {
		is4 := addr(x).Is4()
		return !slices.ContainsFunc(cidrs, func(c netip.Prefix) bool { return c.Addr().Is4() == is4 })
	})
	if len(out) == 0 {
		return xs
	}
	return out
}

// diffAddrs are the addresses now has and old lacks, and the reverse.
func diffAddrs(old, now []netip.Addr) (added, removed []netip.Addr) {
	for _, a := range now {
		if !slices.Contains(old, a) {
			added = append(added, a)
		}
	}
	for _, a := range old {
		if !slices.Contains(now, a) {
			removed = append(removed, a)
		}
	}
	return added, removed
}

// stopWait bounds the wait for a stopped proxy or masquerading to return
// (a sync under way finishes first).
const stopWait = 30 * time.Second

// waitStopped waits for done, closed when a stopped component returned.
func (f *follower) waitStopped(done chan struct{}, what string) {
	if done == nil {
		return
	}
	select {
	case <-done:
	case <-time.After(stopWait):
		f.log.Warn("a stopped component has not returned; starting its successor anyway", "component", what, "waited", stopWait)
	}
}

// removeProxyTablesLocked deletes the proxy's table of each family the
// node has no InternalIP of: a family the cluster dropped, now or before
// a restart. Called with f.mu held, while no proxy runs.
func (f *follower) removeProxyTablesLocked() {
	for _, fam := range []proxy.Family{proxy.IPv4, proxy.IPv6} {
		if slices.ContainsFunc(f.nodeIPs, func(a netip.Addr) bool { return proxy.FamilyOf(a) == fam }) {
			continue
		}
		p, err := proxy.NewProxier(fam, proxy.Options{NetNS: f.cfg.NetNS, Log: f.log})
		if err == nil {
			err = p.Remove()
			_ = p.Close()
		}
		if err != nil {
			f.log.Error("deleting the service proxy's table of a family the node does not serve", "family", fam.String(), "err", err)
		}
	}
}

// closeDNS stops cluster DNS at the node's dropped addresses.
func (f *follower) closeDNS(addrs []netip.Addr) {
	if len(addrs) == 0 {
		return
	}
	n := 0
	for _, l := range f.dns {
		n += l.CloseAddrs(addrs)
	}
	if n > 0 {
		f.log.Info("cluster DNS stopped listening on the node's dropped addresses", "addrs", addrs)
	}
}

// setDNS records the listeners cluster DNS was started with (nil: none).
func (f *follower) setDNS(l *clusterdns.Listeners) {
	if l == nil {
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.dns = append(f.dns, l)
}

// followKubeDNS tells the pod manager when the kube-dns Service's cluster
// IPs change (the cluster gained or dropped a family), so that running
// pods' resolv.conf follows.
func followKubeDNS(services cache.SharedIndexInformer, mgr *atomic.Pointer[pods.Manager]) error {
	ips := func(obj any) ([]string, bool) {
		s, ok := obj.(*corev1.Service)
		if !ok || s.Namespace != metav1.NamespaceSystem || s.Name != "kube-dns" {
			return nil, false
		}
		return s.Spec.ClusterIPs, true
	}
	changed := func() {
		if m := mgr.Load(); m != nil {
			m.KubeDNSChanged()
		}
	}
	_, err := services.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: func(obj any) {
			if _, ok := ips(obj); ok {
				changed()
			}
		},
		UpdateFunc: func(old, obj any) {
			was, ok1 := ips(old)
			now, ok2 := ips(obj)
			if ok1 && ok2 && !slices.Equal(was, now) {
				changed()
			}
		},
	})
	return err
}
