// Package nodeipam is the node IPAM controller: it gives every Node one pod
// CIDR per cluster CIDR (spec.podCIDRs, index-aligned with --cluster-cidr,
// primary first, and spec.podCIDR = podCIDRs[0]) from per-family node CIDR
// allocators whose records live in a durable alloc.Store.
//
// It is level-triggered in the manner of Kubernetes' controllers: informer
// events only name a Node; a worker reconciles that name against the
// lister's current Node and the controller's own record of what each Node
// holds, whatever event woke it. Allocation is transactional per Node: all
// missing families or none.
package nodeipam

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"sync"
	"time"

	v1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	"k8s.io/apimachinery/pkg/util/wait"
	coreinformers "k8s.io/client-go/informers/core/v1"
	"k8s.io/client-go/kubernetes"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/record"
	"k8s.io/client-go/util/workqueue"
	"k8s.io/klog/v2"

	"lukechampine.com/uint128"

	"github.com/duet-net/duet/internal/alloc"
	"github.com/duet-net/duet/internal/controller/worker"
	"github.com/duet-net/duet/internal/netaddr"
)

// Event reasons recorded on Nodes. The first two are Kubernetes' own.
const (
	// ReasonCIDRNotAvailable: a cluster CIDR has no free node CIDR left; the
	// Node waits, without pod CIDRs, until one is released.
	ReasonCIDRNotAvailable = "CIDRNotAvailable"
	// ReasonCIDRAssignmentFailed: writing the pod CIDRs to the Node failed.
	ReasonCIDRAssignmentFailed = "CIDRAssignmentFailed"
	// ReasonPodCIDRNotInClusterCIDR: the Node carries a pod CIDR outside
	// every cluster CIDR; it is left as it is.
	ReasonPodCIDRNotInClusterCIDR = "PodCIDRNotInClusterCIDR"
	// ReasonPodCIDRConflict: the Node carries a pod CIDR that overlaps
	// another Node's.
	ReasonPodCIDRConflict = "PodCIDRConflict"
	// ReasonInvalidPodCIDR: the Node's pod CIDRs cannot be read, or name one
	// family twice; the controller adds nothing to them.
	ReasonInvalidPodCIDR = "InvalidPodCIDR"
)

// ControllerName names the controller in events, logs and its work queue.
const ControllerName = "node-ipam-controller"

// DefaultSweepInterval is how often a running controller looks for
// allocation records that belong to no Node, besides once at start.
const DefaultSweepInterval = 10 * time.Minute

// Options tunes a Controller; the zero value is the default.
type Options struct {
	// SweepInterval is how often records that belong to no Node are
	// released after the sweep at start: 0 means DefaultSweepInterval, a
	// negative value sweeps only at start.
	SweepInterval time.Duration
	// RetryBaseDelay and RetryMaxDelay bound the per-Node exponential
	// backoff after a failed reconcile, such as an exhausted cluster CIDR
	// (defaults 100ms and 1m).
	RetryBaseDelay, RetryMaxDelay time.Duration
}

// Controller assigns pod CIDRs to Nodes.
type Controller struct {
	client   kubernetes.Interface
	lister   corelisters.NodeLister
	synced   cache.InformerSynced
	cidrs    netaddr.ClusterCIDRs
	allocs   []*alloc.NodeCIDRs
	store    alloc.Store
	recorder record.EventRecorder
	opts     Options

	queue worker.Slot[string]

	// mu serializes every allocator call and every change to the state
	// below; a node CIDR is allocated or occupied and attributed to its
	// Node in one critical section, so the orphan sweep, which decides
	// under mu, never takes an allocation in flight for an orphan.
	mu sync.Mutex
	// held is the node CIDRs (node-mask prefixes) each Node holds: those
	// its pod CIDRs cover plus those assigned to it and not yet seen on it.
	held map[string]map[netip.Prefix]struct{}
	// holders is held inverted; more than one holder is a conflict.
	holders map[netip.Prefix]map[string]struct{}
	// pending is, per Node and cluster CIDR index, the node CIDR this
	// controller assigned and has not yet seen on the Node (the update
	// may be in flight, failed or not yet in the informer's cache). It is
	// reused until the Node shows that family, so a retry never allocates
	// a second CIDR for the same Node.
	pending map[string][]netip.Prefix
	// waiting is the Nodes left without pod CIDRs for lack of space; they
	// are re-queued whenever a node CIDR is released.
	waiting map[string]struct{}
	// unreleased is node CIDRs whose release failed; retried on every
	// reconcile and sweep.
	unreleased map[netip.Prefix]struct{}

	// unregister removes the controller's event handlers (Close).
	unregister func() error
}

