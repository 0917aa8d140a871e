// Package sandbox wires the network of pod sandboxes on a node: a network
// namespace per pod, bind-mounted under /run/netns so it outlives the agent,
// joined to the node's bridge by a veth pair whose pod end is created directly
// in the pod namespace, with one address per family (no duplicate address
// detection) and a default route per family via the node's gateways.
//
// Every function takes the node's network namespace as a path (nodes of
// `duet up` are namespaces themselves) and never changes the network of the
// namespace the caller runs in. Setup is all or nothing: it returns a whole
// sandbox, or an error and no sandbox for that ID.
//
// Names: a pod namespace is /run/netns/duet-<node tag>-<pod hash>, where the
// node tag hashes the node namespace's path and the pod hash the sandbox ID; its
// host-side veth is duet<first 11 digits of the pod hash>; the ID itself is the
// alias of the pod's loopback ("duet-sandbox:<ID>"), so List recovers IDs after
// a crash. All calls for one ID are serialised within a process; one agent per
// node is expected.
package sandbox

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/duet-net/duet/internal/netns"
)

// Request is what Setup wires.
type Request struct {
	// ID identifies the sandbox (a pod UID or container ID): it names the
	// namespace and is what Teardown and List speak of.
	ID string
	// Bridge is the node's bridge (NodeConfig.Bridge).
	Bridge string
	// IfName is the pod-side interface, e.g. "eth0".
	IfName string
	// Addrs are the pod's addresses, one per family, primary first, each with
	// the prefix length of its pod CIDR: 10.244.1.5/24, fd00:10:244:1::5/64.
	Addrs []netip.Prefix
	// Gateways are the default gateways, at most one per family of Addrs, each
	// inside that address's prefix (the bridge's address: Gateway(podCIDR)).
	// A family without a gateway gets no default route.
	Gateways []netip.Addr
	// MTU of the veth pair; 0 takes the bridge's.
	MTU int
}

// Sandbox is a wired pod sandbox.
type Sandbox struct {
	ID       string
	NetNS    string // the pod's network namespace, /run/netns/duet-…
	HostVeth string // host side of the veth pair, in the node namespace, on the bridge
	IfName   string // pod side of the veth pair
	MAC      net.HardwareAddr
	Addrs    []netip.Prefix
	Gateways []netip.Addr
}

// Entry is a sandbox found by List.
type Entry struct {
	// ID is the sandbox's ID, or "" for a namespace file without one: left by
	// a crash between creating the file and mounting the namespace, or made by
	// another process. TeardownNetNS removes such an entry.
	ID       string
	NetNS    string
	HostVeth string
}

func (r Request) validate() error {
	if r.ID == "" || len(r.ID) > maxIDLen || strings.ContainsRune(r.ID, 0) {
		return fmt.Errorf("sandbox ID must be 1 to %d bytes without NUL, got %q", maxIDLen, r.ID)
	}
	if err := validIfName(r.Bridge); err != nil {
		return fmt.Errorf("bridge name: %w", err)
	}
	if err := validIfName(r.IfName); err != nil {
		return fmt.Errorf("pod interface name: %w", err)
	}
	if len(r.Addrs) == 0 || len(r.Addrs) > 2 {
		return fmt.Errorf("want one pod address per family (one or two), got %d", len(r.Addrs))
	}
	if len(r.Addrs) == 2 && r.Addrs[0].Addr().Is4() == r.Addrs[1].Addr().Is4() {
		return fmt.Errorf("pod addresses %s and %s are of one family; want one per family", r.Addrs[0], r.Addrs[1])
	}
	for _, a := range r.Addrs {
		if !a.IsValid() || a.Addr().Is4In6() || a.Addr().Zone() != "" {
			return fmt.Errorf("pod address %s is not a valid IPv4 or IPv6 address with a prefix length", a)
		}
		if a.Addr() == a.Masked().Addr() {
			return fmt.Errorf("pod address %s is the network address of its prefix", a)
		}
	}
	seen := map[bool]bool{}
	for _, gw := range r.Gateways {
		if !gw.IsValid() || gw.Is4In6() {
			return fmt.Errorf("gateway %s is not a valid IPv4 or IPv6 address", gw)
		}
		if seen[gw.Is4()] {
			return fmt.Errorf("more than one gateway of the family of %s", gw)
		}
		seen[gw.Is4()] = true
		i := slices.IndexFunc(r.Addrs, func(a netip.Prefix) bool { return a.Addr().Is4() == gw.Is4() })
		if i < 0 {
			return fmt.Errorf("gateway %s has no pod address of its family", gw)
		}
		if a := r.Addrs[i]; !a.Masked().Contains(gw) || a.Addr() == gw {
			return fmt.Errorf("gateway %s is not another address of the pod's prefix %s", gw, a.Masked())
		}
	}
	if r.MTU < 0 || r.MTU > 65535 {
		return fmt.Errorf("MTU %d out of range", r.MTU)
	}
	return nil
}

