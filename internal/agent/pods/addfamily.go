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

// A cluster turned dual-stack gives each Node a pod CIDR of the new family
// after its first (the primary never changes). The manager then keeps every
// running pod and only adds: the bridge gets the new gateway (SetPodCIDRs),
// and each pod's next sync reserves an address of the new family under the
// pod's owner key, puts it on the pod's existing interface with a default
// route, and reports it in status.podIPs. The pod's processes, its first
// address and its connections are not touched. Doing it in the pod's sync
// gives the retries of the pod queue, and after a kill -9 of the agent the
// pod's addresses are found again in the store (start asks for the ones it
// held), so the half-migrated pod keeps its first address.

// familyAdder is the part of a Network that adds a family to a running
// sandbox; SandboxNetwork has it.
type familyAdder interface {
	AddFamily(nodeNS string, sb *sandbox.Sandbox, addr netip.Prefix, gw netip.Addr) (*sandbox.Sandbox, error)
}

// AddFamily gives a running sandbox an address of another family in place.
func (SandboxNetwork) AddFamily(nodeNS string, sb *sandbox.Sandbox, addr netip.Prefix, gw netip.Addr) (*sandbox.Sandbox, error) {
	return sandbox.AddFamily(nodeNS, sb, addr, gw)
}

// appendsFamily reports whether now is old with a pod CIDR of another
// family appended.
func appendsFamily(old, now []netip.Prefix) bool {
	return len(old) == 1 && len(now) == 2 && old[0] == now[0] && now[0].Addr().Is4() != now[1].Addr().Is4()
}

// pokeRunning asks for a sync of every running pod. Called with m.mu held.
func (m *Manager) pokeRunningLocked() {
	for _, run := range m.running {
		m.poke(run.pod)
	}
}

// SetHostIPs replaces the node's InternalIPs (primary first), when the
// node gains an address of a new family: hostNetwork pods then report
// it in their podIPs, and every pod in its hostIPs.
func (m *Manager) SetHostIPs(ips []netip.Addr) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if slices.Equal(m.HostIPs, ips) {
		return
	}
	m.HostIPs = slices.Clone(ips)
	m.pokeRunningLocked()
}

// heldInRange are the addresses owner holds that the current ranges still
// contain: what a restarted agent asks Reserve for, so that a pod keeps
// the address it has while it gains one of a new family.
func heldInRange(p *alloc.PodIPs, owner alloc.Attachment) []netip.Addr {
	held, err := p.Lookup(owner)
	if err != nil {
		return nil
	}
	var out []netip.Addr
	for _, a := range held {
		for _, set := range p.RangeSets() {
			if _, ok := set.RangeOf(a); ok {
				out = append(out, a)
				break
			}
		}
	}
	return out
}

// ensureFamilies gives a running pod an address of each family of the
// node's pod CIDRs it lacks (see the comment at the top of this file).
func (m *Manager) ensureFamilies(ctx context.Context, pod *corev1.Pod, run *podRun) error {
	m.mu.Lock()
	cidrs, sb, hostIPs, terminating := m.podCIDRs, run.sandbox, m.HostIPs, run.terminating
	m.mu.Unlock()
	if terminating || ctx.Err() != nil {
		return nil
	}
	if pod.Spec.HostNetwork {
		if len(sb.Addrs) < len(hostIPs) {
			hsb := m.hostSandbox(pod)
			m.mu.Lock()
			run.sandbox = hsb
			m.mu.Unlock()
			m.Log.Info("hostNetwork pod gained the node's address of a new family", "pod", pod.Namespace+"/"+pod.Name, "ips", hsb.Addrs)
		}
		return nil
	}
	var missing []netip.Prefix
	for _, c := range cidrs {
		if !slices.ContainsFunc(sb.Addrs, func(a netip.Prefix) bool { return a.Addr().Is4() == c.Addr().Is4() }) {
			missing = append(missing, c)
		}
	}
	if len(missing) == 0 {
		return nil
	}
	adder, ok := m.network().(familyAdder)
	if !ok {
		return fmt.Errorf("pod %s/%s: the node's network cannot add a family to a running pod", pod.Namespace, pod.Name)
	}
	held := make([]netip.Addr, 0, len(sb.Addrs))
	for _, a := range sb.Addrs {
		held = append(held, a.Addr())
	}
	var addrs []netip.Addr
	err := m.withPodIPs(func(p *alloc.PodIPs) error {
		var err error
		// Asking for the addresses held keeps them: one transaction adds
		// the new family's address and never frees the old ones.
		addrs, err = p.Reserve(podAttachment(pod.UID), held)
		return err
	})
	if err != nil {
		return fmt.Errorf("reserving an address of a new family for %s/%s: %w", pod.Namespace, pod.Name, err)
	}
	for _, c := range missing {
		i := slices.IndexFunc(addrs, func(a netip.Addr) bool { return a.Is4() == c.Addr().Is4() })
		if i < 0 {
			return fmt.Errorf("pod %s/%s: no address of %s reserved", pod.Namespace, pod.Name, c)
		}
		if sb, err = adder.AddFamily(m.NodeNS, sb, netip.PrefixFrom(addrs[i], c.Bits()), sandbox.Gateway(c).Addr()); err != nil {
			return fmt.Errorf("adding %s to %s/%s: %w", addrs[i], pod.Namespace, pod.Name, err)
		}
	}
	m.mu.Lock()
	run.sandbox = sb
	m.mu.Unlock()
	m.Log.Info("pod gained an address of a new family in place", "pod", pod.Namespace+"/"+pod.Name, "ips", sb.Addrs)
	return nil
}
