package service

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/validation/field"
	"k8s.io/klog/v2"

	"github.com/duet-net/duet/internal/alloc"
	"github.com/duet-net/duet/internal/apis/core"
	"github.com/duet-net/duet/internal/netaddr"
)

// serviceKind names Services in Invalid errors.
var serviceKind = schema.GroupKind{Group: "", Kind: "Service"}

// The kubernetes Service in the default namespace owns the first address of
// the primary range, which the primary ServiceRange keeps reserved for it.
const (
	kubernetesServiceNamespace = "default"
	kubernetesServiceName      = "kubernetes"
)

// Txn is the outcome of an allocation, settled once the Service has been
// persisted or has failed to be. Exactly one of the two methods takes
// effect; calling either again does nothing.
type Txn interface {
	// Commit is called after the Service was persisted: it releases what
	// the update gave up (a secondary cluster IP, every cluster IP of a
	// Service that became an ExternalName).
	Commit()
	// Revert is called when the Service was not persisted: it releases
	// what the call allocated, and keeps what it would have given up.
	// When the write failed because its request ended, it may have been
	// persisted all the same: see SetStoredReader.
	Revert()
}

// Allocators hands out and takes back Services' cluster IPs from the
// cluster's service ranges: one or more per family (the default
// ServiceCIDR's, then those of other ServiceCIDRs), which may change while
// the server runs (see SetRanges). Every call allocates all or nothing: on
// any failure it releases what it took before returning.
type Allocators struct {
	// primary and dualStack never change: the primary family is that of
	// the first --service-cluster-ip-range, and the IPv6DualStack gate is
	// a flag.
	primary   corev1.IPFamily
	dualStack bool
	set       atomic.Pointer[rangeSet]
	ports     *alloc.PortRange
	stored    StoredReader
	// settleLater runs f once a write whose outcome was unknown has
	// surely settled; tests replace it to run f at once.
	settleLater func(f func())
}

// rangeSet is the ranges at one moment, with the Config they make: a
// request reads one rangeSet and sees a cluster that does not change under
// it.
type rangeSet struct {
	cfg Config
	// ready are, per family, the ranges new addresses come from, in the
	// order they are tried.
	ready map[corev1.IPFamily][]*alloc.ServiceRange
	// all are every range, ready or not: addresses are given back to
	// ranges that take no new ones (a ServiceCIDR being deleted).
	all []*alloc.ServiceRange
	// kubernetes is the range that keeps the kubernetes Service's address.
	kubernetes *alloc.ServiceRange
}

// Range is one service range given to SetRanges.
type Range struct {
	*alloc.ServiceRange
	// Ready says new addresses may come from it: its ServiceCIDR is Ready
	// and not being deleted.
	Ready bool
}

// StoredReader reads a Service as it is stored now.
type StoredReader func(ctx context.Context, namespace, name string) (*core.Service, error)

// SetStoredReader lets Revert find out what was stored when a write's
// outcome is unknown. A write reported as failed because the request's
// context ended (the client went away, the request timed out) may have
// been applied all the same: etcd can commit a transaction the API server
// stopped waiting for, even after the server gave up on it. Giving back the
// addresses of a Service that was stored would leave them held without a
// record, free to be handed out twice. So such a Revert waits until the
// write has surely settled, reads the Service, and gives back only what
// the stored Service (the same object, by UID) does not hold. Without a
// reader, Revert trusts the report.
func (a *Allocators) SetStoredReader(fn StoredReader) { a.stored = fn }

const (
	// unknownOutcomeWait is how long a Revert whose write's outcome is
	// unknown waits before reading what was stored: far longer than etcd
	// takes to apply or drop a request (its own request timeout is 7s by
	// default), and shorter than the repair loop's grace period for
	// records without a Service, so that the allocator, not the repair
	// loop, gives back what was not stored.
	unknownOutcomeWait = 30 * time.Second
	// storedReadTimeout bounds that read.
	storedReadTimeout = 10 * time.Second
)

