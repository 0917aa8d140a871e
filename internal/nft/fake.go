package nft

import (
	"cmp"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sort"
	"strings"
	"sync"

	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// Fake is an Interface that keeps tables in memory, for tests of the
// packages that program nftables. It applies a transaction all or
// nothing and refuses what the kernel refuses, with the kernel's errno:
// an object added to a missing table or chain (ENOENT), a chain added
// again with another hook (EOPNOTSUPP), a chain deleted while it has
// rules or while a rule or an element goes to it (EBUSY), a set deleted
// while a rule uses it (EBUSY), an element added twice with different
// data or overlapping another range (EEXIST), a key of the wrong length
// (EINVAL), an element deleted that is not there (ENOENT). A test
// therefore catches a transaction built in the wrong order; kernel_test.go
// checks the fake against the kernel. Dump prints the tables for golden
// tests. Its methods may be called from any goroutine.
type Fake struct {
	mu       sync.Mutex
	tables   map[Table]*fakeTable
	log      []applied
	lists    int
	failNext error
	closed   bool
}

type fakeTable struct {
	chains map[string]*fakeChain
	sets   map[string]*fakeSet
	// chainRefs counts the rules and elements that go to each chain;
	// setRefs, the rules that use each set.
	chainRefs map[string]int
	setRefs   map[string]int
}

type fakeChain struct {
	hook  *Hook
	rules []fakeRule
}

type fakeRule struct {
	text, fingerprint string
	sets, chains      []string // what it uses
}

type fakeSet struct {
	spec  Set
	elems map[string]Element // by key; an interval set's range starts
	ends  map[string]bool    // an interval set's range ends
}

// applied is a transaction the fake committed, with the definitions of
// the sets its element operations touched, to describe it later.
type applied struct {
	tx    *Transaction
	specs map[int]Set
}

// NewFake returns a Fake without tables.
func NewFake() *Fake { return &Fake{tables: map[Table]*fakeTable{}} }

var _ Interface = (*Fake)(nil)

// FailNext makes the next Run fail with err and change nothing, as a
// kernel that refuses a batch for reasons of its own (ENOMEM) would.
func (f *Fake) FailNext(err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.failNext = err
}

// Transactions is the number of transactions committed.
func (f *Fake) Transactions() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.log)
}

// Lists is the number of List calls.
func (f *Fake) Lists() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.lists
}

// Closed says Close was called.
func (f *Fake) Closed() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.closed
}

// Close marks the fake closed; a second Close is an error, as closing a
// socket twice is.
func (f *Fake) Close() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return errors.New("nft fake closed twice")
	}
	f.closed = true
	return nil
}

