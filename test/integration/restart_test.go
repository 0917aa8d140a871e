package integration

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/duet-net/duet/test/harness"
)

// repairWait bounds how long the repair loop may take to delete IPAddress
// records left by a crash: its interval (30s by default, 2s where the
// binary has --repair-interval) plus its grace period for young records.
const repairWait = 2 * time.Minute

type svcState struct {
	ips      []string
	families []corev1.IPFamily
	policy   string
}

func serviceStates(t *testing.T, client kubernetes.Interface) map[string]svcState {
	t.Helper()
	list, err := client.CoreV1().Services("").List(ctxT(t), metav1.ListOptions{})
	fatalIf(t, err)
	out := map[string]svcState{}
	for _, s := range list.Items {
		out[s.Namespace+"/"+s.Name] = svcState{s.Spec.ClusterIPs, s.Spec.IPFamilies, ptrStr(s.Spec.IPFamilyPolicy)}
	}
	return out
}

func nodeCIDRs(t *testing.T, client kubernetes.Interface) map[string][]string {
	t.Helper()
	list, err := client.CoreV1().Nodes().List(ctxT(t), metav1.ListOptions{})
	fatalIf(t, err)
	out := map[string][]string{}
	for _, n := range list.Items {
		out[n.Name] = n.Spec.PodCIDRs
	}
	return out
}

// TestRestartKeepsState: Services with their IPs and records, Nodes with
// their podCIDRs and Pods with their podIPs survive a SIGTERM restart, and
// allocation afterwards avoids everything allocated before.
func TestRestartKeepsState(t *testing.T) {
	t.Parallel()
	ranges := v4Range + "," + v6Range
	srv := StartServer(t, ServerOptions{ServiceRanges: ranges, ClusterCIDR: "10.244.0.0/16,fd00:10:244::/56"})
	ctx := ctxT(t)
	sh := shape{ranges: mustPrefixes(ranges)}

	for _, svc := range []*corev1.Service{
		newService("plain"),
		newService("prefer", policy(prefer)),
		newService("require-v6-first", policy(require), families(corev1.IPv6Protocol, corev1.IPv4Protocol)),
		newService("headless", clusterIPs(none)),
		newService("external", externalName),
		newService("chosen", clusterIPs(static(corev1.IPv4Protocol, 42))),
	} {
		_, err := srv.Client.CoreV1().Services("default").Create(ctx, svc, metav1.CreateOptions{})
		fatalIf(t, err)
	}
	_, err := createService(ctx, srv, newService("legacy-v6"), corev1.IPv6Protocol)
	fatalIf(t, err)
	for i := range 3 {
		_, err := srv.Client.CoreV1().Nodes().Create(ctx, newNode(fmt.Sprintf("n%d", i)), metav1.CreateOptions{})
		fatalIf(t, err)
	}
	eventually(t, controllerWait, "3 Nodes get podCIDRs (node IPAM controller)", func() error {
		for name, c := range nodeCIDRs(t, srv.Client) {
			if len(c) != 2 {
				return fmt.Errorf("%s has podCIDRs %v", name, c)
			}
		}
		return nil
	})
	pod, err := srv.Client.CoreV1().Pods("default").Create(ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "p"},
		Spec:       corev1.PodSpec{NodeName: "n0", Containers: []corev1.Container{{Name: "c", Image: "busybox"}}},
	}, metav1.CreateOptions{})
	fatalIf(t, err)
	pod.Status.PodIPs = []corev1.PodIP{{IP: "10.244.0.7"}, {IP: "fd00:10:244::7"}}
	pod.Status.PodIP = "10.244.0.7"
	_, err = srv.Client.CoreV1().Pods("default").UpdateStatus(ctx, pod, metav1.UpdateOptions{})
	fatalIf(t, err)

	beforeSvcs := serviceStates(t, srv.Client)
	beforeNodes := nodeCIDRs(t, srv.Client)
	beforeIPs, err := ipRecords(ctx, srv.Client)
	fatalIf(t, err)

	start := time.Now()
	if err := srv.Stop(); err != nil {
		t.Errorf("SIGTERM: %v, want a clean exit", err)
	}
	stopped := time.Now()
	srv.Restart(t)
	t.Logf("SIGTERM to exit %v, restart to ready %v", stopped.Sub(start).Round(time.Millisecond), time.Since(stopped).Round(time.Millisecond))

	afterSvcs := serviceStates(t, srv.Client)
	for k, b := range beforeSvcs {
		a, found := afterSvcs[k]
		if !found || !slices.Equal(a.ips, b.ips) || !slices.Equal(a.families, b.families) || a.policy != b.policy {
			t.Errorf("Service %s after restart %+v (found %v), before %+v", k, a, found, b)
		}
	}
	if len(afterSvcs) != len(beforeSvcs) {
		t.Errorf("%d Services after restart, %d before", len(afterSvcs), len(beforeSvcs))
	}
	if after := nodeCIDRs(t, srv.Client); fmt.Sprint(after) != fmt.Sprint(beforeNodes) {
		t.Errorf("Node podCIDRs after restart %v, before %v", after, beforeNodes)
	}
	afterIPs, err := ipRecords(ctx, srv.Client)
	fatalIf(t, err)
	if !slices.Equal(afterIPs, beforeIPs) {
		t.Errorf("IPAddresses after restart %v, before %v", afterIPs, beforeIPs)
	}
	p, err := srv.Client.CoreV1().Pods("default").Get(ctx, "p", metav1.GetOptions{})
	fatalIf(t, err)
	if p.Status.PodIP != "10.244.0.7" || len(p.Status.PodIPs) != 2 || p.Status.PodIPs[1].IP != "fd00:10:244::7" {
		t.Errorf("pod status after restart: podIP %q podIPs %v", p.Status.PodIP, p.Status.PodIPs)
	}

	// Allocation after the restart knows what was allocated before.
	for i := range 40 {
		got, err := createService(ctx, srv, newService(fmt.Sprintf("after-%d", i), policy(prefer)), "")
		fatalIf(t, err)
		checkService(t, srv, sh, got, accept(prefer, corev1.IPv4Protocol, corev1.IPv6Protocol))
	}
	// A user-chosen IP taken before the restart is still taken.
	_, err = createService(ctx, srv, newService("chosen-again", clusterIPs(static(corev1.IPv4Protocol, 42))), "")
	expectOutcome(t, srv, sh, nil, err, refused("provided IP is already allocated"))
	_, err = srv.Client.CoreV1().Nodes().Create(ctx, newNode("n3"), metav1.CreateOptions{})
	fatalIf(t, err)
	n3Start := time.Now()
	defer func() { t.Logf("n3 got podCIDRs %v after its create", time.Since(n3Start).Round(time.Millisecond)) }()
	eventually(t, controllerWait, "n3 gets podCIDRs of its own", func() error {
		all := nodeCIDRs(t, srv.Client)
		if len(all["n3"]) != 2 {
			return fmt.Errorf("n3 podCIDRs %v", all["n3"])
		}
		for name, c := range beforeNodes {
			for _, x := range c {
				if slices.Contains(all["n3"], x) {
					t.Fatalf("n3 got %s, which %s holds", x, name)
				}
			}
		}
		return nil
	})
	fatalIf(t, checkAllocations(ctx, srv.Client, srv.Dynamic, allocationCheck{ranges: sh.ranges, noOrphans: true}))
}