// NewAllocators checks that ranges holds exactly one ServiceRange per
// family of cfg, each for the configured range, the primary one reserving
// the kubernetes Service's address.
func NewAllocators(cfg Config, ranges map[netaddr.Family]*alloc.ServiceRange) (*Allocators, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	fams := cfg.Families()
	if len(ranges) != len(fams) {
		return nil, fmt.Errorf("service IP allocators: the cluster serves %s, got allocators for %d families", cfg.familyList(), len(ranges))
	}
	a := &Allocators{primary: cfg.primaryFamily(), dualStack: cfg.DualStack}
	var set []Range
	for i, fam := range fams {
		r := ranges[fam]
		if r == nil {
			return nil, fmt.Errorf("service IP allocators: no allocator for %s", fam)
		}
		if r.CIDR() != cfg.Ranges[i] {
			return nil, fmt.Errorf("service IP allocators: the %s allocator serves %s, --service-cluster-ip-range says %s", fam, r.CIDR(), cfg.Ranges[i])
		}
		set = append(set, Range{ServiceRange: r, Ready: true})
	}
	if err := a.SetRanges(set); err != nil {
		return nil, err
	}
	return a, nil
}

// SetRanges makes ranges the cluster's service ranges, in the order
// addresses are drawn from them within a family; requests that started
// before keep the ranges they began with. The primary family must keep a
// ready range, one of its ranges must reserve the kubernetes Service's
// address (a ServiceRange created as Primary), and with the IPv6DualStack
// gate off the other family's ranges are ignored. The families the
// cluster serves are those with a ready range: a range of a new family
// makes Services of that family, and dual-stack ones, possible at once.
func (a *Allocators) SetRanges(ranges []Range) error {
	set := &rangeSet{ready: map[corev1.IPFamily][]*alloc.ServiceRange{}}
	for _, r := range ranges {
		fam := corev1.IPFamily(r.Family())
		if fam != a.primary && !a.dualStack {
			continue
		}
		set.all = append(set.all, r.ServiceRange)
		if r.Ready {
			set.ready[fam] = append(set.ready[fam], r.ServiceRange)
		}
		if fam == a.primary && set.kubernetes == nil && r.ReservesKubernetesIP() {
			set.kubernetes = r.ServiceRange
		}
	}
	if len(set.ready[a.primary]) == 0 {
		return fmt.Errorf("service IP allocators: no ready service range of the primary family %s", a.primary)
	}
	if set.kubernetes == nil {
		p := set.ready[a.primary][0]
		return fmt.Errorf("service IP allocators: the primary range %s must reserve %s for the kubernetes Service (create it as Primary)", p.CIDR(), p.KubernetesServiceIP())
	}
	set.cfg = Config{Ranges: []netip.Prefix{set.ready[a.primary][0].CIDR()}, DualStack: a.dualStack}
	if other := set.ready[otherFamily(a.primary)]; len(other) > 0 {
		set.cfg.Ranges = append(set.cfg.Ranges, other[0].CIDR())
	}
	a.set.Store(set)
	return nil
}

// Config is the cluster as the Service rules see it now: its families,
// primary first.
func (a *Allocators) Config() Config { return a.set.Load().cfg }

// Ranges returns every service range, ready or not.
func (a *Allocators) Ranges() []*alloc.ServiceRange { return slices.Clone(a.set.Load().all) }

// AllocateCreate gives a new Service its cluster IPs, one per entry of
// ipFamilies and in that order, filling clusterIPs and clusterIP. Addresses
// the client chose are taken as they are; the others are drawn from the
// ranges. It runs PrepareForCreate first and refuses, with a 422, a Service
// whose family fields do not validate.
//
// With dryRun nothing is taken: chosen addresses are only checked, and a
// drawn one is reported as the range's network address, as Kubernetes does.
//
// ExternalName and headless Services get no address. The kubernetes Service
// in the default namespace gets the primary range's first address, which is
// reserved for it.
func (a *Allocators) AllocateCreate(ctx context.Context, svc *core.Service, dryRun bool) (Txn, error) {
	set := a.set.Load()
	PrepareForCreate(svc, set.cfg)
	if errs := familyErrors(svc, nil, set.cfg); len(errs) != 0 {
		return nil, apierrors.NewInvalid(serviceKind, svc.Name, errs)
	}
	t := a.newTxn(ctx, svc, set)
	if needsClusterIP(svc) && !isHeadless(svc) {
		if err := a.allocClusterIPs(t, svc, 0, dryRun); err != nil {
			return nil, err
		}
	}
	if err := a.allocNodePorts(t, svc, nil, dryRun); err != nil {
		t.Revert()
		return nil, err
	}
	return t, nil
}

