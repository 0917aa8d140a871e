package nft

import (
	"fmt"
	"hash/fnv"
	"strings"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// Table names one table of one family.
type Table struct {
	Family Family
	Name   string
}

func (t Table) String() string { return t.Family.Keyword() + " " + t.Name }

// Hook makes a chain a base chain: the packets of one netfilter hook pass
// through it.
type Hook struct {
	Type     nftables.ChainType
	Num      nftables.ChainHook
	Priority nftables.ChainPriority
	// Drop makes the chain's policy drop; a base chain accepts otherwise.
	Drop bool
}

// Chain is a chain's definition; its rules are added one by one.
type Chain struct {
	Name string
	Hook *Hook // nil for a regular chain, reached only by jumps and gotos
}

// SetFlags are a set's flags, as the kernel numbers them.
type SetFlags uint32

// The flags Duet's sets use.
const (
	// SetInterval: the elements are ranges, each a start element and an
	// end element one past its last key (none for a range that runs to
	// the last key).
	SetInterval SetFlags = unix.NFT_SET_INTERVAL
	// SetMap: each element has data of DataType (a verdict map's is a
	// verdict: Element.Goto).
	SetMap SetFlags = unix.NFT_SET_MAP
	// SetTimeout: elements expire after the set's Timeout.
	SetTimeout SetFlags = unix.NFT_SET_TIMEOUT
	// SetDynamic: the datapath adds elements (update @set from a rule).
	SetDynamic SetFlags = unix.NFT_SET_EVAL
	// SetConcat: the key is a concatenation of several types.
	SetConcat SetFlags = 0x80 // NFT_SET_CONCAT, which x/sys/unix does not name
)

// Set is a named set's definition, as the kernel keeps it.
type Set struct {
	Name     string
	Flags    SetFlags
	KeyType  nftables.SetDatatype
	DataType nftables.SetDatatype // maps only
	Timeout  time.Duration        // with SetTimeout: how long an element lives
	Size     uint32               // the most elements it holds; 0: no bound
}

// Same reports whether two sets have the same definition, names aside.
// The kernel keeps type numbers and lengths, not the names
// nftables.SetDatatype carries, so those are what is compared.
func (s Set) Same(o Set) bool {
	return s.Flags == o.Flags && s.Timeout == o.Timeout && s.Size == o.Size &&
		s.KeyType.Bytes == o.KeyType.Bytes && s.KeyType.GetNFTMagic() == o.KeyType.GetNFTMagic() &&
		s.DataType.Bytes == o.DataType.Bytes && s.DataType.GetNFTMagic() == o.DataType.GetNFTMagic()
}

// Rule is a rule appended to a chain. Text says what it does in nft's
// syntax: the fake shows it, and it goes into the rule's fingerprint.
// Exprs implement it.
type Rule struct {
	Chain string
	Text  string
	Exprs []expr.Any
}

// Fingerprint is what the kernel keeps with the rule, as its comment, so
// that a listing shows whether a rule is still the one written. It covers
// the expressions too: a rule written differently under the same text is
// another rule.
func (r *Rule) Fingerprint() string { return Fingerprint(r.Text, r.Exprs) }

// Fingerprint is Rule.Fingerprint for a rule given by its parts.
func Fingerprint(text string, exprs []expr.Any) string {
	h := fnv.New64a()
	h.Write([]byte(text))
	for _, e := range exprs {
		b, err := expr.Marshal(0, e)
		if err != nil {
			b = []byte(err.Error())
		}
		h.Write(b)
	}
	return fmt.Sprintf("duet:%016x", h.Sum64())
}

// Element is one element of a set: its key, as the datapath compares it
// (the fields of a concatenation each padded to 4 bytes), and for a map
// its data. Strings hold bytes, so that elements compare with == and
// serve as map keys.
type Element struct {
	Key string
	// Data is a map's value; Goto, a verdict map's chain to go to.
	Data string
	Goto string
	// IntervalEnd marks the end element of an interval set's range: the
	// first key past it.
	IntervalEnd bool
}

// CompareElements orders elements by key, and an interval end before a
// start at the same key: an interval set's order, in which a range may end
// where the next one starts.
func CompareElements(a, b Element) int {
	if c := strings.Compare(a.Key, b.Key); c != 0 {
		return c
	}
	switch {
	case a.IntervalEnd == b.IntervalEnd:
		return 0
	case a.IntervalEnd:
		return -1
	}
	return 1
}

// maxName is the longest name the kernel takes (NFT_NAME_MAXLEN, less
// the NUL).
const maxName = 255

// maxData is the longest key or value the kernel takes
// (NFT_DATA_VALUE_MAXLEN).
const maxData = 64

func checkName(what, name string) error {
	switch {
	case name == "":
		return fmt.Errorf("%s name is empty", what)
	case len(name) > maxName:
		return fmt.Errorf("%s name %.32q... is longer than %d bytes", what, name, maxName)
	}
	for i := 0; i < len(name); i++ {
		if name[i] == 0 {
			return fmt.Errorf("%s name %q holds a NUL byte", what, name)
		}
	}
	return nil
}
