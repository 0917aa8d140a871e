package masq

import (
	"slices"
	"testing"

	"github.com/duet-net/duet/internal/nft"
)

func TestProgrammerSingleStack(t *testing.T) {
	for _, tc := range []struct {
		name string
		pods string
		want string
	}{
		{"IPv4 only", "10.244.0.0/16", `ip never-masquerade: 10.244.0.0/16
ip non-masquerade: 10.0.0.0/8, 169.254.0.0/16, 172.16.0.0/12, 192.168.0.0/16
ip6 duet-masq: absent
`},
		{"IPv6 only", "fd00:10:244::/56", `ip duet-masq: absent
ip6 never-masquerade: fd00:10:244::/56
ip6 non-masquerade: fd00:10:96::/108, fe80::/10
`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, b := newFake()
			// A table of the other family left by an earlier dual-stack
			// run goes at the first Apply.
			if err := p.Apply(rulesOf(t, "")); err != nil {
				t.Fatal(err)
			}
			pods := prefixes(tc.pods)
			p.SetFamilies(familiesOf(pods))
			c, err := Parse(nil)
			if err != nil {
				t.Fatal(err)
			}
			r := c.Rules(pods, testServices)
			if err := p.Apply(r); err != nil {
				t.Fatal(err)
			}
			wantDump(t, b, tc.want)
			n := b.Transactions()
			if repaired, err := p.Reconcile(r); err != nil || len(repaired) > 0 || b.Transactions() != n {
				t.Fatalf("Reconcile of intact tables: repaired %v, err %v, %d transactions", repaired, err, b.Transactions()-n)
			}
			// The other family's table, recreated behind the programmer's
			// back, is deleted again.
			other := nft.IPv6
			if pods[0].Addr().Is6() {
				other = nft.IPv4
			}
			tamper(t, b, func(tx *nft.Transaction) { tx.AddTable(table(other)) })
			repaired, err := p.Reconcile(r)
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(repaired, []string{other.Keyword()}) {
				t.Fatalf("Reconcile repaired %v, want %s", repaired, other.Keyword())
			}
			wantDump(t, b, tc.want)
		})
	}
}

func TestFamiliesOf(t *testing.T) {
	for _, tc := range []struct {
		cidrs []string
		want  []nft.Family
	}{
		{nil, nil},
		{[]string{"10.0.0.0/8"}, []nft.Family{nft.IPv4}},
		{[]string{"fd00::/56"}, []nft.Family{nft.IPv6}},
		{[]string{"fd00::/56", "10.0.0.0/8"}, []nft.Family{nft.IPv4, nft.IPv6}},
	} {
		if got := familiesOf(prefixes(tc.cidrs...)); !slices.Equal(got, tc.want) {
			t.Errorf("familiesOf(%v) = %v, want %v", tc.cidrs, got, tc.want)
		}
	}
}
