package nft

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// The scenarios run against the Fake (fake_test.go) and, as root, against
// the kernel (kernel_test.go): both must accept and refuse the same
// transactions, with the same errno, and end with the same tables.

var testTable = Table{IPv4, "duet-nfttest"}

func addr4(s string) string { return string(netip.MustParseAddr(s).AsSlice()) }

func frontend(a string, proto byte, port uint16) string {
	return addr4(a) + string([]byte{proto, 0, 0, 0, byte(port >> 8), byte(port), 0, 0})
}

var (
	frontendType = nftables.MustConcatSetType(nftables.TypeIPAddr, nftables.TypeInetProto, nftables.TypeInetService)
	setAddrs     = Set{Name: "addrs", KeyType: nftables.TypeIPAddr}
	setFrontends = Set{Name: "frontends", Flags: SetMap | SetConcat, KeyType: frontendType,
		DataType: nftables.MustConcatSetType(nftables.TypeIPAddr, nftables.TypeInetService)}
	setVmap   = Set{Name: "vmap", Flags: SetMap, KeyType: nftables.TypeIPAddr, DataType: nftables.TypeVerdict}
	setRanges = Set{Name: "ranges", Flags: SetInterval, KeyType: nftables.TypeIPAddr}
	setSeen   = Set{Name: "seen", Flags: SetDynamic | SetTimeout, KeyType: nftables.TypeIPAddr, Timeout: 60e9, Size: 1024}
	hookPre   = &Hook{Type: nftables.ChainTypeNAT, Num: *nftables.ChainHookPrerouting, Priority: -100}
)

func jumpRule(chain, set, target string) Rule {
	return Rule{Chain: chain, Text: fmt.Sprintf("ip daddr @%s jump %s", set, target), Exprs: []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 16, Len: 4},
		&expr.Lookup{SourceRegister: 1, SetName: set},
		&expr.Verdict{Kind: expr.VerdictJump, Chain: target},
	}}
}

func vmapRule(chain string) Rule {
	return Rule{Chain: chain, Text: "ip daddr vmap @vmap", Exprs: []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 16, Len: 4},
		&expr.Lookup{SourceRegister: 1, SetName: "vmap", DestRegister: 0, IsDestRegSet: true},
	}}
}

func updateRule(chain string) Rule {
	return Rule{Chain: chain, Text: "update @seen { ip saddr }", Exprs: []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 12, Len: 4},
		&expr.Dynset{SrcRegKey: 1, SetName: "seen", Operation: unix.NFT_DYNSET_OP_UPDATE},
	}}
}

func acceptRule(chain string) Rule {
	return Rule{Chain: chain, Text: "accept", Exprs: []expr.Any{&expr.Verdict{Kind: expr.VerdictAccept}}}
}

// base is the table every scenario starts from.
func base() *Transaction {
	t := testTable
	var tx Transaction
	tx.AddTable(t)
	for _, s := range []Set{setAddrs, setFrontends, setVmap, setRanges, setSeen} {
		tx.AddSet(t, s)
	}
	tx.AddChain(t, Chain{Name: "pre", Hook: hookPre})
	tx.AddChain(t, Chain{Name: "target"})
	tx.AddChain(t, Chain{Name: "other"})
	tx.AddRule(t, acceptRule("target"))
	tx.AddRule(t, jumpRule("pre", "addrs", "target"))
	tx.AddRule(t, vmapRule("pre"))
	tx.AddRule(t, updateRule("target"))
	tx.AddElements(t, "addrs", []Element{{Key: addr4("10.0.0.1")}, {Key: addr4("10.0.0.2")}})
	tx.AddElements(t, "frontends", []Element{{Key: frontend("10.96.0.1", unix.IPPROTO_TCP, 80), Data: addr4("10.244.0.5") + "\x1f\x90\x00\x00"}})
	tx.AddElements(t, "vmap", []Element{{Key: addr4("10.0.0.3"), Goto: "other"}})
	tx.AddElements(t, "ranges", []Element{
		{Key: addr4("10.0.0.0")}, {Key: addr4("11.0.0.0"), IntervalEnd: true},
		{Key: addr4("192.168.0.0")}, {Key: addr4("192.169.0.0"), IntervalEnd: true},
	})
	return &tx
}

type scenario struct {
	name string
	tx   func(tx *Transaction)
	// want is the errno the kernel refuses the transaction with; 0
	// accepts it.
	want unix.Errno
}

