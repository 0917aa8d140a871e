package pods

import (
	"context"
	"fmt"
	"net/netip"
	"slices"

	corev1 "k8s.io/api/core/v1"

	"github.com/duet-net/duet/internal/agent/sandbox"
	"github.com/duet-net/duet/internal/alloc"
)

// A cluster may also drop its second family (duet server restarted with
// one): each Node's pod CIDRs shrink to the primary, which never changes.
// The manager then keeps every running pod and only takes away: the
// bridge loses the family's gateway (SetPodCIDRs), and each pod's next
// sync releases its address of the family in the store, takes it off the
// pod's interface with the family's default route, and reports the
// primary alone in status.podIPs. The pod's processes, its primary
// address and its connections are not touched.
//
// The store goes first, in one transaction that asks Reserve for the
// addresses the pod keeps: the family's address is released and the
// primary, asked for, stays the pod's (never freed, even for a moment).
// The address released still sits on the pod's interface until the next
// step, but no one gets it meanwhile: the node has no range of its
// family any more, and it cools down before reuse. A kill -9 at any point
// converges: a restarted agent starts the pod again with the addresses it
// holds in the node's current ranges (the primary), which releases the
// rest, and Setup prunes what the interface has beyond them.

// familyRemover is the part of a Network that takes a family away from
// a running sandbox; SandboxNetwork has it.
type familyRemover interface {
	RemoveFamily(nodeNS string, sb *sandbox.Sandbox, is4 bool) (*sandbox.Sandbox, error)
}

// RemoveFamily takes a running sandbox's address of one family away in
// place.
func (SandboxNetwork) RemoveFamily(nodeNS string, sb *sandbox.Sandbox, is4 bool) (*sandbox.Sandbox, error) {
	return sandbox.RemoveFamily(nodeNS, sb, is4)
}

// dropsFamily reports whether now is old without its second family: the
// primary pod CIDR stays first and unchanged.
func dropsFamily(old, now []netip.Prefix) bool {
	return len(old) == 2 && len(now) == 1 && old[0] == now[0]
}

// followFamilies brings a running pod to the families of the node's pod
// CIDRs (and a hostNetwork pod to the node's InternalIPs): it takes away
// what the node dropped, adds what it gained, and rewrites the pod's
// /etc/hosts and /etc/resolv.conf when its addresses or the cluster DNS
// servers changed.
func (m *Manager) followFamilies(ctx context.Context, pod *corev1.Pod, run *podRun) error {
	if err := m.dropFamilies(pod, run); err != nil {
		return err
	}
	if err := m.ensureFamilies(ctx, pod, run); err != nil {
		return err
	}
	return m.refreshFiles(pod, run)
}

// dropFamilies takes from a running pod its address of each family the
// node's pod CIDRs no longer have (see the comment at the top of this
// file).
func (m *Manager) dropFamilies(pod *corev1.Pod, run *podRun) error {
	m.mu.Lock()
	cidrs, sb, hostIPs, terminating := m.podCIDRs, run.sandbox, m.HostIPs, run.terminating
	m.mu.Unlock()
	if terminating || len(cidrs) == 0 || len(sb.Addrs) == 0 {
		return nil
	}
	key := pod.Namespace + "/" + pod.Name
	if pod.Spec.HostNetwork {
		if len(hostIPs) > 0 && slices.ContainsFunc(sb.Addrs, func(a netip.Prefix) bool { return !slices.Contains(hostIPs, a.Addr()) }) {
			hsb := m.hostSandbox(pod)
			m.mu.Lock()
			run.sandbox = hsb
			m.mu.Unlock()
			m.Log.Info("hostNetwork pod lost the node's address of a family the node dropped", "pod", key, "ips", hsb.Addrs)
		}
		return nil
	}
	inCIDRs := func(a netip.Prefix) bool {
		return slices.ContainsFunc(cidrs, func(c netip.Prefix) bool { return c.Addr().Is4() == a.Addr().Is4() })
	}
	if !inCIDRs(sb.Addrs[0]) {
		// The primary family never changes; a pod is never left without
		// its primary address.
		return fmt.Errorf("pod %s: the node's pod CIDRs %v lack the family of its primary address %s; left as it is", key, cidrs, sb.Addrs[0])
	}
	var keep []netip.Addr
	var drop []netip.Prefix
	for _, a := range sb.Addrs {
		if inCIDRs(a) {
			keep = append(keep, a.Addr())
		} else {
			drop = append(drop, a)
		}
	}
	if len(drop) == 0 {
		return nil
	}
	remover, ok := m.network().(familyRemover)
	if !ok {
		return fmt.Errorf("pod %s: the node's network cannot take a family from a running pod", key)
	}
	var got []netip.Addr
	err := m.withPodIPs(func(p *alloc.PodIPs) error {
		var err error
		// Asking for the addresses kept keeps them: one transaction
		// releases the dropped family's and never frees the primary.
		got, err = p.Reserve(podAttachment(pod.UID), keep)
		return err
	})
	if err != nil {
		return fmt.Errorf("releasing %v of %s: %w", drop, key, err)
	}
	if !slices.Equal(got, keep) {
		return fmt.Errorf("pod %s: the store holds %v for it, not the addresses it keeps %v", key, got, keep)
	}
	for _, a := range drop {
		if sb, err = remover.RemoveFamily(m.NodeNS, sb, a.Addr().Is4()); err != nil {
			return fmt.Errorf("taking %s from %s: %w", a, key, err)
		}
	}
	m.mu.Lock()
	run.sandbox = sb
	m.mu.Unlock()
	m.Log.Info("pod lost its address of a family the node dropped, in place", "pod", key, "removed", drop, "ips", sb.Addrs)
	return nil
}
