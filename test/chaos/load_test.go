//go:build chaos

package chaos

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"

	"github.com/duet-net/duet/internal/testutil/roottest"
)

// attempt is one create request.
type attempt struct {
	start, end time.Time
	err        error
}

// load is 16 clients creating Services, then pods, in one namespace; a
// failed create is retried until it succeeds or finds its object there.
type load struct {
	ns     string
	mu     sync.Mutex
	acked  map[string][]string // Service name → cluster IPs the create returned
	podsOK []string
	tries  []attempt
	// probes are single creates started every 200 ms, each on its own,
	// while the load runs: unlike the clients, none waits for another
	// to finish, so they tell when a new write succeeds again.
	probes  []attempt
	done    atomic.Int64 // creates finished
	total   int
	finishd chan struct{}
}

func newService(name string) *corev1.Service {
	policy := corev1.IPFamilyPolicyPreferDualStack
	return &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: corev1.ServiceSpec{IPFamilyPolicy: &policy, Ports: []corev1.ServicePort{{Port: 80, TargetPort: intstr.FromInt32(8080)}}}}
}

func newPod(name string) *corev1.Pod {
	return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "c", Image: "ignored", Command: []string{"sleep", "3600"}}}}}
}

// startLoad creates namespace ns and starts the clients; wait on
// finished.
func startLoad(t *testing.T, ctx context.Context, client kubernetes.Interface, ns string, nServices, nPods int) *load {
	t.Helper()
	roottest.Eventually(t, time.Minute, "creating namespace "+ns, func() error {
		_, err := client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{})
		if apierrors.IsAlreadyExists(err) {
			return nil
		}
		return err
	})
	l := &load{ns: ns, acked: map[string][]string{}, total: nServices + nPods, finishd: make(chan struct{})}
	var next atomic.Int64
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for {
				i := int(next.Add(1) - 1)
				if i >= l.total || ctx.Err() != nil {
					return
				}
				if i < nServices {
					l.create(ctx, func(ctx context.Context) error {
						s, err := client.CoreV1().Services(ns).Create(ctx, newService(fmt.Sprintf("s%d", i)), metav1.CreateOptions{})
						if err == nil {
							l.mu.Lock()
							l.acked[s.Name] = s.Spec.ClusterIPs
							l.mu.Unlock()
						}
						return err
					})
				} else {
					name := fmt.Sprintf("p%d", i-nServices)
					l.create(ctx, func(ctx context.Context) error {
						_, err := client.CoreV1().Pods(ns).Create(ctx, newPod(name), metav1.CreateOptions{})
						if err == nil {
							l.mu.Lock()
							l.podsOK = append(l.podsOK, name)
							l.mu.Unlock()
						}
						return err
					})
				}
				l.done.Add(1)
			}
		})
	}
	stopProbes := make(chan struct{})
	var probes sync.WaitGroup
	probes.Go(func() {
		tick := time.NewTicker(200 * time.Millisecond)
		defer tick.Stop()
		for i := 0; ; i++ {
			select {
			case <-stopProbes:
				return
			case <-tick.C:
			}
			probes.Go(func() {
				a := attempt{start: time.Now()}
				rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
				defer cancel()
				svc, err := client.CoreV1().Services(ns).Create(rctx, newService(fmt.Sprintf("probe-%d", i)), metav1.CreateOptions{})
				a.err, a.end = err, time.Now()
				l.mu.Lock()
				l.probes = append(l.probes, a)
				if err == nil {
					l.acked[svc.Name] = svc.Spec.ClusterIPs
				}
				l.mu.Unlock()
			})
		}
	})
	go func() {
		wg.Wait()
		close(stopProbes)
		probes.Wait()
		close(l.finishd)
	}()
	return l
}

// probeRecovery is the time from at until a probe started after it
// succeeded: when a new write succeeds again.
func (l *load) probeRecovery(at time.Time) time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	best := time.Duration(-1)
	for _, a := range l.probes {
		if a.start.Before(at) || a.err != nil {
			continue
		}
		if d := a.end.Sub(at); best < 0 || d < best {
			best = d
		}
	}
	return best
}