// errNotOurs marks a namespace that belongs to another sandbox ID (a pod hash
// collision): Setup fails without touching it.
var errNotOurs = errors.New("namespace belongs to another sandbox")

// failStep, when set by tests, runs after each step of Setup and fails it.
var failStep func(step string) error

func step(ctx context.Context, name string) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	if failStep != nil {
		return failStep(name)
	}
	return nil
}

var locks keyedLocks

// Setup creates or repairs the sandbox req.ID on the node whose network
// namespace is nodeNS, whose bridge EnsureNode made. Run again with the same
// request it returns the same sandbox, repairing what is missing or wrong
// (namespace, veth pair, bridge port, link state, MTU, addresses, default
// routes). On failure it removes the sandbox, so nothing is left half-wired.
func Setup(ctx context.Context, nodeNS string, req Request) (*Sandbox, error) {
	if err := req.validate(); err != nil {
		return nil, fmt.Errorf("sandbox %q: %w", req.ID, err)
	}
	tag, err := nodeTag(nodeNS)
	if err != nil {
		return nil, err
	}
	n := namesFor(tag, req.ID)
	defer locks.lock(n.netns)()
	sb, err := setup(ctx, nodeNS, n, req)
	if err != nil {
		return nil, fmt.Errorf("sandbox %q on node %s: %w", req.ID, nodeNS, err)
	}
	return sb, nil
}

func setup(ctx context.Context, nodeNS string, n names, req Request) (_ *Sandbox, err error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	nodeFD, err := netns.Open(nodeNS)
	if err != nil {
		return nil, err
	}
	defer unix.Close(nodeFD)
	nodeH, err := netns.NewHandleFD(nodeFD)
	if err != nil {
		return nil, fmt.Errorf("netlink socket in %s: %w", nodeNS, err)
	}
	defer nodeH.Close()
	br, err := nodeH.LinkByName(req.Bridge)
	if isNotFound(err) {
		return nil, fmt.Errorf("bridge %s not found in the node namespace: run EnsureNode first", req.Bridge)
	} else if err != nil {
		return nil, fmt.Errorf("bridge %s: %w", req.Bridge, err)
	}
	if br.Type() != "bridge" {
		return nil, fmt.Errorf("%s in the node namespace is a %s, not a bridge", req.Bridge, br.Type())
	}
	mtu := req.MTU
	if mtu == 0 {
		mtu = br.Attrs().MTU
	}

	// From here on a failure removes the sandbox: it is whole or absent.
	defer func() {
		if err != nil && !errors.Is(err, errNotOurs) {
			if uerr := teardown(nodeH, n); uerr != nil {
				err = errors.Join(err, fmt.Errorf("undo: %w", uerr))
			}
		}
	}()

	pod, fresh, err := ensurePodNetNS(n.netns, req)
	if err != nil {
		return nil, err
	}
	defer pod.close()
	if err := step(ctx, "netns"); err != nil {
		return nil, err
	}

	link, err := ensureVeth(nodeH, br, pod, n, req, mtu, fresh)
	if err != nil {
		return nil, err
	}
	if err := step(ctx, "veth"); err != nil {
		return nil, err
	}

	if link.Attrs().Flags&net.FlagUp == 0 {
		if err := pod.h.LinkSetUp(link); err != nil {
			return nil, fmt.Errorf("set %s up in the pod namespace: %w", req.IfName, err)
		}
	}
	if err := step(ctx, "link-up"); err != nil {
		return nil, err
	}

	want := map[netip.Prefix]bool{}
	for _, a := range req.Addrs {
		want[a] = true
		if err := pod.h.AddrReplace(link, addrOf(a)); err != nil {
			return nil, fmt.Errorf("add %s to %s in the pod namespace: %w", a, req.IfName, err)
		}
	}
	if !fresh {
		if err := pruneAddrs(pod.h, link, want); err != nil {
			return nil, err
		}
	}
	if err := step(ctx, "addresses"); err != nil {
		return nil, err
	}

	for _, gw := range req.Gateways {
		r := &netlink.Route{LinkIndex: link.Attrs().Index, Gw: net.IP(gw.AsSlice())}
		if err := pod.h.RouteReplace(r); err != nil {
			return nil, fmt.Errorf("default route via %s in the pod namespace: %w", gw, err)
		}
	}
	if !fresh {
		if err := pruneDefaultRoutes(pod.h, link, req.Gateways); err != nil {
			return nil, err
		}
	}
	if err := step(ctx, "routes"); err != nil {
		return nil, err
	}

	return &Sandbox{
		ID:       req.ID,
		NetNS:    n.netns,
		HostVeth: n.veth,
		IfName:   req.IfName,
		MAC:      link.Attrs().HardwareAddr,
		Addrs:    slices.Clone(req.Addrs),
		Gateways: slices.Clone(req.Gateways),
	}, nil
}

