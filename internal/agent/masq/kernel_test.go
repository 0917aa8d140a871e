package masq

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/duet-net/duet/internal/nft"
	"github.com/duet-net/duet/internal/testutil/roottest"
)

// Tests here need root: they make network namespaces named
// duetmasqtest-<pid>-<random>-<role> and program nftables inside them,
// never in the host's namespace.

func requireRoot(t testing.TB) {
	t.Helper()
	roottest.Require(t, "ip")
}

func testNS(t testing.TB, role string) string {
	t.Helper()
	name := fmt.Sprintf("duetmasqtest-%d-%x-%s", os.Getpid(), rand.Uint32(), role)
	sh(t, "ip", "netns", "add", name)
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", name).Run() })
	return name
}

func sh(t testing.TB, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

func nftCmd(t testing.TB, ns string, args ...string) string {
	t.Helper()
	if _, err := exec.LookPath("nft"); err != nil {
		t.Skip("needs the nft command to inspect and tamper with tables")
	}
	return sh(t, "ip", append([]string{"netns", "exec", ns, "nft"}, args...)...)
}

var (
	spaces   = regexp.MustCompile(`\s+`)
	comments = regexp.MustCompile(` comment "duet:[0-9a-f]{16}"`)
)

// listTable is `nft list table`, whitespace collapsed so that checks do
// not depend on how nft wraps long element lists, and without the rules'
// fingerprints (each rule must have one).
func listTable(t testing.TB, ns, fam string) string {
	t.Helper()
	out := spaces.ReplaceAllString(nftCmd(t, ns, "list", "table", fam, TableName), " ")
	if n := len(comments.FindAllString(out, -1)); n != 4 {
		t.Errorf("%s %s: %d rules with Duet's fingerprint, want 4:\n%s", fam, TableName, n, out)
	}
	return comments.ReplaceAllString(out, "")
}

func wantInTable(t *testing.T, ns, fam string, want ...string) {
	t.Helper()
	got := listTable(t, ns, fam)
	for _, w := range want {
		if !strings.Contains(got, w) {
			t.Errorf("%s %s lacks %q:\n%s", fam, TableName, w, got)
		}
	}
}

// wantKernelHolds checks, through the programmer's own reader, that both
// tables are intact and hold exactly r.
func wantKernelHolds(t *testing.T, p *Programmer, r Rules) {
	t.Helper()
	want := compile(r)
	for i, f := range nft.Families {
		o, err := p.observe(f)
		if err != nil {
			t.Fatal(err)
		}
		if !o.present || !o.intact || !o.sets.equal(want[i]) {
			t.Fatalf("%s table: present %t, intact %t, sets %v; want %v", f.Keyword(), o.present, o.intact, o.sets, want[i])
		}
	}
}

func TestKernelLayout(t *testing.T) {
	requireRoot(t)
	ns := testNS(t, "layout")
	p, err := New(ns)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	r := rulesOf(t, "")
	if err := p.Apply(r); err != nil {
		t.Fatal(err)
	}
	wantKernelHolds(t, p, r)
	wantInTable(t, ns, "ip",
		"set never-masquerade { type ipv4_addr flags interval elements = { 10.244.0.0/16 } }",
		"set non-masquerade { type ipv4_addr flags interval elements = { 10.0.0.0/8, 169.254.0.0/16, 172.16.0.0/12, 192.168.0.0/16 } }",
		"chain postrouting { type nat hook postrouting priority srcnat; policy accept; fib daddr type local return ip daddr @never-masquerade return ip daddr @non-masquerade return masquerade fully-random }")
	wantInTable(t, ns, "ip6",
		"set never-masquerade { type ipv6_addr flags interval elements = { fd00:10:244::/56 } }",
		"set non-masquerade { type ipv6_addr flags interval elements = { fd00:10:96::/108, fe80::/10 } }",
		"chain postrouting { type nat hook postrouting priority srcnat; policy accept; fib daddr type local return ip6 daddr @never-masquerade return ip6 daddr @non-masquerade return masquerade fully-random }")

	// Ranges that run to the end of the address space have no end
	// element; everything is one start element.
	r = rulesOf(t, "nonMasqueradeCIDRs: [0.0.0.0/0, 10.0.0.0/8, ffff::/16]")
	if err := p.Apply(r); err != nil {
		t.Fatal(err)
	}
	wantKernelHolds(t, p, r)
	wantInTable(t, ns, "ip", "elements = { 0.0.0.0/0 }")
	wantInTable(t, ns, "ip6", "elements = { fe80::/10, ffff::/16 }")
}

func TestKernelIncrementalChanges(t *testing.T) {
	requireRoot(t)
	ns := testNS(t, "incr")
	p, err := New("/run/netns/" + ns) // a path works as well as a name
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	steps := []string{
		"nonMasqueradeCIDRs: [10.0.0.0/8, 172.16.0.0/12, 2001:db8:1::/48]",
		// Shrinks a range keeping its start: the same start element is
		// deleted and added again in one transaction.
		"nonMasqueradeCIDRs: [10.0.0.0/9, 172.16.0.0/12, 2001:db8:1::/48]",
		// Grows one range over its neighbours.
		"nonMasqueradeCIDRs: [10.0.0.0/9, 10.128.0.0/9, 172.16.0.0/12, 2001:db8::/32, 2001:db8:1::/48]",
		"nonMasqueradeCIDRs: []\nmasqLinkLocal: true\nmasqLinkLocalIPv6: true",
		"",
	}
	for _, s := range steps {
		r := rulesOf(t, s)
		if err := p.Apply(r); err != nil {
			t.Fatalf("applying %q: %v", s, err)
		}
		wantKernelHolds(t, p, r)
		if repaired, err := p.Reconcile(r); err != nil || len(repaired) > 0 {
			t.Fatalf("Reconcile after %q: repaired %v, %v", s, repaired, err)
		}
	}
}

func TestKernelReconcileRepairsTampering(t *testing.T) {
	requireRoot(t)
	ns := testNS(t, "tamper")
	// Someone else's table, which nothing here may touch.
	nftCmd(t, ns, "add", "table", "ip", "duetmasqtest-other")
	nftCmd(t, ns, "add", "chain", "ip", "duetmasqtest-other", "post", "{ type nat hook postrouting priority 50; }")
	nftCmd(t, ns, "add", "rule", "ip", "duetmasqtest-other", "post", "ip daddr 192.0.2.1 counter")
	other := spaces.ReplaceAllString(nftCmd(t, ns, "list", "table", "ip", "duetmasqtest-other"), " ")

	p, err := New(ns)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	r := rulesOf(t, "")
	if err := p.Apply(r); err != nil {
		t.Fatal(err)
	}
	tampering := []struct {
		name string
		fam  string
		nft  []string
	}{
		{"the table deleted", "ip6", []string{"delete", "table", "ip6", TableName}},
		{"a set flushed", "ip", []string{"flush", "set", "ip", TableName, SetNonMasquerade}},
		{"an element added", "ip", []string{"add", "element", "ip", TableName, SetNonMasquerade, "{ 203.0.113.0/24 }"}},
		{"an element deleted", "ip6", []string{"delete", "element", "ip6", TableName, SetNeverMasquerade, "{ fd00:10:244::/56 }"}},
		{"a rule inserted", "ip", []string{"insert", "rule", "ip", TableName, ChainName, "accept"}},
		{"the chain flushed", "ip6", []string{"flush", "chain", "ip6", TableName, ChainName}},
		{"a chain added", "ip", []string{"add", "chain", "ip", TableName, "extra"}},
		{"a set added", "ip", []string{"add", "set", "ip", TableName, "extra", "{ type ipv4_addr; }"}},
	}
	for _, tt := range tampering {
		t.Run(tt.name, func(t *testing.T) {
			nftCmd(t, ns, tt.nft...)
			repaired, err := p.Reconcile(r)
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(repaired, []string{tt.fam}) {
				t.Errorf("repaired %v, want [%s]", repaired, tt.fam)
			}
			wantKernelHolds(t, p, r)
		})
	}

	// Apply alone, without a check first, also recovers from a deleted
	// table: the kernel refuses the increment and the programmer rebuilds.
	nftCmd(t, ns, "delete", "table", "ip", TableName)
	r = rulesOf(t, "nonMasqueradeCIDRs: [100.64.0.0/10]")
	if err := p.Apply(r); err != nil {
		t.Fatal(err)
	}
	wantKernelHolds(t, p, r)

	if err := p.Remove(); err != nil {
		t.Fatal(err)
	}
	tables := nftCmd(t, ns, "list", "tables")
	if strings.Contains(tables, TableName) {
		t.Fatalf("Remove left:\n%s", tables)
	}
	if got := spaces.ReplaceAllString(nftCmd(t, ns, "list", "table", "ip", "duetmasqtest-other"), " "); got != other {
		t.Fatalf("someone else's table changed:\n%s\nwas\n%s", got, other)
	}
	if err := Cleanup(ns); err != nil {
		t.Fatalf("Cleanup of a namespace without the tables: %v", err)
	}
}

// TestKernelTenThousandCIDRs programs lists far past ip-masq-agent's
// default limit of 64, in one transaction of several messages.
func TestKernelTenThousandCIDRs(t *testing.T) {
	requireRoot(t)
	ns := testNS(t, "big")
	p, err := New(ns)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	for _, n := range []int{10000, 100000} {
		r := Rules{NeverMasquerade: testPods, NonMasquerade: bigPrefixes(n)}
		if err := p.Apply(r); err != nil {
			t.Fatalf("%d CIDRs: %v", n, err)
		}
		wantKernelHolds(t, p, r)
		r.NonMasquerade[n/2] = netip.MustParsePrefix("203.0.113.0/24")
		if err := p.Apply(r); err != nil {
			t.Fatalf("changing one of %d CIDRs: %v", n, err)
		}
		wantKernelHolds(t, p, r)
	}
}