var scenarios = []scenario{
	{name: "nothing changed by re-adding what is there", tx: func(tx *Transaction) {
		tx.AddTable(testTable)
		tx.AddSet(testTable, setAddrs)
		tx.AddChain(testTable, Chain{Name: "pre", Hook: hookPre})
		tx.AddElements(testTable, "addrs", []Element{{Key: addr4("10.0.0.1")}})
	}},
	{name: "objects added to a missing table", want: unix.ENOENT, tx: func(tx *Transaction) {
		tx.AddSet(Table{IPv4, "duet-nfttest-none"}, setAddrs)
	}},
	{name: "a rule appended to a missing chain", want: unix.ENOENT, tx: func(tx *Transaction) {
		tx.AddRule(testTable, acceptRule("none"))
	}},
	{name: "a rule using a missing set", want: unix.ENOENT, tx: func(tx *Transaction) {
		tx.AddRule(testTable, jumpRule("other", "none", "target"))
	}},
	{name: "a rule jumping to a missing chain", want: unix.ENOENT, tx: func(tx *Transaction) {
		tx.AddRule(testTable, jumpRule("other", "addrs", "none"))
	}},
	{name: "a chain deleted while it has rules", want: unix.EBUSY, tx: func(tx *Transaction) {
		tx.DeleteChain(testTable, "target")
	}},
	{name: "a chain deleted while a rule jumps to it", want: unix.EBUSY, tx: func(tx *Transaction) {
		tx.FlushChain(testTable, "target")
		tx.DeleteChain(testTable, "target")
	}},
	{name: "a chain deleted with the rules that jump to it", tx: func(tx *Transaction) {
		tx.FlushChain(testTable, "pre")
		tx.FlushChain(testTable, "target")
		tx.DeleteChain(testTable, "target")
	}},
	{name: "a chain deleted while a verdict map element goes to it", want: unix.EBUSY, tx: func(tx *Transaction) {
		tx.DeleteChain(testTable, "other")
	}},
	{name: "a chain deleted with the element that goes to it", tx: func(tx *Transaction) {
		tx.DeleteElements(testTable, "vmap", []Element{{Key: addr4("10.0.0.3")}})
		tx.DeleteChain(testTable, "other")
	}},
	{name: "a set deleted while a rule uses it", want: unix.EBUSY, tx: func(tx *Transaction) {
		tx.DeleteSet(testTable, "addrs")
	}},
	{name: "a set deleted with the rules that use it", tx: func(tx *Transaction) {
		tx.FlushChain(testTable, "pre")
		tx.DeleteSet(testTable, "addrs")
		tx.DeleteSet(testTable, "vmap")
		tx.DeleteChain(testTable, "other")
	}},
	{name: "a set recreated and its users rewritten in one transaction", tx: func(tx *Transaction) {
		tx.FlushChain(testTable, "pre")
		tx.DeleteSet(testTable, "addrs")
		tx.AddSet(testTable, setAddrs)
		tx.AddRule(testTable, jumpRule("pre", "addrs", "target"))
		tx.AddElements(testTable, "addrs", []Element{{Key: addr4("10.0.0.9")}})
	}},
	{name: "a set redefined", want: unix.EEXIST, tx: func(tx *Transaction) {
		tx.AddSet(testTable, Set{Name: "addrs", KeyType: nftables.TypeIPAddr, Flags: SetInterval})
	}},
	{name: "a chain added again with another hook", want: unix.EOPNOTSUPP, tx: func(tx *Transaction) {
		tx.AddChain(testTable, Chain{Name: "pre", Hook: &Hook{Type: nftables.ChainTypeNAT, Num: *nftables.ChainHookPrerouting, Priority: -90}})
	}},
	{name: "a jump to a base chain", want: unix.EOPNOTSUPP, tx: func(tx *Transaction) {
		tx.AddRule(testTable, jumpRule("other", "addrs", "pre"))
	}},
	{name: "an element added again with other data", want: unix.EEXIST, tx: func(tx *Transaction) {
		tx.AddElements(testTable, "vmap", []Element{{Key: addr4("10.0.0.3"), Goto: "target"}})
	}},
	{name: "a map element replaced", tx: func(tx *Transaction) {
		tx.DeleteElements(testTable, "vmap", []Element{{Key: addr4("10.0.0.3")}})
		tx.AddElements(testTable, "vmap", []Element{{Key: addr4("10.0.0.3"), Goto: "target"}})
	}},
	{name: "a missing element deleted", want: unix.ENOENT, tx: func(tx *Transaction) {
		tx.DeleteElements(testTable, "addrs", []Element{{Key: addr4("10.0.0.1")}, {Key: addr4("10.0.0.7")}})
	}},
	{name: "a key of the wrong length", want: unix.EINVAL, tx: func(tx *Transaction) {
		tx.AddElements(testTable, "frontends", []Element{{Key: addr4("10.96.0.2"), Data: addr4("10.244.0.5") + "\x1f\x90\x00\x00"}})
	}},
	{name: "a map element without data", want: unix.EINVAL, tx: func(tx *Transaction) {
		tx.AddElements(testTable, "frontends", []Element{{Key: frontend("10.96.0.2", unix.IPPROTO_UDP, 53)}})
	}},
	{name: "a range overlapping another", want: unix.EEXIST, tx: func(tx *Transaction) {
		tx.AddElements(testTable, "ranges", []Element{{Key: addr4("10.128.0.0")}, {Key: addr4("10.129.0.0"), IntervalEnd: true}})
	}},
	{name: "ranges next to each other", tx: func(tx *Transaction) {
		tx.AddElements(testTable, "ranges", []Element{{Key: addr4("11.0.0.0")}, {Key: addr4("12.0.0.0"), IntervalEnd: true}})
	}},
	{name: "a range shrunk keeping its start", tx: func(tx *Transaction) {
		tx.DeleteElements(testTable, "ranges", []Element{{Key: addr4("10.0.0.0")}, {Key: addr4("11.0.0.0"), IntervalEnd: true}})
		tx.AddElements(testTable, "ranges", []Element{{Key: addr4("10.0.0.0")}, {Key: addr4("10.128.0.0"), IntervalEnd: true}})
	}},
	{name: "a range to the last address", tx: func(tx *Transaction) {
		tx.AddElements(testTable, "ranges", []Element{{Key: addr4("240.0.0.0")}})
	}},
	{name: "a failing transaction changes nothing", want: unix.ENOENT, tx: func(tx *Transaction) {
		tx.AddElements(testTable, "addrs", []Element{{Key: addr4("10.0.0.8")}})
		tx.FlushChain(testTable, "pre")
		tx.AddChain(testTable, Chain{Name: "new"})
		tx.AddSet(testTable, Set{Name: "new", KeyType: nftables.TypeIPAddr})
		tx.DeleteTable(Table{IPv4, "duet-nfttest-none"})
	}},
	{name: "a table deleted with everything in it", tx: func(tx *Transaction) {
		tx.DeleteTable(testTable)
	}},
	{name: "a table deleted whether or not it exists", tx: func(tx *Transaction) {
		other := Table{IPv6, "duet-nfttest"}
		tx.AddTable(other)
		tx.DeleteTable(other)
	}},
}

