package integration

import (
	"fmt"
	"net"
	"net/url"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.etcd.io/etcd/server/v3/embed"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// freeLoopbackPort returns a port that was free on 127.0.0.1 a moment ago.
func freeLoopbackPort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	fatalIf(t, err)
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// startEtcd runs a single-member etcd in the test process, on free loopback
// ports, with its data in t.TempDir(); it is closed when the test ends.
// It returns the client URL.
func startEtcd(t testing.TB) string {
	t.Helper()
	dir := t.TempDir()
	var lastErr error
	for attempt := range 3 { // a picked port may be taken before etcd binds it
		cfg := embed.NewConfig()
		cfg.Name = "integration"
		cfg.Dir = filepath.Join(dir, fmt.Sprintf("data-%d", attempt))
		client := url.URL{Scheme: "http", Host: fmt.Sprintf("127.0.0.1:%d", freeLoopbackPort(t))}
		peer := url.URL{Scheme: "http", Host: fmt.Sprintf("127.0.0.1:%d", freeLoopbackPort(t))}
		cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{client}, []url.URL{client}
		cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = []url.URL{peer}, []url.URL{peer}
		cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)
		cfg.LogLevel = "error"
		cfg.LogOutputs = []string{filepath.Join(dir, "etcd.log")}
		e, err := embed.StartEtcd(cfg)
		if err != nil {
			lastErr = err
			continue
		}
		t.Cleanup(e.Close)
		select {
		case <-e.Server.ReadyNotify():
			return client.String()
		case err := <-e.Err():
			lastErr = err
		case <-time.After(time.Minute):
			lastErr = fmt.Errorf("etcd not ready within a minute")
		}
	}
	t.Fatalf("starting etcd: %v", lastErr)
	return ""
}

// TestReplicasShareEtcd: two `duet server` replicas on one etcd, 5,000
// PreferDualStack Service creates from 16 clients split across both: every
// create succeeds, no cluster IP is held twice, and every IPAddress matches
// its Service.
func TestReplicasShareEtcd(t *testing.T) {
	t.Parallel()
	const total, workers = 5000, 16
	// A /18 holds 16,382 IPv4 addresses: 5,000 random picks by two
	// replicas that do not see each other's memory collide often.
	ranges := "10.96.0.0/18,fd00:10:96::/108"
	etcdURL := startEtcd(t)
	opts := ServerOptions{ServiceRanges: ranges, ClusterCIDR: "10.244.0.0/16,fd00:10:244::/56", EtcdServers: etcdURL}
	a := StartServer(t, opts)
	b := StartServer(t, opts)
	clients := []kubernetes.Interface{a.Client, b.Client}

	ctx := ctxT(t)
	start := time.Now()
	var (
		mu   sync.Mutex
		errs []error
		wg   sync.WaitGroup
	)
	var next atomic.Int64
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			client := clients[w%2] // 8 workers per replica
			for {
				i := next.Add(1) - 1
				if i >= total {
					return
				}
				name := fmt.Sprintf("r-%04d", i)
				_, err := client.CoreV1().Services("default").Create(ctx, newService(name, policy(prefer)), metav1.CreateOptions{})
				if err != nil {
					mu.Lock()
					errs = append(errs, fmt.Errorf("%s via replica %d: %w", name, w%2, err))
					mu.Unlock()
				}
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	const created = total
	t.Logf("%d creates across 2 replicas in %v (%.0f/s)", created, elapsed.Round(time.Millisecond), float64(created)/elapsed.Seconds())
	if len(errs) > 0 {
		t.Errorf("%d of %d creates failed, e.g. %v", len(errs), created, errs[0])
	}
	// Both replicas see the same, consistent state.
	for i, srv := range []*Server{a, b} {
		if err := checkAllocations(ctx, srv.Client, srv.Dynamic, allocationCheck{
			ranges: mustPrefixes(ranges), noOrphans: true, services: created - len(errs) + 2, // and kubernetes, kube-dns
		}); err != nil {
			t.Errorf("replica %d: %v", i, err)
		}
	}
	list, err := a.Client.CoreV1().Services("default").List(ctx, metav1.ListOptions{})
	fatalIf(t, err)
	for _, svc := range list.Items {
		if svc.Name != "kubernetes" && len(svc.Spec.ClusterIPs) != 2 {
			t.Errorf("%s: clusterIPs %v, want one per family", svc.Name, svc.Spec.ClusterIPs)
			break
		}
	}
}