// Run applies tx, all of it or, with an error, none of it.
func (f *Fake) Run(tx *Transaction) error {
	if tx.err != nil {
		return tx.err
	}
	if len(tx.ops) == 0 {
		return nil
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.failNext; err != nil {
		f.failNext = nil
		return err
	}
	a := applied{tx: tx, specs: map[int]Set{}}
	var undo []func()
	for i := range tx.ops {
		o := &tx.ops[i]
		if err := f.apply(o, i, &a, &undo); err != nil {
			for j := len(undo) - 1; j >= 0; j-- {
				undo[j]()
			}
			for _, t := range f.tables {
				t.recount()
			}
			return fmt.Errorf("%s: %w", o.describe(), err)
		}
	}
	f.log = append(f.log, a)
	return nil
}

func newFakeTable() *fakeTable {
	return &fakeTable{chains: map[string]*fakeChain{}, sets: map[string]*fakeSet{},
		chainRefs: map[string]int{}, setRefs: map[string]int{}}
}

func (f *Fake) apply(o *op, i int, a *applied, undo *[]func()) error {
	tbl, key := f.tables[o.table], o.table
	if tbl == nil && o.kind != opAddTable {
		return fmt.Errorf("table %s: %w", o.table, unix.ENOENT)
	}
	switch o.kind {
	case opAddTable:
		if tbl == nil {
			f.tables[key] = newFakeTable()
			*undo = append(*undo, func() { delete(f.tables, key) })
		}
	case opDeleteTable:
		delete(f.tables, key)
		*undo = append(*undo, func() { f.tables[key] = tbl })
	case opAddChain:
		if c := tbl.chains[o.name]; c != nil {
			if !sameHook(c.hook, o.hook) {
				return fmt.Errorf("chain %s exists with another hook: %w", o.name, unix.EOPNOTSUPP)
			}
			return nil
		}
		tbl.chains[o.name] = &fakeChain{hook: o.hook}
		name := o.name
		*undo = append(*undo, func() { delete(tbl.chains, name) })
	case opFlushChain:
		c := tbl.chains[o.name]
		if c == nil {
			return fmt.Errorf("chain %s: %w", o.name, unix.ENOENT)
		}
		old := c.rules
		for _, r := range old {
			tbl.unref(r)
		}
		c.rules = nil
		*undo = append(*undo, func() { c.rules = old })
	case opDeleteChain:
		c := tbl.chains[o.name]
		switch {
		case c == nil:
			return fmt.Errorf("chain %s: %w", o.name, unix.ENOENT)
		case len(c.rules) > 0:
			return fmt.Errorf("chain %s has rules: %w", o.name, unix.EBUSY)
		case tbl.chainRefs[o.name] > 0:
			return fmt.Errorf("chain %s is the target of %d rules or elements: %w", o.name, tbl.chainRefs[o.name], unix.EBUSY)
		}
		delete(tbl.chains, o.name)
		name := o.name
		*undo = append(*undo, func() { tbl.chains[name] = c })
	case opAddSet:
		if s := tbl.sets[o.name]; s != nil {
			if !s.spec.Same(*o.set) {
				return fmt.Errorf("set %s exists with another definition: %w", o.name, unix.EEXIST)
			}
			return nil
		}
		s := &fakeSet{spec: *o.set, elems: map[string]Element{}}
		if s.spec.Flags&SetInterval != 0 {
			s.ends = map[string]bool{}
		}
		tbl.sets[o.name] = s
		name := o.name
		*undo = append(*undo, func() { delete(tbl.sets, name) })
	case opDeleteSet:
		s := tbl.sets[o.name]
		switch {
		case s == nil:
			return fmt.Errorf("set %s: %w", o.name, unix.ENOENT)
		case tbl.setRefs[o.name] > 0:
			return fmt.Errorf("set %s is used by %d rules: %w", o.name, tbl.setRefs[o.name], unix.EBUSY)
		}
		for _, e := range s.elems {
			if e.Goto != "" {
				tbl.chainRefs[e.Goto]--
			}
		}
		delete(tbl.sets, o.name)
		name := o.name
		*undo = append(*undo, func() { tbl.sets[name] = s })
	case opAddRule:
		c := tbl.chains[o.name]
		if c == nil {
			return fmt.Errorf("chain %s: %w", o.name, unix.ENOENT)
		}
		r := fakeRule{text: o.rule.Text, fingerprint: o.rule.Fingerprint()}
		for _, x := range o.rule.Exprs {
			switch x := x.(type) {
			case *expr.Lookup:
				r.sets = append(r.sets, x.SetName)
			case *expr.Dynset:
				r.sets = append(r.sets, x.SetName)
			case *expr.Verdict:
				if x.Kind == expr.VerdictJump || x.Kind == expr.VerdictGoto {
					r.chains = append(r.chains, x.Chain)
				}
			}
		}
		for _, s := range r.sets {
			if tbl.sets[s] == nil {
				return fmt.Errorf("the rule uses set %s: %w", s, unix.ENOENT)
			}
		}
		for _, ch := range r.chains {
			if err := tbl.canGoTo(ch); err != nil {
				return err
			}
		}
		old := c.rules
		c.rules = append(c.rules[:len(c.rules):len(c.rules)], r)
		tbl.ref(r)
		*undo = append(*undo, func() { c.rules = old })
	case opAddElements, opDeleteElements:
		s := tbl.sets[o.name]
		if s == nil {
			return fmt.Errorf("set %s: %w", o.name, unix.ENOENT)
		}
		a.specs[i] = s.spec
		if o.kind == opDeleteElements {
			return tbl.deleteElements(s, o.elems, undo)
		}
		return tbl.addElements(s, o.elems, undo)
	}
	return nil
}

func sameHook(a, b *Hook) bool {
	if a == nil || b == nil {
		return a == b
	}
	return *a == *b
}

func (t *fakeTable) canGoTo(chain string) error {
	c := t.chains[chain]
	switch {
	case c == nil:
		return fmt.Errorf("chain %s to go to: %w", chain, unix.ENOENT)
	case c.hook != nil:
		return fmt.Errorf("chain %s to go to is a base chain: %w", chain, unix.EOPNOTSUPP)
	}
	return nil
}

func (t *fakeTable) ref(r fakeRule) {
	for _, s := range r.sets {
		t.setRefs[s]++
	}
	for _, c := range r.chains {
		t.chainRefs[c]++
	}
}

func (t *fakeTable) unref(r fakeRule) {
	for _, s := range r.sets {
		t.setRefs[s]--
	}
	for _, c := range r.chains {
		t.chainRefs[c]--
	}
}

// recount counts the references again, after a transaction was undone.
func (t *fakeTable) recount() {
	clear(t.chainRefs)
	clear(t.setRefs)
	for _, c := range t.chains {
		for _, r := range c.rules {
			t.ref(r)
		}
	}
	for _, s := range t.sets {
		for _, e := range s.elems {
			if e.Goto != "" {
				t.chainRefs[e.Goto]++
			}
		}
	}
}

// checkElement refuses what the kernel refuses of an element of s.
func (t *fakeTable) checkElement(s *fakeSet, e *Element) error {
	sp := &s.spec
	if uint32(len(e.Key)) != sp.KeyType.Bytes {
		return fmt.Errorf("key %x is %d bytes, the set's keys %d: %w", e.Key, len(e.Key), sp.KeyType.Bytes, unix.EINVAL)
	}
	if e.IntervalEnd && sp.Flags&SetInterval == 0 {
		return fmt.Errorf("an interval end in a set without intervals: %w", unix.EINVAL)
	}
	isMap, verdicts := sp.Flags&SetMap != 0, sp.DataType.GetNFTMagic() == verdictType
	switch {
	case e.IntervalEnd:
	case !isMap && (e.Data != "" || e.Goto != ""):
		return fmt.Errorf("element %x has data, but the set is no map: %w", e.Key, unix.EINVAL)
	case isMap && verdicts && e.Goto == "":
		return fmt.Errorf("element %x of a verdict map without a verdict: %w", e.Key, unix.EINVAL)
	case isMap && !verdicts && uint32(len(e.Data)) != sp.DataType.Bytes:
		return fmt.Errorf("element %x: data of %d bytes, the map's are %d: %w", e.Key, len(e.Data), sp.DataType.Bytes, unix.EINVAL)
	case e.Goto != "":
		return t.canGoTo(e.Goto)
	}
	return nil
}

func (t *fakeTable) addElements(s *fakeSet, elems []Element, undo *[]func()) error {
	for i := range elems {
		e := elems[i]
		if err := t.checkElement(s, &e); err != nil {
			return err
		}
		if e.IntervalEnd {
			if !s.ends[e.Key] {
				s.ends[e.Key] = true
				*undo = append(*undo, func() { delete(s.ends, e.Key) })
			}
			continue
		}
		if old, ok := s.elems[e.Key]; ok {
			if old != e {
				return fmt.Errorf("element %x exists with other data: %w", e.Key, unix.EEXIST)
			}
			continue
		}
		s.elems[e.Key] = e
		if e.Goto != "" {
			t.chainRefs[e.Goto]++
		}
		*undo = append(*undo, func() { delete(s.elems, e.Key) })
	}
	if s.ends != nil {
		return s.checkIntervals()
	}
	return nil
}

func (t *fakeTable) deleteElements(s *fakeSet, elems []Element, undo *[]func()) error {
	for _, e := range elems {
		if e.IntervalEnd {
			if !s.ends[e.Key] {
				return fmt.Errorf("interval end %x: %w", e.Key, unix.ENOENT)
			}
			delete(s.ends, e.Key)
			*undo = append(*undo, func() { s.ends[e.Key] = true })
			continue
		}
		old, ok := s.elems[e.Key]
		if !ok {
			return fmt.Errorf("element %x: %w", e.Key, unix.ENOENT)
		}
		delete(s.elems, e.Key)
		if old.Goto != "" {
			t.chainRefs[old.Goto]--
		}
		*undo = append(*undo, func() { s.elems[e.Key] = old })
	}
	return nil
}

// intervalElements are an interval set's elements in key order, an end
// before a start at the same key (a range ending where the next starts).
func (s *fakeSet) intervalElements() []Element {
	out := make([]Element, 0, len(s.elems)+len(s.ends))
	for _, e := range s.elems {
		out = append(out, e)
	}
	for k := range s.ends {
		out = append(out, Element{Key: k, IntervalEnd: true})
	}
	slices.SortFunc(out, CompareElements)
	return out
}

// checkIntervals refuses ranges that overlap: a start inside another
// range, or an end where none is open.
func (s *fakeSet) checkIntervals() error {
	open := false
	var from string
	for _, e := range s.intervalElements() {
		switch {
		case !e.IntervalEnd && open:
			return fmt.Errorf("the range from %x overlaps the one from %x: %w", e.Key, from, unix.EEXIST)
		case !e.IntervalEnd:
			open, from = true, e.Key
		case !open:
			return fmt.Errorf("interval end %x closes no range: %w", e.Key, unix.EEXIST)
		default:
			open = false
		}
	}
	return nil
}

// List reads a table.
func (f *Fake) List(t Table) (*Listing, error) {
	if err := t.check(); err != nil {
		return nil, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.lists++
	tbl := f.tables[t]
	if tbl == nil {
		return nil, nil
	}
	l := &Listing{Chains: make(map[string]ListedChain, len(tbl.chains)), Sets: make(map[string]Set, len(tbl.sets))}
	for n, c := range tbl.chains {
		lc := ListedChain{Hook: c.hook, Rules: make([]string, len(c.rules))}
		for i, r := range c.rules {
			lc.Rules[i] = r.fingerprint
		}
		l.Chains[n] = lc
	}
	for n, s := range tbl.sets {
		l.Sets[n] = s.spec
	}
	return l, nil
}

// ListElements reads the elements of a set.
func (f *Fake) ListElements(t Table, set string, each func(Element)) error {
	f.mu.Lock()
	tbl := f.tables[t]
	if tbl == nil || tbl.sets[set] == nil {
		f.mu.Unlock()
		return fmt.Errorf("listing the elements of set %s of %s: %w", set, t, unix.ENOENT)
	}
	s := tbl.sets[set]
	var elems []Element
	if s.ends != nil {
		elems = s.intervalElements()
	} else {
		elems = slices.Collect(maps.Values(s.elems))
	}
	f.mu.Unlock()
	for _, e := range elems {
		each(e)
	}
	return nil
}

// Tamper runs fn on the fake's tables as they are, outside any
// transaction and without the kernel's checks: a change behind the
// programs' backs that a transaction could not make (a rule replaced in
// place). fn gets a transaction-like editor of one table.
//
// Most tampering is better done with Run, as another program would.
func (f *Fake) Tamper(t Table, fn func(*Tampering)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	tbl := f.tables[t]
	if tbl == nil {
		return
	}
	fn(&Tampering{t: tbl})
	tbl.recount()
}

// Tampering edits a fake table without checks.
type Tampering struct{ t *fakeTable }

// ReplaceRule replaces the i-th rule of chain with one of the given text
// and no fingerprint, as `nft replace rule` does.
func (tp *Tampering) ReplaceRule(chain string, i int, text string) {
	if c := tp.t.chains[chain]; c != nil && i < len(c.rules) {
		c.rules[i] = fakeRule{text: text}
	}
}

// LastTransaction describes the last transaction committed, one
// operation (or element) a line, in nft's syntax: "add element ip t s {
// 10.0.0.1 . tcp . 80 }". It is "" before the first.
func (f *Fake) LastTransaction() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.log) == 0 {
		return ""
	}
	a := f.log[len(f.log)-1]
	var b strings.Builder
	for i := range a.tx.ops {
		o := &a.tx.ops[i]
		t := o.table.String()
		switch o.kind {
		case opAddTable:
			fmt.Fprintf(&b, "add table %s\n", t)
		case opDeleteTable:
			fmt.Fprintf(&b, "delete table %s\n", t)
		case opAddChain:
			fmt.Fprintf(&b, "add chain %s %s%s\n", t, o.name, hookText(o.hook))
		case opFlushChain:
			fmt.Fprintf(&b, "flush chain %s %s\n", t, o.name)
		case opDeleteChain:
			fmt.Fprintf(&b, "delete chain %s %s\n", t, o.name)
		case opAddSet:
			fmt.Fprintf(&b, "add set %s %s %s\n", t, o.name, setText(o.set, o.table.Family))
		case opDeleteSet:
			fmt.Fprintf(&b, "delete set %s %s\n", t, o.name)
		case opAddRule:
			fmt.Fprintf(&b, "add rule %s %s %s\n", t, o.name, o.rule.Text)
		case opAddElements, opDeleteElements:
			verb := "add"
			if o.kind == opDeleteElements {
				verb = "delete"
			}
			spec := a.specs[i]
			for _, e := range elementsText(&spec, o.table.Family, o.elems, o.kind == opAddElements) {
				fmt.Fprintf(&b, "%s element %s %s { %s }\n", verb, t, o.name, e)
			}
		}
	}
	return b.String()
}