// AllocateUpdate adjusts the cluster IPs of oldSvc as updated to newSvc,
// after running PrepareForUpdate:
//
//   - from ExternalName to a type with cluster IPs: all are allocated;
//   - to ExternalName: all are released on Commit;
//   - one family to two (upgrade): the secondary is allocated;
//   - two families to one (downgrade): the secondary is released on Commit;
//   - anything else, headless Services and PreferDualStack Services the
//     client did not re-shape: nothing changes.
//
// Family fields that do not validate are refused with a 422 before any
// address is touched.
func (a *Allocators) AllocateUpdate(ctx context.Context, newSvc, oldSvc *core.Service, dryRun bool) (Txn, error) {
	set := a.set.Load()
	PrepareForUpdate(newSvc, oldSvc, set.cfg)
	if errs := familyErrors(newSvc, oldSvc, set.cfg); len(errs) != 0 {
		return nil, apierrors.NewInvalid(serviceKind, newSvc.Name, errs)
	}
	t := a.newTxn(ctx, newSvc, set)
	t.uid = oldSvc.UID // the client's copy may carry none
	if err := a.allocNodePorts(t, newSvc, oldSvc, dryRun); err != nil {
		return nil, err
	}
	if isUntouchedPreferDualStack(newSvc, oldSvc) {
		return t, nil
	}
	oldFams, newFams := len(oldSvc.Spec.IPFamilies), len(newSvc.Spec.IPFamilies)
	switch {
	case !needsClusterIP(oldSvc) && needsClusterIP(newSvc):
		if !isHeadless(newSvc) {
			if err := a.allocClusterIPs(t, newSvc, 0, dryRun); err != nil {
				t.Revert()
				return nil, err
			}
		}
	case isHeadless(oldSvc):
		// Nothing was allocated, nothing will be.
	case needsClusterIP(oldSvc) && !needsClusterIP(newSvc):
		if !dryRun {
			t.release = parseIPs(oldSvc.Spec.ClusterIPs)
		}
	case oldFams == 1 && newFams == 2:
		if err := a.allocClusterIPs(t, newSvc, 1, dryRun); err != nil {
			t.Revert()
			return nil, err
		}
	case oldFams == 2 && newFams == 1:
		if !dryRun && len(oldSvc.Spec.ClusterIPs) == 2 {
			t.release = parseIPs(oldSvc.Spec.ClusterIPs[1:])
		}
	}
	return t, nil
}

// Release gives back the cluster IPs of a deleted Service. Addresses of a
// family the cluster no longer serves are skipped: there is nothing to give
// them back to.
func (a *Allocators) Release(ctx context.Context, svc *core.Service) error {
	var errs []error
	if a.ports != nil {
		for p := range nodePortsOf(svc) {
			if err := a.ports.Release(ctx, p); err != nil {
				errs = append(errs, fmt.Errorf("releasing node port %d: %w", p, err))
			}
		}
	}
	if !needsClusterIP(svc) || isHeadless(svc) {
		return errors.Join(errs...)
	}
	return errors.Join(append(errs, a.release(withOwner(ctx, svc), parseIPs(svc.Spec.ClusterIPs))...)...)
}

