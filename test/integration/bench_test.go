package integration

import (
	"bufio"
	"context"
	"fmt"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// load is the outcome of runLoad.
type load struct {
	elapsed   time.Duration
	latencies []time.Duration // sorted
	errs      []error
}

func (l load) perSecond() float64 { return float64(len(l.latencies)) / l.elapsed.Seconds() }

func (l load) quantile(q float64) time.Duration {
	if len(l.latencies) == 0 {
		return 0
	}
	i := int(q * float64(len(l.latencies)-1))
	return l.latencies[i]
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// runLoad calls op(i) for i in [0, n) from workers goroutines and times
// each successful call.
func runLoad(n, workers int, op func(i int) error) load {
	var (
		next atomic.Int64
		mu   sync.Mutex
		out  load
		wg   sync.WaitGroup
	)
	start := time.Now()
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var lat []time.Duration
			var errs []error
			for {
				i := int(next.Add(1) - 1)
				if i >= n {
					break
				}
				t0 := time.Now()
				if err := op(i); err != nil {
					errs = append(errs, err)
					continue
				}
				lat = append(lat, time.Since(t0))
			}
			mu.Lock()
			out.latencies = append(out.latencies, lat...)
			out.errs = append(out.errs, errs...)
			mu.Unlock()
		}()
	}
	wg.Wait()
	out.elapsed = time.Since(start)
	slices.Sort(out.latencies)
	return out
}

func mustLoad(b *testing.B, what string, l load) {
	b.Helper()
	if len(l.errs) > 0 {
		b.Fatalf("%s: %d requests failed, e.g. %v", what, len(l.errs), l.errs[0])
	}
}

// BenchmarkServiceCreate: 10,000 PreferDualStack Service creates (two
// cluster IPs each) through client-go, 16 workers, no client rate limit,
// against 10,000 headless Services (no allocation) as the baseline, each
// kind on a dual-stack server of its own. The two kinds alternate in
// rounds of 1,000 so that the load of this shared machine weighs on both
// alike. Targets: overhead <= 1.3x the baseline, p99 <= 100ms.
//
// Two variants: Services without a selector measure allocation alone;
// with a selector every Service also gets EndpointSlices from the
// controllers, one per family: two for a dual-stack Service, one for a
// headless one, as in Kubernetes.
func BenchmarkServiceCreate(b *testing.B) {
	b.Run("no-selector", func(b *testing.B) { benchmarkServiceCreate(b, noSelector) })
	b.Run("selector", func(b *testing.B) { benchmarkServiceCreate(b) })
}