// createBurst creates Services named prefix-N from 16 workers until ctx is
// done or, once stop is set, a request fails. It returns the names the
// server acknowledged and the errors seen while stop was unset. When
// stopAt > 0, reached is closed once that many were acknowledged.
func createBurst(ctx context.Context, client kubernetes.Interface, prefix string, workers, total int, mutate func(*corev1.Service), stopAt int64, reached chan struct{}, stop *atomic.Bool) ([]string, []error) {
	var (
		mu    sync.Mutex
		acked []string
		errs  []error
		next  atomic.Int64
		count atomic.Int64
		wg    sync.WaitGroup
		once  sync.Once
	)
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				i := next.Add(1) - 1
				if total > 0 && i >= int64(total) {
					return
				}
				svc := newService(fmt.Sprintf("%s-%d", prefix, i))
				if mutate != nil {
					mutate(svc)
				}
				_, err := client.CoreV1().Services("default").Create(ctx, svc, metav1.CreateOptions{})
				if err != nil {
					if stop != nil && stop.Load() {
						return
					}
					mu.Lock()
					errs = append(errs, fmt.Errorf("%s: %w", svc.Name, err))
					mu.Unlock()
					continue
				}
				mu.Lock()
				acked = append(acked, svc.Name)
				mu.Unlock()
				if c := count.Add(1); stopAt > 0 && c >= stopAt {
					once.Do(func() { close(reached) })
				}
			}
		}()
	}
	wg.Wait()
	return acked, errs
}

