package proxy

import (
	"encoding/binary"
	"fmt"
	"maps"
	"net/netip"
	"regexp"
	"slices"
	"strings"

	"golang.org/x/sys/unix"
)

// fakeKernel is the backend of the unit tests: a table in memory that
// applies a tx all or nothing and refuses what the kernel refuses (a chain
// deleted while rules or elements still go to it, an element added twice
// with different values, a rule using a set that is not there...), so that
// tests catch a tx built in the wrong order.
type fakeKernel struct {
	fam   Family
	flows []map[flow]bool // deleteFlows calls
	t     *fakeTable
	txs   []*tx // every tx applied
	fail  error // the next apply fails with it
	nobs  int   // observe calls
	nfail int
}

type fakeTable struct {
	chains map[string]*fakeChain
	sets   map[string]*fakeSet
}

type fakeChain struct {
	hook  *hook
	rules []rule
	fps   []string // the rules' fingerprints, as the kernel keeps them
}

type fakeSet struct {
	spec  setSpec
	elems map[string]elemVal
}

func newFakeKernel(fam Family) *fakeKernel { return &fakeKernel{fam: fam} }

func (f *fakeKernel) close() error { return nil }

func (f *fakeKernel) listElems(set string) (map[string]elemVal, error) {
	if f.t == nil || f.t.sets[set] == nil {
		return nil, fmt.Errorf("set %s: %w", set, unix.ENOENT)
	}
	return maps.Clone(f.t.sets[set].elems), nil
}

func (f *fakeKernel) deleteTable() error { f.t = nil; return nil }

func (f *fakeKernel) deleteFlows(flows map[flow]bool) error {
	f.flows = append(f.flows, flows)
	return nil
}

func (t *fakeTable) clone() *fakeTable {
	if t == nil {
		return nil
	}
	c := &fakeTable{chains: map[string]*fakeChain{}, sets: map[string]*fakeSet{}}
	for n, ch := range t.chains {
		c.chains[n] = &fakeChain{hook: ch.hook, rules: slices.Clone(ch.rules), fps: slices.Clone(ch.fps)}
	}
	for n, s := range t.sets {
		c.sets[n] = &fakeSet{spec: s.spec, elems: maps.Clone(s.elems)}
	}
	return c
}

var jumpRE = regexp.MustCompile(`\b(?:jump|goto) (\S+)`)

func (f *fakeKernel) apply(t *tx) error {
	if f.fail != nil {
		err := f.fail
		f.fail = nil
		f.nfail++
		return err
	}
	tab, err := f.applyOps(f.t.clone(), t)
	if err != nil {
		return err
	}
	f.t = tab
	f.txs = append(f.txs, t)
	return nil
}

func (f *fakeKernel) applyOps(tab *fakeTable, t *tx) (*fakeTable, error) {
	if tab == nil {
		if !t.addTable {
			return nil, fmt.Errorf("table %s: %w", TableName, unix.ENOENT)
		}
		tab = &fakeTable{chains: map[string]*fakeChain{}, sets: map[string]*fakeSet{}}
	}
	refsChain := func(name string) error {
		for cn, c := range tab.chains {
			for _, r := range c.rules {
				for _, m := range jumpRE.FindAllStringSubmatch(r.text, -1) {
					if m[1] == name {
						return fmt.Errorf("chain %s is used by a rule of %s: %w", name, cn, unix.EBUSY)
					}
				}
			}
		}
		for sn, s := range tab.sets {
			for _, v := range s.elems {
				if v.goTo == name {
					return fmt.Errorf("chain %s is used by an element of %s: %w", name, sn, unix.EBUSY)
				}
			}
		}
		return nil
	}
	for _, e := range t.delElems {
		s := tab.sets[e.set]
		if s == nil {
			return nil, fmt.Errorf("deleting from set %s: %w", e.set, unix.ENOENT)
		}
		if _, ok := s.elems[e.key]; !ok {
			return nil, fmt.Errorf("deleting %x from set %s: %w", e.key, e.set, unix.ENOENT)
		}
		delete(s.elems, e.key)
	}
	for _, n := range t.flushes {
		c := tab.chains[n]
		if c == nil {
			return nil, fmt.Errorf("flushing chain %s: %w", n, unix.ENOENT)
		}
		c.rules, c.fps = nil, nil
	}
	for _, n := range t.delChains {
		c := tab.chains[n]
		if c == nil {
			return nil, fmt.Errorf("deleting chain %s: %w", n, unix.ENOENT)
		}
		if len(c.rules) > 0 {
			return nil, fmt.Errorf("deleting chain %s with rules: %w", n, unix.EBUSY)
		}
		if err := refsChain(n); err != nil {
			return nil, err
		}
		delete(tab.chains, n)
	}
	for _, n := range t.delSets {
		if tab.sets[n] == nil {
			return nil, fmt.Errorf("deleting set %s: %w", n, unix.ENOENT)
		}
		for cn, c := range tab.chains {
			for _, r := range c.rules {
				if slices.Contains(r.sets, n) {
					return nil, fmt.Errorf("set %s is used by a rule of %s: %w", n, cn, unix.EBUSY)
				}
			}
		}
		delete(tab.sets, n)
	}
	for _, s := range t.addSets {
		if old := tab.sets[s.name]; old != nil {
			if !old.spec.same(s.spec) {
				return nil, fmt.Errorf("set %s exists with another definition: %w", s.name, unix.EEXIST)
			}
			continue
		}
		tab.sets[s.name] = &fakeSet{spec: s.spec, elems: map[string]elemVal{}}
	}
	for _, c := range t.addChains {
		if old := tab.chains[c.name]; old != nil {
			if !sameHook(old.hook, c.hook) {
				return nil, fmt.Errorf("chain %s exists with another hook: %w", c.name, unix.EBUSY)
			}
			continue
		}
		tab.chains[c.name] = &fakeChain{hook: c.hook}
	}
	for _, c := range t.rules {
		ch := tab.chains[c.name]
		if ch == nil {
			return nil, fmt.Errorf("adding rules to chain %s: %w", c.name, unix.ENOENT)
		}
		for _, r := range c.rules {
			if r.exprs == nil {
				return nil, fmt.Errorf("rule %q of %s has no expressions", r.text, c.name)
			}
			for _, s := range r.sets {
				if tab.sets[s] == nil {
					return nil, fmt.Errorf("rule %q uses set %s: %w", r.text, s, unix.ENOENT)
				}
			}
			for _, m := range jumpRE.FindAllStringSubmatch(r.text, -1) {
				if tab.chains[m[1]] == nil {
					return nil, fmt.Errorf("rule %q goes to chain %s: %w", r.text, m[1], unix.ENOENT)
				}
			}
			ch.rules = append(ch.rules, rule{text: r.text, sets: r.sets})
			ch.fps = append(ch.fps, r.fingerprint())
		}
	}
	for _, e := range t.addElems {
		s := tab.sets[e.set]
		if s == nil {
			return nil, fmt.Errorf("adding to set %s: %w", e.set, unix.ENOENT)
		}
		if s.spec.dynamic() {
			return nil, fmt.Errorf("adding to dynamic set %s", e.set)
		}
		if old, ok := s.elems[e.key]; ok && old != e.val {
			return nil, fmt.Errorf("element %x of %s exists with another value: %w", e.key, e.set, unix.EEXIST)
		}
		if e.val.goTo != "" && tab.chains[e.val.goTo] == nil {
			return nil, fmt.Errorf("element of %s goes to chain %s: %w", e.set, e.val.goTo, unix.ENOENT)
		}
		s.elems[e.key] = e.val
	}
	return tab, nil
}

