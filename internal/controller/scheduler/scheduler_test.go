package scheduler

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/client-go/tools/record"
)

// run starts a scheduler over a fake clientset holding nodes.
func run(t *testing.T, nodes ...*corev1.Node) (*fake.Clientset, *record.FakeRecorder) {
	t.Helper()
	client := fake.NewClientset()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	for _, n := range nodes {
		if _, err := client.CoreV1().Nodes().Create(ctx, n, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	for _, ns := range []string{"default", "other"} {
		if _, err := client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns, Labels: namespaceLabels(ns)}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	factory := informers.NewSharedInformerFactory(client, 0)
	recorder := record.NewFakeRecorder(1000)
	s := New(client, factory.Core().V1().Pods(), factory.Core().V1().Nodes(), factory.Core().V1().Namespaces(), recorder)
	factory.Start(ctx.Done())
	go s.Run(ctx, 4)
	return client, recorder
}

func create(t *testing.T, client *fake.Clientset, pods ...*corev1.Pod) {
	t.Helper()
	for _, p := range pods {
		if _, err := client.CoreV1().Pods(p.Namespace).Create(context.Background(), p, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
}

// waitFor polls the pods until check accepts them.
func waitFor(t *testing.T, client *fake.Clientset, what string, check func(map[string]*corev1.Pod) error) map[string]*corev1.Pod {
	t.Helper()
	var last error
	var pods map[string]*corev1.Pod
	err := wait.PollUntilContextTimeout(context.Background(), 5*time.Millisecond, 10*time.Second, true, func(ctx context.Context) (bool, error) {
		list, err := client.CoreV1().Pods("").List(ctx, metav1.ListOptions{})
		if err != nil {
			return false, err
		}
		pods = map[string]*corev1.Pod{}
		for i := range list.Items {
			pods[list.Items[i].Name] = &list.Items[i]
		}
		last = check(pods)
		return last == nil, nil
	})
	if err != nil {
		t.Fatalf("%s: %v", what, last)
	}
	return pods
}

func TestSchedulerBindsAndSpreads(t *testing.T) {
	client, _ := run(t, mkNode("a", nodeLabels("zone", "1")), mkNode("b", nodeLabels("zone", "2")), mkNode("c", cordoned))
	for i := range 6 {
		create(t, client, mkPod(fmt.Sprintf("p%d", i)))
	}
	create(t, client, mkPod("pinned", nodeSelector("zone", "2")))
	create(t, client, mkPod("other", func(p *corev1.Pod) { p.Spec.SchedulerName = "someone-else" }))
	create(t, client, mkPod("manual", on("c")))
	// A DaemonSet's pods name their node by required node affinity on
	// metadata.name.
	for name, target := range map[string]string{"daemon-a": "a", "daemon-gone": "gone"} {
		create(t, client, mkPod(name, func(p *corev1.Pod) {
			p.Spec.Affinity = &corev1.Affinity{NodeAffinity: &corev1.NodeAffinity{RequiredDuringSchedulingIgnoredDuringExecution: &corev1.NodeSelector{
				NodeSelectorTerms: []corev1.NodeSelectorTerm{{MatchFields: []corev1.NodeSelectorRequirement{{Key: "metadata.name", Operator: corev1.NodeSelectorOpIn, Values: []string{target}}}}},
			}}}
		}))
	}

	pods := waitFor(t, client, "8 pods bound", func(pods map[string]*corev1.Pod) error {
		bound := 0
		for _, p := range pods {
			if p.Spec.NodeName != "" && p.Name != "manual" {
				bound++
			}
		}
		if bound != 8 {
			return fmt.Errorf("%d bound", bound)
		}
		return nil
	})
	if pods["daemon-a"].Spec.NodeName != "a" {
		t.Errorf("pod with node affinity for a went to %q", pods["daemon-a"].Spec.NodeName)
	}
	if pods["daemon-gone"].Spec.NodeName != "" {
		t.Errorf("pod with node affinity for a missing node went to %q", pods["daemon-gone"].Spec.NodeName)
	}
	perNode := map[string]int{}
	for _, p := range pods {
		perNode[p.Spec.NodeName]++
	}
	if pods["pinned"].Spec.NodeName != "b" {
		t.Errorf("pinned pod went to %q, want b", pods["pinned"].Spec.NodeName)
	}
	if pods["other"].Spec.NodeName != "" {
		t.Errorf("a pod for another scheduler was bound to %s", pods["other"].Spec.NodeName)
	}
	if pods["manual"].Spec.NodeName != "c" {
		t.Errorf("a pod with spec.nodeName moved to %q", pods["manual"].Spec.NodeName)
	}
	if perNode["c"] != 1 || perNode["a"] < 3 || perNode["b"] < 3 {
		t.Errorf("pods per node = %v, want 8 spread over a and b, only the manual one on cordoned c", perNode)
	}
}

func TestSchedulerAntiAffinitySpreadsAndReportsUnschedulable(t *testing.T) {
	client, recorder := run(t, mkNode("a"), mkNode("b"), mkNode("c", taints(notReadyNoExecute)))
	webHost := podTerm(corev1.LabelHostname, "app", "web")
	for i := range 3 {
		create(t, client, mkPod(fmt.Sprintf("web-%d", i), podLabels("app", "web"), requiredAntiAffinity(webHost)))
	}
	const msg = "0/3 nodes are available: 1 node(s) had untolerated taint(s), 2 node(s) didn't match pod anti-affinity rules."
	pods := waitFor(t, client, "two web pods bound to different nodes, the third unschedulable", func(pods map[string]*corev1.Pod) error {
		nodes := map[string]bool{}
		var pending *corev1.Pod
		for _, p := range pods {
			if p.Spec.NodeName == "" {
				pending = p
				continue
			}
			nodes[p.Spec.NodeName] = true
		}
		if len(nodes) != 2 || !nodes["a"] || !nodes["b"] || pending == nil {
			return fmt.Errorf("nodes used %v", nodes)
		}
		for _, c := range pending.Status.Conditions {
			if c.Type == corev1.PodScheduled && c.Status == corev1.ConditionFalse && c.Reason == ReasonUnschedulable && c.Message == msg {
				return nil
			}
		}
		return fmt.Errorf("pending pod %s has conditions %+v, want PodScheduled=False %s %q", pending.Name, pending.Status.Conditions, ReasonUnschedulable, msg)
	})
	_ = pods
	want := "Warning FailedScheduling " + msg
	deadline := time.After(10 * time.Second)
	for {
		select {
		case e := <-recorder.Events:
			if e == want {
				return
			}
		case <-deadline:
			t.Fatalf("no event %q", want)
		}
	}
}

func TestSchedulerRetriesWhenANodeAppears(t *testing.T) {
	client, _ := run(t)
	create(t, client, mkPod("p", requests("cpu", "1")))
	waitFor(t, client, "unschedulable with no nodes", func(pods map[string]*corev1.Pod) error {
		for _, c := range pods["p"].Status.Conditions {
			if c.Type == corev1.PodScheduled && c.Reason == ReasonUnschedulable && c.Message == "no nodes available to schedule pods" {
				return nil
			}
		}
		return fmt.Errorf("conditions %+v", pods["p"].Status.Conditions)
	})
	if _, err := client.CoreV1().Nodes().Create(context.Background(), mkNode("small", allocatable("pods", "10", "cpu", "500m")), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, client, "unschedulable on a node too small", func(pods map[string]*corev1.Pod) error {
		for _, c := range pods["p"].Status.Conditions {
			if c.Type == corev1.PodScheduled && strings.Contains(c.Message, "1 Insufficient cpu") {
				return nil
			}
		}
		return fmt.Errorf("conditions %+v", pods["p"].Status.Conditions)
	})
	if _, err := client.CoreV1().Nodes().Create(context.Background(), mkNode("big"), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, client, "bound to the new node", func(pods map[string]*corev1.Pod) error {
		if pods["p"].Spec.NodeName != "big" {
			return fmt.Errorf("nodeName %q", pods["p"].Spec.NodeName)
		}
		return nil
	})
}

func TestSchedulerRetriesWhenRoomIsFreed(t *testing.T) {
	client, _ := run(t, mkNode("a", allocatable("pods", "1", "cpu", "1", "memory", "1Gi")))
	create(t, client, mkPod("first", on("a")))
	create(t, client, mkPod("second"))
	waitFor(t, client, "second waits: too many pods", func(pods map[string]*corev1.Pod) error {
		for _, c := range pods["second"].Status.Conditions {
			if c.Type == corev1.PodScheduled && c.Message == "0/1 nodes are available: 1 Too many pods." {
				return nil
			}
		}
		return fmt.Errorf("conditions %+v", pods["second"].Status.Conditions)
	})
	if err := client.CoreV1().Pods("default").Delete(context.Background(), "first", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, client, "second bound once first is gone", func(pods map[string]*corev1.Pod) error {
		if pods["second"].Spec.NodeName != "a" {
			return fmt.Errorf("nodeName %q", pods["second"].Spec.NodeName)
		}
		return nil
	})
}

func TestNodeChangeMatters(t *testing.T) {
	base := mkNode("n", taints(gpuNoSchedule))
	heartbeat := base.DeepCopy()
	heartbeat.Status.Conditions = []corev1.NodeCondition{{Type: corev1.NodeReady, Status: corev1.ConditionTrue, LastHeartbeatTime: metav1.Now()}}
	tests := []struct {
		name   string
		mutate func(*corev1.Node)
		want   bool
	}{
		{"a heartbeat", func(n *corev1.Node) { n.Status.Conditions = heartbeat.Status.Conditions }, false},
		{"a label", func(n *corev1.Node) { n.Labels["disk"] = "ssd" }, true},
		{"cordoned", cordoned, true},
		{"a taint removed", func(n *corev1.Node) { n.Spec.Taints = nil }, true},
		{"a taint's value", func(n *corev1.Node) { n.Spec.Taints[0].Value = "false" }, true},
		{"allocatable", func(n *corev1.Node) { n.Status.Allocatable[corev1.ResourceCPU] = *resourceMust("8") }, true},
	}
	for _, tt := range tests {
		cur := base.DeepCopy()
		tt.mutate(cur)
		if got := nodeChangeMatters(base, cur); got != tt.want {
			t.Errorf("%s: %v, want %v", tt.name, got, tt.want)
		}
	}
}