// podNS is an open pod namespace.
type podNS struct {
	fd int
	h  *netlink.Handle
}

func (p podNS) close() {
	p.h.Close()
	unix.Close(p.fd)
}

// podSysctls turn duplicate address detection off in the pod namespace, for
// interfaces to come (default) and all.
func podSysctls(req Request) []netns.Sysctl {
	if !slices.ContainsFunc(req.Addrs, func(a netip.Prefix) bool { return a.Addr().Is6() }) {
		return nil
	}
	return []netns.Sysctl{
		{Name: "net/ipv6/conf/all/accept_dad", Value: "0"},
		{Name: "net/ipv6/conf/default/accept_dad", Value: "0"},
	}
}

// ensurePodNetNS creates the pod namespace, or opens and repairs it; fresh
// says it was created now.
func ensurePodNetNS(path string, req Request) (_ podNS, fresh bool, _ error) {
	alias := idAlias + req.ID
	ss := podSysctls(req)
	if !netns.IsNetNS(path) {
		ns, err := netns.Create(path, netns.Prep{LoAlias: alias, Sysctls: ss})
		if err != nil {
			return podNS{}, false, fmt.Errorf("pod namespace: %w", err)
		}
		return podNS{fd: ns.FD, h: ns.Handle}, true, nil
	}
	fd, err := netns.Open(path)
	if err != nil {
		return podNS{}, false, err
	}
	var h *netlink.Handle
	err = netns.DoFD(fd, func() error {
		var err error
		if h, err = netlink.NewHandle(unix.NETLINK_ROUTE); err != nil {
			return fmt.Errorf("netlink socket: %w", err)
		}
		lo, err := h.LinkByName("lo")
		if err != nil {
			return fmt.Errorf("lo: %w", err)
		}
		switch got := lo.Attrs().Alias; got {
		case alias:
		case "":
			if err := h.LinkSetAlias(lo, alias); err != nil {
				return fmt.Errorf("set alias of lo: %w", err)
			}
		default:
			return fmt.Errorf("%s is sandbox %q's: %w", path, strings.TrimPrefix(got, idAlias), errNotOurs)
		}
		if lo.Attrs().Flags&net.FlagUp == 0 {
			if err := h.LinkSetUp(lo); err != nil {
				return fmt.Errorf("set lo up: %w", err)
			}
		}
		if len(ss) > 0 {
			if _, err := h.LinkByName(req.IfName); err == nil {
				ss = append(ss, netns.Sysctl{Name: "net/ipv6/conf/" + req.IfName + "/accept_dad", Value: "0"})
			}
		}
		return netns.WriteSysctls(ss)
	})
	if err != nil {
		if h != nil {
			h.Close()
		}
		unix.Close(fd)
		return podNS{}, false, fmt.Errorf("pod namespace %s: %w", path, err)
	}
	return podNS{fd: fd, h: h}, false, nil
}

