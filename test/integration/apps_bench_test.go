package integration

import (
	"context"
	"fmt"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// BenchmarkDeployment times a 100-replica Deployment on three nodes: from
// create to every pod available, and a rolling update of them all (25%
// surge and unavailability, the defaults). The fake kubelet marks a pod
// ready as soon as it is bound, so the times are the control plane's: the
// Deployment and ReplicaSet controllers, the scheduler and the API server;
// the agents' work (sandboxes, processes) is measured by the e2e benchmarks.
func BenchmarkDeployment(b *testing.B) {
	const replicas = 100
	for i := range b.N {
		b.StopTimer()
		srv := StartServer(b, ServerOptions{ServiceRanges: "10.96.0.0/16,fd00:10:96::/108", ClusterCIDR: "10.244.0.0/16,fd00:10:244::/56"})
		ctx := context.Background()
		// Nodes that report Ready and renew their Leases, as agents do: the
		// node lifecycle controller taints silent ones, and the scheduler
		// then passes them over.
		for n := range 3 {
			startFakeAgent(b, srv.Client, fmt.Sprintf("b%d", n), nil)
		}
		ns := fmt.Sprintf("bench-%d", i)
		startKubelet(b, srv.Client, testNamespace(b, srv, ns), nil)
		b.StartTimer()

		start := time.Now()
		if _, err := srv.Client.AppsV1().Deployments(ns).Create(ctx, webDeployment("web", replicas), metav1.CreateOptions{}); err != nil {
			b.Fatal(err)
		}
		d := waitComplete(b, srv.Client, ns, "web")
		available := time.Since(start)

		start = time.Now()
		d.Spec.Template.Spec.Containers[0].Image = agnhostNext
		if _, err := srv.Client.AppsV1().Deployments(ns).Update(ctx, d, metav1.UpdateOptions{}); err != nil {
			b.Fatal(err)
		}
		waitComplete(b, srv.Client, ns, "web")
		rolled := time.Since(start)
		b.ReportMetric(available.Seconds(), "s-available")
		b.ReportMetric(replicas/available.Seconds(), "pods/s")
		b.ReportMetric(rolled.Seconds(), "s-rollout")
	}
}
