package scheduler

import (
	"reflect"
	"testing"

	corev1 "k8s.io/api/core/v1"
)

func TestScorersRaw(t *testing.T) {
	nodes := func(extra ...*corev1.Node) []*corev1.Node {
		return append([]*corev1.Node{mkNode("n1", nodeLabels(zone, "a")), mkNode("n2", nodeLabels(zone, "a")), mkNode("n3", nodeLabels(zone, "b"))}, extra...)
	}
	tests := []struct {
		name     string
		raw      func(*attempt, *nodeInfo) int64
		nodes    []*corev1.Node
		existing []*corev1.Pod
		pod      *corev1.Pod
		want     map[string]int64
	}{
		{name: "untolerated PreferNoSchedule taints are counted", raw: scoreTaints,
			nodes: nodes(mkNode("t", taints(preferNot, corev1.Taint{Key: "old", Effect: corev1.TaintEffectPreferNoSchedule}, gpuNoSchedule))),
			pod:   mkPod("p"), want: map[string]int64{"n1": 0, "t": 2}},
		{name: "tolerated PreferNoSchedule taints are not", raw: scoreTaints,
			nodes: nodes(mkNode("t", taints(preferNot))), pod: mkPod("p", tolerations(corev1.Toleration{Key: "spot", Operator: corev1.TolerationOpExists})),
			want: map[string]int64{"t": 0}},
		{name: "preferred node affinity sums the weights of matching terms", raw: scoreNodeAffinity, nodes: nodes(),
			pod:  mkPod("p", preferredNodeAffinity(10, zone, "a"), preferredNodeAffinity(3, corev1.LabelHostname, "n2", "n3")),
			want: map[string]int64{"n1": 10, "n2": 13, "n3": 3}},
		{name: "preferred pod affinity counts matching pods per domain", raw: scorePodAffinity, nodes: nodes(),
			existing: []*corev1.Pod{mkPod("e1", on("n1"), podLabels("app", "cache")), mkPod("e2", on("n2"), podLabels("app", "cache"))},
			pod:      mkPod("p", preferredAffinity(5, podTerm(zone, "app", "cache"))),
			want:     map[string]int64{"n1": 10, "n2": 10, "n3": 0}},
		{name: "preferred anti-affinity subtracts", raw: scorePodAffinity, nodes: nodes(),
			existing: []*corev1.Pod{mkPod("e1", on("n1"), podLabels("app", "web"))},
			pod:      mkPod("p", preferredAntiAffinity(7, podTerm(corev1.LabelHostname, "app", "web"))),
			want:     map[string]int64{"n1": -7, "n2": 0, "n3": 0}},
		{name: "existing pods' preferences and required affinity count for the incoming pod", raw: scorePodAffinity, nodes: nodes(),
			existing: []*corev1.Pod{
				mkPod("likes", on("n3"), preferredAffinity(4, podTerm(corev1.LabelHostname, "role", "client"))),
				mkPod("shuns", on("n1"), preferredAntiAffinity(6, podTerm(zone, "role", "client"))),
				mkPod("needs", on("n2"), podLabels("role", "client"), requiredAffinity(podTerm(corev1.LabelHostname, "role", "client"))),
			},
			pod:  mkPod("p", podLabels("role", "client")),
			want: map[string]int64{"n1": -6, "n2": -6 + hardAffinityWeight, "n3": 4}},
		{name: "spread counts replicas of the same controller", raw: scoreSpread, nodes: nodes(),
			existing: []*corev1.Pod{mkPod("a1", on("n1"), ownedBy("rs-a")), mkPod("a2", on("n1"), ownedBy("rs-a")), mkPod("b1", on("n2"), ownedBy("rs-b"))},
			pod:      mkPod("p", ownedBy("rs-a")),
			want:     map[string]int64{"n1": 2, "n2": 0, "n3": 0}},
		{name: "spread ignores pods without a controller", raw: scoreSpread, nodes: nodes(),
			existing: []*corev1.Pod{mkPod("a1", on("n1"))}, pod: mkPod("p"), want: map[string]int64{"n1": 0}},
		{name: "least allocated: empty node, half-used node, defaults for pods without requests", raw: scoreLeastAllocated, nodes: nodes(),
			existing: []*corev1.Pod{mkPod("half", on("n1"), requests("cpu", "2", "memory", "4Gi"))},
			pod:      mkPod("p", requests("cpu", "0", "memory", "0")),
			// The incoming pod asks for explicit zeros: only what is on the node counts.
			want: map[string]int64{"n1": 50, "n2": 100}},
		{name: "least allocated counts a pod without requests as 100m and 200Mi", raw: scoreLeastAllocated, nodes: nodes(),
			pod: mkPod("p"),
			// cpu: (4000-100)*100/4000 = 97; memory: (8192-200)*100/8192 = 97.
			want: map[string]int64{"n1": 97}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := stateOf(tt.nodes, tt.existing)
			a := newAttempt(c, newPodInfo(tt.pod), namespaceLabels)
			got := map[string]int64{}
			for name := range tt.want {
				got[name] = tt.raw(a, c.nodes[name])
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("scores %v, want %v", got, tt.want)
			}
		})
	}
}