func (f *fakeKernel) observe() (*observed, error) {
	f.nobs++
	o := &observed{chains: map[string]*observedChain{}, sets: map[string]setSpec{}, elems: map[string]map[string]elemVal{}}
	if f.t == nil {
		return o, nil
	}
	o.table = true
	for n, c := range f.t.chains {
		o.chains[n] = &observedChain{hook: c.hook, rules: slices.Clone(c.fps)}
	}
	for n, s := range f.t.sets {
		o.sets[n] = s.spec
		if !s.spec.dynamic() {
			o.elems[n] = maps.Clone(s.elems)
		}
	}
	return o, nil
}

// dump prints the table in an nft-like form, sorted, with set elements
// decoded: what golden tests compare.
func (f *fakeKernel) dump() string {
	if f.t == nil {
		return "(no table)\n"
	}
	var b strings.Builder
	for _, n := range slices.Sorted(maps.Keys(f.t.sets)) {
		s := f.t.sets[n]
		fmt.Fprintf(&b, "set %s", n)
		if s.spec.timeout > 0 {
			fmt.Fprintf(&b, " timeout %s", s.spec.timeout)
		}
		b.WriteString("\n")
		var lines []string
		for k, v := range s.elems {
			line := "  " + f.decodeKey(n, k)
			switch {
			case v.goTo != "":
				line += " : goto " + v.goTo
			case v.data != "":
				line += " : " + f.decodeEndpoint(v.data)
			}
			lines = append(lines, line)
		}
		slices.Sort(lines)
		for _, l := range lines {
			b.WriteString(l + "\n")
		}
	}
	for _, n := range slices.Sorted(maps.Keys(f.t.chains)) {
		c := f.t.chains[n]
		fmt.Fprintf(&b, "chain %s", n)
		if c.hook != nil {
			fmt.Fprintf(&b, " (%s hook %d priority %d)", c.hook.typ, c.hook.num, c.hook.prio)
		}
		b.WriteString("\n")
		for _, r := range c.rules {
			b.WriteString("  " + r.text + "\n")
		}
	}
	return b.String()
}

func (f *fakeKernel) al() int {
	if f.fam == IPv4 {
		return 4
	}
	return 16
}

func (f *fakeKernel) decodeKey(set, k string) string {
	b := []byte(k)
	al := f.al()
	addr := func() string {
		a, _ := netip.AddrFromSlice(b[:al])
		b = b[al:]
		return a.String()
	}
	frontend := func() string {
		a := addr()
		p := Protocol(b[0])
		port := binary.BigEndian.Uint16(b[4:6])
		b = b[8:]
		return fmt.Sprintf("%s . %s . %d", a, p, port)
	}
	switch {
	case (set == setEndpoints || set == setAffinityEndpoints) && len(b) == al+12:
		fe := frontend()
		return fe + fmt.Sprintf(" . #%d", binary.NativeEndian.Uint32(b))
	case len(b) == al:
		return addr()
	case len(b) == al+8:
		return frontend()
	}
	return fmt.Sprintf("%x", k)
}

func (f *fakeKernel) decodeEndpoint(v string) string {
	b := []byte(v)
	a, _ := netip.AddrFromSlice(b[:f.al()])
	return netip.AddrPortFrom(a, binary.BigEndian.Uint16(b[f.al():])).String()
}

// flushFake empties a chain behind the proxier's back.
func flushFake(t *fakeTable, chain string) {
	t.chains[chain].rules, t.chains[chain].fps = nil, nil
}
