package masq

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/duet-net/duet/internal/nft"
)

var (
	testPods     = prefixes("10.244.0.0/16", "fd00:10:244::/56")
	testServices = prefixes("10.96.0.0/16", "fd00:10:96::/108")
)

func rulesOf(t *testing.T, config string) Rules {
	t.Helper()
	c, err := Parse([]byte(config))
	if err != nil {
		t.Fatal(err)
	}
	return c.Rules(testPods, testServices)
}

func newFake() (*Programmer, *nft.Fake) {
	f := nft.NewFake()
	return &Programmer{nft: f}, f
}

// dump lists the set contents of the fake's tables, one line per family
// and set, merged into ranges as the programmer reads them back.
func dump(t *testing.T, f *nft.Fake) string {
	t.Helper()
	var sb strings.Builder
	for _, fam := range nft.Families {
		l, err := f.List(table(fam))
		if err != nil {
			t.Fatal(err)
		}
		if l == nil {
			fmt.Fprintf(&sb, "%s %s: absent\n", fam.Keyword(), TableName)
			continue
		}
		for _, name := range setNames {
			var elems []nft.Element
			if err := f.ListElements(table(fam), name, func(e nft.Element) { elems = append(elems, e) }); err != nil {
				t.Fatal(err)
			}
			rs, ok := rangesOf(elems, fam)
			if !ok {
				t.Fatalf("%s %s holds what Duet does not write", fam.Keyword(), name)
			}
			names := make([]string, len(rs))
			for i, r := range rs {
				names[i] = r.String()
			}
			fmt.Fprintf(&sb, "%s %s: %s\n", fam.Keyword(), name, strings.Join(names, ", "))
		}
	}
	return sb.String()
}

func wantDump(t *testing.T, f *nft.Fake, want string) {
	t.Helper()
	if got := dump(t, f); got != want {
		t.Fatalf("tables:\n%s\nwant:\n%s", got, want)
	}
}

// opKinds summarises the fake's last transaction as the programmer's
// steps: "rebuild ip" for a table replaced whole, "remove ip6" for one
// deleted, "add ip non-masquerade 10.0.0.0/8 192.168.0.0/16" for the
// elements of one set added (or deleted).
func opKinds(f *nft.Fake) string {
	var steps []string
	lines := strings.Split(strings.TrimSpace(f.LastTransaction()), "\n")
	for i := 0; i < len(lines); i++ {
		w := strings.Fields(lines[i])
		if len(w) < 4 {
			continue
		}
		verb, kind, fam := w[0], w[1], w[2]
		switch {
		case verb == "add" && kind == "table" && i+1 < len(lines) && strings.HasPrefix(lines[i+1], "delete table "+fam+" "):
			if i+2 < len(lines) && strings.HasPrefix(lines[i+2], "add table "+fam+" ") {
				steps = append(steps, "rebuild "+fam)
				// The rest of the rebuild: the table's sets, elements,
				// chain and rules.
				for i += 3; i < len(lines); i++ {
					v := strings.Fields(lines[i])
					if len(v) < 3 || v[0] != "add" || v[1] == "table" || v[2] != fam {
						break
					}
				}
				i--
			} else {
				steps = append(steps, "remove "+fam)
				i++
			}
		case kind == "element":
			set := w[4]
			var ranges []string
			for ; i < len(lines); i++ {
				v := strings.Fields(lines[i])
				if len(v) < 7 || v[0] != verb || v[1] != "element" || v[2] != fam || v[4] != set {
					break
				}
				ranges = append(ranges, v[6])
			}
			i--
			steps = append(steps, verb+" "+fam+" "+set+" "+strings.Join(ranges, " "))
		default:
			steps = append(steps, lines[i])
		}
	}
	return strings.Join(steps, "; ")
}

// tamper changes the fake's tables behind the programmer's back, in a
// transaction as another program would; it does not count as one of the
// programmer's.
func tamper(t *testing.T, f *nft.Fake, build func(tx *nft.Transaction)) {
	t.Helper()
	var tx nft.Transaction
	build(&tx)
	if err := f.Run(&tx); err != nil {
		t.Fatalf("tampering: %v", err)
	}
}

func TestProgrammerDefaults(t *testing.T) {
	p, b := newFake()
	if err := p.Apply(rulesOf(t, "")); err != nil {
		t.Fatal(err)
	}
	wantDump(t, b, `ip never-masquerade: 10.244.0.0/16
ip non-masquerade: 10.0.0.0/8, 169.254.0.0/16, 172.16.0.0/12, 192.168.0.0/16
ip6 never-masquerade: fd00:10:244::/56
ip6 non-masquerade: fd00:10:96::/108, fe80::/10
`)
	if got := opKinds(b); got != "rebuild ip; rebuild ip6" {
		t.Fatalf("first Apply sent %q, want both tables built in one transaction", got)
	}
}