// New returns a controller that assigns node CIDRs from allocators[i]
// (one per entry of cidrs, same CIDR and node mask, in the same order) to
// the Nodes of informer. store is where the allocators keep their records,
// and must keep nothing else within the cluster CIDRs (give it a key
// prefix of its own): every node-mask record there that no Node holds is
// released (nil: no such sweep). New registers the informer's event handlers, so call it before
// the informer factory starts; then call Run.
func New(client kubernetes.Interface, informer coreinformers.NodeInformer, cidrs netaddr.ClusterCIDRs, allocators []*alloc.NodeCIDRs, store alloc.Store, recorder record.EventRecorder, opts Options) (*Controller, error) {
	if len(cidrs.CIDRs) == 0 {
		return nil, errors.New("node IPAM needs at least one cluster CIDR (--cluster-cidr)")
	}
	if len(allocators) != len(cidrs.CIDRs) || len(cidrs.NodeMaskSizes) != len(cidrs.CIDRs) {
		return nil, fmt.Errorf("node IPAM needs one allocator and one node mask size per cluster CIDR: %d cluster CIDRs, %d mask sizes, %d allocators", len(cidrs.CIDRs), len(cidrs.NodeMaskSizes), len(allocators))
	}
	seen := map[netaddr.Family]bool{}
	for i, a := range allocators {
		if a == nil || a.CIDR() != cidrs.CIDRs[i] || a.NodeMask() != cidrs.NodeMaskSizes[i] {
			return nil, fmt.Errorf("allocator %d does not hand out /%d CIDRs of cluster CIDR %s", i, cidrs.NodeMaskSizes[i], cidrs.CIDRs[i])
		}
		f := netaddr.FamilyOf(a.CIDR().Addr())
		if seen[f] {
			return nil, fmt.Errorf("two cluster CIDRs of family %s: a Node has one pod CIDR per family", f)
		}
		seen[f] = true
	}
	if client == nil || informer == nil || recorder == nil {
		return nil, errors.New("node IPAM needs a client, a Node informer and an event recorder")
	}
	if opts.SweepInterval == 0 {
		opts.SweepInterval = DefaultSweepInterval
	}
	if opts.RetryBaseDelay <= 0 {
		opts.RetryBaseDelay = 100 * time.Millisecond
	}
	if opts.RetryMaxDelay <= 0 {
		opts.RetryMaxDelay = time.Minute
	}
	c := &Controller{
		client:   client,
		lister:   informer.Lister(),
		cidrs:    cidrs,
		allocs:   slices.Clone(allocators),
		store:    store,
		recorder: recorder,
		opts:     opts,
	}
	c.resetState()
	reg, err := informer.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    c.enqueueObject,
		UpdateFunc: func(_, obj any) { c.enqueueObject(obj) },
		DeleteFunc: c.enqueueObject,
	})
	if err != nil {
		return nil, fmt.Errorf("watching Nodes: %w", err)
	}
	c.synced = reg.HasSynced
	c.unregister = func() error { return informer.Informer().RemoveEventHandler(reg) }
	return c, nil
}

// Close removes the controller's event handlers from the Node informer,
// for a controller replaced by one for other cluster CIDRs on an informer
// that keeps running. Call it once Run has returned.
func (c *Controller) Close() error { return c.unregister() }

