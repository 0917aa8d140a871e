package nft

import (
	"errors"
	"fmt"
)

// Transaction is a change to the kernel's tables, as data: operations
// built up in memory and run in the order given, as one batch that the
// kernel applies all or nothing. An operation that is invalid on its face
// (an empty name, a map without a data type, a rule without expressions)
// is remembered, and the transaction does nothing but report it when run:
// callers build without checking every step, as with a bufio.Writer.
// What depends on the tables' state (a chain that does not exist, a set
// still in use) is the kernel's to refuse, and the Fake's.
//
// The zero value is an empty transaction.
type Transaction struct {
	ops []op
	err error
}

type opKind uint8

const (
	opAddTable opKind = iota
	opDeleteTable
	opAddChain
	opFlushChain
	opDeleteChain
	opAddSet
	opDeleteSet
	opAddRule
	opAddElements
	opDeleteElements
)

type op struct {
	kind  opKind
	table Table
	name  string // the chain or set
	hook  *Hook  // opAddChain
	set   *Set   // opAddSet
	rule  *Rule  // opAddRule
	elems []Element
}

// Err is the first invalid operation's error, if any.
func (t *Transaction) Err() error { return t.err }

// Empty says the transaction would send nothing.
func (t *Transaction) Empty() bool { return len(t.ops) == 0 && t.err == nil }

func (t *Transaction) add(o op, err error) {
	if t.err != nil {
		return
	}
	if err == nil {
		err = o.table.check()
	}
	if err != nil {
		t.err = fmt.Errorf("invalid nftables transaction: %s: %w", o.describe(), err)
		t.ops = nil
		return
	}
	t.ops = append(t.ops, o)
}

func (t Table) check() error {
	if !t.Family.valid() {
		return fmt.Errorf("table family %v is neither IPv4 nor IPv6", t.Family)
	}
	return checkName("table", t.Name)
}

// AddTable creates table tbl, if it does not exist.
func (t *Transaction) AddTable(tbl Table) {
	t.add(op{kind: opAddTable, table: tbl}, nil)
}

// DeleteTable deletes table tbl and everything in it; the kernel refuses
// if there is no such table. (Adding it first makes the deletion work
// either way.)
func (t *Transaction) DeleteTable(tbl Table) {
	t.add(op{kind: opDeleteTable, table: tbl}, nil)
}

// AddChain creates chain c in tbl, if there is no chain of that name;
// there is one with another hook, the kernel refuses.
func (t *Transaction) AddChain(tbl Table, c Chain) {
	err := checkName("chain", c.Name)
	if err == nil && c.Hook != nil && c.Hook.Type == "" {
		err = errors.New("a base chain needs a type (filter, nat or route)")
	}
	var h *Hook
	if c.Hook != nil {
		hc := *c.Hook
		h = &hc
	}
	t.add(op{kind: opAddChain, table: tbl, name: c.Name, hook: h}, err)
}

// FlushChain deletes every rule of chain name.
func (t *Transaction) FlushChain(tbl Table, name string) {
	t.add(op{kind: opFlushChain, table: tbl, name: name}, checkName("chain", name))
}

// DeleteChain deletes chain name, which must have no rules and be the
// target of no jump or goto.
func (t *Transaction) DeleteChain(tbl Table, name string) {
	t.add(op{kind: opDeleteChain, table: tbl, name: name}, checkName("chain", name))
}

// AddSet creates set s in tbl, if there is none of that name; there is
// one with another definition, the kernel refuses.
func (t *Transaction) AddSet(tbl Table, s Set) {
	t.add(op{kind: opAddSet, table: tbl, name: s.Name, set: &s}, s.check())
}

