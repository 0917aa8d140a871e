package proxy

import (
	"cmp"
	"slices"
)

// tx is a change to the table, as data. Whatever order it was built in, it
// is applied in an order the kernel accepts within one batch: elements
// that go to chains leave before the chains do, chains are flushed before
// they are deleted and before the sets their rules use are, and every
// object exists before anything refers to it.
type tx struct {
	addTable  bool
	delElems  []elemObj
	flushes   []string
	delChains []string
	delSets   []string
	addSets   []setObj
	addChains []chainObj
	rules     []chainObj // chains whose rules are (re)added, after a flush or creation
	addElems  []elemObj

	flushed map[string]bool
}

func (t *tx) delElem(e elemObj)   { t.delElems = append(t.delElems, e) }
func (t *tx) addElem(e elemObj)   { t.addElems = append(t.addElems, e) }
func (t *tx) delChain(n string)   { t.delChains = append(t.delChains, n) }
func (t *tx) delSet(n string)     { t.delSets = append(t.delSets, n) }
func (t *tx) addSet(s setObj)     { t.addSets = append(t.addSets, s) }
func (t *tx) addChain(c chainObj) { t.addChains = append(t.addChains, c) }

func (t *tx) flushChain(n string) {
	if t.flushed == nil {
		t.flushed = map[string]bool{}
	}
	if !t.flushed[n] {
		t.flushed[n] = true
		t.flushes = append(t.flushes, n)
	}
}

func (t *tx) addRules(c chainObj) {
	if len(c.rules) > 0 {
		t.rules = append(t.rules, c)
	}
}

func (t *tx) empty() bool {
	return !t.addTable && len(t.delElems)+len(t.flushes)+len(t.delChains)+len(t.delSets)+
		len(t.addSets)+len(t.addChains)+len(t.rules)+len(t.addElems) == 0
}

// changes counts the objects the transaction touches, for logs.
func (t *tx) changes() int {
	n := len(t.delElems) + len(t.flushes) + len(t.delChains) + len(t.delSets) + len(t.addSets) + len(t.addChains) + len(t.addElems)
	for _, c := range t.rules {
		n += len(c.rules)
	}
	if t.addTable {
		n++
	}
	return n
}

// sort makes the transaction deterministic (map iteration built parts of
// it), so that fakes and logs see the same thing every time. Elements
// stay grouped by set, which is also how they are sent.
func (t *tx) sort() {
	byElem := func(a, b elemObj) int { return cmp.Or(cmp.Compare(a.set, b.set), cmp.Compare(a.key, b.key)) }
	slices.SortFunc(t.delElems, byElem)
	slices.SortFunc(t.addElems, byElem)
	slices.Sort(t.flushes)
	slices.Sort(t.delChains)
	slices.Sort(t.delSets)
	slices.SortFunc(t.addSets, func(a, b setObj) int { return cmp.Compare(a.name, b.name) })
	byChain := func(a, b chainObj) int { return cmp.Compare(a.name, b.name) }
	slices.SortFunc(t.addChains, byChain)
	slices.SortFunc(t.rules, byChain)
}
