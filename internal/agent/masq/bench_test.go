package masq

import (
	"net/netip"
	"testing"
)

// Targets: 10,000 mixed-family CIDRs into empty tables within 100 ms;
// changing one of them within 10 ms. Both need root (a namespace of the
// benchmark's own).

func BenchmarkApply10000CIDRsToEmptyTables(b *testing.B) {
	requireRoot(b)
	ns := testNS(b, "bench")
	r := Rules{NeverMasquerade: testPods, NonMasquerade: bigPrefixes(10000)}
	for b.Loop() {
		b.StopTimer()
		p, err := New(ns)
		if err != nil {
			b.Fatal(err)
		}
		if err := p.Remove(); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		if err := p.Apply(r); err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		p.Close()
		b.StartTimer()
	}
}

func BenchmarkChangeOneOf10000CIDRs(b *testing.B) {
	requireRoot(b)
	ns := testNS(b, "bench")
	p, err := New(ns)
	if err != nil {
		b.Fatal(err)
	}
	defer p.Close()
	r := Rules{NeverMasquerade: testPods, NonMasquerade: bigPrefixes(10000)}
	if err := p.Apply(r); err != nil {
		b.Fatal(err)
	}
	alt := [2]netip.Prefix{netip.MustParsePrefix("203.0.113.0/24"), r.NonMasquerade[5000]}
	i := 0
	for b.Loop() {
		r.NonMasquerade[5000] = alt[i%2]
		i++
		if err := p.Apply(r); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkReconcile10000CIDRs is the resync's check of the kernel.
func BenchmarkReconcile10000CIDRs(b *testing.B) {
	requireRoot(b)
	ns := testNS(b, "bench")
	p, err := New(ns)
	if err != nil {
		b.Fatal(err)
	}
	defer p.Close()
	r := Rules{NeverMasquerade: testPods, NonMasquerade: bigPrefixes(10000)}
	if err := p.Apply(r); err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		if _, err := p.Reconcile(r); err != nil {
			b.Fatal(err)
		}
	}
}
