package nft

import (
	"errors"
	"strings"
	"testing"

	"github.com/google/nftables"
	"golang.org/x/sys/unix"
)

func TestFakeScenarios(t *testing.T) {
	for _, sc := range scenarios {
		t.Run(sc.name, func(t *testing.T) {
			runScenario(t, NewFake(), sc)
		})
	}
}

func TestFakeDump(t *testing.T) {
	f := NewFake()
	if err := f.Run(base()); err != nil {
		t.Fatal(err)
	}
	want := `table ip duet-nfttest
  set addrs { type ipv4_addr }
    10.0.0.1
    10.0.0.2
  set frontends { type ipv4_addr . inet_proto . inet_service : ipv4_addr . inet_service }
    10.96.0.1 . tcp . 80 : 10.244.0.5 . 8080
  set ranges { type ipv4_addr; flags interval }
    10.0.0.0/8
    192.168.0.0/16
  set seen { type ipv4_addr; flags dynamic,timeout; timeout 1m0s; size 1024 }
  set vmap { type ipv4_addr : verdict }
    10.0.0.3 : goto other
  chain other
  chain pre { type nat hook prerouting priority -100 }
    ip daddr @addrs jump target
    ip daddr vmap @vmap
  chain target
    accept
    update @seen { ip saddr }
`
	if got := f.Dump(); got != want {
		t.Errorf("Dump:\n%s\nwant:\n%s", got, want)
	}
	if f.Transactions() != 1 {
		t.Errorf("%d transactions, want 1", f.Transactions())
	}
}

func TestFakeLastTransaction(t *testing.T) {
	f := NewFake()
	if err := f.Run(base()); err != nil {
		t.Fatal(err)
	}
	var tx Transaction
	tx.DeleteElements(testTable, "ranges", []Element{{Key: addr4("10.0.0.0")}, {Key: addr4("11.0.0.0"), IntervalEnd: true}})
	tx.AddElements(testTable, "ranges", []Element{{Key: addr4("10.0.0.0")}, {Key: addr4("10.128.0.0"), IntervalEnd: true}, {Key: addr4("255.0.0.0")}})
	tx.FlushChain(testTable, "pre")
	tx.AddRule(testTable, acceptRule("pre"))
	tx.DeleteElements(testTable, "vmap", []Element{{Key: addr4("10.0.0.3")}})
	if err := f.Run(&tx); err != nil {
		t.Fatal(err)
	}
	want := `delete element ip duet-nfttest ranges { 10.0.0.0/8 }
add element ip duet-nfttest ranges { 10.0.0.0/9 }
add element ip duet-nfttest ranges { 255.0.0.0/8 }
flush chain ip duet-nfttest pre
add rule ip duet-nfttest pre accept
delete element ip duet-nfttest vmap { 10.0.0.3 }
`
	if got := f.LastTransaction(); got != want {
		t.Errorf("LastTransaction:\n%s\nwant:\n%s", got, want)
	}
	// A refused transaction is not the last one.
	var bad Transaction
	bad.DeleteChain(testTable, "none")
	if err := f.Run(&bad); !errors.Is(err, unix.ENOENT) {
		t.Fatalf("deleting a missing chain: %v", err)
	}
	if got := f.LastTransaction(); got != want {
		t.Errorf("after a refused transaction, LastTransaction:\n%s", got)
	}
}

func TestFakeFailNext(t *testing.T) {
	f := NewFake()
	f.FailNext(unix.ENOMEM)
	if err := f.Run(base()); !errors.Is(err, unix.ENOMEM) {
		t.Fatalf("Run = %v, want ENOMEM", err)
	}
	if got := f.Dump(); got != "(no tables)\n" {
		t.Fatalf("a failed Run changed the tables:\n%s", got)
	}
	if err := f.Run(base()); err != nil {
		t.Fatalf("the next Run: %v", err)
	}
}

