package agent

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/kubernetes"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/record"

	"github.com/duet-net/duet/internal/agent/clusterdns"
	"github.com/duet-net/duet/internal/agent/masq"
	"github.com/duet-net/duet/internal/agent/nodestatus"
	"github.com/duet-net/duet/internal/agent/pods"
	"github.com/duet-net/duet/internal/agent/proxy"
	"github.com/duet-net/duet/internal/netns"
)

// A cluster may gain a family while the agent runs (duet server restarted
// with a second --cluster-cidr and --service-cluster-ip-range): the Node
// then gets a pod CIDR of that family appended. The agent follows without
// a restart:
//   - pods: followPodCIDRs hands the new CIDRs to the pod manager, which
//     gives the bridge the new gateway and every running pod an address of
//     the family in place;
//   - node IPs: the node's address of the family (--node-ip's, or else the
//     one found on the interface holding the node's first InternalIP) is
//     added to the Node's InternalIPs, so other nodes route the node's new
//     pod CIDR to it, and hostNetwork pods report it;
//   - proxy and masquerading are restarted with the new node IPs and
//     cluster CIDRs (both leave their tables in place when they stop, so
//     the first family's traffic is not interrupted); cluster DNS gets a
//     listener on the node's new address.
//
// The new family's cluster CIDR is not known to the agent (the server has
// it; --cluster-cidr is the agent's start-time flag): the agent uses the
// Nodes' pod CIDRs of that family instead, kept current from its Node
// informer. Both users of the cluster CIDRs want exactly that set, "an
// address of some pod": masquerading never rewrites traffic between pods,
// and the proxy tells in-cluster sources from others by it. Traffic to a
// service IP of the new family is DNATed to a pod before masquerading
// looks at it, so the new family's service range is not needed.

// sendLatest puts v in the one-slot channel c, replacing a value not yet
// taken, so the reader always gets the newest.
func sendLatest[T any](c chan T, v T) {
	for {
		select {
		case c <- v:
			return
		default:
		}
		select {
		case <-c:
		default:
		}
	}
}

// followPodCIDRs gives the pod manager each new list of the node's pod
// CIDRs after the first, retrying one it refuses until a newer arrives.
func followPodCIDRs(ctx context.Context, mgr *pods.Manager, updates chan []netip.Prefix, log *slog.Logger) {
	var pending []netip.Prefix
	retry := time.NewTimer(time.Hour)
	retry.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case pending = <-updates:
		case <-retry.C:
		}
		if pending == nil {
			continue
		}
		if err := mgr.SetPodCIDRs(pending); err != nil {
			log.Error("following the node's pod CIDRs; will retry", "podCIDRs", pending, "err", err)
			retry.Reset(2 * time.Second)
			continue
		}
		pending = nil
	}
}

// follower keeps the node's InternalIPs, the service proxy, masquerading
// and cluster DNS in step with the families the cluster has.
type follower struct {
	client   kubernetes.Interface
	cfg      Config
	log      *slog.Logger
	reporter *nodestatus.Reporter
	recorder record.EventRecorder
	nodeRef  *corev1.ObjectReference
	mgr      atomic.Pointer[pods.Manager] // nil until the pod loop runs

	// known are --node-ip's addresses: the node's address of a family
	// is taken from them first (familyremove.go).
	known []netip.Addr

	mu           sync.Mutex
	nodeIPs      []netip.Addr
	clusterCIDRs []netip.Prefix
	stopProxy    context.CancelFunc
	stopMasq     context.CancelFunc
	proxyDone    chan struct{} // closed when the running proxy returned
	masqDone     chan struct{} // closed when the running masquerading returned
	dns          []*clusterdns.Listeners
	warned       map[bool]bool // families whose missing node address was reported
}

// ReasonNoNodeIP is the event reason of a node without an address of a
// family the cluster added: its pods get addresses of it, but other nodes
// have no route to them.
const ReasonNoNodeIP = "NoNodeAddressOfFamily"

