//go:build chaos

package chaos

import (
	"encoding/json"
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/duet-net/duet/test/harness"
)

var benchServices = envInt("CHAOS_BENCH_SERVICES", 2000)

// writeBytes is what a process has written to storage so far
// (/proc/PID/io write_bytes: what reached the block layer, fsyncs and
// all, not what sits in the page cache).
func writeBytes(t *testing.T, pid int) int64 {
	t.Helper()
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/io", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, "write_bytes: "); ok {
			n, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
			if err != nil {
				t.Fatal(err)
			}
			return n
		}
	}
	t.Fatalf("/proc/%d/io has no write_bytes", pid)
	return 0
}

type benchResult struct {
	name      string
	perSecond float64
	p50, p99  time.Duration
	// diskPerSvc is what the servers wrote to storage per Service;
	// objPerSvc the size of a stored Service (JSON, as etcd holds it):
	// their ratio is the write amplification. (etcd preallocates its WAL
	// files, so their sizes say nothing.)
	diskPerSvc, objPerSvc float64
}

// benchCreates creates n PreferDualStack Services from 16 clients spread
// over the servers, and measures throughput, latency and what the
// servers wrote to disk.
func benchCreates(t *testing.T, name string, servers []*harness.Server, n int) benchResult {
	t.Helper()
	ctx := ctxT(t)
	var clients []kubernetes.Interface
	var disk0 int64
	for _, s := range servers {
		clients = append(clients, s.Client)
		disk0 += writeBytes(t, s.PID())
	}
	var next atomic.Int64
	var mu sync.Mutex
	var lat []time.Duration
	var failed atomic.Int64
	start := time.Now()
	var wg sync.WaitGroup
	for w := range workers {
		c := clients[w%len(clients)]
		wg.Go(func() {
			for {
				i := next.Add(1) - 1
				if i >= int64(n) {
					return
				}
				t0 := time.Now()
				_, err := c.CoreV1().Services("default").Create(ctx, newService(fmt.Sprintf("bench-%d", i)), metav1.CreateOptions{})
				d := time.Since(t0)
				if err != nil {
					failed.Add(1)
					t.Errorf("%s: create bench-%d: %v", name, i, err)
					continue
				}
				mu.Lock()
				lat = append(lat, d)
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	wall := time.Since(start)
	var disk1 int64
	for _, s := range servers {
		disk1 += writeBytes(t, s.PID())
	}
	stored, err := clients[0].CoreV1().Services("default").Get(ctx, "bench-0", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	obj, err := json.Marshal(stored)
	if err != nil {
		t.Fatal(err)
	}
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	pct := func(p float64) time.Duration { return lat[min(len(lat)-1, int(p*float64(len(lat)-1)+0.5))] }
	if len(lat) == 0 {
		t.Fatalf("%s: no create succeeded", name)
	}
	return benchResult{name: name, perSecond: float64(len(lat)) / wall.Seconds(), p50: pct(0.5), p99: pct(0.99),
		diskPerSvc: float64(disk1-disk0) / float64(len(lat)), objPerSvc: float64(len(obj))}
}

// TestBenchOneVsThreeServers: Service create throughput and latency, and
// bytes written to disk per Service, on one server and on a cluster of
// three (each an etcd member, clients spread over them), side by side in
// one run on this machine.
func TestBenchOneVsThreeServers(t *testing.T) {
	opts := harness.ServerOptions{ServiceRanges: "10.96.0.0/16,fd00:10:96::/108", ClusterCIDR: "10.244.0.0/16,fd00:10:244::/56"}
	var results []benchResult
	{
		one := harness.StartServer(t, opts)
		results = append(results, benchCreates(t, "1 server", []*harness.Server{one}, benchServices))
		if err := one.Stop(); err != nil {
			t.Fatal(err)
		}
	}
	{
		three := []*harness.Server{harness.StartServer(t, opts)}
		for len(three) < 3 {
			o := opts
			o.Extra = harness.JoinFlags(three...)
			three = append(three, harness.StartServer(t, o))
		}
		results = append(results, benchCreates(t, "3 servers", three, benchServices))
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%d PreferDualStack Service creates, %d clients:\n", benchServices, workers)
	fmt.Fprintf(&b, "%-10s %12s %10s %10s %20s %14s %14s\n", "", "creates/s", "p50", "p99", "disk bytes/Service", "object bytes", "amplification")
	for _, r := range results {
		fmt.Fprintf(&b, "%-10s %12.1f %10v %10v %20.0f %14.0f %13.1fx\n", r.name, r.perSecond, r.p50.Round(time.Millisecond), r.p99.Round(time.Millisecond), r.diskPerSvc, r.objPerSvc, r.diskPerSvc/r.objPerSvc)
		if r.diskPerSvc <= 0 {
			t.Errorf("%s: nothing written to disk for %d Services?", r.name, benchServices)
		}
	}
	t.Log("\n" + b.String())
}