func (s *Set) check() error {
	if err := checkName("set", s.Name); err != nil {
		return err
	}
	if s.KeyType.Bytes == 0 || s.KeyType.Bytes > maxData {
		return fmt.Errorf("key length %d is not between 1 and %d bytes", s.KeyType.Bytes, maxData)
	}
	if s.Flags&SetConcat != 0 {
		fs, n := fieldsOfMagic(s.KeyType.GetNFTMagic()), uint32(0)
		for _, f := range fs {
			n += (f.Bytes + 3) &^ 3
		}
		if len(fs) < 2 || n != s.KeyType.Bytes {
			return fmt.Errorf("the concatenated key type %q is not one of known types (see nftables.ConcatSetType)", s.KeyType.Name)
		}
	}
	isMap, hasData := s.Flags&SetMap != 0, s.DataType.GetNFTMagic() != 0
	switch {
	case isMap && !hasData:
		return errors.New("a map needs a data type")
	case !isMap && hasData:
		return errors.New("a data type without the map flag")
	case s.DataType.Bytes > maxData:
		return fmt.Errorf("data length %d is over %d bytes", s.DataType.Bytes, maxData)
	case s.Timeout < 0:
		return fmt.Errorf("negative timeout %v", s.Timeout)
	case s.Timeout > 0 && s.Flags&SetTimeout == 0:
		return errors.New("a timeout without the timeout flag")
	}
	return nil
}

// DeleteSet deletes set name, which no rule may use.
func (t *Transaction) DeleteSet(tbl Table, name string) {
	t.add(op{kind: opDeleteSet, table: tbl, name: name}, checkName("set", name))
}

// AddRule appends r to its chain.
func (t *Transaction) AddRule(tbl Table, r Rule) {
	err := checkName("chain", r.Chain)
	switch {
	case err != nil:
	case r.Text == "":
		err = errors.New("the rule has no text")
	case len(r.Exprs) == 0:
		err = fmt.Errorf("rule %q has no expressions", r.Text)
	}
	for i, e := range r.Exprs {
		if err == nil && e == nil {
			err = fmt.Errorf("rule %q: expression %d is nil", r.Text, i)
		}
	}
	t.add(op{kind: opAddRule, table: tbl, name: r.Chain, rule: &r}, err)
}

// AddElements adds elems to set. Adding an element that is there with the
// same data does nothing; with other data, the kernel refuses.
func (t *Transaction) AddElements(tbl Table, set string, elems []Element) {
	t.elements(opAddElements, tbl, set, elems)
}

// DeleteElements deletes elems, which must be in set, from it. Only their
// keys (and interval ends) count.
func (t *Transaction) DeleteElements(tbl Table, set string, elems []Element) {
	t.elements(opDeleteElements, tbl, set, elems)
}

func (t *Transaction) elements(kind opKind, tbl Table, set string, elems []Element) {
	if len(elems) == 0 {
		return
	}
	err := checkName("set", set)
	for i := range elems {
		if err != nil {
			break
		}
		err = elems[i].check()
	}
	t.add(op{kind: kind, table: tbl, name: set, elems: elems}, err)
}

func (e *Element) check() error {
	switch {
	case e.Key == "" || len(e.Key) > maxData:
		return fmt.Errorf("element key %x is not between 1 and %d bytes", e.Key, maxData)
	case len(e.Data) > maxData:
		return fmt.Errorf("element %x: data over %d bytes", e.Key, maxData)
	case e.Data != "" && e.Goto != "":
		return fmt.Errorf("element %x has both data and a verdict", e.Key)
	case e.IntervalEnd && (e.Data != "" || e.Goto != ""):
		return fmt.Errorf("element %x: an interval end carries no data", e.Key)
	case e.Goto != "":
		return checkName("goto chain", e.Goto)
	}
	return nil
}

// describe says what an operation does, for errors.
func (o *op) describe() string {
	switch o.kind {
	case opAddTable:
		return "adding table " + o.table.String()
	case opDeleteTable:
		return "deleting table " + o.table.String()
	case opAddChain:
		return fmt.Sprintf("adding chain %s to table %s", o.name, o.table)
	case opFlushChain:
		return fmt.Sprintf("flushing chain %s of table %s", o.name, o.table)
	case opDeleteChain:
		return fmt.Sprintf("deleting chain %s of table %s", o.name, o.table)
	case opAddSet:
		return fmt.Sprintf("adding set %s to table %s", o.name, o.table)
	case opDeleteSet:
		return fmt.Sprintf("deleting set %s of table %s", o.name, o.table)
	case opAddRule:
		return fmt.Sprintf("adding rule %q to chain %s of table %s", o.rule.Text, o.name, o.table)
	case opAddElements:
		return fmt.Sprintf("adding %d elements to set %s of table %s", len(o.elems), o.name, o.table)
	case opDeleteElements:
		return fmt.Sprintf("deleting %d elements from set %s of table %s", len(o.elems), o.name, o.table)
	}
	return fmt.Sprintf("operation %d", o.kind)
}