func TestProgrammerSendsOnlyDifferences(t *testing.T) {
	p, b := newFake()
	if err := p.Apply(rulesOf(t, "nonMasqueradeCIDRs: [10.0.0.0/8, 172.16.0.0/12, fd00:1::/64, fd00:2::/64]")); err != nil {
		t.Fatal(err)
	}
	n := b.Transactions()
	if err := p.Apply(rulesOf(t, "nonMasqueradeCIDRs: [10.0.0.0/8, 172.16.0.0/12, fd00:1::/64, fd00:2::/64]")); err != nil {
		t.Fatal(err)
	}
	if b.Transactions() != n {
		t.Fatalf("an unchanged config sent %q", opKinds(b))
	}

	if err := p.Apply(rulesOf(t, "nonMasqueradeCIDRs: [10.0.0.0/9, 172.16.0.0/12, fd00:1::/64, fd00:3::/64]")); err != nil {
		t.Fatal(err)
	}
	if b.Transactions() != n+1 {
		t.Fatalf("a change took %d transactions, want 1", b.Transactions()-n)
	}
	want := "delete ip non-masquerade 10.0.0.0/8; add ip non-masquerade 10.0.0.0/9; delete ip6 non-masquerade fd00:2::/64; add ip6 non-masquerade fd00:3::/64"
	if got := opKinds(b); got != want {
		t.Fatalf("a change sent\n%s\nwant\n%s", got, want)
	}
	wantDump(t, b, `ip never-masquerade: 10.244.0.0/16
ip non-masquerade: 10.0.0.0/9, 169.254.0.0/16, 172.16.0.0/12
ip6 never-masquerade: fd00:10:244::/56
ip6 non-masquerade: fd00:1::/64, fd00:3::/64, fe80::/10
`)
}

func TestProgrammerOverlappingConfigIsMerged(t *testing.T) {
	p, b := newFake()
	// The pod CIDR is inside 10.0.0.0/8 and in both sets; the fake, like
	// the kernel, refuses overlapping intervals within a set.
	if err := p.Apply(rulesOf(t, "nonMasqueradeCIDRs: [10.0.0.0/8, 10.1.0.0/16, 10.0.0.0/24, 10.0.1.0/24, fe80::/64]")); err != nil {
		t.Fatal(err)
	}
	wantDump(t, b, `ip never-masquerade: 10.244.0.0/16
ip non-masquerade: 10.0.0.0/8, 169.254.0.0/16
ip6 never-masquerade: fd00:10:244::/56
ip6 non-masquerade: fe80::/10
`)
}

func TestProgrammerReconcile(t *testing.T) {
	base := `ip never-masquerade: 10.244.0.0/16
ip non-masquerade: 10.0.0.0/8, 169.254.0.0/16, 172.16.0.0/12, 192.168.0.0/16
ip6 never-masquerade: fd00:10:244::/56
ip6 non-masquerade: fd00:10:96::/108, fe80::/10
`
	tests := []struct {
		name         string
		tamper       func(f *nft.Fake)
		wantRepaired []string
		wantOps      string
	}{
		{name: "an untouched table needs nothing", tamper: func(*nft.Fake) {}},
		{name: "a deleted IPv6 table is rebuilt, the IPv4 one left alone",
			tamper:       func(f *nft.Fake) { tamper(t, f, func(tx *nft.Transaction) { tx.DeleteTable(table(nft.IPv6)) }) },
			wantRepaired: []string{"ip6"}, wantOps: "rebuild ip6"},
		{name: "an element added by hand is removed",
			tamper: func(f *nft.Fake) {
				tamper(t, f, func(tx *nft.Transaction) {
					tx.AddElements(table(nft.IPv4), SetNonMasquerade, elements(mergePrefixes(prefixes("203.0.113.0/24"), false)))
				})
			},
			wantRepaired: []string{"ip"}, wantOps: "rebuild ip"},
		{name: "a flushed set is refilled",
			tamper: func(f *nft.Fake) {
				tamper(t, f, func(tx *nft.Transaction) {
					tx.DeleteElements(table(nft.IPv6), SetNeverMasquerade, elements(mergePrefixes(testPods, true)))
				})
			},
			wantRepaired: []string{"ip6"}, wantOps: "rebuild ip6"},
		{name: "a rule replaced by hand is rebuilt",
			tamper: func(f *nft.Fake) {
				f.Tamper(table(nft.IPv4), func(tp *nft.Tampering) { tp.ReplaceRule(ChainName, 3, "masquerade") })
			},
			wantRepaired: []string{"ip"}, wantOps: "rebuild ip"},
		{name: "a chain added by hand is rebuilt",
			tamper: func(f *nft.Fake) {
				tamper(t, f, func(tx *nft.Transaction) { tx.AddChain(table(nft.IPv4), nft.Chain{Name: "extra"}) })
			},
			wantRepaired: []string{"ip"}, wantOps: "rebuild ip"},
		{name: "both tables deleted",
			tamper: func(f *nft.Fake) {
				tamper(t, f, func(tx *nft.Transaction) {
					tx.DeleteTable(table(nft.IPv4))
					tx.DeleteTable(table(nft.IPv6))
				})
			},
			wantRepaired: []string{"ip", "ip6"}, wantOps: "rebuild ip; rebuild ip6"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, b := newFake()
			r := rulesOf(t, "")
			if err := p.Apply(r); err != nil {
				t.Fatal(err)
			}
			tt.tamper(b)
			n := b.Transactions()
			repaired, err := p.Reconcile(r)
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(repaired, tt.wantRepaired) {
				t.Errorf("repaired %v, want %v", repaired, tt.wantRepaired)
			}
			if tt.wantOps == "" {
				if b.Transactions() != n {
					t.Errorf("sent %q to an intact kernel", opKinds(b))
				}
			} else if got := opKinds(b); got != tt.wantOps || b.Transactions() != n+1 {
				t.Errorf("sent %q in %d transactions, want %q in 1", got, b.Transactions()-n, tt.wantOps)
			}
			wantDump(t, b, base)
		})
	}
}

