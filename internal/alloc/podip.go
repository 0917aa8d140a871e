package alloc

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/duet-net/duet/internal/netaddr"
)

// DefaultPodIPCooldown is how long a released pod address rests before it
// is handed out again (unless nothing else is free): long enough for
// conntrack entries and stale endpoints of a deleted pod to go, short
// against a node's churn.
const DefaultPodIPCooldown = 60 * time.Second

// PodIPs is Duet's one pod-address policy, used by the CNI plugin
// duet-ipam and by the agent alike: each attachment gets one address from
// each range set, round-robin from the address reserved last in that set
// (so a released address is not reused until the cursor comes round), and
// a released address cools down before reuse unless nothing else is free.
// Both keep a new pod from receiving traffic (conntrack entries, stale
// endpoints) meant for a deleted one. The gateway, the network address and
// the IPv4 broadcast address are never handed out.
//
// All state (reservations, cursors, the cool-down queue) is in the store,
// and every call is one store transaction, so a PodIPs may live for one
// call (the plugin) or for the process (the agent), and several processes
// may share one durable store.
type PodIPs struct {
	store    PodIPStore
	sets     []PodRangeSet
	cooldown time.Duration
	now      func() time.Time

	// names are the sets' names, the keys of their cursors, made on first
	// use: a DEL, a CHECK or a GC needs none.
	namesOnce sync.Once
	names     []string
}

