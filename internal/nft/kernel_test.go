package nft

import (
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"os/exec"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/duet-net/duet/internal/testutil/roottest"
)

// Tests here need root: each makes a network namespace of its own, named
// duetnfttest-<random>, and programs nftables only inside it.

func kernelConn(t *testing.T) *Conn {
	t.Helper()
	roottest.Require(t, "ip")
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	name := "duetnfttest-" + hex.EncodeToString(b)
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add: %v\n%s", err, out)
	}
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", name).Run() })
	c, err := NewAt("/run/netns/" + name)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// The kernel accepts and refuses what the fake does, with the same errno,
// and ends with the same tables.
func TestKernelMatchesTheFake(t *testing.T) {
	for _, sc := range scenarios {
		t.Run(sc.name, func(t *testing.T) {
			got := runScenario(t, kernelConn(t), sc)
			if want := runScenario(t, NewFake(), sc); got != want {
				t.Errorf("the kernel ends with\n%s\nthe fake with\n%s", got, want)
			}
		})
	}
}

// A batch far larger than one message: its element lists are split over
// messages, still one transaction, and an error names the elements of
// the message that failed.
func TestKernelLargeBatch(t *testing.T) {
	c := kernelConn(t)
	tbl := Table{IPv6, "duet-nfttest"}
	elems := make([]Element, 100000)
	for i := range elems {
		var a [16]byte
		a[0] = 0xfd
		binary.BigEndian.PutUint32(a[12:], uint32(i))
		elems[i] = Element{Key: string(a[:])}
	}
	var tx Transaction
	tx.AddTable(tbl)
	tx.AddSet(tbl, Set{Name: "addrs", KeyType: IPv6.AddrType()})
	tx.AddElements(tbl, "addrs", elems)
	if err := c.Run(&tx); err != nil {
		t.Fatal(err)
	}
	n := 0
	if err := c.ListElements(tbl, "addrs", func(Element) { n++ }); err != nil {
		t.Fatal(err)
	}
	if n != len(elems) {
		t.Fatalf("listed %d elements, want %d", n, len(elems))
	}

	// The last element is deleted twice: the kernel names the message.
	var del Transaction
	del.DeleteElements(tbl, "addrs", elems)
	del.DeleteElements(tbl, "addrs", elems[len(elems)-1:])
	err := c.Run(&del)
	if !errors.Is(err, unix.ENOENT) || !strings.Contains(err.Error(), "deleting elements 1 to 1 of 1 of set addrs of table ip6 duet-nfttest") {
		t.Fatalf("Run = %v, want ENOENT naming the second operation", err)
	}
	n = 0
	if err := c.ListElements(tbl, "addrs", func(Element) { n++ }); err != nil || n != len(elems) {
		t.Fatalf("after a refused batch: %d elements, %v", n, err)
	}
}

func TestKernelListMissingTable(t *testing.T) {
	c := kernelConn(t)
	l, err := c.List(Table{IPv4, "duet-nfttest-none"})
	if l != nil || err != nil {
		t.Fatalf("List of a missing table = %v, %v; want nil, nil", l, err)
	}
}