func TestProgrammerReconcileRepairsAndChangesInOneTransaction(t *testing.T) {
	p, b := newFake()
	if err := p.Apply(rulesOf(t, "")); err != nil {
		t.Fatal(err)
	}
	tamper(t, b, func(tx *nft.Transaction) { tx.DeleteTable(table(nft.IPv4)) })
	n := b.Transactions()
	if _, err := p.Reconcile(rulesOf(t, "nonMasqueradeCIDRs: [10.0.0.0/8]")); err != nil {
		t.Fatal(err)
	}
	if got, want := opKinds(b), "rebuild ip; delete ip6 non-masquerade fd00:10:96::/108"; got != want || b.Transactions() != n+1 {
		t.Fatalf("sent %q in %d transactions, want %q in 1", got, b.Transactions()-n, want)
	}
}

func TestProgrammerApplyRebuildsWhenTheIncrementIsRefused(t *testing.T) {
	p, b := newFake()
	if err := p.Apply(rulesOf(t, "")); err != nil {
		t.Fatal(err)
	}
	tamper(t, b, func(tx *nft.Transaction) { tx.DeleteTable(table(nft.IPv4)) }) // the kernel refuses adds to a missing table
	if err := p.Apply(rulesOf(t, "nonMasqueradeCIDRs: [10.0.0.0/8, 100.64.0.0/10]")); err != nil {
		t.Fatal(err)
	}
	if got := opKinds(b); got != "rebuild ip; rebuild ip6" {
		t.Fatalf("sent %q", got)
	}
	wantDump(t, b, `ip never-masquerade: 10.244.0.0/16
ip non-masquerade: 10.0.0.0/8, 100.64.0.0/10, 169.254.0.0/16
ip6 never-masquerade: fd00:10:244::/56
ip6 non-masquerade: fe80::/10
`)
}

func TestProgrammerFailedCommitIsRetriedInFull(t *testing.T) {
	p, b := newFake()
	b.FailNext(errors.New("kernel says no"))
	if err := p.Apply(rulesOf(t, "")); err == nil || !strings.Contains(err.Error(), "kernel says no") {
		t.Fatalf("Apply = %v, want the kernel's error", err)
	}
	wantDump(t, b, "ip duet-masq: absent\nip6 duet-masq: absent\n")
	if err := p.Apply(rulesOf(t, "")); err != nil {
		t.Fatal(err)
	}
	if got := opKinds(b); got != "rebuild ip; rebuild ip6" {
		t.Fatalf("the retry sent %q, want a full build", got)
	}
}

func TestProgrammerRemove(t *testing.T) {
	p, b := newFake()
	if err := p.Apply(rulesOf(t, "")); err != nil {
		t.Fatal(err)
	}
	for range 2 { // removing what is gone is not an error
		if err := p.Remove(); err != nil {
			t.Fatal(err)
		}
		wantDump(t, b, "ip duet-masq: absent\nip6 duet-masq: absent\n")
	}
	if err := p.Apply(rulesOf(t, "")); err != nil {
		t.Fatal(err)
	}
	if got := opKinds(b); got != "rebuild ip; rebuild ip6" {
		t.Fatalf("Apply after Remove sent %q, want a full build", got)
	}
}