func (c *Controller) resetState() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.held = map[string]map[netip.Prefix]struct{}{}
	c.holders = map[netip.Prefix]map[string]struct{}{}
	c.pending = map[string][]netip.Prefix{}
	c.waiting = map[string]struct{}{}
	c.unreleased = map[netip.Prefix]struct{}{}
}

func (c *Controller) enqueueObject(obj any) {
	key, err := cache.DeletionHandlingMetaNamespaceKeyFunc(obj)
	if err != nil {
		utilruntime.HandleError(err)
		return
	}
	c.enqueue(key)
}

// enqueue adds a Node name to the queue of a running controller; while it
// is not running, Run lists every Node when it starts instead.
func (c *Controller) enqueue(name string) {
	c.queue.Add(name)
}

// Run recovers the allocation state and then reconciles Nodes with
// workers goroutines until ctx is cancelled. It is meant to run while this
// server holds the controller's leader lease: it starts from the store and
// the Nodes, not from anything an earlier Run left in memory, so it may be
// started again after leadership is regained. Recovery is retried with
// backoff until it succeeds or ctx ends.
func (c *Controller) Run(ctx context.Context, workers int) {
	defer utilruntime.HandleCrash()
	logger := klog.FromContext(ctx).WithName(ControllerName)
	ctx = klog.NewContext(ctx, logger)
	q := workqueue.NewTypedRateLimitingQueueWithConfig(
		workqueue.NewTypedItemExponentialFailureRateLimiter[string](c.opts.RetryBaseDelay, c.opts.RetryMaxDelay),
		workqueue.TypedRateLimitingQueueConfig[string]{Name: "nodeipam"},
	)
	defer c.queue.Fill(q)()

	logger.Info("Starting", "clusterCIDRs", c.cidrs.CIDRs, "nodeMaskSizes", c.cidrs.NodeMaskSizes)
	defer logger.Info("Stopped")
	if !cache.WaitForNamedCacheSyncWithContext(ctx, c.synced) {
		return
	}
	backoff := wait.Backoff{Duration: c.opts.RetryBaseDelay, Factor: 2, Jitter: 0.1, Cap: c.opts.RetryMaxDelay, Steps: 1 << 30}
	err := wait.ExponentialBackoffWithContext(ctx, backoff, func(ctx context.Context) (bool, error) {
		if err := c.recover(ctx); err != nil {
			logger.Error(err, "Recovering node CIDR allocations failed; retrying")
			return false, nil
		}
		return true, nil
	})
	if err != nil {
		return // ctx ended
	}

	nodes, _ := c.lister.List(labels.Everything())
	for _, n := range nodes {
		q.Add(n.Name)
	}
	var wg sync.WaitGroup
	defer wg.Wait()
	if c.opts.SweepInterval > 0 {
		wg.Go(func() {
			tick := time.NewTicker(c.opts.SweepInterval)
			defer tick.Stop()
			for {
				select {
				case <-ctx.Done():
					return
				case <-tick.C:
				}
				if err := c.sweep(ctx); err != nil && ctx.Err() == nil {
					logger.Error(err, "Looking for node CIDRs that belong to no Node failed; will retry")
				}
			}
		})
	}
	worker.Run(ctx, q, workers, c.syncNode, worker.Options{
		KeyName: "node", Failed: "Assigning node CIDRs failed; will retry",
		// A full cluster CIDR, or a write that raced another: the Node
		// waits, and is woken when a CIDR is released.
		Expected: func(err error) bool {
			return errors.Is(err, alloc.ErrFull) || apierrors.IsConflict(err) || apierrors.IsNotFound(err)
		},
		ExpectedV: 2, Waiting: "Node CIDRs not assigned yet; will retry",
	})
}

// recover rebuilds the state a Run starts from: the allocators' view of the
// store, the node CIDRs on Nodes (recorded if the store lacks them), and no
// record that belongs to no Node.
func (c *Controller) recover(ctx context.Context) error {
	c.resetState()
	c.mu.Lock()
	for _, a := range c.allocs {
		if err := a.Sync(ctx); err != nil {
			c.mu.Unlock()
			return err
		}
	}
	nodes, err := c.lister.List(labels.Everything())
	if err != nil {
		c.mu.Unlock()
		return fmt.Errorf("listing Nodes: %w", err)
	}
	for _, n := range nodes {
		// Problems are reported when the Node is reconciled.
		plan := c.examine(n)
		if _, _, err := c.setHeld(ctx, n.Name, plan.slots); err != nil {
			c.mu.Unlock()
			return err
		}
	}
	c.mu.Unlock()
	return c.sweep(ctx)
}