// TestKill9DuringCreateBurst: SIGKILL in the middle of 16 concurrent
// Service creates. After a restart every acknowledged Service is there, no
// cluster IP is owned twice, every Service's IPs are recorded, allocation
// goes on without collisions, and (repair loop) no IPAddress is left
// without its Service.
func TestKill9DuringCreateBurst(t *testing.T) {
	t.Parallel()
	// Small ranges, so that an allocator that forgot what was allocated
	// before the crash would collide quickly.
	ranges := "10.96.0.0/20,fd00:10:96::/112"
	sh := shape{ranges: mustPrefixes(ranges)}
	srv := StartServer(t, ServerOptions{ServiceRanges: ranges, RepairFast: true})
	client := srv.Client

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	reached := make(chan struct{})
	var killed atomic.Bool
	type result struct {
		acked []string
		errs  []error
	}
	done := make(chan result, 1)
	go func() {
		a, e := createBurst(ctx, client, "burst", 16, 0, policy(prefer), 400, reached, &killed)
		done <- result{a, e}
	}()
	select {
	case <-reached:
	case r := <-done:
		t.Fatalf("burst ended before 400 creates: %d acknowledged, errors %v", len(r.acked), r.errs)
	case <-time.After(3 * time.Minute):
		t.Fatal("400 creates did not complete within 3 minutes")
	}
	killed.Store(true)
	srv.Kill(t)
	r := <-done
	cancel()
	if len(r.errs) > 0 {
		t.Errorf("%d creates failed before the kill, e.g. %v", len(r.errs), r.errs[0])
	}
	t.Logf("killed after %d acknowledged creates", len(r.acked))

	srv.Restart(t)
	ctx2 := ctxT(t)
	states := serviceStates(t, srv.Client)
	for _, name := range r.acked {
		if _, found := states["default/"+name]; !found {
			t.Errorf("Service %s was acknowledged before the kill but is gone after the restart", name)
		}
	}
	fatalIf(t, checkAllocations(ctx2, srv.Client, srv.Dynamic, allocationCheck{ranges: sh.ranges}))
	if err := checkAllocations(ctx2, srv.Client, srv.Dynamic, allocationCheck{ranges: sh.ranges, noOrphans: true}); err != nil {
		t.Logf("right after the restart, before repair: %v", err)
	}

	acked, errs := createBurst(ctx2, srv.Client, "after", 16, 300, policy(prefer), 0, nil, nil)
	if len(errs) > 0 {
		t.Errorf("%d of 300 creates after the restart failed, e.g. %v", len(errs), errs[0])
	}
	t.Logf("%d creates after the restart", len(acked))
	fatalIf(t, checkAllocations(ctx2, srv.Client, srv.Dynamic, allocationCheck{ranges: sh.ranges}))
	repairStart := time.Now()
	eventually(t, repairWait, "repair loop leaves no IPAddress without its Service", func() error {
		return checkAllocations(ctx2, srv.Client, srv.Dynamic, allocationCheck{ranges: sh.ranges, noOrphans: true})
	})
	t.Logf("no orphan IPAddress %v later (--repair-interval available: %v)", time.Since(repairStart).Round(time.Millisecond), harness.HasRepairInterval)

	// Every record is written before its Service is stored, so the kill
	// lost none that a stored Service holds: the repair loop must report
	// none as not allocated. Records of Services the kill kept from being
	// stored are orphans, and releasing them is right. A canary whose
	// record is deleted behind the allocator's back is the one record
	// really missing; its event also shows that the loop's events arrive.
	deleteRecordAndAwaitRepair(t, srv, "canary")
	events, err := repairEvents(ctx2, srv.Client)
	fatalIf(t, err)
	all, about := countEvents(events, ""), countEvents(events, "default/canary")
	t.Logf("repair events: %v, about the canary: %v", all, about)
	if about["ClusterIPNotAllocated"] != 1 {
		t.Errorf("%d ClusterIPNotAllocated events for the canary, whose record was deleted once; want 1", about["ClusterIPNotAllocated"])
	}
	if n := all["ClusterIPNotAllocated"] - about["ClusterIPNotAllocated"]; n > 0 {
		t.Errorf("%d ClusterIPNotAllocated events for Services whose records the kill did not lose, want 0", n)
	}
}
