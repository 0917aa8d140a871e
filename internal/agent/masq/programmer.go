package masq

import (
	"fmt"
	"net/netip"
	"path/filepath"
	"slices"
	"strings"

	"github.com/duet-net/duet/internal/nft"
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

// model is both tables, in the order of nft.Families.
type model [len(nft.Families)]tableModel

func compile(r Rules) model {
	var m model
	for i, f := range nft.Families {
		m[i][setNever] = mergePrefixes(r.NeverMasquerade, f == nft.IPv6)
		m[i][setNon] = mergePrefixes(r.NonMasquerade, f == nft.IPv6)
	}
	return m
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

// Programmer keeps the masquerade tables of one network namespace as a
// Rules value asks, sending the kernel only the differences from what it
// last programmed. It is not safe for concurrent use.
type Programmer struct {
	nft        nft.Interface
	programmed bool  // the model reflects a successful commit
	model      model // what the kernel holds as far as the programmer knows
	// absent are the families (in the order of nft.Families) whose table
	// the programmer keeps deleted: those a single-stack cluster lacks.
	absent [len(nft.Families)]bool
}

// New returns a programmer for the network namespace named netns (a name
// under /run/netns, or a path), or the caller's own namespace for "". It
// changes nothing until Apply.
func New(netns string) (*Programmer, error) {
	path := netns
	if netns != "" && !strings.ContainsRune(netns, '/') {
		path = filepath.Join("/run/netns", netns)
	}
	c, err := nft.NewAt(path)
	if err != nil {
		return nil, fmt.Errorf("masquerade tables: %w", err)
	}
	return &Programmer{nft: c}, nil
}

// Close releases the netlink socket. The rules stay in place.
func (p *Programmer) Close() error { return p.nft.Close() }

// Apply makes the tables hold r. It sends only the set elements that
// differ from what it programmed last, in one transaction. The first
// Apply, and any Apply whose increment the kernel refuses (because
// someone changed the tables behind the programmer's back), rebuilds both
// tables from scratch in one transaction instead.
func (p *Programmer) Apply(r Rules) error {
	return p.apply(p.compile(r))
}

func (p *Programmer) apply(want model) error {
	if !p.programmed {
		return p.rebuild(want, nft.Families[:])
	}
	tx := &nft.Transaction{}
	for i, f := range nft.Families {
		if !p.absent[i] {
			increment(tx, f, p.model[i], want[i])
		}
	}
	if tx.Empty() {
		return nil
	}
	if err := p.nft.Run(tx); err != nil {
		if rerr := p.rebuild(want, nft.Families[:]); rerr != nil {
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
	want := p.compile(r)
	var broken []nft.Family
	for i, f := range nft.Families {
		o, err := p.observe(f)
		if err != nil {
			return nil, fmt.Errorf("reading the %s %s table: %w", f.Keyword(), TableName, err)
		}
		if p.absent[i] {
			if o.present {
				broken = append(broken, f)
				if p.programmed {
					repaired = append(repaired, f.Keyword())
				}
			}
			continue
		}
		if !p.programmed || !o.present || !o.intact || !o.sets.equal(p.model[i]) {
			broken = append(broken, f)
			if p.programmed {
				repaired = append(repaired, f.Keyword())
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
	tx := &nft.Transaction{}
	for _, f := range nft.Families {
		remove(tx, f)
	}
	if err := p.nft.Run(tx); err != nil {
		return fmt.Errorf("removing the %s tables: %w", TableName, err)
	}
	p.programmed, p.model = false, model{}
	return nil
}

// rebuild replaces the tables of the given families and applies the
// increment to the others, in one transaction.
func (p *Programmer) rebuild(want model, fams []nft.Family) error {
	tx := &nft.Transaction{}
	for i, f := range nft.Families {
		if p.absent[i] {
			if slices.Contains(fams, f) {
				remove(tx, f)
			}
			continue
		}
		if slices.Contains(fams, f) {
			rebuild(tx, f, want[i])
		} else {
			increment(tx, f, p.model[i], want[i])
		}
	}
	if err := p.nft.Run(tx); err != nil {
		p.programmed = false
		return fmt.Errorf("programming the %s tables: %w", TableName, err)
	}
	p.programmed, p.model = true, want
	return nil
}