func (l *load) create(ctx context.Context, f func(context.Context) error) {
	for ctx.Err() == nil {
		a := attempt{start: time.Now()}
		rctx, cancel := context.WithTimeout(ctx, 15*time.Second)
		a.err = f(rctx)
		cancel()
		a.end = time.Now()
		l.mu.Lock()
		l.tries = append(l.tries, a)
		l.mu.Unlock()
		if a.err == nil || apierrors.IsAlreadyExists(a.err) {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// waitProgress waits until a fraction of the creates finished.
func (l *load) waitProgress(t *testing.T, frac float64) {
	t.Helper()
	roottest.Eventually(t, 10*time.Minute, fmt.Sprintf("%.0f%% of the creates", frac*100), func() error {
		if d := l.done.Load(); float64(d) < frac*float64(l.total) {
			return fmt.Errorf("%d of %d", d, l.total)
		}
		return nil
	})
}

func (l *load) wait(t *testing.T) {
	t.Helper()
	select {
	case <-l.finishd:
	case <-time.After(20 * time.Minute):
		t.Fatalf("the load did not finish within 20 minutes (%d of %d)", l.done.Load(), l.total)
	}
}

// recovery is the time from at until the first create that started after
// it succeeded, and how many attempts failed meanwhile.
func (l *load) recovery(at time.Time) (time.Duration, int) {
	d, failed, _ := l.recoveryErrors(at)
	return d, failed
}

// recoveryErrors is recovery with the distinct errors of the failed
// attempts, each with when it ended after at.
func (l *load) recoveryErrors(at time.Time) (time.Duration, int, []string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	var first time.Time
	failed := 0
	seen := map[string]bool{}
	var errs []string
	for _, a := range l.tries {
		if a.start.Before(at) {
			continue
		}
		if a.err != nil {
			failed++
			msg := a.err.Error()
			if len(msg) > 120 {
				msg = msg[:120]
			}
			if !seen[msg] && len(errs) < 6 {
				seen[msg] = true
				errs = append(errs, fmt.Sprintf("+%v: %s", a.end.Sub(at).Round(time.Millisecond), msg))
			}
			continue
		}
		if first.IsZero() || a.end.Before(first) {
			first = a.end
		}
	}
	if first.IsZero() {
		return -1, failed, errs
	}
	return first.Sub(at), failed, errs
}

// verify checks that every acknowledged Service exists with the cluster
// IPs its create returned, that no cluster IP is held twice in the
// cluster, and (once they run) that every pod has two addresses no other
// pod holds.
func (l *load) verify(t *testing.T, ctx context.Context, client kubernetes.Interface, nPods int) {
	t.Helper()
	all, err := client.CoreV1().Services("").List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatalf("listing Services: %v", err)
	}
	byName := map[string][]string{}
	owner := map[string]string{}
	for _, s := range all.Items {
		if s.Namespace == l.ns {
			byName[s.Name] = s.Spec.ClusterIPs
		}
		for _, ip := range s.Spec.ClusterIPs {
			if ip == corev1.ClusterIPNone {
				continue
			}
			if o, dup := owner[ip]; dup {
				t.Errorf("cluster IP %s held by both %s and %s/%s", ip, o, s.Namespace, s.Name)
			}
			owner[ip] = s.Namespace + "/" + s.Name
		}
	}
	lost := 0
	l.mu.Lock()
	for name, ips := range l.acked {
		got, ok := byName[name]
		if !ok {
			lost++
			if lost <= 5 {
				t.Errorf("Service %s/%s was acknowledged and is gone", l.ns, name)
			}
			continue
		}
		if !slices.Equal(got, ips) {
			t.Errorf("Service %s/%s has cluster IPs %v, its create returned %v", l.ns, name, got, ips)
		}
	}
	acked := len(l.acked)
	podsAcked := len(l.podsOK)
	l.mu.Unlock()
	if lost > 0 {
		t.Errorf("%d of %d acknowledged Services lost", lost, acked)
	}
	t.Logf("%s: %d Services acknowledged, all there with their cluster IPs; %d cluster IPs in the cluster, none twice", l.ns, acked, len(owner))
	if nPods == 0 {
		return
	}
	var list *corev1.PodList
	roottest.Eventually(t, 10*time.Minute, fmt.Sprintf("%d pods Running with two addresses", podsAcked), func() error {
		var err error
		list, err = client.CoreV1().Pods(l.ns).List(ctx, metav1.ListOptions{})
		if err != nil {
			return err
		}
		running := 0
		for _, p := range list.Items {
			if p.Status.Phase == corev1.PodRunning && len(p.Status.PodIPs) == 2 {
				running++
			}
		}
		if running < podsAcked {
			return fmt.Errorf("%d of %d", running, podsAcked)
		}
		return nil
	})
	seen := map[string]string{}
	for _, p := range list.Items {
		for _, ip := range p.Status.PodIPs {
			if o, dup := seen[ip.IP]; dup {
				t.Errorf("pod IP %s held by both %s and %s", ip.IP, o, p.Name)
			}
			seen[ip.IP] = p.Name
		}
	}
	t.Logf("%s: %d pods Running, %d pod IPs, none twice", l.ns, len(list.Items), len(seen))
}

// cleanup deletes the namespace and waits until it is gone, so that the
// next repeat starts from the same state.
func cleanup(t *testing.T, ctx context.Context, client kubernetes.Interface, ns string) {
	t.Helper()
	_ = client.CoreV1().Namespaces().Delete(ctx, ns, metav1.DeleteOptions{})
	roottest.Eventually(t, 10*time.Minute, "namespace "+ns+" deleted", func() error {
		_, err := client.CoreV1().Namespaces().Get(ctx, ns, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return nil
		}
		return fmt.Errorf("still there: %v", err)
	})
}