// allocClusterIPs fills clusterIPs[from:] for ipFamilies[from:], taking
// each address the client chose or drawing one. It sets the fields only
// when every address was obtained, and gives back what it took otherwise.
//
// The families are allocated concurrently: each one is an etcd round trip
// (its IPAddress record), and each family has a range of its own, so a
// dual-stack Service waits for one round trip instead of two.
func (a *Allocators) allocClusterIPs(t *txn, svc *core.Service, from int, dryRun bool) error {
	fams := svc.Spec.IPFamilies
	ips := slices.Clone(svc.Spec.ClusterIPs)
	for len(ips) < len(fams) {
		ips = append(ips, "")
	}
	type result struct {
		ip   netip.Addr
		took bool
		err  error
	}
	results := make([]result, len(fams))
	var wg sync.WaitGroup
	for i := from; i < len(fams); i++ {
		alloc := func() {
			r := &results[i]
			r.ip, r.took, r.err = t.set.allocOne(t.ctx, svc, fams[i], i, ips[i], dryRun)
		}
		if i == len(fams)-1 {
			alloc() // the last one runs here rather than in a goroutine of its own
			continue
		}
		wg.Go(alloc)
	}
	wg.Wait()
	var taken []netip.Addr
	var firstErr error
	for i := from; i < len(fams); i++ {
		r := results[i]
		if r.took {
			taken = append(taken, r.ip)
		}
		if r.err != nil && firstErr == nil {
			firstErr = r.err // the lowest index's, as a sequential loop would report
		}
		ips[i] = r.ip.String()
	}
	if firstErr != nil {
		a.release(t.ctx, taken)
		return firstErr
	}
	t.allocated = append(t.allocated, taken...)
	svc.Spec.ClusterIPs = ips
	if len(ips) > 0 {
		svc.Spec.ClusterIP = ips[0]
	}
	return nil
}

// allocOne obtains the address at index i of clusterIPs, of family fam:
// the one requested, or any. It reports whether it took an address that
// must be given back on failure.
func (set *rangeSet) allocOne(ctx context.Context, svc *core.Service, fam corev1.IPFamily, i int, requested string, dryRun bool) (netip.Addr, bool, error) {
	ranges := set.ready[fam]
	if len(ranges) == 0 { // validation makes this impossible
		return netip.Addr{}, false, apierrors.NewInternalError(fmt.Errorf("no service IP range for %s", fam))
	}
	kubernetes := isKubernetesService(svc) && fam == set.cfg.primaryFamily()

	if requested == "" {
		if kubernetes {
			return set.kubernetes.KubernetesServiceIP(), false, nil
		}
		ip, err := set.allocNext(ctx, ranges, dryRun)
		if err != nil {
			return netip.Addr{}, false, apierrors.NewInternalError(fmt.Errorf("failed to allocate a serviceIP: %v", err))
		}
		return ip, !dryRun, nil
	}

	ip, err := netip.ParseAddr(requested)
	if err != nil { // validation makes this impossible
		return netip.Addr{}, false, apierrors.NewInternalError(fmt.Errorf("failed to parse service IP %q", requested))
	}
	if kubernetes && ip == set.kubernetes.KubernetesServiceIP() {
		return ip, false, nil
	}
	if err := set.allocRequested(ctx, ranges, ip, dryRun); err != nil {
		var reason string
		switch {
		case errors.Is(err, alloc.ErrAllocated):
			reason = alloc.ErrAllocated.Error() // whoever said so, in Kubernetes' words
		case errors.Is(err, alloc.ErrNotInRange), errors.Is(err, alloc.ErrReserved):
			reason = err.Error()
		default:
			return netip.Addr{}, false, apierrors.NewInternalError(fmt.Errorf("failed to allocate IP %s: %w", requested, err))
		}
		el := field.ErrorList{field.Invalid(field.NewPath("spec", "clusterIPs").Index(i), requested,
			fmt.Sprintf("failed to allocate IP %v: %v", requested, reason))}
		return netip.Addr{}, false, apierrors.NewInvalid(serviceKind, svc.Name, el)
	}
	return ip, !dryRun, nil
}

