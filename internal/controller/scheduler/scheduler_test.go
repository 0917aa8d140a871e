package scheduler

import (
	"context"
	"fmt"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/client-go/tools/record"
)

func node(name string, labels map[string]string) *corev1.Node {
	return &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels}}
}

func pod(name string, selector map[string]string) *corev1.Pod {
	return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "default"}, Spec: corev1.PodSpec{NodeSelector: selector, SchedulerName: Name}}
}

func TestScheduler(t *testing.T) {
	unsched := node("c", nil)
	unsched.Spec.Unschedulable = true
	objs := []any{node("a", map[string]string{"zone": "1"}), node("b", map[string]string{"zone": "2"}), unsched}
	client := fake.NewClientset()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	for _, o := range objs {
		if _, err := client.CoreV1().Nodes().Create(ctx, o.(*corev1.Node), metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	factory := informers.NewSharedInformerFactory(client, 0)
	s := New(client, factory.Core().V1().Pods(), factory.Core().V1().Nodes(), record.NewFakeRecorder(100))
	factory.Start(ctx.Done())
	go s.Run(ctx, 1)

	for i := 0; i < 6; i++ {
		if _, err := client.CoreV1().Pods("default").Create(ctx, pod(fmt.Sprintf("p%d", i), nil), metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := client.CoreV1().Pods("default").Create(ctx, pod("pinned", map[string]string{"zone": "2"}), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	// A DaemonSet's pods name their node by required node affinity.
	for name, target := range map[string]string{"daemon-a": "a", "daemon-gone": "gone"} {
		p := pod(name, nil)
		p.Spec.Affinity = &corev1.Affinity{NodeAffinity: &corev1.NodeAffinity{RequiredDuringSchedulingIgnoredDuringExecution: &corev1.NodeSelector{
			NodeSelectorTerms: []corev1.NodeSelectorTerm{{MatchFields: []corev1.NodeSelectorRequirement{{Key: "metadata.name", Operator: corev1.NodeSelectorOpIn, Values: []string{target}}}}},
		}}}
		if _, err := client.CoreV1().Pods("default").Create(ctx, p, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	other := pod("other", nil)
	other.Spec.SchedulerName = "someone-else"
	if _, err := client.CoreV1().Pods("default").Create(ctx, other, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	var perNode map[string]int
	err := wait.PollUntilContextTimeout(ctx, 10*time.Millisecond, 10*time.Second, true, func(ctx context.Context) (bool, error) {
		pods, err := client.CoreV1().Pods("default").List(ctx, metav1.ListOptions{})
		if err != nil {
			return false, err
		}
		perNode = map[string]int{}
		for _, p := range pods.Items {
			if p.Name == "pinned" && p.Spec.NodeName != "" && p.Spec.NodeName != "b" {
				return false, fmt.Errorf("pinned pod went to %s", p.Spec.NodeName)
			}
			if p.Name == "other" && p.Spec.NodeName != "" {
				return false, fmt.Errorf("a pod for another scheduler was bound")
			}
			if p.Name == "daemon-a" && p.Spec.NodeName != "" && p.Spec.NodeName != "a" {
				return false, fmt.Errorf("pod with node affinity for a went to %s", p.Spec.NodeName)
			}
			if p.Name == "daemon-gone" && p.Spec.NodeName != "" {
				return false, fmt.Errorf("pod with node affinity for a missing node went to %s", p.Spec.NodeName)
			}
			if p.Spec.NodeName != "" {
				perNode[p.Spec.NodeName]++
			}
		}
		return perNode["a"]+perNode["b"] == 8, nil
	})
	if err != nil {
		t.Fatalf("pods per node %v: %v", perNode, err)
	}
	if perNode["c"] != 0 || perNode["a"] < 3 || perNode["b"] < 3 {
		t.Fatalf("pods per node = %v, want 8 spread over a and b, none on unschedulable c", perNode)
	}
}