// PodIPOptions are the optional parts of a PodIPs policy.
type PodIPOptions struct {
	// Cooldown is how long a released address rests before reuse; zero
	// turns the cool-down off. Callers usually want DefaultPodIPCooldown.
	Cooldown time.Duration
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

// NewPodIPs returns the policy for the range sets sets over store. Each
// set must be non-empty and of one family (NodePodRanges and duet-ipam's
// configuration parser make such sets).
func NewPodIPs(store PodIPStore, sets []PodRangeSet, opts PodIPOptions) (*PodIPs, error) {
	if store == nil {
		return nil, errors.New("pod IPs: no store")
	}
	if len(sets) == 0 {
		return nil, errors.New("pod IPs: no range sets")
	}
	for i, s := range sets {
		if len(s) == 0 {
			return nil, fmt.Errorf("pod IPs: range set %d is empty", i)
		}
		for _, r := range s[1:] {
			if r.Family() != s.Family() {
				return nil, fmt.Errorf("pod IPs: range set %d mixes %s and %s", i, s.Family(), r.Family())
			}
		}
	}
	if opts.Cooldown < 0 {
		return nil, fmt.Errorf("pod IPs: negative cool-down %s", opts.Cooldown)
	}
	now := opts.Now
	if now == nil {
		now = time.Now
	}
	return &PodIPs{store: store, sets: sets, cooldown: opts.Cooldown, now: now}, nil
}

// setName is the name of range set i.
func (p *PodIPs) setName(i int) string {
	p.namesOnce.Do(func() {
		p.names = make([]string, len(p.sets))
		for i, s := range p.sets {
			p.names[i] = s.String()
		}
	})
	return p.names[i]
}

// RangeSets are the policy's range sets.
func (p *PodIPs) RangeSets() []PodRangeSet { return p.sets }

// Reserve gives o one address from each range set and records them before
// returning, all in one transaction: every address or none. An attachment
// that already holds fitting addresses gets the same ones back. requested
// addresses (at most one per set) are taken instead of the next free one;
// a request may take a cooling address, since the cool-down only steers
// automatic choice.
func (p *PodIPs) Reserve(o Attachment, requested []netip.Addr) ([]netip.Addr, error) {
	tx, err := p.store.Begin(true)
	if err != nil {
		return nil, err
	}
	defer tx.Rollback() // after Commit, a no-op
	t := podTxn{tx: tx, p: p}
	got, err := t.reserve(o, requested)
	if err != nil {
		return nil, err
	}
	if err := tx.Commit(); err != nil {
		return nil, err
	}
	return got, nil
}

// Release frees o's addresses; they cool down before reuse. An attachment
// that holds nothing is not an error (CNI DEL must be idempotent). It
// returns the addresses released.
func (p *PodIPs) Release(o Attachment) ([]netip.Addr, error) {
	return p.releaseWith(o, p.cooldown)
}

// Unreserve gives back a reservation that was never used (the caller
// failed before handing the addresses to anyone): they are free at once,
// without a cool-down.
func (p *PodIPs) Unreserve(o Attachment) ([]netip.Addr, error) {
	return p.releaseWith(o, 0)
}

func (p *PodIPs) releaseWith(o Attachment, cooldown time.Duration) ([]netip.Addr, error) {
	tx, err := p.store.Begin(true)
	if err != nil {
		return nil, err
	}
	defer tx.Rollback()
	t := podTxn{tx: tx, p: p}
	if err := t.expire(cooldown); err != nil {
		return nil, err
	}
	addrs, err := tx.Holdings(o)
	if err != nil {
		return nil, err
	}
	if addrs != nil {
		if err := t.release(o, addrs, cooldown); err != nil {
			return nil, err
		}
	}
	// Commit even when o held nothing: what expired is kept.
	if err := tx.Commit(); err != nil {
		return nil, err
	}
	return addrs, nil
}

// view runs fn in a read-only transaction.
func (p *PodIPs) view(fn func(tx PodIPTxn) error) error {
	tx, err := p.store.Begin(false)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	return fn(tx)
}

// Lookup returns o's addresses, or nil if it holds none.
func (p *PodIPs) Lookup(o Attachment) ([]netip.Addr, error) {
	var addrs []netip.Addr
	err := p.view(func(tx PodIPTxn) error {
		h, err := tx.Holdings(o)
		addrs = slices.Clone(h)
		return err
	})
	return addrs, err
}

// Holder returns who holds a, whether a is cooling, and whether it has a
// record at all.
func (p *PodIPs) Holder(a netip.Addr) (o Attachment, cooling, found bool, err error) {
	err = p.view(func(tx PodIPTxn) error {
		rec, ok, err := tx.Record(a)
		if err != nil || !ok {
			return err
		}
		found, cooling, o = true, rec.ReleasedAt != 0, rec.Holder
		return nil
	})
	return o, cooling, found, err
}

// Check verifies that o holds one address in each range set, recorded as
// its own, and returns them in the sets' order. An attachment holding
// nothing gets an error wrapping ErrUnknownAttachment.
func (p *PodIPs) Check(o Attachment) ([]netip.Addr, error) {
	var addrs []netip.Addr
	err := p.view(func(tx PodIPTxn) error {
		held, err := tx.Holdings(o)
		if err != nil {
			return err
		}
		if held == nil {
			return &UnknownAttachmentError{Attachment: o}
		}
		ordered, ok := arrange(held, p.sets)
		if !ok {
			return fmt.Errorf("container %s interface %s holds %v, which does not match the network's range sets %v one address each", o.ContainerID, o.IfName, held, p.sets)
		}
		for _, a := range ordered {
			rec, ok, err := tx.Record(a)
			if err != nil {
				return err
			}
			if !ok || !rec.HeldBy(o) {
				return fmt.Errorf("the record of %s does not name container %s interface %s", a, o.ContainerID, o.IfName)
			}
		}
		addrs = ordered
		return nil
	})
	return addrs, err
}

// GC releases every attachment not in valid, and any held address whose
// holder has no holdings entry. It returns the attachments it released.
// An empty valid releases everything: callers that cannot say which
// attachments are live must not call it.
func (p *PodIPs) GC(valid []Attachment) ([]Attachment, error) {
	keep := make(map[Attachment]bool, len(valid))
	for _, v := range valid {
		keep[v] = true
	}
	tx, err := p.store.Begin(true)
	if err != nil {
		return nil, err
	}
	defer tx.Rollback()
	t := podTxn{tx: tx, p: p}
	if err := t.expire(p.cooldown); err != nil {
		return nil, err
	}
	type gone struct {
		o     Attachment
		addrs []netip.Addr
	}
	var drop []gone
	err = tx.EachHolding(func(o Attachment, addrs []netip.Addr) error {
		if !keep[o] {
			drop = append(drop, gone{o, addrs})
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	var released []Attachment
	for _, g := range drop {
		if err := t.release(g.o, g.addrs, p.cooldown); err != nil {
			return nil, err
		}
		released = append(released, g.o)
	}
	if err := t.dropOrphans(); err != nil {
		return nil, err
	}
	if err := tx.Commit(); err != nil {
		return nil, err
	}
	return released, nil
}

// Available returns nil if every range set can give out an address (a
// cooling one counts: it is handed out when nothing else is free), or an
// error wrapping ErrFull that names the first exhausted set.
func (p *PodIPs) Available() error {
	return p.view(func(tx PodIPTxn) error {
		t := podTxn{tx: tx, p: p}
		for i, set := range p.sets {
			room, err := t.hasRoom(set)
			if err != nil {
				return err
			}
			if !room {
				return fmt.Errorf("range set %d: %w", i, t.fullError(set))
			}
		}
		return nil
	})
}

// Counts returns the number of held and cooling addresses in the store,
// for tests and metrics. It walks every record.
func (p *PodIPs) Counts() (held, cooling int, err error) { return CountPodIPs(p.store) }

// CountPodIPs returns the number of held and cooling addresses in st. It
// walks every record.
func CountPodIPs(st PodIPStore) (held, cooling int, err error) {
	tx, err := st.Begin(false)
	if err != nil {
		return 0, 0, err
	}
	defer tx.Rollback()
	err = eachRecord(tx, func(_ netip.Addr, rec PodIPRecord) error {
		if rec.ReleasedAt != 0 {
			cooling++
		} else {
			held++
		}
		return nil
	})
	return held, cooling, err
}

// eachRecord calls fn for every record of both families.
func eachRecord(tx PodIPTxn, fn func(netip.Addr, PodIPRecord) error) error {
	for _, zero := range []netip.Addr{netip.IPv4Unspecified(), netip.IPv6Unspecified()} {
		if err := tx.Records(zero, netaddr.LastAddr(netip.PrefixFrom(zero, 0)), fn); err != nil {
			return err
		}
	}
	return nil
}

// podTxn is the policy's work within one store transaction.
type podTxn struct {
	tx PodIPTxn
	p  *PodIPs
	// now is read from the clock once, when first needed: a call that
	// neither releases nor finds a queue to expire never reads it.
	now    time.Time
	hasNow bool
}

func (t *podTxn) clock() time.Time {
	if !t.hasNow {
		t.now, t.hasNow = t.p.now(), true
	}
	return t.now
}

// reserve is Reserve within the transaction.
func (t *podTxn) reserve(o Attachment, requested []netip.Addr) ([]netip.Addr, error) {
	p := t.p
	if err := t.expire(p.cooldown); err != nil {
		return nil, err
	}
	prev, err := t.tx.Holdings(o)
	if err != nil {
		return nil, err
	}
	if prev != nil {
		if addrs, ok := t.fits(o, prev, p.sets, requested); ok {
			return addrs, nil
		}
		// The configuration changed under a live attachment: start over.
		if err := t.release(o, prev, p.cooldown); err != nil {
			return nil, err
		}
	}
	got := make([]netip.Addr, 0, len(p.sets))
	for i, set := range p.sets {
		var a netip.Addr
		var err error
		if req, ok := requestedIn(set, requested); ok {
			a, err = t.claimRequested(o, set, req)
		} else {
			a, err = t.claimNext(o, set, p.setName(i))
		}
		if err != nil {
			return nil, fmt.Errorf("range set %d: %w", i, err)
		}
		got = append(got, a)
	}
	for _, r := range requested {
		if !slices.Contains(got, r) {
			return nil, fmt.Errorf("requested IP %s was not allocated: another requested IP takes its range set's one address", r)
		}
	}
	return got, t.tx.PutHoldings(o, got)
}

// arrange orders an attachment's addresses by range set: one per set, in
// the sets' order. It fails if they do not match the sets one to one.
func arrange(addrs []netip.Addr, sets []PodRangeSet) ([]netip.Addr, bool) {
	if len(addrs) != len(sets) {
		return nil, false
	}
	out := make([]netip.Addr, len(sets))
	used := make([]bool, len(addrs))
	for i, set := range sets {
		for j, a := range addrs {
			if !used[j] {
				if _, ok := set.RangeOf(a); ok {
					out[i], used[j] = a, true
					break
				}
			}
		}
		if !out[i].IsValid() {
			return nil, false
		}
	}
	return out, true
}

// fits returns the addresses o holds, ordered by set, if they still answer
// the request: one per range set, recorded as o's, and including every
// requested address.
func (t *podTxn) fits(o Attachment, addrs []netip.Addr, sets []PodRangeSet, requested []netip.Addr) ([]netip.Addr, bool) {
	addrs, ok := arrange(addrs, sets)
	if !ok {
		return nil, false
	}
	for _, a := range addrs {
		if rec, ok, err := t.tx.Record(a); err != nil || !ok || !rec.HeldBy(o) {
			return nil, false
		}
	}
	for _, r := range requested {
		if !slices.Contains(addrs, r) {
			return nil, false
		}
	}
	return addrs, true
}

// release frees o's addresses: each starts its cool-down (or is deleted
// when there is none), and o's holdings entry goes.
func (t *podTxn) release(o Attachment, addrs []netip.Addr, cooldown time.Duration) error {
	for _, a := range addrs {
		rec, ok, err := t.tx.Record(a)
		if err != nil {
			return err
		}
		if !ok || !rec.HeldBy(o) {
			continue // not o's: never free another attachment's address
		}
		if cooldown <= 0 {
			if err := t.tx.DeleteRecord(a); err != nil {
				return err
			}
			continue
		}
		at := t.clock().UnixNano()
		if err := t.tx.PutRecord(a, PodIPRecord{ReleasedAt: at}); err != nil {
			return err
		}
		if err := t.tx.Enqueue(at, a); err != nil {
			return err
		}
	}
	return t.tx.DeleteHoldings(o)
}

// expire ends the cool-down of addresses released at least cooldown ago,
// oldest first; the work is bounded by what has expired.
func (t *podTxn) expire(cooldown time.Duration) error {
	for {
		at, a, ok, err := t.tx.NextQueued(0, netip.Addr{})
		if err != nil || !ok || at > t.clock().Add(-cooldown).UnixNano() {
			return err
		}
		rec, found, err := t.tx.Record(a)
		if err != nil {
			return err
		}
		// A stale entry (the address was taken again) only leaves the queue.
		if found && rec.ReleasedAt == at {
			if err := t.tx.DeleteRecord(a); err != nil {
				return err
			}
		}
		if err := t.tx.Dequeue(at, a); err != nil {
			return err
		}
	}
}

// claim records a as held by o; a cooling address leaves the queue.
func (t *podTxn) claim(o Attachment, a netip.Addr, prev PodIPRecord, existed bool) error {
	if existed && prev.ReleasedAt != 0 {
		if err := t.tx.Dequeue(prev.ReleasedAt, a); err != nil {
			return err
		}
	}
	return t.tx.PutRecord(a, PodIPRecord{Holder: o})
}

// claimRequested takes a specific address.
func (t *podTxn) claimRequested(o Attachment, set PodRangeSet, a netip.Addr) (netip.Addr, error) {
	if _, ok := set.RangeOf(a); !ok {
		why := "reserved"
		for _, rr := range set {
			if rr.Gateway == a {
				why = "the gateway"
			}
		}
		return netip.Addr{}, &ReservedError{Value: a.String(), For: why}
	}
	rec, ok, err := t.tx.Record(a)
	if err != nil {
		return netip.Addr{}, err
	}
	if ok && rec.ReleasedAt == 0 && !rec.HeldBy(o) {
		return netip.Addr{}, &AllocatedError{What: fmt.Sprintf("requested IP %s (held by container %s interface %s)", a, rec.Holder.ContainerID, rec.Holder.IfName)}
	}
	return a, t.claim(o, a, rec, ok)
}

// claimNext takes the next free address of the set after the one reserved
// last, wrapping round; if every address is held or cooling, the one that
// has cooled longest.
func (t *podTxn) claimNext(o Attachment, set PodRangeSet, name string) (netip.Addr, error) {
	cur, err := t.tx.Cursor(name)
	if err != nil {
		return netip.Addr{}, err
	}
	a, ok, err := t.searchFrom(set, cur)
	if err != nil {
		return netip.Addr{}, err
	}
	var prev PodIPRecord
	var existed bool
	if !ok {
		if a, prev, ok, err = t.oldestCooling(set); err != nil {
			return netip.Addr{}, err
		}
		if !ok {
			return netip.Addr{}, t.fullError(set)
		}
		existed = true
	}
	if err := t.claim(o, a, prev, existed); err != nil {
		return netip.Addr{}, err
	}
	return a, t.tx.PutCursor(name, a)
}

// searchFrom finds the first free address after cur, going through the
// set's ranges in order and wrapping round to end at cur.
func (t *podTxn) searchFrom(set PodRangeSet, cur netip.Addr) (netip.Addr, bool, error) {
	ri := -1
	if cur.IsValid() {
		for i, r := range set {
			if r.Contains(cur) {
				ri = i
				break
			}
		}
	}
	if ri < 0 { // first use, or the ranges changed: start at the start
		for _, r := range set {
			if a, ok, err := t.firstFree(r, r.Start, r.End); err != nil || ok {
				return a, ok, err
			}
		}
		return netip.Addr{}, false, nil
	}
	if n := cur.Next(); n.IsValid() {
		if a, ok, err := t.firstFree(set[ri], n, set[ri].End); err != nil || ok {
			return a, ok, err
		}
	}
	for k := 1; k < len(set); k++ {
		r := set[(ri+k)%len(set)]
		if a, ok, err := t.firstFree(r, r.Start, r.End); err != nil || ok {
			return a, ok, err
		}
	}
	return t.firstFree(set[ri], set[ri].Start, cur)
}

// firstFree returns the first usable address of r in [lo, hi] with no
// record. The store skips recorded addresses, so this costs the records
// passed, never the size of the range; unusable addresses (at most the
// network address, the gateway and the IPv4 broadcast) cost one more step.
func (t *podTxn) firstFree(r PodRange, lo, hi netip.Addr) (netip.Addr, bool, error) {
	a, ok := r.FirstUsable(lo)
	for ok && a.Compare(hi) <= 0 {
		free, found, err := t.tx.NextFree(a, hi)
		if err != nil || !found {
			return netip.Addr{}, false, err
		}
		if r.Usable(free) {
			return free, true, nil
		}
		n := free.Next()
		if !n.IsValid() {
			break
		}
		a, ok = r.FirstUsable(n)
	}
	return netip.Addr{}, false, nil
}

// oldestCooling returns the set's address that has cooled longest.
func (t *podTxn) oldestCooling(set PodRangeSet) (netip.Addr, PodIPRecord, bool, error) {
	var (
		at int64
		a  netip.Addr
	)
	for {
		var ok bool
		var err error
		if at, a, ok, err = t.tx.NextQueued(at, a); err != nil || !ok {
			return netip.Addr{}, PodIPRecord{}, false, err
		}
		if _, ok := set.RangeOf(a); !ok {
			continue
		}
		rec, found, err := t.tx.Record(a)
		if err != nil || !found || rec.ReleasedAt != at {
			continue // unreadable or stale: skip it
		}
		return a, rec, true, nil
	}
}

// hasRoom reports whether the set could hand out an address now.
func (t *podTxn) hasRoom(set PodRangeSet) (bool, error) {
	if _, ok, err := t.searchFrom(set, netip.Addr{}); err != nil || ok {
		return ok, err
	}
	_, _, ok, err := t.oldestCooling(set)
	return ok, err
}

// fullError says that set is exhausted, with the number of records in it.
func (t *podTxn) fullError(set PodRangeSet) error {
	held := 0
	for _, r := range set {
		err := t.tx.Records(r.Start, r.End, func(netip.Addr, PodIPRecord) error {
			held++
			return nil
		})
		if err != nil {
			return err
		}
	}
	return &FullError{Msg: fmt.Sprintf("range is full: all %d usable addresses of %s are reserved; release some (CNI DEL or GC) or give the network a larger range", held, set)}
}

// dropOrphans deletes held address records whose holder has no holdings
// entry. Reservations are written in one transaction with their holdings,
// so this finds nothing unless the file was edited by hand.
func (t *podTxn) dropOrphans() error {
	var orphans []netip.Addr
	err := eachRecord(t.tx, func(a netip.Addr, rec PodIPRecord) error {
		if rec.ReleasedAt != 0 {
			return nil
		}
		h, err := t.tx.Holdings(rec.Holder)
		if err != nil {
			return err
		}
		if h == nil {
			orphans = append(orphans, a)
		}
		return nil
	})
	if err != nil {
		return err
	}
	for _, a := range orphans {
		if err := t.tx.DeleteRecord(a); err != nil {
			return err
		}
	}
	return nil
}

func requestedIn(set PodRangeSet, requested []netip.Addr) (netip.Addr, bool) {
	for _, a := range requested {
		if set.Contains(a) {
			return a, true
		}
	}
	return netip.Addr{}, false
}

func isAllocated(err error) bool { return errors.Is(err, ErrAllocated) }
