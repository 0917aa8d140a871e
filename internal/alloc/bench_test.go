package alloc

import (
	"fmt"
	"net/netip"
	"runtime"
	"testing"
)

// BenchmarkServiceAllocateNext measures one AllocateNext (plus the Release
// that keeps the fill level steady) at several fill levels. The /16 is
// filled by fraction; a /64 cannot be, so it is filled by count to show
// that the cost does not grow with what is allocated.
func BenchmarkServiceAllocateNext(b *testing.B) {
	cases := []struct {
		cidr  string
		label string
		fill  int
	}{
		{"10.96.0.0/16", "0%", 0},
		{"10.96.0.0/16", "50%", 65534 / 2},
		{"10.96.0.0/16", "99%", 65534 * 99 / 100},
		{"fd00::/64", "0", 0},
		{"fd00::/64", "100k", 100_000},
		{"fd00::/64", "1M", 1_000_000},
	}
	for _, c := range cases {
		b.Run(fmt.Sprintf("%s/%s", c.cidr, c.label), func(b *testing.B) {
			r := mustServiceRange(b, c.cidr, ServiceRangeOptions{Primary: true})
			for i := 1; i < c.fill; i++ { // the reserved address counts
				if _, err := r.AllocateNext(ctx); err != nil {
					b.Fatal(err)
				}
			}
			b.ResetTimer()
			for b.Loop() {
				ip, err := r.AllocateNext(ctx)
				if err != nil {
					b.Fatal(err)
				}
				if err := r.Release(ctx, ip); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkNodeCIDRs allocates CIDRs for a cluster's nodes from an empty
// allocator; one op is the whole cluster. A /12 holds only 4,096 /24s, so
// it is exhausted; 5,000 nodes come from a /11 and from a /48.
func BenchmarkNodeCIDRs(b *testing.B) {
	for _, c := range []struct {
		cidr  string
		mask  int
		nodes int
	}{{"10.0.0.0/12", 24, 4096}, {"10.0.0.0/11", 24, 5000}, {"fd00::/48", 64, 5000}} {
		b.Run(fmt.Sprintf("%d-nodes-%s-per-/%d", c.nodes, c.cidr, c.mask), func(b *testing.B) {
			for b.Loop() {
				n := mustNodeCIDRs(b, c.cidr, c.mask, nil)
				for i := 0; i < c.nodes; i++ {
					if _, err := n.AllocateNext(ctx); err != nil {
						b.Fatal(err)
					}
				}
			}
		})
	}
}

// BenchmarkBytesPerAddress reports the heap held per allocated address
// (bytes/addr) for a dense IPv4 /16 and for scattered allocations in an
// IPv6 /64, the worst case for a sparse index.
func BenchmarkBytesPerAddress(b *testing.B) {
	for _, c := range []struct {
		cidr string
		n    int
	}{{"10.96.0.0/16", 65000}, {"fd00::/64", 1_000_000}} {
		b.Run(c.cidr, func(b *testing.B) {
			var perAddr float64
			for b.Loop() {
				before := heapInUse()
				r := mustServiceRange(b, c.cidr, ServiceRangeOptions{})
				for i := 0; i < c.n; i++ {
					if _, err := r.AllocateNext(ctx); err != nil {
						b.Fatal(err)
					}
				}
				perAddr = float64(heapInUse()-before) / float64(c.n)
				runtime.KeepAlive(r)
			}
			b.ReportMetric(perAddr, "bytes/addr")
		})
	}
}

func heapInUse() uint64 {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}

// BenchmarkPodIPsAllocateRelease is the CNI ADD/DEL hot path on a /24
// with 100 pods, the policy over the in-memory store: one Reserve and one
// Release, as a pod's start and stop.
func BenchmarkPodIPsAllocateRelease(b *testing.B) {
	r, err := NewPodRange(netip.MustParsePrefix("10.244.1.0/24"))
	if err != nil {
		b.Fatal(err)
	}
	a, err := NewPodIPs(NewMemPodIPStore(), []PodRangeSet{{r}}, PodIPOptions{})
	if err != nil {
		b.Fatal(err)
	}
	for i := 0; i < 100; i++ {
		if _, err := a.Reserve(Attachment{ContainerID: fmt.Sprintf("pod%d", i), IfName: "eth0"}, nil); err != nil {
			b.Fatal(err)
		}
	}
	o := Attachment{ContainerID: "bench", IfName: "eth0"}
	for b.Loop() {
		if _, err := a.Reserve(o, nil); err != nil {
			b.Fatal(err)
		}
		if _, err := a.Release(o); err != nil {
			b.Fatal(err)
		}
	}
}