// allocNext draws an address from the first range that has one free: the
// default ServiceCIDR's range first, the others only once it is full, as
// Kubernetes' allocator does. With dryRun nothing is taken, and the
// network address of a range with room is reported, as Kubernetes does
// (finding a free address without taking it would be racy anyway).
func (set *rangeSet) allocNext(ctx context.Context, ranges []*alloc.ServiceRange, dryRun bool) (netip.Addr, error) {
	var full error
	for _, r := range ranges {
		if dryRun {
			if !r.Free().IsZero() {
				return r.CIDR().Addr(), nil
			}
			full = alloc.ErrFull
			continue
		}
		ip, err := r.AllocateNext(ctx)
		if errors.Is(err, alloc.ErrFull) {
			full = err
			continue
		}
		return ip, err
	}
	return netip.Addr{}, full
}

// allocRequested takes (or, with dryRun, checks) an address the client
// chose, in whichever range holds it. Ranges may overlap (a ServiceCIDR
// wider than the default one): an address that one of them cannot give
// (its network or broadcast address) may be usable in another.
func (set *rangeSet) allocRequested(ctx context.Context, ranges []*alloc.ServiceRange, ip netip.Addr, dryRun bool) error {
	var first error
	for _, r := range ranges {
		if !r.CIDR().Contains(ip) {
			continue
		}
		var err error
		if dryRun {
			err = set.check(r, ip)
		} else {
			err = r.Allocate(ctx, ip)
		}
		if err == nil || !errors.Is(err, alloc.ErrNotInRange) && !errors.Is(err, alloc.ErrReserved) {
			return err
		}
		if first == nil {
			first = err
		}
	}
	switch {
	case first != nil:
		return first
	case len(ranges) == 1:
		// In none: the range's own words, which name it.
		return set.check(ranges[0], ip)
	}
	valid := make([]string, len(ranges))
	for i, r := range ranges {
		valid[i] = r.CIDR().String()
	}
	return &alloc.NotInRangeError{What: "IP", Value: ip.String(), ValidRange: strings.Join(valid, ", ")}
}

// check reports what Allocate would say about ip, without taking it.
func (set *rangeSet) check(r *alloc.ServiceRange, ip netip.Addr) error {
	cidr := r.CIDR()
	last := netaddr.AddrAt(cidr, netaddr.LastOffset(cidr))
	if !cidr.Contains(ip) || ip == cidr.Addr() || (ip.Is4() && ip == last) {
		e := &alloc.NotInRangeError{What: "IP", Value: ip.String(), ValidRange: cidr.String()}
		switch {
		case ip == cidr.Addr():
			e.Reason = "it is the network address"
		case cidr.Contains(ip):
			e.Reason = "it is the broadcast address"
		}
		return e
	}
	if r == set.kubernetes && ip == r.KubernetesServiceIP() {
		return &alloc.ReservedError{Value: ip.String(), For: "the kubernetes service"}
	}
	if r.Has(ip) {
		return alloc.ErrAllocated
	}
	return nil
}

// release gives addresses back to their ranges and returns what failed.
// It uses the ranges as they are now, ready or not: an address outlives
// changes to the ranges that happened since it was taken.
func (a *Allocators) release(ctx context.Context, ips []netip.Addr) []error {
	var errs []error
	set := a.set.Load()
	for _, ip := range ips {
		var r *alloc.ServiceRange
		for _, c := range set.all {
			if c.CIDR().Contains(ip) {
				r = c
				break
			}
		}
		if r == nil {
			// The repair loop deletes its record, which no range reads.
			klog.V(4).InfoS("Not releasing a cluster IP outside every service range", "clusterIP", ip)
			continue
		}
		if err := r.Release(ctx, ip); err != nil {
			errs = append(errs, fmt.Errorf("releasing cluster IP %s: %w", ip, err))
		}
	}
	return errs
}

// txn is the Txn of one allocation call.
type txn struct {
	a         *Allocators
	set       *rangeSet // the ranges the call allocates from
	ctx       context.Context
	reqCtx    context.Context // the request's own, to tell why a write failed
	name      string          // namespace/name, for logs
	namespace string
	svcName   string
	uid       types.UID // of the object being written, for Revert's check

	allocated []netip.Addr // given back by Revert
	release   []netip.Addr // given back by Commit

	allocatedPorts []int // node ports given back by Revert
	releasePorts   []int // node ports given back by Commit
	once           sync.Once
}