// ensureVeth returns the pod end of a veth pair between the pod namespace and
// the node's bridge, creating the pair with its pod end directly in the pod
// namespace (no move between namespaces, which serialises on the RTNL lock),
// or repairing an existing pair.
func ensureVeth(nodeH *netlink.Handle, br netlink.Link, pod podNS, n names, req Request, mtu int, fresh bool) (netlink.Link, error) {
	if !fresh {
		host, herr := nodeH.LinkByName(n.veth)
		peer, perr := pod.h.LinkByName(req.IfName)
		if herr == nil && perr == nil && paired(host, peer) {
			return peer, repairVeth(nodeH, pod.h, br, host, peer, mtu)
		}
		// Whatever is there is not a working pair: start over.
		if herr == nil {
			if err := nodeH.LinkDel(host); err != nil && !errors.Is(err, unix.ENODEV) {
				return nil, fmt.Errorf("delete broken veth %s: %w", n.veth, err)
			}
		} else if !isNotFound(herr) {
			return nil, herr
		}
		if perr == nil {
			if err := pod.h.LinkDel(peer); err != nil && !errors.Is(err, unix.ENODEV) {
				return nil, fmt.Errorf("delete broken %s in the pod namespace: %w", req.IfName, err)
			}
		} else if !isNotFound(perr) {
			return nil, perr
		}
	}
	newVeth := func() *netlink.Veth {
		attrs := netlink.NewLinkAttrs()
		attrs.Name = n.veth
		attrs.MTU = mtu
		attrs.Flags = net.FlagUp
		attrs.MasterIndex = br.Attrs().Index
		return &netlink.Veth{
			LinkAttrs:        attrs,
			PeerName:         req.IfName,
			PeerHardwareAddr: macFor(req.Addrs),
			PeerNamespace:    netlink.NsFd(pod.fd),
			PeerTxQLen:       -1,
		}
	}
	err := nodeH.LinkAdd(newVeth())
	if errors.Is(err, unix.EEXIST) {
		// A host veth of this name outlived its pod namespace (unmounted
		// while a process held it open): replace it.
		if old, lerr := nodeH.LinkByName(n.veth); lerr == nil {
			if derr := nodeH.LinkDel(old); derr == nil {
				err = nodeH.LinkAdd(newVeth())
			}
		}
	}
	if err != nil {
		return nil, fmt.Errorf("create veth %s with peer %s in the pod namespace: %w", n.veth, req.IfName, err)
	}
	peer, err := pod.h.LinkByName(req.IfName)
	if err != nil {
		return nil, fmt.Errorf("%s in the pod namespace: %w", req.IfName, err)
	}
	return peer, nil
}

// paired reports whether host and peer are the two ends of one veth pair.
func paired(host, peer netlink.Link) bool {
	_, ok1 := host.(*netlink.Veth)
	_, ok2 := peer.(*netlink.Veth)
	return ok1 && ok2 &&
		host.Attrs().ParentIndex == peer.Attrs().Index &&
		peer.Attrs().ParentIndex == host.Attrs().Index
}

func repairVeth(nodeH, podH *netlink.Handle, br, host, peer netlink.Link, mtu int) error {
	if host.Attrs().MasterIndex != br.Attrs().Index {
		if err := nodeH.LinkSetMasterByIndex(host, br.Attrs().Index); err != nil {
			return fmt.Errorf("attach %s to %s: %w", host.Attrs().Name, br.Attrs().Name, err)
		}
	}
	if host.Attrs().MTU != mtu {
		if err := nodeH.LinkSetMTU(host, mtu); err != nil {
			return fmt.Errorf("set MTU of %s: %w", host.Attrs().Name, err)
		}
	}
	if peer.Attrs().MTU != mtu {
		if err := podH.LinkSetMTU(peer, mtu); err != nil {
			return fmt.Errorf("set MTU of %s in the pod namespace: %w", peer.Attrs().Name, err)
		}
	}
	if host.Attrs().Flags&net.FlagUp == 0 {
		if err := nodeH.LinkSetUp(host); err != nil {
			return fmt.Errorf("set %s up: %w", host.Attrs().Name, err)
		}
	}
	return nil
}

// pruneDefaultRoutes deletes default routes on link that are not via one of
// gws.
func pruneDefaultRoutes(h *netlink.Handle, link netlink.Link, gws []netip.Addr) error {
	routes, err := h.RouteList(link, netlink.FAMILY_ALL)
	if err != nil && !errors.Is(err, netlink.ErrDumpInterrupted) {
		return fmt.Errorf("list routes: %w", err)
	}
	for _, r := range routes {
		if r.Dst != nil {
			if ones, _ := r.Dst.Mask.Size(); ones != 0 {
				continue
			}
		}
		gw, _ := netip.AddrFromSlice(r.Gw)
		if slices.Contains(gws, gw.Unmap()) {
			continue
		}
		if err := h.RouteDel(&r); err != nil && !errors.Is(err, unix.ESRCH) {
			return fmt.Errorf("delete stale default route via %s: %w", r.Gw, err)
		}
	}
	return nil
}

// Teardown removes the sandbox id from the node: its veth pair (from the node
// side, which deletes both ends at once rather than when the kernel gets round
// to destroying the namespace) and its namespace mount and file. A sandbox that
// is absent, or partly absent, is success.
func Teardown(nodeNS, id string) error {
	tag, err := nodeTag(nodeNS)
	if err != nil {
		return err
	}
	n := namesFor(tag, id)
	defer locks.lock(n.netns)()
	if err := teardownAt(nodeNS, n); err != nil {
		return fmt.Errorf("sandbox %q on node %s: teardown: %w", id, nodeNS, err)
	}
	return nil
}

