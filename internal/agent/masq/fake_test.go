package masq

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
)

// fakeBackend applies transactions to in-memory tables with the kernel's
// rules for interval sets: adding into a missing table or overlapping an
// existing interval fails, deleting an absent interval fails, and a
// transaction that fails changes nothing.
type fakeBackend struct {
	mu      sync.Mutex
	tables  [2]*fakeTable
	commits [][]op // every successful transaction
	failing error  // the next commit fails with it
	closed  bool
}

type fakeTable struct {
	intact bool // chain, rules and set definitions as Duet writes them
	sets   tableModel
}

func (b *fakeBackend) commit(ops []op) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if err := b.failing; err != nil {
		b.failing = nil
		return err
	}
	next := b.tables
	for f, t := range next {
		if t != nil {
			c := *t
			for s := range c.sets {
				c.sets[s] = slices.Clone(c.sets[s])
			}
			next[f] = &c
		}
	}
	for _, o := range ops {
		t := next[o.family]
		switch o.kind {
		case opRebuild:
			for s := range o.table {
				if err := checkDisjoint(o.table[s]); err != nil {
					return fmt.Errorf("%s %s: %w", o.family, setNames[s], err)
				}
			}
			next[o.family] = &fakeTable{intact: true, sets: tableModel{slices.Clone(o.table[0]), slices.Clone(o.table[1])}}
		case opRemove:
			next[o.family] = nil
		case opAdd, opDelete:
			if t == nil {
				return fmt.Errorf("%s %s: no such table", o.family, TableName)
			}
			cur := t.sets[o.set]
			for _, r := range o.ranges {
				i := slices.IndexFunc(cur, func(x ipRange) bool { return x == r })
				if o.kind == opDelete {
					if i < 0 {
						return fmt.Errorf("%s %s: deleting %s: no such element", o.family, setNames[o.set], r)
					}
					cur = slices.Delete(cur, i, i+1)
					continue
				}
				cur = append(cur, r)
				slices.SortFunc(cur, compareRanges)
				if err := checkDisjoint(cur); err != nil {
					return fmt.Errorf("%s %s: adding %s: %w", o.family, setNames[o.set], r, err)
				}
			}
			t.sets[o.set] = cur
		}
	}
	b.tables = next
	b.commits = append(b.commits, slices.Clone(ops))
	return nil
}

func checkDisjoint(rs []ipRange) error {
	for i := 1; i < len(rs); i++ {
		if rs[i].from.Compare(rs[i-1].to) <= 0 {
			return fmt.Errorf("%s overlaps %s", rs[i], rs[i-1])
		}
	}
	return nil
}

func (b *fakeBackend) observe(f family) (observed, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	t := b.tables[f]
	if t == nil {
		return observed{}, nil
	}
	o := observed{present: true, intact: t.intact}
	if t.intact {
		o.sets = tableModel{slices.Clone(t.sets[0]), slices.Clone(t.sets[1])}
	}
	return o, nil
}

func (b *fakeBackend) close() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return errors.New("closed twice")
	}
	b.closed = true
	return nil
}

// dump lists the set contents, one line per family and set, as nft would
// name them.
func (b *fakeBackend) dump() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	var sb strings.Builder
	for _, f := range families {
		t := b.tables[f]
		if t == nil {
			fmt.Fprintf(&sb, "%s %s: absent\n", f, TableName)
			continue
		}
		for s, rs := range t.sets {
			names := make([]string, len(rs))
			for i, r := range rs {
				names[i] = r.String()
			}
			fmt.Fprintf(&sb, "%s %s: %s\n", f, setNames[s], strings.Join(names, ", "))
		}
	}
	return sb.String()
}

func (b *fakeBackend) commitCount() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.commits)
}

func (b *fakeBackend) lastCommit() []op {
	b.mu.Lock()
	defer b.mu.Unlock()
	if len(b.commits) == 0 {
		return nil
	}
	return b.commits[len(b.commits)-1]
}

// tamper changes a table behind the programmer's back.
func (b *fakeBackend) tamper(fn func(t *[2]*fakeTable)) {
	b.mu.Lock()
	defer b.mu.Unlock()
	fn(&b.tables)
}
