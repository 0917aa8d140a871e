package proxy

import (
	"slices"
	"strings"

	"github.com/duet-net/duet/internal/nft"
	"github.com/google/nftables/expr"
)

// The proxier thinks in nftables objects: chains with their rules, sets,
// and set elements. A fragment is the objects one owner (a service port,
// or the table's fixed skeleton) contributes; the table is the union of
// the fragments. Sync renders only the fragments of ports that changed and
// diffs each against its previous rendering; Repair diffs all of them
// against what the kernel reports. Both collect changes, sent as one
// nft.Transaction.

// rule is one rule: text is what it does in nft syntax (close enough to
// read, and the rule's identity: rules are compared by text, and the
// kernel keeps a hash of it as the rule's comment), exprs implement it.
// exprs are dropped once sent, and rendered again if a repair needs them.
type rule struct {
	text  string
	exprs []expr.Any
	// sets the rule looks up, so that a set being recreated takes its
	// users' rules along.
	sets []string
}

// fingerprint is what the kernel stores with the rule (as its comment), so
// that a later listing shows whether the rule is still the one Duet wrote.
// It needs r.exprs.
func (r *rule) fingerprint() string { return nft.Fingerprint(r.text, r.exprs) }

type chainObj struct {
	name  string
	hook  *nft.Hook // nil for a regular chain
	rules []rule
}

func sameHook(a, b *nft.Hook) bool {
	if a == nil || b == nil {
		return a == b
	}
	return *a == *b
}

func sameRules(a, b []rule) bool {
	return slices.EqualFunc(a, b, func(x, y rule) bool { return x.text == y.text })
}

// dynamic sets are filled by the datapath (affinity); their elements are
// never compared nor written by the proxier.
func dynamic(s nft.Set) bool { return s.Flags&nft.SetDynamic != 0 }

// elemVal is an element's data: a value for a map, a chain to go to for a
// verdict map, neither for a set.
type elemVal struct {
	data string
	goTo string
}

type elemObj struct {
	set string
	key string
	val elemVal
}

type fragment struct {
	chains []chainObj
	sets   []nft.Set
	elems  []elemObj
}

// stripExprs drops the expressions of rules that were sent: the model
// keeps what identifies a rule, not how to build it.
func (f *fragment) stripExprs() {
	for i := range f.chains {
		for j := range f.chains[i].rules {
			f.chains[i].rules[j].exprs = nil
		}
	}
}

type elemRef struct{ set, key string }

// claim is one owner's wish for an element. Two service ports may claim
// one element (the same external IP and port on two Services): the owner
// that sorts first wins, deterministically, and the other takes over when
// the first lets go.
type claim struct {
	owner string
	val   elemVal
}

// state is the model of the table: every owner's fragment and, per
// element, who claims it.
type state struct {
	frags  map[string]*fragment
	claims map[elemRef][]claim
}

func newState() *state {
	return &state{frags: map[string]*fragment{}, claims: map[elemRef][]claim{}}
}

// effective is the value an element has in the table, if any.
func (s *state) effective(r elemRef) (elemVal, bool) {
	cs := s.claims[r]
	if len(cs) == 0 {
		return elemVal{}, false
	}
	return cs[0].val, true
}

func (s *state) claim(owner string, e elemObj) {
	r := elemRef{e.set, e.key}
	cs := s.claims[r]
	i, found := slices.BinarySearchFunc(cs, owner, func(c claim, o string) int { return strings.Compare(c.owner, o) })
	if found {
		cs[i].val = e.val
		return
	}
	s.claims[r] = slices.Insert(cs, i, claim{owner, e.val})
}

func (s *state) unclaim(owner string, e elemObj) {
	r := elemRef{e.set, e.key}
	cs := s.claims[r]
	i, found := slices.BinarySearchFunc(cs, owner, func(c claim, o string) int { return strings.Compare(c.owner, o) })
	if !found {
		return
	}
	cs = slices.Delete(cs, i, i+1)
	if len(cs) == 0 {
		delete(s.claims, r)
	} else {
		s.claims[r] = cs
	}
}