func TestNormalize(t *testing.T) {
	tests := []struct {
		name string
		f    func([]int64)
		in   []int64
		want []int64
	}{
		{"max: highest becomes 100", normalizeMax, []int64{0, 5, 10}, []int64{0, 50, 100}},
		{"max: all zero stay zero", normalizeMax, []int64{0, 0}, []int64{0, 0}},
		{"reverse: fewest becomes 100", normalizeReverse, []int64{0, 1, 4}, []int64{100, 75, 0}},
		{"reverse: all zero become 100", normalizeReverse, []int64{0, 0}, []int64{100, 100}},
		{"minmax: negative to positive", normalizeMinMax, []int64{-10, 0, 10}, []int64{0, 50, 100}},
		{"minmax: all equal become 0", normalizeMinMax, []int64{3, 3}, []int64{0, 0}},
		{"minmax: empty", normalizeMinMax, []int64{}, []int64{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := append([]int64{}, tt.in...)
			tt.f(got)
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("%v -> %v, want %v", tt.in, got, tt.want)
			}
		})
	}
}

func TestPick(t *testing.T) {
	webHost := podTerm(corev1.LabelHostname, "app", "web")
	tests := []struct {
		name     string
		nodes    []*corev1.Node
		existing []*corev1.Pod
		pod      *corev1.Pod
		want     string // node, or the fit error's message
	}{
		{name: "no nodes", pod: mkPod("p"), want: "no nodes available to schedule pods"},
		{name: "equal nodes: the one with fewer pods", nodes: []*corev1.Node{mkNode("a"), mkNode("b")},
			existing: []*corev1.Pod{mkPod("e", on("a"))}, pod: mkPod("p"), want: "b"},
		{name: "equal empty nodes: by name", nodes: []*corev1.Node{mkNode("b"), mkNode("a")}, pod: mkPod("p"), want: "a"},
		{name: "PreferNoSchedule outweighs a fuller node", nodes: []*corev1.Node{mkNode("a", taints(preferNot)), mkNode("b")},
			existing: []*corev1.Pod{mkPod("e1", on("b")), mkPod("e2", on("b"))}, pod: mkPod("p"), want: "b"},
		{name: "preferred node affinity wins over emptiness", nodes: []*corev1.Node{mkNode("a"), mkNode("b", nodeLabels("disk", "ssd"))},
			existing: []*corev1.Pod{mkPod("e1", on("b"), requests("cpu", "1"))}, pod: mkPod("p", preferredNodeAffinity(1, "disk", "ssd")), want: "b"},
		{name: "replicas spread", nodes: []*corev1.Node{mkNode("a"), mkNode("b")},
			existing: []*corev1.Pod{mkPod("r1", on("a"), ownedBy("rs")), mkPod("x1", on("b")), mkPod("x2", on("b"))}, pod: mkPod("p", ownedBy("rs")), want: "b"},
		{name: "the only node that fits", nodes: []*corev1.Node{mkNode("a"), mkNode("b"), mkNode("c", taints(gpuNoSchedule))},
			existing: []*corev1.Pod{mkPod("w1", on("a"), podLabels("app", "web"))}, pod: mkPod("p", podLabels("app", "web"), requiredAntiAffinity(webHost)), want: "b"},
		{name: "fits no node: reasons counted and sorted",
			nodes:    []*corev1.Node{mkNode("a"), mkNode("b", cordoned), mkNode("c", taints(gpuNoSchedule)), mkNode("d", allocatable("pods", "10", "cpu", "1", "memory", "1Gi"))},
			existing: []*corev1.Pod{mkPod("w1", on("a"), podLabels("app", "web"))},
			pod:      mkPod("p", podLabels("app", "web"), requiredAntiAffinity(webHost), requests("cpu", "2", "memory", "2Gi")),
			want:     "0/4 nodes are available: 1 Insufficient cpu, 1 Insufficient memory, 1 node(s) didn't match pod anti-affinity rules, 1 node(s) had untolerated taint(s), 1 node(s) were unschedulable."},
		{name: "an invalid selector fits nowhere", nodes: []*corev1.Node{mkNode("a")},
			pod:  mkPod("p", requiredAntiAffinity(corev1.PodAffinityTerm{TopologyKey: ""})),
			want: "0/1 nodes are available: 1 pod anti-affinity term 0: topologyKey: must not be empty."},
		{name: "three replicas with hostname anti-affinity on two nodes: the third waits", nodes: []*corev1.Node{mkNode("a"), mkNode("b")},
			existing: []*corev1.Pod{mkPod("w1", on("a"), podLabels("app", "web"), requiredAntiAffinity(webHost)), mkPod("w2", on("b"), podLabels("app", "web"), requiredAntiAffinity(webHost))},
			pod:      mkPod("w3", podLabels("app", "web"), requiredAntiAffinity(webHost)),
			want:     "0/2 nodes are available: 2 node(s) didn't match pod anti-affinity rules."},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := stateOf(tt.nodes, tt.existing)
			node, fe := c.pick(newAttempt(c, newPodInfo(tt.pod), namespaceLabels))
			got := node
			if fe != nil {
				got = fe.Error()
			}
			if got != tt.want {
				t.Errorf("got %q, want %q", got, tt.want)
			}
		})
	}
}

