package sandbox

import (
	"context"
	"fmt"
	"math"
	"slices"
	"sync"
	"testing"
	"time"
)

const podsPerNode = 110 // Kubernetes' default pod limit per node

// burstResult is one burst of concurrent Setups on one node, then concurrent
// Teardowns of them.
type burstResult struct {
	setup, teardown         []time.Duration // per call, sorted
	setupWall, teardownWall time.Duration   // first start to last end
}

// burst runs n Setups at once on node, checks the pods, then tears them all
// down at once and checks that nothing is left.
func burst(tb testing.TB, node string, n int) burstResult {
	tb.Helper()
	ids := make([]string, n)
	for i := range ids {
		ids[i] = fmt.Sprintf("burst-%03d", i)
	}
	tb.Cleanup(func() {
		for _, id := range ids {
			Teardown(node, id)
		}
	})
	var r burstResult
	sbs := make([]*Sandbox, n)
	r.setup, r.setupWall = concurrently(n, func(i int) error {
		var err error
		sbs[i], err = Setup(context.Background(), node, podReq(ids[i], 2+i))
		return err
	}, tb)

	if l, err := List(node); err != nil || len(l) != n {
		tb.Fatalf("List after the burst: %d entries, %v; want %d", len(l), err, n)
	}
	if v := vethsOf(tb, node); len(v) != n {
		tb.Fatalf("%d host veths after the burst, want %d", len(v), n)
	}
	macs := map[string]bool{}
	for _, sb := range sbs {
		macs[sb.MAC.String()] = true
	}
	if len(macs) != n {
		tb.Errorf("%d distinct pod MACs among %d pods", len(macs), n)
	}
	first, last := sbs[0], sbs[n-1]
	for fam := range 2 {
		if err := ping(tb, first.NetNS, last.Addrs[fam].Addr()); err != nil {
			tb.Errorf("first pod to last pod after the burst: %v", err)
		}
	}

	r.teardown, r.teardownWall = concurrently(n, func(i int) error { return Teardown(node, ids[i]) }, tb)
	for _, id := range ids {
		assertGone(tb, node, id)
	}
	return r
}

// concurrently starts n calls of fn at once and returns their sorted
// latencies and the wall time of the whole.
func concurrently(n int, fn func(i int) error, tb testing.TB) ([]time.Duration, time.Duration) {
	tb.Helper()
	lat := make([]time.Duration, n)
	errs := make([]error, n)
	start := make(chan struct{})
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			<-start
			t0 := time.Now()
			errs[i] = fn(i)
			lat[i] = time.Since(t0)
		})
	}
	t0 := time.Now()
	close(start)
	wg.Wait()
	wall := time.Since(t0)
	for i, err := range errs {
		if err != nil {
			tb.Fatalf("call %d of %d: %v", i, n, err)
		}
	}
	slices.Sort(lat)
	return lat, wall
}

// pct is the nearest-rank percentile of sorted durations.
func pct(sorted []time.Duration, p float64) time.Duration {
	i := int(math.Ceil(p/100*float64(len(sorted)))) - 1
	return sorted[max(i, 0)]
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

func TestBurstOf110ConcurrentSetupsOnOneNode(t *testing.T) {
	node := newNode(t)
	r := burst(t, node, podsPerNode)
	t.Logf("%d concurrent Setups: p50 %.1f ms, p99 %.1f ms, all done in %.0f ms; Teardowns: p50 %.1f ms, p99 %.1f ms, all done in %.0f ms",
		podsPerNode, ms(pct(r.setup, 50)), ms(pct(r.setup, 99)), ms(r.setupWall),
		ms(pct(r.teardown, 50)), ms(pct(r.teardown, 99)), ms(r.teardownWall))
}

// BenchmarkSetupTeardown is one pod's network set-up (namespace, veth pair,
// addresses, routes) and removal, one after the other.
func BenchmarkSetupTeardown(b *testing.B) {
	node := newNode(b)
	req := podReq("bench", 2)
	var setup, teardown []time.Duration
	for b.Loop() {
		t0 := time.Now()
		if _, err := Setup(context.Background(), node, req); err != nil {
			b.Fatal(err)
		}
		t1 := time.Now()
		if err := Teardown(node, req.ID); err != nil {
			b.Fatal(err)
		}
		setup, teardown = append(setup, t1.Sub(t0)), append(teardown, time.Since(t1))
	}
	slices.Sort(setup)
	slices.Sort(teardown)
	b.ReportMetric(ms(pct(setup, 50)), "setup-p50-ms")
	b.ReportMetric(ms(pct(setup, 99)), "setup-p99-ms")
	b.ReportMetric(ms(pct(teardown, 50)), "teardown-p50-ms")
}

// BenchmarkBurst110 is 110 concurrent Setups on one node, then 110
// concurrent Teardowns; run it with -benchtime=Nx.
func BenchmarkBurst110(b *testing.B) {
	node := newNode(b)
	var setup []time.Duration
	var wall, twall time.Duration
	for b.Loop() {
		r := burst(b, node, podsPerNode)
		setup = append(setup, r.setup...)
		wall, twall = max(wall, r.setupWall), max(twall, r.teardownWall)
	}
	slices.Sort(setup)
	b.ReportMetric(ms(pct(setup, 50)), "setup-p50-ms")
	b.ReportMetric(ms(pct(setup, 99)), "setup-p99-ms")
	b.ReportMetric(ms(wall), "burst-max-ms")
	b.ReportMetric(ms(twall), "teardown-burst-max-ms")
}