func newFollower(client kubernetes.Interface, cfg Config, log *slog.Logger, reporter *nodestatus.Reporter, recorder record.EventRecorder, nodeRef *corev1.ObjectReference) *follower {
	return &follower{client: client, cfg: cfg, log: log.With("component", "families"), reporter: reporter, recorder: recorder, nodeRef: nodeRef,
		known: cfg.InternalIPs, nodeIPs: slices.Clone(cfg.InternalIPs), clusterCIDRs: slices.Clone(cfg.ClusterCIDRs), warned: map[bool]bool{}}
}

// restartProxy (re)starts the service proxy with the current node IPs and
// cluster CIDRs. Called with f.mu held.
func (f *follower) restartProxyLocked(ctx context.Context) {
	if f.cfg.NoProxy {
		return
	}
	if f.stopProxy != nil {
		f.stopProxy()
		f.waitStopped(f.proxyDone, "the service proxy")
	}
	// The tables of families the node no longer serves go, now that no
	// proxier of theirs runs; the others stay for the new proxy to adopt.
	f.removeProxyTablesLocked()
	pctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	f.stopProxy, f.proxyDone = cancel, done
	plog := f.log.With("component", "proxy")
	o := proxy.Options{NodeName: f.cfg.NodeName, NetNS: f.cfg.NetNS, NodeIPs: slices.Clone(f.nodeIPs),
		ClusterCIDRs: slices.Clone(f.clusterCIDRs), Log: plog}
	go func() {
		defer close(done)
		if err := proxy.Run(pctx, f.client, o); err != nil && pctx.Err() == nil {
			plog.Error("the service proxy stopped", "err", err)
			f.recorder.Eventf(f.nodeRef, corev1.EventTypeWarning, ReasonProxyFailed, "service proxy: %v", err)
		}
	}()
}

// restartMasqLocked (re)starts egress masquerading with the current
// cluster CIDRs. Called with f.mu held.
func (f *follower) restartMasqLocked(ctx context.Context) {
	if f.cfg.NoMasq {
		return
	}
	if f.stopMasq != nil {
		f.stopMasq()
		f.waitStopped(f.masqDone, "masquerading")
	}
	mctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	f.stopMasq, f.masqDone = cancel, done
	mlog := f.log.With("component", "masq")
	o := masq.Options{
		NetNS: f.cfg.NetNS, ConfigPath: f.cfg.MasqConfig,
		ClusterCIDRs: slices.Clone(f.clusterCIDRs), ServiceCIDRs: f.cfg.ServiceCIDRs, Log: mlog,
		OnError: func(err error) {
			f.recorder.Eventf(f.nodeRef, corev1.EventTypeWarning, ReasonMasqFailed, "egress masquerading: %v", err)
		},
		OnApplied: func(c masq.Config) {
			f.recorder.Eventf(f.nodeRef, corev1.EventTypeNormal, ReasonMasqApplied, "egress masquerading: configuration in force, %d nonMasqueradeCIDRs", len(c.NonMasqueradeCIDRs))
		},
	}
	go func() {
		defer close(done)
		if err := masq.Run(mctx, o); err != nil && mctx.Err() == nil {
			mlog.Error("egress masquerading could not start", "err", err)
			f.recorder.Eventf(f.nodeRef, corev1.EventTypeWarning, ReasonMasqFailed, "egress masquerading could not start: %v", err)
		}
	}()
}

// start starts proxy and masquerading with the agent's flags.
func (f *follower) start(ctx context.Context) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.restartProxyLocked(ctx)
	f.restartMasqLocked(ctx)
}

// watch follows the Nodes of nodes: each change recomputes the families.
// A node address not found yet is looked for again every few seconds.
func (f *follower) watch(ctx context.Context, nodes cache.SharedIndexInformer, lister corelisters.NodeLister) error {
	kick := make(chan struct{}, 1)
	poke := func(any) { sendLatest(kick, struct{}{}) }
	if _, err := nodes.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: poke, UpdateFunc: func(_, o any) { poke(o) }, DeleteFunc: poke,
	}); err != nil {
		return err
	}
	go func() {
		tick := time.NewTicker(5 * time.Second)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-kick:
			case <-tick.C:
			}
			all, err := lister.List(labels.Everything())
			if err == nil {
				f.update(ctx, all)
			}
		}
	}()
	return nil
}