func benchmarkServiceCreate(b *testing.B, shape ...func(*corev1.Service)) {
	const n, rounds, workers = 10000, 10, 16
	for range b.N {
		b.StopTimer()
		opts := ServerOptions{ServiceRanges: v4Range + "," + v6Range}
		kinds := []struct {
			name   string
			srv    *Server
			mutate []func(*corev1.Service)
			total  load
		}{
			{name: "headless", srv: StartServer(b, opts), mutate: append([]func(*corev1.Service){clusterIPs(none)}, shape...)},
			{name: "PreferDualStack", srv: StartServer(b, opts), mutate: append([]func(*corev1.Service){policy(prefer)}, shape...)},
		}
		ctx := context.Background()
		b.StartTimer()
		for r := range rounds {
			for k := range kinds {
				kind := &kinds[k]
				// Each round starts once both servers have finished the
				// controller work (slices, Endpoints) of earlier rounds:
				// two servers share this machine, and one's background
				// work is not the other's cost.
				for _, other := range kinds {
					if err := waitQuiet(other.srv.PID(), 30*time.Second); err != nil {
						b.Fatal(err)
					}
				}
				l := runLoad(n/rounds, workers, func(i int) error {
					svc := newService(fmt.Sprintf("s-%05d", r*n/rounds+i), kind.mutate...)
					_, err := kind.srv.Client.CoreV1().Services("default").Create(ctx, svc, metav1.CreateOptions{})
					return err
				})
				mustLoad(b, kind.name, l)
				kind.total.elapsed += l.elapsed
				kind.total.latencies = append(kind.total.latencies, l.latencies...)
			}
		}
		b.StopTimer()
		for k := range kinds {
			slices.Sort(kinds[k].total.latencies)
			if err := kinds[k].srv.Stop(); err != nil {
				b.Errorf("stopping: %v", err)
			}
		}
		base, dual := kinds[0].total, kinds[1].total
		b.ReportMetric(base.perSecond(), "headless-svc/s")
		b.ReportMetric(ms(base.quantile(0.50)), "headless-p50-ms")
		b.ReportMetric(ms(base.quantile(0.99)), "headless-p99-ms")
		b.ReportMetric(ms(base.quantile(0.90)), "headless-p90-ms")
		b.ReportMetric(ms(dual.quantile(0.90)), "dual-p90-ms")
		b.ReportMetric(dual.perSecond(), "dual-svc/s")
		b.ReportMetric(ms(dual.quantile(0.50)), "dual-p50-ms")
		b.ReportMetric(ms(dual.quantile(0.99)), "dual-p99-ms")
		b.ReportMetric(dual.elapsed.Seconds()/base.elapsed.Seconds(), "dual/headless-time")
	}
}

// cpuTicks is the CPU time (user + system, in clock ticks) process pid
// has used.
func cpuTicks(pid int) (int64, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// Fields after the command name, which is in parentheses.
	fields := strings.Fields(string(data[strings.LastIndexByte(string(data), ')')+1:]))
	if len(fields) < 13 {
		return 0, fmt.Errorf("short /proc/%d/stat", pid)
	}
	utime, err := strconv.ParseInt(fields[11], 10, 64)
	if err != nil {
		return 0, err
	}
	stime, err := strconv.ParseInt(fields[12], 10, 64)
	return utime + stime, err
}

// waitQuiet waits until process pid uses under a tenth of a core over a
// quarter of a second: its controllers have caught up.
func waitQuiet(pid int, timeout time.Duration) error {
	const window = 250 * time.Millisecond
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		t0, err := cpuTicks(pid)
		if err != nil {
			return err
		}
		time.Sleep(window) // a measuring window, not synchronisation
		t1, err := cpuTicks(pid)
		if err != nil {
			return err
		}
		// 100 ticks per second: a tenth of a core over the window is 2.5.
		if t1-t0 <= 2 {
			return nil
		}
	}
	return fmt.Errorf("server %d still busy after %v", pid, timeout)
}

// procStatusKiB reads a field such as VmRSS from /proc/PID/status.
func procStatusKiB(pid int, field string) (int64, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), field+":"); ok {
			return strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
		}
	}
	return 0, fmt.Errorf("no %s in /proc/%d/status", field, pid)
}