// TeardownNetNS is Teardown for an Entry of List without an ID: it removes
// the sandbox whose namespace is at netnsPath.
func TeardownNetNS(nodeNS, netnsPath string) error {
	tag, err := nodeTag(nodeNS)
	if err != nil {
		return err
	}
	hash, ok := parseNetNSName(tag, filepath.Base(netnsPath))
	if !ok || filepath.Clean(netnsPath) != namesForHash(tag, hash).netns {
		return fmt.Errorf("%s is not a sandbox namespace of node %s", netnsPath, nodeNS)
	}
	n := namesForHash(tag, hash)
	defer locks.lock(n.netns)()
	if err := teardownAt(nodeNS, n); err != nil {
		return fmt.Errorf("sandbox %s on node %s: teardown: %w", netnsPath, nodeNS, err)
	}
	return nil
}

func teardownAt(nodeNS string, n names) error {
	h, err := netns.NewHandle(nodeNS)
	if errors.Is(err, os.ErrNotExist) || errors.Is(err, netns.ErrNotNetNS) {
		// The node namespace is gone, and its ends of veth pairs with it.
		return netns.Remove(n.netns)
	}
	if err != nil {
		return err
	}
	defer h.Close()
	return teardown(h, n)
}

func teardown(nodeH *netlink.Handle, n names) error {
	l, err := nodeH.LinkByName(n.veth)
	switch {
	case err == nil:
		if err := nodeH.LinkDel(l); err != nil && !errors.Is(err, unix.ENODEV) {
			return fmt.Errorf("delete veth %s: %w", n.veth, err)
		}
	case !isNotFound(err):
		return fmt.Errorf("veth %s: %w", n.veth, err)
	}
	if err := netns.Remove(n.netns); err != nil {
		return fmt.Errorf("pod namespace: %w", err)
	}
	return nil
}

// List returns the sandboxes of the node nodeNS, found from their namespace
// files, sorted by ID: what an agent restarted after a crash reconciles with
// the pods it should run.
func List(nodeNS string) ([]Entry, error) {
	tag, err := nodeTag(nodeNS)
	if err != nil {
		return nil, err
	}
	des, err := os.ReadDir(NetNSDir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var out []Entry
	for _, de := range des {
		hash, ok := parseNetNSName(tag, de.Name())
		if !ok {
			continue
		}
		n := namesForHash(tag, hash)
		id, err := readID(n.netns)
		if err != nil {
			return nil, err
		}
		out = append(out, Entry{ID: id, NetNS: n.netns, HostVeth: n.veth})
	}
	slices.SortFunc(out, func(a, b Entry) int {
		return strings.Compare(a.ID+"\x00"+a.NetNS, b.ID+"\x00"+b.NetNS)
	})
	return out, nil
}

// readID reads the sandbox ID from the alias of the namespace's loopback,
// after any Setup or Teardown of it in this process has finished; "" for a
// file that is not a namespace or a namespace without an ID.
func readID(path string) (string, error) {
	defer locks.lock(path)()
	if !netns.IsNetNS(path) {
		return "", nil
	}
	h, err := netns.NewHandle(path)
	if errors.Is(err, os.ErrNotExist) {
		return "", nil
	}
	if err != nil {
		return "", err
	}
	defer h.Close()
	lo, err := h.LinkByName("lo")
	if err != nil {
		return "", fmt.Errorf("lo in %s: %w", path, err)
	}
	if id, ok := strings.CutPrefix(lo.Attrs().Alias, idAlias); ok {
		return id, nil
	}
	return "", nil
}

func isNotFound(err error) bool {
	var nf netlink.LinkNotFoundError
	return errors.As(err, &nf)
}

// keyedLocks serialises work per key (a namespace path).
type keyedLocks struct {
	mu sync.Mutex
	m  map[string]*keyedLock
}

type keyedLock struct {
	sync.Mutex
	refs int
}

func (k *keyedLocks) lock(key string) (unlock func()) {
	k.mu.Lock()
	if k.m == nil {
		k.m = map[string]*keyedLock{}
	}
	l := k.m[key]
	if l == nil {
		l = &keyedLock{}
		k.m[key] = l
	}
	l.refs++
	k.mu.Unlock()
	l.Lock()
	return func() {
		l.Unlock()
		k.mu.Lock()
		if l.refs--; l.refs == 0 {
			delete(k.m, key)
		}
		k.mu.Unlock()
	}
}