func TestStateAccounting(t *testing.T) {
	c := stateOf([]*corev1.Node{mkNode("a")}, nil)
	p := mkPod("p", requests("cpu", "1"), hostPorts(80), podLabels("app", "web"), requiredAntiAffinity(podTerm(corev1.LabelHostname, "app", "web")))
	c.assume(newPodInfo(p), "a")
	n := c.nodes["a"]
	if n.requested.milliCPU != 1000 || len(n.ports) != 1 || len(c.withAffinity) != 1 {
		t.Fatalf("after assume: cpu %d, ports %v, withAffinity %d", n.requested.milliCPU, n.ports, len(c.withAffinity))
	}
	// The informer's older copy, still unbound, does not undo the assumption.
	c.setPod(p)
	if !c.assumed["default/p"] || n.requested.milliCPU != 1000 {
		t.Fatalf("a pending copy undid the assumption: assumed %v cpu %d", c.assumed, n.requested.milliCPU)
	}
	// The bound copy confirms it, counted once.
	bound := p.DeepCopy()
	bound.Spec.NodeName = "a"
	c.setPod(bound)
	if c.assumed["default/p"] || n.requested.milliCPU != 1000 || len(n.pods) != 1 {
		t.Fatalf("after confirm: assumed %v cpu %d pods %d", c.assumed, n.requested.milliCPU, len(n.pods))
	}
	// Finished: everything it took is free.
	bound.Status.Phase = corev1.PodFailed
	c.setPod(bound)
	if n.requested.milliCPU != 0 || len(n.ports) != 0 || len(n.pods) != 0 || len(c.withAffinity) != 0 || len(c.podNode) != 0 {
		t.Fatalf("after finish: cpu %d ports %v pods %d withAffinity %d", n.requested.milliCPU, n.ports, len(n.pods), len(c.withAffinity))
	}
	// A forgotten assumption frees its node.
	c.assume(newPodInfo(mkPod("q", requests("cpu", "2"))), "a")
	c.forget("default/q")
	if n.requested.milliCPU != 0 || len(n.pods) != 0 {
		t.Fatalf("after forget: cpu %d pods %d", n.requested.milliCPU, len(n.pods))
	}
	// A deleted node keeps its pods counted until they go.
	c.setPod(mkPod("r", on("a")))
	c.removeNode("a")
	if c.nodes["a"] == nil || c.nodes["a"].node != nil {
		t.Fatalf("after node removal: %+v", c.nodes["a"])
	}
	c.removePod("default/r")
	if _, ok := c.nodes["a"]; ok {
		t.Fatalf("an empty unknown node is still kept")
	}
}
