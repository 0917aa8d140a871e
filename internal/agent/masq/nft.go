package masq

import (
	"fmt"
	"net/netip"
	"slices"

	"github.com/duet-net/duet/internal/nft"
	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// The tables' layout, as nftables objects, and how the programmer's
// operations become transactions.

func table(f nft.Family) nft.Table { return nft.Table{Family: f, Name: TableName} }

// hook is the chain's: NAT at postrouting, where ip-masq-agent has its
// rules.
var hook = nft.Hook{Type: nftables.ChainTypeNAT, Num: *nftables.ChainHookPostrouting, Priority: *nftables.ChainPriorityNATSource}

func setDef(f nft.Family, s setIndex) nft.Set {
	return nft.Set{Name: setNames[s], Flags: nft.SetInterval, KeyType: f.AddrType()}
}

// rules are the chain, rule by rule:
//
//	fib daddr type local return
//	ip daddr @never-masquerade return
//	ip daddr @non-masquerade return
//	masquerade fully-random
//
// ip-masq-agent's rules, with its per-CIDR rules replaced by set lookups.
// Fully random ports as in ip-masq-agent since v2.10: without them
// connections from different pods racing for the same source port may
// be dropped.
func rules(f nft.Family) []nft.Rule {
	offset := uint32(16) // IPv4 header: daddr
	if f == nft.IPv6 {
		offset = 24
	}
	lookup := func(s setIndex) nft.Rule {
		return nft.Rule{Chain: ChainName, Text: fmt.Sprintf("%s daddr @%s return", f.Keyword(), setNames[s]), Exprs: []expr.Any{
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: offset, Len: uint32(f.AddrLen())},
			&expr.Lookup{SourceRegister: 1, SetName: setNames[s]},
			&expr.Verdict{Kind: expr.VerdictReturn},
		}}
	}
	return []nft.Rule{
		{Chain: ChainName, Text: "fib daddr type local return", Exprs: []expr.Any{
			&expr.Fib{Register: 1, FlagDADDR: true, ResultADDRTYPE: true},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.NativeEndian.PutUint32(unix.RTN_LOCAL)},
			&expr.Verdict{Kind: expr.VerdictReturn},
		}},
		lookup(setNever),
		lookup(setNon),
		{Chain: ChainName, Text: "masquerade fully-random", Exprs: []expr.Any{&expr.Masq{FullyRandom: true}}},
	}
}

// elements turns ranges into interval set elements: a start element and,
// unless the range runs to the family's last address, an end element one
// past it.
func elements(rs []ipRange) []nft.Element {
	out := make([]nft.Element, 0, 2*len(rs))
	for _, r := range rs {
		out = append(out, nft.Element{Key: string(r.from.AsSlice())})
		if end := r.to.Next(); end.IsValid() {
			out = append(out, nft.Element{Key: string(end.AsSlice()), IntervalEnd: true})
		}
	}
	return out
}

// rebuild adds to tx what replaces family f's table, whatever state it is
// in, with the full layout holding m. Adding the table before deleting it
// makes the deletion succeed whether or not it exists; the transaction
// then builds it again, so no packet ever sees a half-built table.
func rebuild(tx *nft.Transaction, f nft.Family, m tableModel) {
	t := table(f)
	tx.AddTable(t)
	tx.DeleteTable(t)
	tx.AddTable(t)
	for s := range setNames {
		tx.AddSet(t, setDef(f, setIndex(s)))
		tx.AddElements(t, setNames[s], elements(m[s]))
	}
	tx.AddChain(t, nft.Chain{Name: ChainName, Hook: &hook})
	for _, r := range rules(f) {
		tx.AddRule(t, r)
	}
}

// increment adds to tx the elements of family f's sets that change from
// have to want. Deletions go first: a range that changes keeps its start
// address, and the kernel must see the old interval gone before the new
// one is checked for overlaps.
func increment(tx *nft.Transaction, f nft.Family, have, want tableModel) {
	var adds [len(setNames)][]ipRange
	for s := range setNames {
		del, add := diffRanges(have[s], want[s])
		tx.DeleteElements(table(f), setNames[s], elements(del))
		adds[s] = add
	}
	for s := range setNames {
		tx.AddElements(table(f), setNames[s], elements(adds[s]))
	}
}

// remove adds to tx the deletion of family f's table, if it exists.
func remove(tx *nft.Transaction, f nft.Family) {
	tx.AddTable(table(f))
	tx.DeleteTable(table(f))
}

// observe reads family f's table.
func (p *Programmer) observe(f nft.Family) (observed, error) {
	l, err := p.nft.List(table(f))
	if err != nil || l == nil {
		return observed{}, err
	}
	o := observed{present: true}
	c, ok := l.Chains[ChainName]
	if len(l.Chains) != 1 || !ok || c.Hook == nil || *c.Hook != hook || !slices.Equal(c.Rules, fingerprints(f)) {
		return o, nil
	}
	if len(l.Sets) != len(setNames) {
		return o, nil
	}
	for s, name := range setNames {
		if got, ok := l.Sets[name]; !ok || !got.Same(setDef(f, setIndex(s))) {
			return o, nil
		}
		var elems []nft.Element
		if err := p.nft.ListElements(table(f), name, func(e nft.Element) { elems = append(elems, e) }); err != nil {
			return o, err
		}
		rs, ok := rangesOf(elems, f)
		if !ok {
			return o, nil
		}
		o.sets[s] = rs
	}
	o.intact = true
	return o, nil
}

// fingerprints are the chain's rules as the kernel lists them.
func fingerprints(f nft.Family) []string {
	rs := rules(f)
	out := make([]string, len(rs))
	for i := range rs {
		out[i] = rs[i].Fingerprint()
	}
	return out
}

// rangesOf reads interval elements back into ranges. Anything Duet would
// not have written (an end without a start, two starts in a row, a key of
// the wrong length) reports !ok, and the table is rebuilt.
func rangesOf(elems []nft.Element, f nft.Family) ([]ipRange, bool) {
	type el struct {
		a   netip.Addr
		end bool
	}
	// The kernel's order is its own; keys of one length sort as their
	// addresses do.
	elems = slices.SortedFunc(slices.Values(elems), nft.CompareElements)
	els := make([]el, 0, len(elems))
	for _, e := range elems {
		a, ok := netip.AddrFromSlice([]byte(e.Key))
		if !ok || a.Is6() != (f == nft.IPv6) || e.Data != "" || e.Goto != "" {
			return nil, false
		}
		els = append(els, el{a, e.IntervalEnd})
	}
	var out []ipRange
	for i := 0; i < len(els); i++ {
		if els[i].end {
			return nil, false
		}
		r := ipRange{from: els[i].a}
		switch {
		case i+1 == len(els):
			r.to = lastAddr(netip.PrefixFrom(r.from, 0))
		case els[i+1].end && els[i+1].a.Compare(r.from) > 0:
			r.to = els[i+1].a.Prev()
			i++
		default:
			return nil, false
		}
		out = append(out, r)
	}
	return out, true
}