// sweep releases the records of node CIDRs that no Node holds: left by a
// crash between allocating and updating a Node, or by a Node deleted while
// no controller ran. A record is kept if this controller attributes it to
// a Node when it is released (an assignment in flight included), or if a
// Node read from the API server after the records were listed (not from
// the informer's cache) carries it, as a Node written by the previous
// leader just before it stopped may.
//
// The reads happen without c.mu, so workers are not held up by them; the
// decision is made under c.mu. That is safe because this controller
// attributes a node CIDR to a Node in the same critical section in which
// it allocates or occupies it: a candidate taken since the listing has a
// holder by then, and releasing one that was released since is a no-op.
func (c *Controller) sweep(ctx context.Context) error {
	if c.store == nil {
		return nil
	}
	var records []netip.Prefix
	for _, a := range c.allocs {
		err := c.store.List(ctx, a.CIDR(), func(k netip.Prefix) error {
			if k.Bits() == a.NodeMask() {
				records = append(records, k)
			}
			return nil
		})
		if err != nil {
			return fmt.Errorf("listing node CIDR records in %s: %w", a.CIDR(), err)
		}
	}
	c.mu.Lock()
	var candidates []netip.Prefix
	for _, p := range records {
		if len(c.holders[p]) == 0 {
			candidates = append(candidates, p)
		}
	}
	freed := c.retryReleases(ctx)
	c.wakeIf(freed)
	c.mu.Unlock()
	if len(candidates) == 0 {
		return nil
	}

	live, err := c.client.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		return fmt.Errorf("listing Nodes to confirm %d unattributed node CIDRs: %w", len(candidates), err)
	}
	onNodes := map[netip.Prefix]struct{}{}
	for i := range live.Items {
		maps.Copy(onNodes, c.examine(&live.Items[i]).slots)
	}

	logger := klog.FromContext(ctx)
	c.mu.Lock()
	defer c.mu.Unlock()
	freed = false
	for _, p := range candidates {
		if _, ok := onNodes[p]; ok {
			continue // on a Node the cache has not shown yet: its reconcile will claim it
		}
		if len(c.holders[p]) > 0 {
			continue // assigned since the listing
		}
		logger.Info("Releasing node CIDR that belongs to no Node", "cidr", p)
		if c.release(ctx, p) {
			freed = true
		}
	}
	c.wakeIf(freed)
	return nil
}

// nodePlan is what a Node's current pod CIDRs mean to the controller.
type nodePlan struct {
	existing []string                  // the pod CIDRs as the Node has them
	present  []bool                    // per cluster CIDR: the Node has a pod CIDR of that family
	slots    map[netip.Prefix]struct{} // node CIDRs its pod CIDRs cover
	frozen   bool                      // the pod CIDRs are unreadable: add nothing
	problems []problem                 // to report as events
}

type problem struct{ reason, msg string }

