package integration

import (
	"fmt"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// BenchmarkScheduling: 1,000 pods created by 8 clients on a server with
// 100 Ready nodes in 10 zones, timed until every one is bound. The pods
// are 100 groups of 10 replicas requesting 100m and 128Mi: a third plain,
// a third with required anti-affinity on the hostname, a third with
// preferred anti-affinity on the zone. It reports bound pods per second,
// and creates per second for the API's own share.
func BenchmarkScheduling(b *testing.B) {
	for b.Loop() {
		b.StopTimer()
		// Nodes without heartbeats stay Ready for the benchmark.
		srv := StartServer(b, ServerOptions{ServiceRanges: v4Range, Extra: []string{"--node-monitor-grace-period=1h"}})
		ctx := ctxT(b)
		for i := range 100 {
			registerNode(b, srv.Client, fmt.Sprintf("node-%03d", i), map[string]string{corev1.LabelTopologyZone: fmt.Sprintf("zone-%d", i%10)})
		}
		pods := srv.Client.CoreV1().Pods("default")
		b.StartTimer()
		start := time.Now()
		created := runLoad(1000, 8, func(i int) error {
			group := fmt.Sprintf("app-%02d", i/10)
			term := corev1.PodAffinityTerm{LabelSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": group}}}
			p := &corev1.Pod{
				ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("%s-%d", group, i%10), Labels: map[string]string{"app": group}},
				Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "c", Image: "x", Resources: corev1.ResourceRequirements{
					Requests: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("100m"), corev1.ResourceMemory: resource.MustParse("128Mi")},
				}}}},
			}
			switch (i / 10) % 3 {
			case 1:
				term.TopologyKey = corev1.LabelHostname
				p.Spec.Affinity = &corev1.Affinity{PodAntiAffinity: &corev1.PodAntiAffinity{RequiredDuringSchedulingIgnoredDuringExecution: []corev1.PodAffinityTerm{term}}}
			case 2:
				term.TopologyKey = corev1.LabelTopologyZone
				p.Spec.Affinity = &corev1.Affinity{PodAntiAffinity: &corev1.PodAntiAffinity{PreferredDuringSchedulingIgnoredDuringExecution: []corev1.WeightedPodAffinityTerm{{Weight: 50, PodAffinityTerm: term}}}}
			}
			_, err := pods.Create(ctx, p, metav1.CreateOptions{})
			return err
		})
		mustLoad(b, "creating pods", created)
		eventually(b, 10*time.Minute, "all pods bound", func() error {
			list, err := pods.List(ctx, metav1.ListOptions{FieldSelector: "spec.nodeName=", ResourceVersion: "0"})
			if err != nil {
				return err
			}
			if n := len(list.Items); n > 0 {
				return fmt.Errorf("%d pods unbound", n)
			}
			return nil
		})
		elapsed := time.Since(start)
		b.StopTimer()
		b.ReportMetric(1000/elapsed.Seconds(), "bound-pods/s")
		b.ReportMetric(created.perSecond(), "creates/s")
		if err := srv.Stop(); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
	}
}