func TestFakeTamperReplacesARule(t *testing.T) {
	f := NewFake()
	if err := f.Run(base()); err != nil {
		t.Fatal(err)
	}
	f.Tamper(testTable, func(tp *Tampering) { tp.ReplaceRule("target", 0, "drop") })
	l, err := f.List(testTable)
	if err != nil {
		t.Fatal(err)
	}
	if got := l.Chains["target"].Rules; got[0] != "" || got[1] == "" {
		t.Errorf("fingerprints after a rule was replaced by hand: %q", got)
	}
	if !strings.Contains(f.Dump(), "  chain target\n    drop\n") {
		t.Errorf("Dump:\n%s", f.Dump())
	}
}

// An invalid operation is remembered: nothing of the transaction runs,
// and the error names the operation and the reason.
func TestTransactionStickyError(t *testing.T) {
	tests := []struct {
		name  string
		build func(tx *Transaction)
		want  string
	}{
		{"a table of no family", func(tx *Transaction) { tx.AddTable(Table{Name: "t"}) }, "table family Family(0) is neither IPv4 nor IPv6"},
		{"an empty chain name", func(tx *Transaction) { tx.AddChain(testTable, Chain{}) }, "adding chain  to table ip duet-nfttest: chain name is empty"},
		{"a base chain without a type", func(tx *Transaction) {
			tx.AddChain(testTable, Chain{Name: "c", Hook: &Hook{Num: *nftables.ChainHookInput}})
		}, "a base chain needs a type"},
		{"a name too long", func(tx *Transaction) { tx.DeleteSet(testTable, strings.Repeat("s", 256)) }, "longer than 255 bytes"},
		{"a map without a data type", func(tx *Transaction) {
			tx.AddSet(testTable, Set{Name: "m", Flags: SetMap, KeyType: nftables.TypeIPAddr})
		}, "adding set m to table ip duet-nfttest: a map needs a data type"},
		{"a set without a key type", func(tx *Transaction) { tx.AddSet(testTable, Set{Name: "s"}) }, "key length 0"},
		{"a concatenation of unknown types", func(tx *Transaction) {
			k := nftables.SetDatatype{Name: "x . y", Bytes: 8}
			k.SetNFTMagic(0xfff)
			tx.AddSet(testTable, Set{Name: "s", Flags: SetConcat, KeyType: k})
		}, "not one of known types"},
		{"a timeout without the flag", func(tx *Transaction) {
			tx.AddSet(testTable, Set{Name: "s", KeyType: nftables.TypeIPAddr, Timeout: 1e9})
		}, "a timeout without the timeout flag"},
		{"a rule without expressions", func(tx *Transaction) {
			tx.AddRule(testTable, Rule{Chain: "c", Text: "accept"})
		}, `rule "accept" has no expressions`},
		{"a rule without text", func(tx *Transaction) {
			tx.AddRule(testTable, Rule{Chain: "c", Exprs: acceptRule("c").Exprs})
		}, "the rule has no text"},
		{"an element without a key", func(tx *Transaction) {
			tx.AddElements(testTable, "s", []Element{{Key: "\x01"}, {}})
		}, "adding 2 elements to set s of table ip duet-nfttest: element key  is not between 1 and 64 bytes"},
		{"an element with data and a verdict", func(tx *Transaction) {
			tx.AddElements(testTable, "s", []Element{{Key: "k", Data: "d", Goto: "c"}})
		}, "has both data and a verdict"},
		{"an interval end with data", func(tx *Transaction) {
			tx.AddElements(testTable, "s", []Element{{Key: "k", Data: "d", IntervalEnd: true}})
		}, "an interval end carries no data"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var tx Transaction
			tx.AddTable(testTable)
			tt.build(&tx)
			tx.AddChain(testTable, Chain{Name: "after"}) // ignored
			if tx.Err() == nil || !strings.Contains(tx.Err().Error(), tt.want) {
				t.Fatalf("Err = %v, want it to say %q", tx.Err(), tt.want)
			}
			f := NewFake()
			if err := f.Run(&tx); err != tx.Err() {
				t.Fatalf("Run = %v, want the transaction's error", err)
			}
			if got := f.Dump(); got != "(no tables)\n" {
				t.Fatalf("an invalid transaction changed the fake:\n%s", got)
			}
			if tx.Empty() {
				t.Error("an invalid transaction reads as empty")
			}
		})
	}
}
