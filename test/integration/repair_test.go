package integration

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
)

var (
	repairLoad = flag.Duration("repair-load", 15*time.Second,
		"how long TestRepairQuietUnderLoad creates Services (the issue measured 40s)")
	repairLoadInterval = flag.String("repair-load-interval", "2s",
		"--repair-interval of the server TestRepairQuietUnderLoad loads (the server's default is 30s)")
)

// repairComponent is the event source of the cluster IP repair loop.
const repairComponent = "ipallocator-repair-controller"

// repairEvents returns the events the repair loop recorded.
func repairEvents(ctx context.Context, client kubernetes.Interface) ([]corev1.Event, error) {
	list, err := client.CoreV1().Events("").List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("listing events: %w", err)
	}
	var out []corev1.Event
	for _, ev := range list.Items {
		if ev.Source.Component == repairComponent {
			out = append(out, ev)
		}
	}
	return out, nil
}

// countEvents sums events per reason (an aggregated event counts Count
// times), of those about the object namespace/name only when obj is set.
func countEvents(events []corev1.Event, obj string) map[string]int {
	n := map[string]int{}
	for _, ev := range events {
		if obj == "" || ev.InvolvedObject.Namespace+"/"+ev.InvolvedObject.Name == obj {
			n[ev.Reason] += int(max(ev.Count, 1))
		}
	}
	return n
}

// TestRepairQuietUnderLoad: 8 client-go clients create dual-stack Services
// as fast as the server takes them while the repair loop runs every 2s;
// the load ends by cancelling the creates in flight, as clients that give
// up do. Nothing is lost, so the loop must record no event at all: a
// Service created while the loop reads Services and records is not a
// Service without a record, a record written for a Service still being
// created is not an orphan, and a create abandoned by its client keeps its
// records if it was stored after all. Then two records are deleted behind
// the allocator's back: exactly one ClusterIPNotAllocated event names each
// Service, and the records come back. Those events also prove that the
// loop's events reach the API, so a count of zero above means zero.
func TestRepairQuietUnderLoad(t *testing.T) {
	t.Parallel()
	const clients = 8
	ranges := "10.96.0.0/16,fd00:10:96::/108"
	srv := StartServer(t, ServerOptions{ServiceRanges: ranges, Extra: []string{"--repair-interval=" + *repairLoadInterval}})
	ctx := ctxT(t)

	loadCtx, stop := context.WithTimeout(ctx, *repairLoad)
	defer stop()
	var (
		created atomic.Int64
		mu      sync.Mutex
		errs    []error
		wg      sync.WaitGroup
	)
	for c := range clients {
		// A client of its own for each worker, as eight programs would.
		client, err := kubernetes.NewForConfig(rest.CopyConfig(srv.Config))
		fatalIf(t, err)
		wg.Go(func() {
			for i := 0; loadCtx.Err() == nil; i++ {
				name := fmt.Sprintf("load-%d-%d", c, i)
				_, err := client.CoreV1().Services("default").Create(loadCtx, newService(name, policy(prefer), noSelector), metav1.CreateOptions{})
				switch {
				case err == nil:
					created.Add(1)
				case loadCtx.Err() != nil && errors.Is(err, context.DeadlineExceeded):
					// The load ended during the request.
				default:
					mu.Lock()
					errs = append(errs, fmt.Errorf("%s: %w", name, err))
					mu.Unlock()
				}
			}
		})
	}
	wg.Wait()
	t.Logf("%d Services created by %d clients in %v, repair every %s", created.Load(), clients, *repairLoad, *repairLoadInterval)
	if len(errs) > 0 {
		t.Errorf("%d creates failed, e.g. %v", len(errs), errs[0])
	}

	// A create whose client gave up at the end of the load may or may not
	// have been stored; the server keeps its addresses until the write has
	// settled and then gives back what was not stored, before the repair
	// loop would take the records for orphans.
	eventually(t, repairWait, "every IPAddress held by its Service", func() error {
		return checkAllocations(ctx, srv.Client, nil, allocationCheck{ranges: mustPrefixes(ranges), noOrphans: true})
	})

	// Records really missing: each canary's IPv4 record, deleted through
	// the API while the allocator still counts the address as taken. The
	// second is deleted only once the first was repaired, so the pass that
	// repairs it comes after that repair and looks at the first again.
	for _, name := range []string{"canary-1", "canary-2"} {
		deleteRecordAndAwaitRepair(t, srv, name)
	}

	events, err := repairEvents(ctx, srv.Client)
	fatalIf(t, err)
	all := countEvents(events, "")
	canaries := map[string]bool{}
	for _, name := range []string{"canary-1", "canary-2"} {
		canaries["default/"+name] = true
		about := countEvents(events, "default/"+name)
		if about["ClusterIPNotAllocated"] != 1 {
			t.Errorf("%d ClusterIPNotAllocated events for default/%s, whose record was deleted once; want exactly 1 (all its repair events: %v)", about["ClusterIPNotAllocated"], name, about)
		}
		for reason, n := range about {
			all[reason] -= n
		}
	}
	t.Logf("repair events besides the canaries': %v", all)
	for reason, n := range all {
		if n > 0 {
			t.Errorf("%d %s events under a load that left nothing to repair, want 0", n, reason)
		}
	}
	if t.Failed() {
		for _, ev := range events {
			if obj := ev.InvolvedObject.Namespace + "/" + ev.InvolvedObject.Name; !canaries[obj] {
				t.Logf("  %s %s: %s", ev.Reason, obj, ev.Message)
			}
		}
	}
}

// deleteRecordAndAwaitRepair creates Service name, deletes the IPAddress
// of its first cluster IP and waits until the repair loop has re-recorded
// it and reported it.
func deleteRecordAndAwaitRepair(t *testing.T, srv *Server, name string) {
	t.Helper()
	ctx := ctxT(t)
	svc, err := srv.Client.CoreV1().Services("default").Create(ctx, newService(name, policy(prefer), noSelector), metav1.CreateOptions{})
	fatalIf(t, err)
	ip := svc.Spec.ClusterIPs[0]
	fatalIf(t, srv.Client.NetworkingV1().IPAddresses().Delete(ctx, ip, metav1.DeleteOptions{}))
	eventually(t, repairWait, "the repair loop reports and re-records the deleted IPAddress "+ip+" of "+name, func() error {
		rec, err := srv.Client.NetworkingV1().IPAddresses().Get(ctx, ip, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return errors.New("IPAddress still missing")
		}
		if err != nil {
			return err
		}
		if ref := rec.Spec.ParentRef; ref == nil || ref.Namespace != "default" || ref.Name != name {
			return fmt.Errorf("IPAddress %s re-recorded with parentRef %+v, want default/%s", ip, ref, name)
		}
		events, err := repairEvents(ctx, srv.Client)
		if err != nil {
			return err
		}
		if countEvents(events, "default/"+name)["ClusterIPNotAllocated"] == 0 {
			return errors.New("no ClusterIPNotAllocated event yet")
		}
		return nil
	})
}