func (a *Allocators) newTxn(ctx context.Context, svc *core.Service, set *rangeSet) *txn {
	// Settling must happen even when the request's context is done, or
	// addresses would leak.
	return &txn{
		a: a, set: set, ctx: context.WithoutCancel(withOwner(ctx, svc)), reqCtx: ctx, name: svc.Namespace + "/" + svc.Name,
		namespace: svc.Namespace, svcName: svc.Name, uid: svc.UID,
	}
}

func (t *txn) Commit() {
	t.once.Do(func() {
		for _, err := range t.a.release(t.ctx, t.release) {
			// The repair loop reclaims what is left behind.
			klog.ErrorS(err, "Failed to release a cluster IP the Service gave up", "service", t.name)
		}
		t.a.releasePorts(t.ctx, t.releasePorts)
	})
}

func (t *txn) Revert() {
	t.once.Do(func() {
		if t.a.stored != nil && t.reqCtx.Err() != nil && len(t.allocated)+len(t.allocatedPorts) > 0 {
			klog.V(2).InfoS("A Service write ended with its request: giving back its addresses once the write has settled, unless it was stored", "service", t.name)
			settle := t.a.settleLater
			if settle == nil {
				settle = func(f func()) { time.AfterFunc(unknownOutcomeWait, f) }
			}
			settle(func() { t.giveBack(t.notStored()) })
			return
		}
		t.giveBack(t.allocated, t.allocatedPorts)
	})
}

func (t *txn) giveBack(ips []netip.Addr, ports []int) {
	for _, err := range t.a.release(t.ctx, ips) {
		klog.ErrorS(err, "Failed to release a cluster IP allocated for a Service that was not stored", "service", t.name)
	}
	t.a.releasePorts(t.ctx, ports)
}

// notStored returns what Revert may give back: what the call allocated,
// less what the Service as stored holds (see SetStoredReader). When the
// stored Service cannot be read, nothing is given back: a leaked cluster
// IP is reclaimed by the repair loop, an address handed out twice would
// not be.
func (t *txn) notStored() ([]netip.Addr, []int) {
	ctx, cancel := context.WithTimeout(t.ctx, storedReadTimeout)
	defer cancel()
	cur, err := t.a.stored(ctx, t.namespace, t.svcName)
	switch {
	case apierrors.IsNotFound(err):
		return t.allocated, t.allocatedPorts
	case err != nil:
		klog.ErrorS(err, "Keeping the addresses of a Service whose write failed: cannot tell whether it was stored", "service", t.name)
		return nil, nil
	case t.uid == "" || cur.UID != t.uid:
		return t.allocated, t.allocatedPorts
	}
	held := map[netip.Addr]bool{}
	for _, ip := range parseIPs(cur.Spec.ClusterIPs) {
		held[ip] = true
	}
	heldPorts := nodePortsOf(cur)
	var ips []netip.Addr
	for _, ip := range t.allocated {
		if !held[ip] {
			ips = append(ips, ip)
		}
	}
	var ports []int
	for _, p := range t.allocatedPorts {
		if !heldPorts[p] {
			ports = append(ports, p)
		}
	}
	if len(ips) < len(t.allocated) || len(ports) < len(t.allocatedPorts) {
		klog.InfoS("A Service write reported as failed was stored: keeping the addresses it holds", "service", t.name)
	}
	return ips, ports
}

func withOwner(ctx context.Context, svc *core.Service) context.Context {
	return alloc.WithOwner(ctx, alloc.Owner{Group: "", Resource: "services", Namespace: svc.Namespace, Name: svc.Name})
}

func isKubernetesService(svc *core.Service) bool {
	return svc.Namespace == kubernetesServiceNamespace && svc.Name == kubernetesServiceName
}

// parseIPs returns the addresses among ips, skipping "None" and anything
// else that is not one.
func parseIPs(ips []string) []netip.Addr {
	var out []netip.Addr
	for _, s := range ips {
		if ip, err := netip.ParseAddr(s); err == nil {
			out = append(out, ip)
		}
	}
	return out
}