// state is what a listing shows, in a form two Interfaces can be compared
// by.
func state(t *testing.T, nft Interface, tables ...Table) string {
	t.Helper()
	var b strings.Builder
	for _, tbl := range tables {
		l, err := nft.List(tbl)
		if err != nil {
			t.Fatalf("List(%s): %v", tbl, err)
		}
		if l == nil {
			fmt.Fprintf(&b, "%s: absent\n", tbl)
			continue
		}
		fmt.Fprintf(&b, "table %s\n", tbl)
		for _, n := range sortedKeys(l.Chains) {
			c := l.Chains[n]
			fmt.Fprintf(&b, "  chain %s%s %v\n", n, hookText(c.Hook), c.Rules)
		}
		for _, n := range sortedKeys(l.Sets) {
			s := l.Sets[n]
			fmt.Fprintf(&b, "  set %s %s\n", n, setText(&s, tbl.Family))
			if s.Flags&SetDynamic != 0 {
				continue
			}
			var elems []Element
			if err := nft.ListElements(tbl, n, func(e Element) { elems = append(elems, e) }); err != nil {
				t.Fatal(err)
			}
			slices.SortFunc(elems, CompareElements)
			for _, e := range elementsText(&s, tbl.Family, elems, true) {
				fmt.Fprintf(&b, "    %s\n", e)
			}
		}
	}
	return b.String()
}

func sortedKeys[V any](m map[string]V) []string {
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	slices.Sort(ks)
	return ks
}

// runScenario builds the base table, runs the scenario's transaction and
// checks its outcome: the errno, and an unchanged table after a refusal.
// It returns the state after.
func runScenario(t *testing.T, nft Interface, sc scenario) string {
	t.Helper()
	tables := []Table{testTable, {IPv6, "duet-nfttest"}}
	if err := nft.Run(base()); err != nil {
		t.Fatalf("building the base table: %v", err)
	}
	before := state(t, nft, tables...)
	var tx Transaction
	sc.tx(&tx)
	err := nft.Run(&tx)
	switch {
	case sc.want == 0 && err != nil:
		t.Fatalf("Run = %v, want success", err)
	case sc.want != 0 && !errors.Is(err, sc.want):
		t.Fatalf("Run = %v, want %v (%d)", err, sc.want, int(sc.want))
	}
	after := state(t, nft, tables...)
	if sc.want != 0 && after != before {
		t.Fatalf("a refused transaction changed the tables:\n%s\nwas:\n%s", after, before)
	}
	return after
}
