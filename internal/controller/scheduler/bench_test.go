package scheduler

import (
	"fmt"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
)

// benchCluster is 100 nodes in 10 zones and 1,000 pods of 100
// Deployment-like groups of 10: a third plain, a third with required
// anti-affinity on the hostname (one replica per node), a third with
// preferred anti-affinity on the zone and a preferred affinity to another
// group; all request cpu and memory.
func benchCluster() ([]*corev1.Node, []*corev1.Pod) {
	var nodes []*corev1.Node
	for i := range 100 {
		nodes = append(nodes, mkNode(fmt.Sprintf("node-%03d", i), nodeLabels(zone, fmt.Sprintf("zone-%d", i%10))))
	}
	var pods []*corev1.Pod
	for g := range 100 {
		group := fmt.Sprintf("app-%02d", g)
		for r := range 10 {
			opts := []podOpt{podLabels("app", group), ownedBy("rs-" + group), requests("cpu", "100m", "memory", "128Mi")}
			switch g % 3 {
			case 1:
				opts = append(opts, requiredAntiAffinity(podTerm(corev1.LabelHostname, "app", group)))
			case 2:
				opts = append(opts, preferredAntiAffinity(50, podTerm(zone, "app", group)),
					preferredAffinity(10, podTerm(zone, "app", fmt.Sprintf("app-%02d", (g+1)%100))))
			}
			pods = append(pods, mkPod(fmt.Sprintf("%s-%d", group, r), opts...))
		}
	}
	return nodes, pods
}

// BenchmarkDecide measures the scheduler's decisions alone: 1,000 pods
// placed one after another on 100 nodes, each counted before the next.
func BenchmarkDecide(b *testing.B) {
	nodes, pods := benchCluster()
	b.ReportAllocs()
	start, cpu0 := time.Now(), cpuTime()
	for b.Loop() {
		c := stateOf(nodes, nil)
		for _, p := range pods {
			info := newPodInfo(p)
			node, fe := c.pick(newAttempt(c, info, namespaceLabels))
			if fe != nil {
				b.Fatalf("%s: %v", p.Name, fe)
			}
			c.assume(info, node)
		}
	}
	b.ReportMetric(float64(b.N*len(pods))/time.Since(start).Seconds(), "pods/s")
	// On a shared machine the wall clock says little: pods per second
	// of this process's CPU time is the cost.
	b.ReportMetric(float64(b.N*len(pods))/(cpuTime()-cpu0).Seconds(), "pods/cpu-s")
}

func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