// Dump prints every table in an nft-like form, sorted, with set elements
// decoded by their types: what golden tests compare.
//
//	table ip t
//	  set s { type ipv4_addr . inet_service }
//	    10.0.0.1 . 80
//	  chain c { type nat hook prerouting priority -100 }
//	    ip daddr . th dport @s jump x
func (f *Fake) Dump() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.tables) == 0 {
		return "(no tables)\n"
	}
	var b strings.Builder
	ts := slices.SortedFunc(maps.Keys(f.tables), func(a, b Table) int {
		return cmp.Or(cmp.Compare(a.Family, b.Family), cmp.Compare(a.Name, b.Name))
	})
	for _, t := range ts {
		tbl := f.tables[t]
		fmt.Fprintf(&b, "table %s\n", t)
		for _, n := range slices.Sorted(maps.Keys(tbl.sets)) {
			s := tbl.sets[n]
			fmt.Fprintf(&b, "  set %s %s\n", n, setText(&s.spec, t.Family))
			var elems []Element
			if s.ends != nil {
				elems = s.intervalElements()
			} else {
				elems = slices.Collect(maps.Values(s.elems))
			}
			lines := elementsText(&s.spec, t.Family, elems, true)
			if s.ends == nil {
				sort.Strings(lines)
			}
			for _, l := range lines {
				fmt.Fprintf(&b, "    %s\n", l)
			}
		}
		for _, n := range slices.Sorted(maps.Keys(tbl.chains)) {
			c := tbl.chains[n]
			fmt.Fprintf(&b, "  chain %s%s\n", n, hookText(c.hook))
			for _, r := range c.rules {
				fmt.Fprintf(&b, "    %s\n", r.text)
			}
		}
	}
	return b.String()
}
