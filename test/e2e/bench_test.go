package e2e

import (
	"context"
	"fmt"
	"sort"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
)

// BenchmarkPodBurst110 creates 110 pods on one node of a duet up cluster at
// once (client-go, no client rate limit) and reports how long until all are
// Running, and the p50/p99 of each pod's creation-to-Running time as seen
// by polling.
func BenchmarkPodBurst110(b *testing.B) {
	for i := 0; i < b.N; i++ {
		_, kubeconfig := up(b)
		cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
		if err != nil {
			b.Fatal(err)
		}
		cfg.QPS, cfg.Burst = -1, 1000
		client := kubernetes.NewForConfigOrDie(cfg)
		ctx := context.Background()
		start := time.Now()
		created := make([]time.Time, 110)
		errs := make(chan error, 110)
		for j := range 110 {
			go func(i int) {
				created[i] = time.Now()
				_, err := client.CoreV1().Pods("default").Create(ctx, &corev1.Pod{
					ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("burst-%d", i)},
					Spec: corev1.PodSpec{
						NodeSelector: map[string]string{"kubernetes.io/hostname": "node1"},
						Containers:   []corev1.Container{{Name: "c", Image: "ignored", Command: []string{"sleep", "3600"}}},
					},
				}, metav1.CreateOptions{})
				errs <- err
			}(j)
		}
		for range 110 {
			if err := <-errs; err != nil {
				b.Fatal(err)
			}
		}
		runningAt := map[string]time.Time{}
		deadline := time.Now().Add(5 * time.Minute)
		for len(runningAt) < 110 {
			list, err := client.CoreV1().Pods("default").List(ctx, metav1.ListOptions{})
			if err != nil {
				b.Fatal(err)
			}
			now := time.Now()
			for _, p := range list.Items {
				if _, ok := runningAt[p.Name]; !ok && p.Status.Phase == corev1.PodRunning && len(p.Status.PodIPs) == 2 {
					runningAt[p.Name] = now
				}
			}
			if now.After(deadline) {
				b.Fatalf("%d of 110 pods Running after 5 minutes", len(runningAt))
			}
			time.Sleep(50 * time.Millisecond)
		}
		total := time.Since(start)
		var lat []time.Duration
		for j := range 110 {
			lat = append(lat, runningAt[fmt.Sprintf("burst-%d", j)].Sub(created[j]))
		}
		sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
		b.ReportMetric(total.Seconds(), "s-all-running")
		b.ReportMetric(float64(lat[len(lat)/2].Milliseconds()), "ms-p50")
		b.ReportMetric(float64(lat[len(lat)*99/100].Milliseconds()), "ms-p99")
	}
}

// BenchmarkDeployment100 times a 100-replica Deployment on duet up
// --nodes 3 (real agents: sandboxes, addresses, processes, readiness
// probes): from create to all 100 available, then a rollout (rollout
// restart, 25% surge and unavailability) to all 100 new ones available.
// BenchmarkDeployment in test/integration times the control plane alone.
func BenchmarkDeployment100(b *testing.B) {
	for range b.N {
		_, kubeconfig := up(b, "--nodes", "3")
		cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
		if err != nil {
			b.Fatal(err)
		}
		client := kubernetes.NewForConfigOrDie(cfg)
		ctx := context.Background()
		replicas := int32(100)
		labels := map[string]string{"app": "bench"}
		d := &appsv1.Deployment{
			ObjectMeta: metav1.ObjectMeta{Name: "bench"},
			Spec: appsv1.DeploymentSpec{
				Replicas: &replicas,
				Selector: &metav1.LabelSelector{MatchLabels: labels},
				Template: corev1.PodTemplateSpec{
					ObjectMeta: metav1.ObjectMeta{Labels: labels},
					Spec: corev1.PodSpec{
						TerminationGracePeriodSeconds: new(int64),
						Containers: []corev1.Container{{Name: "c", Image: "busybox", Command: []string{"sleep", "3600"},
							ReadinessProbe: &corev1.Probe{ProbeHandler: corev1.ProbeHandler{Exec: &corev1.ExecAction{Command: []string{"true"}}}, PeriodSeconds: 1}}},
					},
				},
			},
		}
		available := func(generation int64) time.Duration {
			start := time.Now()
			for {
				got, err := client.AppsV1().Deployments("default").Get(ctx, "bench", metav1.GetOptions{})
				if err != nil {
					b.Fatal(err)
				}
				st := got.Status
				if st.ObservedGeneration >= generation && st.UpdatedReplicas == replicas && st.AvailableReplicas == replicas && st.Replicas == replicas {
					return time.Since(start)
				}
				if time.Since(start) > 10*time.Minute {
					b.Fatalf("not available after 10 minutes: %+v", st)
				}
				time.Sleep(100 * time.Millisecond)
			}
		}
		created, err := client.AppsV1().Deployments("default").Create(ctx, d, metav1.CreateOptions{})
		if err != nil {
			b.Fatal(err)
		}
		toAvailable := available(created.Generation)
		patch := fmt.Sprintf(`{"spec":{"template":{"metadata":{"annotations":{"kubectl.kubernetes.io/restartedAt":%q}}}}}`, time.Now().Format(time.RFC3339))
		updated, err := client.AppsV1().Deployments("default").Patch(ctx, "bench", types.StrategicMergePatchType, []byte(patch), metav1.PatchOptions{})
		if err != nil {
			b.Fatal(err)
		}
		rollout := available(updated.Generation)
		b.ReportMetric(toAvailable.Seconds(), "s-100-available")
		b.ReportMetric(100/toAvailable.Seconds(), "pods/s")
		b.ReportMetric(rollout.Seconds(), "s-rollout")
	}
}