// examine reads a Node's pod CIDRs. It has no side effects.
func (c *Controller) examine(n *v1.Node) nodePlan {
	plan := nodePlan{existing: n.Spec.PodCIDRs, present: make([]bool, len(c.allocs)), slots: map[netip.Prefix]struct{}{}}
	if len(plan.existing) == 0 && n.Spec.PodCIDR != "" {
		plan.existing = []string{n.Spec.PodCIDR} // written by a single-stack client
	}
	families := map[netaddr.Family]bool{}
	for _, s := range plan.existing {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			plan.frozen = true
			plan.problems = append(plan.problems, problem{ReasonInvalidPodCIDR, fmt.Sprintf("pod CIDR %q is not a CIDR (%v); node IPAM leaves this Node's pod CIDRs alone until it is fixed", s, err)})
			continue
		}
		f := netaddr.FamilyOf(p.Addr())
		if families[f] {
			plan.frozen = true
			plan.problems = append(plan.problems, problem{ReasonInvalidPodCIDR, fmt.Sprintf("pod CIDRs %v name two %s CIDRs, where one per family is allowed; node IPAM leaves them alone until they are fixed", plan.existing, f)})
		}
		families[f] = true
		i := c.familyIndex(f)
		if i < 0 || !p.Overlaps(c.allocs[i].CIDR()) {
			plan.problems = append(plan.problems, problem{ReasonPodCIDRNotInClusterCIDR, fmt.Sprintf("pod CIDR %s is outside the cluster CIDRs %v; it is left as it is, and node IPAM does not add another %s CIDR", p, c.cidrs.CIDRs, f)})
			if i >= 0 {
				plan.present[i] = true
			}
			continue
		}
		plan.present[i] = true
		slots, err := nodeSlots(c.allocs[i], p)
		if err != nil {
			plan.problems = append(plan.problems, problem{ReasonInvalidPodCIDR, fmt.Sprintf("pod CIDR %s cannot be reserved: %v", p, err)})
			continue
		}
		for _, s := range slots {
			plan.slots[s] = struct{}{}
		}
	}
	return plan
}

// nodeSlots returns the node CIDRs that Occupy(p) marks: the one holding a
// longer prefix, or each one a shorter prefix covers within the cluster
// CIDR.
func nodeSlots(a *alloc.NodeCIDRs, p netip.Prefix) ([]netip.Prefix, error) {
	p = p.Masked()
	if p.Bits() < a.CIDR().Bits() {
		p = a.CIDR()
	}
	mask := a.NodeMask()
	if p.Bits() >= mask {
		return []netip.Prefix{netip.PrefixFrom(p.Addr(), mask).Masked()}, nil
	}
	if mask-p.Bits() > 16 {
		return nil, fmt.Errorf("it covers more than 65536 /%d node CIDRs", mask)
	}
	step := uint128.From64(1).Lsh(uint(p.Addr().BitLen() - mask))
	out := make([]netip.Prefix, 0, 1<<(mask-p.Bits()))
	for k := range uint64(1) << (mask - p.Bits()) {
		out = append(out, netip.PrefixFrom(netaddr.AddrAt(p, step.Mul64(k)), mask))
	}
	return out, nil
}

func (c *Controller) familyIndex(f netaddr.Family) int {
	for i, a := range c.allocs {
		if netaddr.FamilyOf(a.CIDR().Addr()) == f {
			return i
		}
	}
	return -1
}

func ownerContext(ctx context.Context, node string) context.Context {
	return alloc.WithOwner(ctx, alloc.Owner{Resource: "nodes", Name: node})
}

