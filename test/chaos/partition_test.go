//go:build chaos

package chaos

import (
	"testing"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"

	"github.com/duet-net/duet/internal/nft"
)

// The partition is a table per family in the server's namespace whose
// input and output chains drop everything but loopback: the server keeps
// running, the rest of the cluster cannot reach it, nor it them.
const partitionTable = "duet-chaos-partition"

func ifname(name string) []byte {
	b := make([]byte, 16)
	copy(b, name)
	return b
}

// partition cuts the namespace at nsPath off the underlay.
func partition(t *testing.T, nsPath string) {
	t.Helper()
	c, err := nft.NewAt(nsPath)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var tx nft.Transaction
	for _, fam := range []nft.Family{nft.IPv4, nft.IPv6} {
		tbl := nft.Table{Family: fam, Name: partitionTable}
		tx.AddTable(tbl)
		for _, ch := range []struct {
			name string
			hook nftables.ChainHook
			key  expr.MetaKey
			text string
		}{
			{"input", *nftables.ChainHookInput, expr.MetaKeyIIFNAME, "iifname lo accept"},
			{"output", *nftables.ChainHookOutput, expr.MetaKeyOIFNAME, "oifname lo accept"},
		} {
			tx.AddChain(tbl, nft.Chain{Name: ch.name, Hook: &nft.Hook{Type: nftables.ChainTypeFilter, Num: ch.hook, Priority: *nftables.ChainPriorityFilter - 10, Drop: true}})
			tx.AddRule(tbl, nft.Rule{Chain: ch.name, Text: ch.text, Exprs: []expr.Any{
				&expr.Meta{Key: ch.key, Register: 1},
				&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: ifname("lo")},
				&expr.Verdict{Kind: expr.VerdictAccept},
			}})
		}
	}
	if err := c.Run(&tx); err != nil {
		t.Fatalf("partitioning %s: %v", nsPath, err)
	}
}

// heal removes the partition.
func heal(t *testing.T, nsPath string) {
	t.Helper()
	c, err := nft.NewAt(nsPath)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var tx nft.Transaction
	for _, fam := range []nft.Family{nft.IPv4, nft.IPv6} {
		tx.DeleteTable(nft.Table{Family: fam, Name: partitionTable})
	}
	if err := c.Run(&tx); err != nil {
		t.Fatalf("healing %s: %v", nsPath, err)
	}
}
