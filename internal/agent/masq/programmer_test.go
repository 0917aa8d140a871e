package masq

import (
	"errors"
	"slices"
	"strings"
	"testing"
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

func newFake() (*Programmer, *fakeBackend) {
	b := &fakeBackend{}
	return &Programmer{b: b}, b
}

func wantDump(t *testing.T, b *fakeBackend, want string) {
	t.Helper()
	if got := b.dump(); got != want {
		t.Fatalf("tables:\n%s\nwant:\n%s", got, want)
	}
}

func opKinds(ops []op) string {
	var s []string
	for _, o := range ops {
		name := [...]string{"rebuild", "add", "delete", "remove"}[o.kind] + " " + o.family.String()
		if o.kind == opAdd || o.kind == opDelete {
			name += " " + setNames[o.set] + " " + rangeStrings(o.ranges)
		}
		s = append(s, name)
	}
	return strings.Join(s, "; ")
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
	if got := opKinds(b.lastCommit()); got != "rebuild ip; rebuild ip6" {
		t.Fatalf("first Apply sent %q, want both tables built in one transaction", got)
	}
}

func TestProgrammerSendsOnlyDifferences(t *testing.T) {
	p, b := newFake()
	if err := p.Apply(rulesOf(t, "nonMasqueradeCIDRs: [10.0.0.0/8, 172.16.0.0/12, fd00:1::/64, fd00:2::/64]")); err != nil {
		t.Fatal(err)
	}
	n := b.commitCount()
	if err := p.Apply(rulesOf(t, "nonMasqueradeCIDRs: [10.0.0.0/8, 172.16.0.0/12, fd00:1::/64, fd00:2::/64]")); err != nil {
		t.Fatal(err)
	}
	if b.commitCount() != n {
		t.Fatalf("an unchanged config sent %q", opKinds(b.lastCommit()))
	}

	if err := p.Apply(rulesOf(t, "nonMasqueradeCIDRs: [10.0.0.0/9, 172.16.0.0/12, fd00:1::/64, fd00:3::/64]")); err != nil {
		t.Fatal(err)
	}
	if b.commitCount() != n+1 {
		t.Fatalf("a change took %d transactions, want 1", b.commitCount()-n)
	}
	want := "delete ip non-masquerade 10.0.0.0/8; add ip non-masquerade 10.0.0.0/9; delete ip6 non-masquerade fd00:2::/64; add ip6 non-masquerade fd00:3::/64"
	if got := opKinds(b.lastCommit()); got != want {
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
		tamper       func(t *[2]*fakeTable)
		wantRepaired []string
		wantOps      string
	}{
		{name: "an untouched table needs nothing", tamper: func(*[2]*fakeTable) {}},
		{name: "a deleted IPv6 table is rebuilt, the IPv4 one left alone",
			tamper:       func(t *[2]*fakeTable) { t[ipv6] = nil },
			wantRepaired: []string{"ip6"}, wantOps: "rebuild ip6"},
		{name: "an element added by hand is removed",
			tamper: func(t *[2]*fakeTable) {
				t[ipv4].sets[setNon] = append(t[ipv4].sets[setNon], mergePrefixes(prefixes("203.0.113.0/24"), false)...)
			},
			wantRepaired: []string{"ip"}, wantOps: "rebuild ip"},
		{name: "a flushed set is refilled",
			tamper:       func(t *[2]*fakeTable) { t[ipv6].sets[setNever] = nil },
			wantRepaired: []string{"ip6"}, wantOps: "rebuild ip6"},
		{name: "a changed rule or chain is rebuilt",
			tamper:       func(t *[2]*fakeTable) { t[ipv4].intact = false },
			wantRepaired: []string{"ip"}, wantOps: "rebuild ip"},
		{name: "both tables deleted",
			tamper:       func(t *[2]*fakeTable) { t[ipv4], t[ipv6] = nil, nil },
			wantRepaired: []string{"ip", "ip6"}, wantOps: "rebuild ip; rebuild ip6"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, b := newFake()
			r := rulesOf(t, "")
			if err := p.Apply(r); err != nil {
				t.Fatal(err)
			}
			n := b.commitCount()
			b.tamper(tt.tamper)
			repaired, err := p.Reconcile(r)
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(repaired, tt.wantRepaired) {
				t.Errorf("repaired %v, want %v", repaired, tt.wantRepaired)
			}
			if tt.wantOps == "" {
				if b.commitCount() != n {
					t.Errorf("sent %q to an intact kernel", opKinds(b.lastCommit()))
				}
			} else if got := opKinds(b.lastCommit()); got != tt.wantOps || b.commitCount() != n+1 {
				t.Errorf("sent %q in %d transactions, want %q in 1", got, b.commitCount()-n, tt.wantOps)
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
	b.tamper(func(t *[2]*fakeTable) { t[ipv4] = nil })
	n := b.commitCount()
	if _, err := p.Reconcile(rulesOf(t, "nonMasqueradeCIDRs: [10.0.0.0/8]")); err != nil {
		t.Fatal(err)
	}
	if got, want := opKinds(b.lastCommit()), "rebuild ip; delete ip6 non-masquerade fd00:10:96::/108"; got != want || b.commitCount() != n+1 {
		t.Fatalf("sent %q in %d transactions, want %q in 1", got, b.commitCount()-n, want)
	}
}

func TestProgrammerApplyRebuildsWhenTheIncrementIsRefused(t *testing.T) {
	p, b := newFake()
	if err := p.Apply(rulesOf(t, "")); err != nil {
		t.Fatal(err)
	}
	b.tamper(func(t *[2]*fakeTable) { t[ipv4] = nil }) // the kernel refuses adds to a missing table
	if err := p.Apply(rulesOf(t, "nonMasqueradeCIDRs: [10.0.0.0/8, 100.64.0.0/10]")); err != nil {
		t.Fatal(err)
	}
	if got := opKinds(b.lastCommit()); got != "rebuild ip; rebuild ip6" {
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
	b.failing = errors.New("kernel says no")
	if err := p.Apply(rulesOf(t, "")); err == nil || !strings.Contains(err.Error(), "kernel says no") {
		t.Fatalf("Apply = %v, want the kernel's error", err)
	}
	wantDump(t, b, "ip duet-masq: absent\nip6 duet-masq: absent\n")
	if err := p.Apply(rulesOf(t, "")); err != nil {
		t.Fatal(err)
	}
	if got := opKinds(b.lastCommit()); got != "rebuild ip; rebuild ip6" {
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
	if got := opKinds(b.lastCommit()); got != "rebuild ip; rebuild ip6" {
		t.Fatalf("Apply after Remove sent %q, want a full build", got)
	}
}