// syncNode reconciles one Node: it holds the node CIDRs the Node carries,
// assigns the missing families (all or none), writes them to the Node,
// and releases what a deleted Node held.
func (c *Controller) syncNode(ctx context.Context, name string) error {
	node, err := c.lister.Get(name)
	if apierrors.IsNotFound(err) {
		c.mu.Lock()
		freed := c.retryReleases(ctx)
		_, f, _ := c.setHeld(ctx, name, nil) // releases cannot fail the reconcile: they are retried
		delete(c.pending, name)
		delete(c.waiting, name)
		c.wakeIf(freed || f)
		c.mu.Unlock()
		return nil
	}
	if err != nil {
		return err
	}
	plan := c.examine(node)
	for _, p := range plan.problems {
		c.recorder.Event(node, v1.EventTypeWarning, p.reason, p.msg)
	}

	c.mu.Lock()
	want, conflicts, freed, err := c.assign(ctx, name, plan)
	c.wakeIf(freed)
	c.mu.Unlock()
	for _, msg := range conflicts {
		c.recorder.Event(node, v1.EventTypeWarning, ReasonPodCIDRConflict, msg)
	}
	if errors.Is(err, alloc.ErrFull) {
		c.recorder.Eventf(node, v1.EventTypeWarning, ReasonCIDRNotAvailable, "Node %s is waiting for a pod CIDR: %v", name, err)
	}
	if err != nil || plan.frozen || len(want) == 0 {
		return err
	}
	if slices.Equal(want, node.Spec.PodCIDRs) && node.Spec.PodCIDR == want[0] {
		return nil
	}

	// An Update, not a patch: it carries the cached resourceVersion, so a
	// Node whose pod CIDRs changed since the cache saw it is not
	// overwritten; the conflict requeues it and the next attempt reads
	// the newer Node.
	updated := node.DeepCopy()
	updated.Spec.PodCIDRs = want
	updated.Spec.PodCIDR = want[0]
	if _, err := c.client.CoreV1().Nodes().Update(ctx, updated, metav1.UpdateOptions{FieldManager: ControllerName}); err != nil {
		if !apierrors.IsConflict(err) && !apierrors.IsNotFound(err) {
			c.recorder.Eventf(node, v1.EventTypeWarning, ReasonCIDRAssignmentFailed, "Writing pod CIDRs %v to Node %s failed: %v", want, name, err)
		}
		return fmt.Errorf("writing pod CIDRs %v to Node %s: %w", want, name, err)
	}
	klog.FromContext(ctx).V(2).Info("Assigned pod CIDRs", "node", name, "podCIDRs", want)
	return nil
}

// assign updates the state for a Node that exists, allocating its missing
// families, and returns the pod CIDRs it should have. c.mu is held.
func (c *Controller) assign(ctx context.Context, name string, plan nodePlan) (want, conflicts []string, freed bool, err error) {
	freed = c.retryReleases(ctx)
	pending := c.pending[name]
	if pending == nil {
		pending = make([]netip.Prefix, len(c.allocs))
	}
	for i := range pending {
		if plan.present[i] {
			pending[i] = netip.Prefix{} // the Node shows its own CIDR of this family now
		}
	}
	hold := maps.Clone(plan.slots)
	for _, p := range pending {
		if p.IsValid() {
			hold[p] = struct{}{}
		}
	}
	conflicts, f, err := c.setHeld(ctx, name, hold)
	freed = freed || f
	if err != nil {
		c.storePending(name, pending)
		return nil, conflicts, freed, err
	}

	if !plan.frozen {
		actx := ownerContext(ctx, name)
		var fresh []int
		for i, a := range c.allocs {
			if plan.present[i] || pending[i].IsValid() {
				continue
			}
			p, aerr := a.AllocateNext(actx)
			if aerr != nil {
				err = fmt.Errorf("allocating a /%d pod CIDR from %s: %w", a.NodeMask(), a.CIDR(), aerr)
				break
			}
			pending[i] = p
			fresh = append(fresh, i)
		}
		if err != nil {
			// All or nothing: give back what this attempt took. That frees
			// nothing another Node was waiting for, so wakes no one (it
			// would wake this Node itself, in a loop).
			for _, i := range fresh {
				c.release(ctx, pending[i])
				pending[i] = netip.Prefix{}
			}
			if errors.Is(err, alloc.ErrFull) {
				c.waiting[name] = struct{}{}
			}
		} else {
			delete(c.waiting, name)
			for _, i := range fresh {
				c.addHolder(name, pending[i])
			}
		}
	}
	c.storePending(name, pending)
	if err != nil {
		return nil, conflicts, freed, err
	}
	want = slices.Clone(plan.existing)
	for _, p := range pending {
		if p.IsValid() {
			want = append(want, p.String())
		}
	}
	return want, conflicts, freed, nil
}

func (c *Controller) storePending(name string, pending []netip.Prefix) {
	if slices.ContainsFunc(pending, netip.Prefix.IsValid) {
		c.pending[name] = pending
	} else {
		delete(c.pending, name)
	}
}

