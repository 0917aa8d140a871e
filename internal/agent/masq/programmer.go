package masq

import (
	"fmt"
	"net/netip"
	"slices"
)

// TableName is the name of Duet's masquerade table in both the ip and the
// ip6 family. Nothing else on the node is touched.
const TableName = "duet-masq"

// The sets of each family's table, and the base chain.
const (
	SetNeverMasquerade = "never-masquerade" // the cluster's pod CIDRs
	SetNonMasquerade   = "non-masquerade"   // from the configuration
	ChainName          = "postrouting"
)

// Rules is what the masquerade tables must hold: the destinations that
// keep their source address. Everything else not bound for a local address
// is masqueraded. Prefixes of both families go in one list each; they may
// overlap and nest.
type Rules struct {
	// NeverMasquerade is the cluster's pod CIDRs.
	NeverMasquerade []netip.Prefix
	// NonMasquerade is the configured list, link-local ranges included.
	NonMasquerade []netip.Prefix
}

type family int

const (
	ipv4 family = iota
	ipv6
)

var families = [...]family{ipv4, ipv6}

func (f family) String() string { return [...]string{"ip", "ip6"}[f] }

type setIndex int

const (
	setNever setIndex = iota
	setNon
)

var setNames = [...]string{SetNeverMasquerade, SetNonMasquerade}

// tableModel is the content of one family's table that varies: the
// elements of its two sets, as merged ranges. The chain and its rules
// never change.
type tableModel [2][]ipRange

func (m tableModel) equal(o tableModel) bool {
	return slices.Equal(m[0], o[0]) && slices.Equal(m[1], o[1])
}

func (m tableModel) size() int { return len(m[0]) + len(m[1]) }

type model [2]tableModel

func compile(r Rules) model {
	var m model
	for _, f := range families {
		m[f][setNever] = mergePrefixes(r.NeverMasquerade, f == ipv6)
		m[f][setNon] = mergePrefixes(r.NonMasquerade, f == ipv6)
	}
	return m
}

// opKind is one step of a transaction.
type opKind int

const (
	// opRebuild replaces a family's table, whatever state it is in, with
	// the full layout and the given set contents.
	opRebuild opKind = iota
	// opAdd and opDelete add or delete interval elements of one set.
	opAdd
	opDelete
	// opRemove deletes a family's table if it exists.
	opRemove
)

type op struct {
	kind   opKind
	family family
	table  tableModel // opRebuild
	set    setIndex   // opAdd, opDelete
	ranges []ipRange  // opAdd, opDelete
}

// observed is what the kernel holds for one family's table.
type observed struct {
	// present: the table exists.
	present bool
	// intact: the chain, its rules and the two set definitions are
	// exactly Duet's, and nothing else is in the table; sets is then
	// the sets' contents.
	intact bool
	sets   tableModel
}

// backend is the kernel edge: it runs transactions and reads tables back.
// The real one speaks nftables netlink; tests use an in-memory fake.
type backend interface {
	// commit runs ops in order as one transaction: all or nothing.
	commit(ops []op) error
	// observe reads one family's table.
	observe(f family) (observed, error)
	close() error
}

// Programmer keeps the masquerade tables of one network namespace as a
// Rules value asks, sending the kernel only the differences from what it
// last programmed. It is not safe for concurrent use.
type Programmer struct {
	b          backend
	programmed bool  // the model reflects a successful commit
	model      model // what the kernel holds as far as the programmer knows
}

// New returns a programmer for the network namespace named netns (a name
// under /run/netns, or a path), or the caller's own namespace for "". It
// changes nothing until Apply.
func New(netns string) (*Programmer, error) {
	b, err := newNFTBackend(netns)
	if err != nil {
		return nil, err
	}
	return &Programmer{b: b}, nil
}

// Close releases the namespace. The rules stay in place.
func (p *Programmer) Close() error { return p.b.close() }

// Apply makes the tables hold r. It sends only the set elements that
// differ from what it programmed last, in one transaction. The first
// Apply, and any Apply whose increment the kernel refuses (because
// someone changed the tables behind the programmer's back), rebuilds both
// tables from scratch in one transaction instead.
func (p *Programmer) Apply(r Rules) error {
	return p.apply(compile(r))
}

func (p *Programmer) apply(want model) error {
	if !p.programmed {
		return p.rebuild(want, families[:])
	}
	ops := p.increment(want)
	if len(ops) == 0 {
		return nil
	}
	if err := p.b.commit(ops); err != nil {
		if rerr := p.rebuild(want, families[:]); rerr != nil {
			return fmt.Errorf("updating masquerade sets: %w; rebuilding the tables: %w", err, rerr)
		}
		return nil
	}
	p.model = want
	return nil
}

// Reconcile checks that the kernel still holds exactly what the
// programmer last programmed, rebuilds the tables of any family where it
// does not (deleted, flushed, a rule or an element changed), and applies
// r, all in one transaction. It reports the families it had to repair.
func (p *Programmer) Reconcile(r Rules) (repaired []string, err error) {
	want := compile(r)
	var broken []family
	for _, f := range families {
		o, err := p.b.observe(f)
		if err != nil {
			return nil, fmt.Errorf("reading the %s %s table: %w", f, TableName, err)
		}
		if !p.programmed || !o.present || !o.intact || !o.sets.equal(p.model[f]) {
			broken = append(broken, f)
			if p.programmed {
				repaired = append(repaired, f.String())
			}
		}
	}
	if len(broken) == 0 {
		return nil, p.apply(want)
	}
	return repaired, p.rebuild(want, broken)
}

// Remove deletes both tables, if they exist, in one transaction: for
// shutdown with cleanup and for duet down.
func (p *Programmer) Remove() error {
	ops := make([]op, 0, len(families))
	for _, f := range families {
		ops = append(ops, op{kind: opRemove, family: f})
	}
	if err := p.b.commit(ops); err != nil {
		return fmt.Errorf("removing the %s tables: %w", TableName, err)
	}
	p.programmed, p.model = false, model{}
	return nil
}

// rebuild replaces the tables of the given families and applies the
// increment to the others, in one transaction.
func (p *Programmer) rebuild(want model, fams []family) error {
	var ops []op
	for _, f := range families {
		if slices.Contains(fams, f) {
			ops = append(ops, op{kind: opRebuild, family: f, table: want[f]})
		} else {
			ops = append(ops, p.familyIncrement(f, want[f])...)
		}
	}
	if err := p.b.commit(ops); err != nil {
		p.programmed = false
		return fmt.Errorf("programming the %s tables: %w", TableName, err)
	}
	p.programmed, p.model = true, want
	return nil
}

func (p *Programmer) increment(want model) []op {
	var ops []op
	for _, f := range families {
		ops = append(ops, p.familyIncrement(f, want[f])...)
	}
	return ops
}

// familyIncrement deletes before it adds: a range that changes keeps its
// start address, and the kernel must see the old interval gone before
// the new one is checked for overlaps.
func (p *Programmer) familyIncrement(f family, want tableModel) []op {
	var dels, adds []op
	for s := range setNames {
		del, add := diffRanges(p.model[f][s], want[s])
		if len(del) > 0 {
			dels = append(dels, op{kind: opDelete, family: f, set: setIndex(s), ranges: del})
		}
		if len(add) > 0 {
			adds = append(adds, op{kind: opAdd, family: f, set: setIndex(s), ranges: add})
		}
	}
	return append(dels, adds...)
}