// update brings node IPs, proxy, masquerading and DNS to the families of
// the Nodes' pod CIDRs.
func (f *follower) update(ctx context.Context, nodes []*corev1.Node) {
	var self *corev1.Node
	for _, n := range nodes {
		if n.Name == f.cfg.NodeName {
			self = n
		}
	}
	if self == nil {
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	own := parsePrefixes(self.Spec.PodCIDRs)
	cidrs := ofFamilies(clusterCIDRsFor(f.cfg.ClusterCIDRs, nodes), own, netip.Prefix.Addr)
	ips := slices.Clone(f.nodeIPs)
	for _, c := range own {
		is4 := c.Addr().Is4()
		if slices.ContainsFunc(ips, func(a netip.Addr) bool { return a.Is4() == is4 }) {
			continue
		}
		a, err := nodeAddrOfFamily(f.cfg.NetNS, f.known, is4)
		if err != nil {
			if !f.warned[is4] {
				f.warned[is4] = true
				f.log.Error("the node has no address of the cluster's new family: its pods get addresses of it, but other nodes cannot route to them, and its proxy and DNS do not serve the family; add one to the node's interface", "podCIDR", c, "err", err)
				f.recorder.Eventf(f.nodeRef, corev1.EventTypeWarning, ReasonNoNodeIP, "no node address of the family of pod CIDR %s: %v; pods of this node get addresses of it, but are unreachable from other nodes until the node has one", c, err)
			}
			continue
		}
		f.warned[is4] = false
		ips = append(ips, a)
	}
	// A family the cluster dropped leaves the node's InternalIPs
	// (familyremove.go).
	ips = ofFamilies(ips, own, func(a netip.Addr) netip.Addr { return a })
	ipsChanged := !slices.Equal(ips, f.nodeIPs)
	cidrsChanged := !slices.Equal(cidrs, f.clusterCIDRs)
	if !ipsChanged && !cidrsChanged {
		return
	}
	if ipsChanged {
		added, removed := diffAddrs(f.nodeIPs, ips)
		f.log.Info("the node's InternalIPs follow the cluster's families", "internalIPs", ips, "added", added, "removed", removed)
		if err := f.reporter.SetInternalIPs(ctx, ips); err != nil {
			f.log.Error("writing the node's new InternalIPs; the next status refresh retries", "err", err)
		}
		if m := f.mgr.Load(); m != nil {
			m.SetHostIPs(ips)
		}
		f.listenDNS(ctx, added)
		f.closeDNS(removed)
	}
	f.nodeIPs, f.clusterCIDRs = ips, cidrs
	f.log.Info("the proxy and masquerading follow the cluster's families", "nodeIPs", ips, "clusterCIDRs", cidrs)
	f.restartProxyLocked(ctx)
	if cidrsChanged {
		f.restartMasqLocked(ctx)
	}
}

// listenDNS serves cluster DNS on the node's new addresses too (a second
// server beside the first, which keeps serving the old ones untouched).
func (f *follower) listenDNS(ctx context.Context, addrs []netip.Addr) {
	if f.cfg.NoDNS || len(addrs) == 0 {
		return
	}
	l, err := clusterdns.Listen(f.cfg.NetNS, addrs, clusterdns.Port)
	if err != nil {
		f.log.Error("cluster DNS cannot listen on the node's new address", "addrs", addrs, "err", err)
		return
	}
	f.dns = append(f.dns, l)
	cfg := f.cfg
	cfg.InternalIPs = slices.Clone(f.nodeIPs)
	dlog := f.log.With("component", "dns")
	go func() {
		if err := serveDNS(ctx, f.client, cfg, l, dlog); err != nil {
			dlog.Error("cluster DNS on the new address stopped", "err", err)
			f.recorder.Eventf(f.nodeRef, corev1.EventTypeWarning, ReasonDNSFailed, "cluster DNS: %v", err)
		}
	}()
}

// clusterCIDRsFor are the agent's --cluster-cidr and, for a family it
// lacks, the pod CIDRs of that family of all nodes, sorted.
func clusterCIDRsFor(flag []netip.Prefix, nodes []*corev1.Node) []netip.Prefix {
	out := slices.Clone(flag)
	var extra []netip.Prefix
	for _, n := range nodes {
		for _, c := range parsePrefixes(n.Spec.PodCIDRs) {
			c = c.Masked()
			is4 := c.Addr().Is4()
			if slices.ContainsFunc(flag, func(p netip.Prefix) bool { return p.Addr().Is4() == is4 }) || slices.Contains(extra, c) {
				continue
			}
			extra = append(extra, c)
		}
	}
	slices.SortFunc(extra, func(a, b netip.Prefix) int {
		if c := a.Addr().Compare(b.Addr()); c != 0 {
			return c
		}
		return a.Bits() - b.Bits()
	})
	return append(out, extra...)
}

// nodeAddrOfFamily finds the node's global address of a family on the
// interface that holds one of its known addresses (the underlay).
func nodeAddrOfFamily(nsPath string, known []netip.Addr, is4 bool) (netip.Addr, error) {
	var h *netlink.Handle
	var err error
	if nsPath == "" {
		h, err = netlink.NewHandle()
	} else {
		h, err = netns.NewHandle(nsPath)
	}
	if err != nil {
		return netip.Addr{}, err
	}
	defer h.Close()
	all, err := h.AddrList(nil, netlink.FAMILY_ALL)
	if err != nil {
		return netip.Addr{}, fmt.Errorf("listing the node's addresses: %w", err)
	}
	links := map[int]bool{}
	for _, a := range all {
		if ip, ok := netip.AddrFromSlice(a.IP); ok && slices.Contains(known, ip.Unmap()) {
			links[a.LinkIndex] = true
		}
	}
	if len(links) == 0 {
		return netip.Addr{}, fmt.Errorf("no interface holds the node's addresses %v", known)
	}
	// --node-ip's address of the family, if the interface has it; else
	// the interface's first.
	var found netip.Addr
	for _, a := range all {
		ip, ok := netip.AddrFromSlice(a.IP)
		if !ok || !links[a.LinkIndex] {
			continue
		}
		ip = ip.Unmap()
		if ip.Is4() == is4 && ip.IsGlobalUnicast() && a.Flags&(unix.IFA_F_TENTATIVE|unix.IFA_F_DEPRECATED) == 0 {
			if slices.Contains(known, ip) {
				return ip, nil
			}
			if !found.IsValid() {
				found = ip
			}
		}
	}
	if found.IsValid() {
		return found, nil
	}
	fam := "IPv6"
	if is4 {
		fam = "IPv4"
	}
	return netip.Addr{}, fmt.Errorf("the interface holding %v has no global %s address", known, fam)
}

// withNodeFamilies fits an agent's configuration to the families of its
// Node's pod CIDRs, when the Node exists and has them (an agent restarted
// after the cluster gained or dropped a family): the node's address of a
// family the Node has and --node-ip lacks is added to the InternalIPs
// before the Node is registered again, so that other nodes keep their
// routes to its pods of that family; an address and a --cluster-cidr of a
// family the Node lacks are left out (familyremove.go), so that a family
// the cluster dropped does not come back with the agent's flags. Without
// the Node (a new node, or the server unreachable) it returns cfg.
func withNodeFamilies(ctx context.Context, client kubernetes.Interface, cfg Config, find func(is4 bool) (netip.Addr, error)) Config {
	gctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	node, err := client.CoreV1().Nodes().Get(gctx, cfg.NodeName, metav1.GetOptions{})
	if err != nil {
		return cfg
	}
	own := parsePrefixes(node.Spec.PodCIDRs)
	ips := slices.Clone(cfg.InternalIPs)
	for _, c := range own {
		is4 := c.Addr().Is4()
		if slices.ContainsFunc(ips, func(a netip.Addr) bool { return a.Is4() == is4 }) {
			continue
		}
		if a, err := find(is4); err == nil {
			ips = append(ips, a)
		}
	}
	cfg.InternalIPs = ofFamilies(ips, own, func(a netip.Addr) netip.Addr { return a })
	cfg.ClusterCIDRs = ofFamilies(cfg.ClusterCIDRs, own, netip.Prefix.Addr)
	return cfg
}