// setHeld makes the node CIDRs a Node holds exactly want: it records (and
// occupies) the new ones and releases those no Node holds any more. It
// returns messages about CIDRs another Node holds too, and whether
// anything was released. c.mu is held.
func (c *Controller) setHeld(ctx context.Context, name string, want map[netip.Prefix]struct{}) (conflicts []string, freed bool, err error) {
	have := c.held[name]
	octx := ownerContext(ctx, name)
	for p := range want {
		if _, ok := have[p]; ok {
			continue
		}
		i := c.familyIndex(netaddr.FamilyOf(p.Addr()))
		if oerr := c.allocs[i].Occupy(octx, p); oerr != nil {
			err = fmt.Errorf("recording node CIDR %s of Node %s: %w", p, name, oerr)
			break
		}
		c.addHolder(name, p)
	}
	for p := range c.held[name] {
		if _, ok := want[p]; ok {
			continue
		}
		delete(c.held[name], p)
		delete(c.holders[p], name)
		if len(c.holders[p]) == 0 {
			delete(c.holders, p)
			if c.release(ctx, p) {
				freed = true
			}
		}
	}
	if len(c.held[name]) == 0 {
		delete(c.held, name)
	}
	// Reported on every reconcile while it lasts, not only when it starts:
	// the event recorder folds repeats together. The held prefixes are
	// node-mask slots; the message names the pod CIDRs the Nodes really
	// carry, which may be wider or narrower than a slot, so that the user
	// sees what to change.
	for p := range c.held[name] {
		for other := range c.holders[p] {
			if other != name {
				conflicts = append(conflicts, fmt.Sprintf("pod CIDR %s of Node %s overlaps pod CIDR %s of Node %s; one of them must be changed",
					c.podCIDRAt(name, p), name, c.podCIDRAt(other, p), other))
			}
		}
	}
	// A wide pod CIDR meets another Node's in several slots: one message.
	slices.Sort(conflicts)
	return slices.Compact(conflicts), freed, err
}

// podCIDRAt returns the pod CIDR of Node name that covers or lies in the
// node CIDR slot, as the Node carries it; slot itself when the Node does
// not show one (an assignment not yet written, a Node gone from the cache).
func (c *Controller) podCIDRAt(name string, slot netip.Prefix) netip.Prefix {
	n, err := c.lister.Get(name)
	if err != nil {
		return slot
	}
	cidrs := n.Spec.PodCIDRs
	if len(cidrs) == 0 && n.Spec.PodCIDR != "" {
		cidrs = []string{n.Spec.PodCIDR}
	}
	for _, s := range cidrs {
		if p, err := netip.ParsePrefix(s); err == nil && p.Overlaps(slot) {
			return p
		}
	}
	return slot
}

func (c *Controller) addHolder(name string, p netip.Prefix) {
	if c.held[name] == nil {
		c.held[name] = map[netip.Prefix]struct{}{}
	}
	c.held[name][p] = struct{}{}
	if c.holders[p] == nil {
		c.holders[p] = map[string]struct{}{}
	}
	c.holders[p][name] = struct{}{}
	delete(c.unreleased, p)
}

// release frees a node CIDR no Node holds, and reports whether it did; a
// failure is remembered and retried. c.mu is held.
func (c *Controller) release(ctx context.Context, p netip.Prefix) bool {
	i := c.familyIndex(netaddr.FamilyOf(p.Addr()))
	if err := c.allocs[i].Release(ctx, p); err != nil {
		klog.FromContext(ctx).Error(err, "Releasing node CIDR failed; will retry", "cidr", p)
		c.unreleased[p] = struct{}{}
		return false
	}
	delete(c.unreleased, p)
	return true
}

func (c *Controller) retryReleases(ctx context.Context) (freed bool) {
	for p := range c.unreleased {
		if len(c.holders[p]) > 0 {
			delete(c.unreleased, p)
			continue
		}
		if c.release(ctx, p) {
			freed = true
		}
	}
	return freed
}

// wakeIf re-queues the Nodes waiting for space when a node CIDR was
// released. c.mu is held.
func (c *Controller) wakeIf(freed bool) {
	if !freed {
		return
	}
	for name := range c.waiting {
		c.enqueue(name)
	}
}