// BenchmarkServerRSS: the server's resident memory holding 5,000 Nodes
// (with podCIDRs from the node IPAM controller), 10,000 PreferDualStack
// Services and 150,000 Pods whose status.podIPs (one per family) were set
// through UpdateStatus. Target: <= 3 GiB, run as one would run a server
// that must fit in 3 GiB: with --memory-limit (DUET_BENCH_MEMORY_LIMIT,
// default 2400Mi; "0" for none) leaving room for the pages of etcd's
// database file that are mapped in.
func BenchmarkServerRSS(b *testing.B) {
	const nodes, services, pods, workers = 5000, 10000, 150000, 16
	limit := os.Getenv("DUET_BENCH_MEMORY_LIMIT")
	if limit == "" {
		limit = "2400Mi"
	}
	for range b.N {
		b.StopTimer()
		srv := StartServer(b, ServerOptions{ServiceRanges: v4Range + "," + v6Range, ClusterCIDR: "10.0.0.0/8,fd00:10:244::/48",
			Extra: []string{"--memory-limit", limit}})
		ctx := context.Background()
		pid := srv.PID()
		idle, err := procStatusKiB(pid, "VmRSS")
		if err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		start := time.Now()
		mustLoad(b, "nodes", runLoad(nodes, workers, func(i int) error {
			_, err := srv.Client.CoreV1().Nodes().Create(ctx, newNode(fmt.Sprintf("node-%04d", i)), metav1.CreateOptions{})
			return err
		}))
		mustLoad(b, "services", runLoad(services, workers, func(i int) error {
			_, err := srv.Client.CoreV1().Services("default").Create(ctx, newService(fmt.Sprintf("s-%05d", i), policy(prefer)), metav1.CreateOptions{})
			return err
		}))
		v4, v6 := netip.MustParseAddr("10.128.0.0"), netip.MustParseAddr("fd00:10:245::")
		podLoad := runLoad(pods, workers, func(i int) error {
			pod, err := srv.Client.CoreV1().Pods("default").Create(ctx, &corev1.Pod{
				ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("p-%06d", i), Labels: map[string]string{"app": fmt.Sprintf("s-%05d", i%services)}},
				Spec: corev1.PodSpec{
					NodeName:   fmt.Sprintf("node-%04d", i%nodes),
					Containers: []corev1.Container{{Name: "c", Image: "registry.k8s.io/pause:3.10", Ports: []corev1.ContainerPort{{ContainerPort: 80, Protocol: corev1.ProtocolTCP}}}},
				},
			}, metav1.CreateOptions{})
			if err != nil {
				return err
			}
			ip4, ip6 := addrPlus(v4, i), addrPlus(v6, i)
			pod.Status.Phase = corev1.PodRunning
			pod.Status.PodIP = ip4.String()
			pod.Status.PodIPs = []corev1.PodIP{{IP: ip4.String()}, {IP: ip6.String()}}
			_, err = srv.Client.CoreV1().Pods("default").UpdateStatus(ctx, pod, metav1.UpdateOptions{})
			return err
		})
		mustLoad(b, "pods", podLoad)
		filled := time.Since(start)
		b.StopTimer()
		rss, err := procStatusKiB(pid, "VmRSS")
		if err != nil {
			b.Fatal(err)
		}
		hwm, err := procStatusKiB(pid, "VmHWM")
		if err != nil {
			b.Fatal(err)
		}
		// RSS includes the embedded etcd: anonymous memory (heaps, caches)
		// and the mapped etcd database.
		anon, err := procStatusKiB(pid, "RssAnon")
		if err != nil {
			b.Fatal(err)
		}
		file, err := procStatusKiB(pid, "RssFile")
		if err != nil {
			b.Fatal(err)
		}
		b.Logf("--memory-limit %s", limit)
		b.ReportMetric(float64(idle)/1024, "idle-RSS-MiB")
		b.ReportMetric(float64(rss)/1024, "RSS-MiB")
		b.ReportMetric(float64(hwm)/1024, "peak-RSS-MiB")
		b.ReportMetric(float64(anon)/1024, "anon-RSS-MiB")
		b.ReportMetric(float64(file)/1024, "file-RSS-MiB")
		b.ReportMetric(filled.Seconds(), "fill-s")
		b.ReportMetric(podLoad.perSecond(), "pod-create+status/s")
		if err := srv.Stop(); err != nil {
			b.Errorf("stopping: %v", err)
		}
	}
}

// addrPlus is a + n for small n.
func addrPlus(a netip.Addr, n int) netip.Addr {
	s := a.As16()
	carry := uint64(n)
	for i := 15; i >= 0 && carry > 0; i-- {
		v := uint64(s[i]) + carry&0xff
		s[i] = byte(v)
		carry = carry>>8 + v>>8
	}
	r := netip.AddrFrom16(s)
	if a.Is4() {
		return r.Unmap()
	}
	return r
}
