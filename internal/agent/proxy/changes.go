package proxy

import (
	"cmp"
	"slices"

	"github.com/duet-net/duet/internal/nft"
)

// changes are what a sync must change in the table, grouped by kind as
// the diff finds them. Whatever order they were found in, transaction
// puts them in an order the kernel accepts within one batch: elements
// that go to chains leave before the chains do, chains are flushed before
// they are deleted and before the sets their rules use are, and every
// object exists before anything refers to it.
type changes struct {
	addTable  bool
	delElems  []elemObj
	flushes   []string
	delChains []string
	delSets   []string
	addSets   []nft.Set
	addChains []chainObj
	rules     []chainObj // chains whose rules are (re)added, after a flush or creation
	addElems  []elemObj

	flushed map[string]bool
}

func (t *changes) delElem(e elemObj)   { t.delElems = append(t.delElems, e) }
func (t *changes) addElem(e elemObj)   { t.addElems = append(t.addElems, e) }
func (t *changes) delChain(n string)   { t.delChains = append(t.delChains, n) }
func (t *changes) delSet(n string)     { t.delSets = append(t.delSets, n) }
func (t *changes) addSet(s nft.Set)    { t.addSets = append(t.addSets, s) }
func (t *changes) addChain(c chainObj) { t.addChains = append(t.addChains, c) }

func (t *changes) flushChain(n string) {
	if t.flushed == nil {
		t.flushed = map[string]bool{}
	}
	if !t.flushed[n] {
		t.flushed[n] = true
		t.flushes = append(t.flushes, n)
	}
}

func (t *changes) addRules(c chainObj) {
	if len(c.rules) > 0 {
		t.rules = append(t.rules, c)
	}
}

func (t *changes) empty() bool {
	return !t.addTable && len(t.delElems)+len(t.flushes)+len(t.delChains)+len(t.delSets)+
		len(t.addSets)+len(t.addChains)+len(t.rules)+len(t.addElems) == 0
}

// count is the number of objects the changes touch, for logs.
func (t *changes) count() int {
	n := len(t.delElems) + len(t.flushes) + len(t.delChains) + len(t.delSets) + len(t.addSets) + len(t.addChains) + len(t.addElems)
	for _, c := range t.rules {
		n += len(c.rules)
	}
	if t.addTable {
		n++
	}
	return n
}

// sort makes the changes deterministic (map iteration built parts of
// them), so that fakes and logs see the same thing every time. Elements
// stay grouped by set, which is also how they are sent.
func (t *changes) sort() {
	byElem := func(a, b elemObj) int { return cmp.Or(cmp.Compare(a.set, b.set), cmp.Compare(a.key, b.key)) }
	slices.SortFunc(t.delElems, byElem)
	slices.SortFunc(t.addElems, byElem)
	slices.Sort(t.flushes)
	slices.Sort(t.delChains)
	slices.Sort(t.delSets)
	slices.SortFunc(t.addSets, func(a, b nft.Set) int { return cmp.Compare(a.Name, b.Name) })
	byChain := func(a, b chainObj) int { return cmp.Compare(a.name, b.name) }
	slices.SortFunc(t.addChains, byChain)
	slices.SortFunc(t.rules, byChain)
}

// transaction is the changes to table tbl as one transaction, in the
// order the type's comment gives. The elements must be sorted.
func (t *changes) transaction(tbl nft.Table) *nft.Transaction {
	tx := &nft.Transaction{}
	if t.addTable {
		tx.AddTable(tbl)
	}
	// Deletions carry keys only.
	elems(tx, tbl, t.delElems, tx.DeleteElements)
	for _, name := range t.flushes {
		tx.FlushChain(tbl, name)
	}
	for _, name := range t.delChains {
		tx.DeleteChain(tbl, name)
	}
	for _, name := range t.delSets {
		tx.DeleteSet(tbl, name)
	}
	for _, s := range t.addSets {
		tx.AddSet(tbl, s)
	}
	for _, c := range t.addChains {
		tx.AddChain(tbl, nft.Chain{Name: c.name, Hook: c.hook})
	}
	for _, c := range t.rules {
		for _, r := range c.rules {
			tx.AddRule(tbl, nft.Rule{Chain: c.name, Text: r.text, Exprs: r.exprs})
		}
	}
	elems(tx, tbl, t.addElems, tx.AddElements)
	return tx
}

// elems adds one operation per set to tx; es is sorted by set.
func elems(tx *nft.Transaction, tbl nft.Table, es []elemObj, op func(nft.Table, string, []nft.Element)) {
	all := make([]nft.Element, len(es))
	for i, e := range es {
		all[i] = nft.Element{Key: e.key, Data: e.val.data, Goto: e.val.goTo}
	}
	for i := 0; i < len(es); {
		j := i + 1
		for j < len(es) && es[j].set == es[i].set {
			j++
		}
		op(tbl, es[i].set, all[i:j])
		i = j
	}
}