// replace makes owner's fragment nf (nil removes the owner), adding to t
// what the kernel must do for it.
func (s *state) replace(owner string, nf *fragment, t *changes) {
	old := s.frags[owner]
	if old == nil {
		old = &fragment{}
	}
	if nf == nil {
		nf = &fragment{}
	}

	oldSets := map[string]nft.Set{}
	for _, o := range old.sets {
		oldSets[o.Name] = o
	}
	recreated := map[string]bool{}
	for _, n := range nf.sets {
		o, ok := oldSets[n.Name]
		switch {
		case !ok:
			t.addSet(n)
		case !o.Same(n):
			t.delSet(o.Name)
			t.addSet(n)
			recreated[n.Name] = true
		}
		delete(oldSets, n.Name)
	}

	oldChains := map[string]chainObj{}
	for _, o := range old.chains {
		oldChains[o.name] = o
	}
	for _, n := range nf.chains {
		o, ok := oldChains[n.name]
		switch {
		case !ok:
			t.addChain(n)
			t.addRules(n)
		case !sameHook(o.hook, n.hook):
			t.flushChain(o.name)
			t.delChain(o.name)
			t.addChain(n)
			t.addRules(n)
		case usesAny(n, recreated):
			t.flushChain(n.name)
			t.addRules(n)
		case len(n.rules) > len(o.rules) && sameRules(o.rules, n.rules[:len(o.rules)]):
			// Appending leaves the kernel's other rules alone.
			t.addRules(chainObj{name: n.name, rules: n.rules[len(o.rules):]})
		case !sameRules(o.rules, n.rules):
			t.flushChain(n.name)
			t.addRules(n)
		}
		delete(oldChains, n.name)
	}
	for name := range oldChains {
		t.flushChain(name)
		t.delChain(name)
	}
	for name := range oldSets {
		t.delSet(name)
	}

	// Elements: only those whose claim changed touch the claims, and only
	// those whose effective value changed touch the kernel.
	oldElems := make(map[elemRef]elemVal, len(old.elems))
	for _, e := range old.elems {
		oldElems[elemRef{e.set, e.key}] = e.val
	}
	var touched []elemRef
	before := map[elemRef]*elemVal{}
	note := func(r elemRef) {
		if _, ok := before[r]; ok {
			return
		}
		touched = append(touched, r)
		if v, ok := s.effective(r); ok {
			before[r] = &v
		} else {
			before[r] = nil
		}
	}
	newRefs := make(map[elemRef]bool, len(nf.elems))
	for _, e := range nf.elems {
		r := elemRef{e.set, e.key}
		newRefs[r] = true
		if v, ok := oldElems[r]; ok && v == e.val {
			continue
		}
		note(r)
		s.claim(owner, e)
	}
	for _, e := range old.elems {
		r := elemRef{e.set, e.key}
		if newRefs[r] {
			continue
		}
		note(r)
		s.unclaim(owner, e)
	}
	for _, r := range touched {
		was := before[r]
		now, ok := s.effective(r)
		switch {
		case was != nil && ok && *was == now:
		case was != nil && ok:
			t.delElem(elemObj{r.set, r.key, *was})
			t.addElem(elemObj{r.set, r.key, now})
		case was != nil:
			t.delElem(elemObj{r.set, r.key, *was})
		case ok:
			t.addElem(elemObj{r.set, r.key, now})
		}
	}

	if len(nf.chains)+len(nf.sets)+len(nf.elems) == 0 {
		delete(s.frags, owner)
	} else {
		s.frags[owner] = nf
	}
}

func usesAny(c chainObj, sets map[string]bool) bool {
	if len(sets) == 0 {
		return false
	}
	for _, r := range c.rules {
		for _, s := range r.sets {
			if sets[s] {
				return true
			}
		}
	}
	return false
}

// observed is the table as the kernel reports it.
type observed struct {
	table  bool
	chains map[string]*observedChain
	sets   map[string]nft.Set
	// elems of every set that is not dynamic
	elems map[string]map[string]elemVal
}

type observedChain struct {
	hook  *nft.Hook
	rules []string // fingerprints, in order
}

// diffObserved adds to t what turns the kernel's table have into the
// model s: the repair path, and the first sync of a proxier.
func (s *state) diffObserved(have *observed, t *changes) {
	if !have.table {
		t.addTable = true
		have = &observed{}
	}
	var chains []*chainObj
	sets := map[string]nft.Set{}
	for _, f := range s.frags {
		for i := range f.chains {
			chains = append(chains, &f.chains[i])
		}
		for _, st := range f.sets {
			sets[st.Name] = st
		}
	}

	recreated := map[string]bool{}
	for name, st := range sets {
		spec, ok := have.sets[name]
		switch {
		case !ok:
			t.addSet(st)
			recreated[name] = true
		case !spec.Same(st):
			t.delSet(name)
			t.addSet(st)
			recreated[name] = true
		}
	}
	for name := range have.sets {
		if _, ok := sets[name]; !ok {
			t.delSet(name)
		}
	}

	wanted := map[string]bool{}
	for _, c := range chains {
		wanted[c.name] = true
		h, ok := have.chains[c.name]
		switch {
		case !ok:
			t.addChain(*c)
			t.addRules(*c)
		case !sameHook(h.hook, c.hook):
			t.flushChain(c.name)
			t.delChain(c.name)
			t.addChain(*c)
			t.addRules(*c)
		case !sameFingerprints(h.rules, c.rules) || usesAny(*c, recreated):
			t.flushChain(c.name)
			t.addRules(*c)
		}
	}
	for name := range have.chains {
		if !wanted[name] {
			t.flushChain(name)
			t.delChain(name)
		}
	}

	for r, cs := range s.claims {
		want := cs[0].val
		if recreated[r.set] {
			t.addElem(elemObj{r.set, r.key, want})
			continue
		}
		got, ok := have.elems[r.set][r.key]
		switch {
		case !ok:
			t.addElem(elemObj{r.set, r.key, want})
		case got != want:
			t.delElem(elemObj{r.set, r.key, got})
			t.addElem(elemObj{r.set, r.key, want})
		}
	}
	for set, elems := range have.elems {
		st, ok := sets[set]
		if !ok || recreated[set] || dynamic(st) {
			continue
		}
		for key, v := range elems {
			if _, ok := s.claims[elemRef{set, key}]; !ok {
				t.delElem(elemObj{set, key, v})
			}
		}
	}
}

func sameFingerprints(have []string, want []rule) bool {
	if len(have) != len(want) {
		return false
	}
	for i := range want {
		if have[i] != want[i].fingerprint() {
			return false
		}
	}
	return true
}
