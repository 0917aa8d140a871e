package scheduler

import (
	"reflect"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

const zone = corev1.LabelTopologyZone

var (
	notReadyNoExecute    = corev1.Taint{Key: corev1.TaintNodeNotReady, Effect: corev1.TaintEffectNoExecute}
	unreachableNoSched   = corev1.Taint{Key: corev1.TaintNodeUnreachable, Effect: corev1.TaintEffectNoSchedule}
	gpuNoSchedule        = corev1.Taint{Key: "gpu", Value: "true", Effect: corev1.TaintEffectNoSchedule}
	preferNot            = corev1.Taint{Key: "spot", Effect: corev1.TaintEffectPreferNoSchedule}
	tolerateGPU          = corev1.Toleration{Key: "gpu", Operator: corev1.TolerationOpEqual, Value: "true", Effect: corev1.TaintEffectNoSchedule}
	tolerateEverything   = corev1.Toleration{Operator: corev1.TolerationOpExists}
	tolerateUnreachable5 = corev1.Toleration{Key: corev1.TaintNodeUnreachable, Operator: corev1.TolerationOpExists, Effect: corev1.TaintEffectNoExecute, TolerationSeconds: ptrTo(int64(5))}
)

func ptrTo[T any](v T) *T { return &v }

func TestFilters(t *testing.T) {
	// Two zones: a holds n1 and n2, b holds n3; n4 has no zone label.
	nodes := func(extra ...*corev1.Node) []*corev1.Node {
		out := []*corev1.Node{
			mkNode("n1", nodeLabels(zone, "a")), mkNode("n2", nodeLabels(zone, "a")), mkNode("n3", nodeLabels(zone, "b")), mkNode("n4"),
		}
		return append(out, extra...)
	}
	web := podTerm(zone, "app", "web")
	webHost := podTerm(corev1.LabelHostname, "app", "web")
	tests := []struct {
		name     string
		filter   filter
		nodes    []*corev1.Node
		existing []*corev1.Pod
		pod      *corev1.Pod
		node     string
		want     []string
	}{
		// NodeUnschedulable
		{name: "a cordoned node takes no pod", filter: fitsUnschedulable,
			nodes: nodes(mkNode("c", cordoned)), pod: mkPod("p"), node: "c", want: []string{reasonUnschedulable}},
		{name: "a cordoned node takes a pod tolerating the unschedulable taint", filter: fitsUnschedulable,
			nodes: nodes(mkNode("c", cordoned)), pod: mkPod("p", tolerations(corev1.Toleration{Key: corev1.TaintNodeUnschedulable, Operator: corev1.TolerationOpExists})), node: "c"},
		{name: "an uncordoned node takes any pod", filter: fitsUnschedulable, nodes: nodes(), pod: mkPod("p"), node: "n1"},

		// TaintToleration
		{name: "NoSchedule taint not tolerated", filter: fitsTaints,
			nodes: nodes(mkNode("t", taints(gpuNoSchedule))), pod: mkPod("p"), node: "t", want: []string{reasonTaints}},
		{name: "NoSchedule taint tolerated by key, value and effect", filter: fitsTaints,
			nodes: nodes(mkNode("t", taints(gpuNoSchedule))), pod: mkPod("p", tolerations(tolerateGPU)), node: "t"},
		{name: "toleration of another value does not tolerate", filter: fitsTaints,
			nodes: nodes(mkNode("t", taints(gpuNoSchedule))), pod: mkPod("p", tolerations(corev1.Toleration{Key: "gpu", Value: "false", Effect: corev1.TaintEffectNoSchedule})), node: "t", want: []string{reasonTaints}},
		{name: "NoExecute taint not tolerated", filter: fitsTaints,
			nodes: nodes(mkNode("t", taints(notReadyNoExecute))), pod: mkPod("p"), node: "t", want: []string{reasonTaints}},
		{name: "unreachable NoSchedule taint keeps out even pods tolerating its NoExecute twin", filter: fitsTaints,
			nodes: nodes(mkNode("t", taints(unreachableNoSched))), pod: mkPod("p", tolerations(tolerateUnreachable5)), node: "t", want: []string{reasonTaints}},
		{name: "PreferNoSchedule taint does not filter", filter: fitsTaints,
			nodes: nodes(mkNode("t", taints(preferNot))), pod: mkPod("p"), node: "t"},
		{name: "operator Exists with no key tolerates everything", filter: fitsTaints,
			nodes: nodes(mkNode("t", taints(gpuNoSchedule, notReadyNoExecute))), pod: mkPod("p", tolerations(tolerateEverything)), node: "t"},

		// NodeAffinity
		{name: "nodeSelector matches", filter: fitsNodeAffinity, nodes: nodes(), pod: mkPod("p", nodeSelector(zone, "b")), node: "n3"},
		{name: "nodeSelector does not match", filter: fitsNodeAffinity, nodes: nodes(), pod: mkPod("p", nodeSelector(zone, "b")), node: "n1", want: []string{reasonNodeAffinity}},
		{name: "required node affinity In", filter: fitsNodeAffinity, nodes: nodes(), pod: mkPod("p", requiredNodeAffinity(zone, corev1.NodeSelectorOpIn, "a", "c")), node: "n2"},
		{name: "required node affinity NotIn", filter: fitsNodeAffinity, nodes: nodes(), pod: mkPod("p", requiredNodeAffinity(zone, corev1.NodeSelectorOpNotIn, "a")), node: "n2", want: []string{reasonNodeAffinity}},
		{name: "required node affinity DoesNotExist", filter: fitsNodeAffinity, nodes: nodes(), pod: mkPod("p", requiredNodeAffinity(zone, corev1.NodeSelectorOpDoesNotExist)), node: "n4"},
		{name: "nodeSelector and node affinity must both match", filter: fitsNodeAffinity, nodes: nodes(),
			pod: mkPod("p", nodeSelector(zone, "a"), requiredNodeAffinity(corev1.LabelHostname, corev1.NodeSelectorOpIn, "n3")), node: "n3", want: []string{reasonNodeAffinity}},

		// NodePorts
		{name: "host port free", filter: fitsPorts, nodes: nodes(), existing: []*corev1.Pod{mkPod("e", on("n1"), hostPorts(80))}, pod: mkPod("p", hostPorts(8080)), node: "n1"},
		{name: "host port taken", filter: fitsPorts, nodes: nodes(), existing: []*corev1.Pod{mkPod("e", on("n1"), hostPorts(80))}, pod: mkPod("p", hostPorts(80)), node: "n1", want: []string{reasonPorts}},
		{name: "host port taken on another node only", filter: fitsPorts, nodes: nodes(), existing: []*corev1.Pod{mkPod("e", on("n2"), hostPorts(80))}, pod: mkPod("p", hostPorts(80)), node: "n1"},
		{name: "host network pod takes its container ports", filter: fitsPorts, nodes: nodes(),
			existing: []*corev1.Pod{mkPod("e", on("n1"), func(p *corev1.Pod) {
				p.Spec.HostNetwork = true
				p.Spec.Containers[0].Ports = []corev1.ContainerPort{{ContainerPort: 53, Protocol: corev1.ProtocolUDP}}
			})},
			pod: mkPod("p", func(p *corev1.Pod) {
				p.Spec.Containers[0].Ports = []corev1.ContainerPort{{ContainerPort: 5353, HostPort: 53, Protocol: corev1.ProtocolUDP}}
			}), node: "n1", want: []string{reasonPorts}},
		{name: "same port, other protocol", filter: fitsPorts, nodes: nodes(), existing: []*corev1.Pod{mkPod("e", on("n1"), hostPorts(53))},
			pod: mkPod("p", func(p *corev1.Pod) {
				p.Spec.Containers[0].Ports = []corev1.ContainerPort{{ContainerPort: 53, HostPort: 53, Protocol: corev1.ProtocolUDP}}
			}), node: "n1"},
		{name: "same port on different host IPs", filter: fitsPorts, nodes: nodes(),
			existing: []*corev1.Pod{mkPod("e", on("n1"), func(p *corev1.Pod) {
				p.Spec.Containers[0].Ports = []corev1.ContainerPort{{ContainerPort: 80, HostPort: 80, HostIP: "203.0.113.1", Protocol: corev1.ProtocolTCP}}
			})},
			pod: mkPod("p", func(p *corev1.Pod) {
				p.Spec.Containers[0].Ports = []corev1.ContainerPort{{ContainerPort: 80, HostPort: 80, HostIP: "2001:db8::1", Protocol: corev1.ProtocolTCP}}
			}), node: "n1"},

		// NodeResourcesFit
		{name: "requests fit", filter: fitsResources, nodes: nodes(), existing: []*corev1.Pod{mkPod("e", on("n1"), requests("cpu", "3"))},
			pod: mkPod("p", requests("cpu", "1", "memory", "1Gi")), node: "n1"},
		{name: "cpu does not fit beside an existing pod", filter: fitsResources, nodes: nodes(), existing: []*corev1.Pod{mkPod("e", on("n1"), requests("cpu", "3500m"))},
			pod: mkPod("p", requests("cpu", "1")), node: "n1", want: []string{"Insufficient cpu"}},
		{name: "cpu and memory both insufficient", filter: fitsResources, nodes: nodes(),
			pod: mkPod("p", requests("cpu", "5", "memory", "9Gi")), node: "n1", want: []string{"Insufficient cpu", "Insufficient memory"}},
		{name: "limits without requests count as requests", filter: fitsResources, nodes: nodes(),
			pod: mkPod("p", func(p *corev1.Pod) {
				p.Spec.Containers[0].Resources.Limits = corev1.ResourceList{corev1.ResourceCPU: *resourceMust("8")}
			}), node: "n1", want: []string{"Insufficient cpu"}},
		{name: "a finished pod leaves its resources", filter: fitsResources, nodes: nodes(),
			existing: []*corev1.Pod{mkPod("e", on("n1"), requests("cpu", "4"), func(p *corev1.Pod) { p.Status.Phase = corev1.PodSucceeded })},
			pod:      mkPod("p", requests("cpu", "4")), node: "n1"},
		{name: "too many pods", filter: fitsResources, nodes: nodes(mkNode("small", allocatable("pods", "1", "cpu", "1"))),
			existing: []*corev1.Pod{mkPod("e", on("small"))}, pod: mkPod("p"), node: "small", want: []string{reasonTooManyPods}},
		{name: "a node reporting no allocatable takes no pod", filter: fitsResources, nodes: nodes(mkNode("bare", allocatable())),
			pod: mkPod("p"), node: "bare", want: []string{reasonTooManyPods}},
		{name: "extended resource", filter: fitsResources, nodes: nodes(mkNode("gpu", allocatable("pods", "10", "example.com/gpu", "1"))),
			existing: []*corev1.Pod{mkPod("e", on("gpu"), requests("example.com/gpu", "1"))}, pod: mkPod("p", requests("example.com/gpu", "1")), node: "gpu",
			want: []string{"Insufficient example.com/gpu"}},
		{name: "init containers count by their largest", filter: fitsResources, nodes: nodes(),
			pod: mkPod("p", requests("cpu", "1"), func(p *corev1.Pod) {
				p.Spec.InitContainers = []corev1.Container{{Name: "init", Resources: corev1.ResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceCPU: *resourceMust("4500m")}}}}
			}), node: "n1", want: []string{"Insufficient cpu"}},
		{name: "pod overhead counts", filter: fitsResources, nodes: nodes(),
			pod:  mkPod("p", requests("cpu", "3900m"), func(p *corev1.Pod) { p.Spec.Overhead = corev1.ResourceList{corev1.ResourceCPU: *resourceMust("200m")} }),
			node: "n1", want: []string{"Insufficient cpu"}},

		// InterPodAffinity: required anti-affinity
		{name: "anti-affinity on hostname: node with a matching pod", filter: fitsPodAffinity, nodes: nodes(),
			existing: []*corev1.Pod{mkPod("e", on("n1"), podLabels("app", "web"))}, pod: mkPod("p", podLabels("app", "web"), requiredAntiAffinity(webHost)), node: "n1",
			want: []string{reasonAntiAffinity}},
		{name: "anti-affinity on hostname: other node of the same zone is fine", filter: fitsPodAffinity, nodes: nodes(),
			existing: []*corev1.Pod{mkPod("e", on("n1"), podLabels("app", "web"))}, pod: mkPod("p", podLabels("app", "web"), requiredAntiAffinity(webHost)), node: "n2"},
		{name: "anti-affinity on zone: other node of the same zone is not", filter: fitsPodAffinity, nodes: nodes(),
			existing: []*corev1.Pod{mkPod("e", on("n1"), podLabels("app", "web"))}, pod: mkPod("p", requiredAntiAffinity(web)), node: "n2",
			want: []string{reasonAntiAffinity}},
		{name: "anti-affinity on zone: a node with no zone is in no domain", filter: fitsPodAffinity, nodes: nodes(),
			existing: []*corev1.Pod{mkPod("e", on("n1"), podLabels("app", "web"))}, pod: mkPod("p", requiredAntiAffinity(web)), node: "n4"},
		{name: "anti-affinity sees pods of its own namespace only by default", filter: fitsPodAffinity, nodes: nodes(),
			existing: []*corev1.Pod{mkPod("e", on("n1"), inNamespace("other"), podLabels("app", "web"))}, pod: mkPod("p", requiredAntiAffinity(webHost)), node: "n1"},
		{name: "anti-affinity with listed namespaces", filter: fitsPodAffinity, nodes: nodes(),
			existing: []*corev1.Pod{mkPod("e", on("n1"), inNamespace("other"), podLabels("app", "web"))},
			pod: mkPod("p", requiredAntiAffinity(func() corev1.PodAffinityTerm {
				t := webHost
				t.Namespaces = []string{"other"}
				return t
			}())), node: "n1", want: []string{reasonAntiAffinity}},
		{name: "anti-affinity with a namespace selector", filter: fitsPodAffinity, nodes: nodes(),
			existing: []*corev1.Pod{mkPod("e", on("n1"), inNamespace("other"), podLabels("app", "web"))},
			pod: mkPod("p", requiredAntiAffinity(func() corev1.PodAffinityTerm {
				t := webHost
				t.NamespaceSelector = &metav1.LabelSelector{MatchLabels: map[string]string{"team": "b"}}
				return t
			}())), node: "n1", want: []string{reasonAntiAffinity}},
		{name: "anti-affinity with an empty namespace selector sees every namespace", filter: fitsPodAffinity, nodes: nodes(),
			existing: []*corev1.Pod{mkPod("e", on("n1"), inNamespace("other"), podLabels("app", "web"))},
			pod: mkPod("p", requiredAntiAffinity(func() corev1.PodAffinityTerm {
				t := webHost
				t.NamespaceSelector = &metav1.LabelSelector{}
				return t
			}())), node: "n1", want: []string{reasonAntiAffinity}},
		{name: "existing pod's anti-affinity keeps the pod out of its domain", filter: fitsPodAffinity, nodes: nodes(),
			existing: []*corev1.Pod{mkPod("e", on("n1"), requiredAntiAffinity(podTerm(zone, "app", "db")))}, pod: mkPod("p", podLabels("app", "db")), node: "n2",
			want: []string{reasonExistingAntiAffinity}},
		{name: "existing pod's anti-affinity leaves other domains", filter: fitsPodAffinity, nodes: nodes(),
			existing: []*corev1.Pod{mkPod("e", on("n1"), requiredAntiAffinity(podTerm(zone, "app", "db")))}, pod: mkPod("p", podLabels("app", "db")), node: "n3"},
		{name: "matchLabelKeys narrows anti-affinity to the pod's own value", filter: fitsPodAffinity, nodes: nodes(),
			existing: []*corev1.Pod{mkPod("e", on("n1"), podLabels("app", "web", "rev", "1"))},
			pod: mkPod("p", podLabels("app", "web", "rev", "2"), requiredAntiAffinity(func() corev1.PodAffinityTerm {
				t := webHost
				t.MatchLabelKeys = []string{"rev"}
				return t
			}())), node: "n1"},
		{name: "mismatchLabelKeys: pods of another value are shunned", filter: fitsPodAffinity, nodes: nodes(),
			existing: []*corev1.Pod{mkPod("e", on("n1"), podLabels("app", "web", "tenant", "x"))},
			pod: mkPod("p", podLabels("tenant", "y"), requiredAntiAffinity(corev1.PodAffinityTerm{
				TopologyKey: corev1.LabelHostname, LabelSelector: &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{Key: "tenant", Operator: metav1.LabelSelectorOpExists}}},
				MismatchLabelKeys: []string{"tenant"},
			})), node: "n1", want: []string{reasonAntiAffinity}},

		// InterPodAffinity: required affinity
		{name: "affinity: node in the domain of a matching pod", filter: fitsPodAffinity, nodes: nodes(),
			existing: []*corev1.Pod{mkPod("e", on("n1"), podLabels("app", "web"))}, pod: mkPod("p", requiredAffinity(web)), node: "n2"},
		{name: "affinity: node in another domain", filter: fitsPodAffinity, nodes: nodes(),
			existing: []*corev1.Pod{mkPod("e", on("n1"), podLabels("app", "web"))}, pod: mkPod("p", requiredAffinity(web)), node: "n3",
			want: []string{reasonAffinity}},
		{name: "affinity: node without the topology key", filter: fitsPodAffinity, nodes: nodes(),
			existing: []*corev1.Pod{mkPod("e", on("n1"), podLabels("app", "web"))}, pod: mkPod("p", requiredAffinity(web)), node: "n4",
			want: []string{reasonAffinity}},
		{name: "affinity: no matching pod anywhere, the pod does not match itself", filter: fitsPodAffinity, nodes: nodes(),
			pod: mkPod("p", requiredAffinity(web)), node: "n1", want: []string{reasonAffinity}},
		{name: "affinity: the first pod of a group that keeps together", filter: fitsPodAffinity, nodes: nodes(),
			pod: mkPod("p", podLabels("app", "web"), requiredAffinity(web)), node: "n3"},
		{name: "affinity: first pod still needs the topology key", filter: fitsPodAffinity, nodes: nodes(),
			pod: mkPod("p", podLabels("app", "web"), requiredAffinity(web)), node: "n4", want: []string{reasonAffinity}},
		{name: "affinity: all terms must hold", filter: fitsPodAffinity, nodes: nodes(),
			existing: []*corev1.Pod{mkPod("e", on("n1"), podLabels("app", "web"))},
			pod:      mkPod("p", requiredAffinity(web, podTerm(zone, "app", "db"))), node: "n1", want: []string{reasonAffinity}},
		{name: "a pod on a node the cache has not seen counts for nothing", filter: fitsPodAffinity, nodes: nodes(),
			existing: []*corev1.Pod{mkPod("e", on("ghost"), podLabels("app", "web"))}, pod: mkPod("p", requiredAntiAffinity(webHost)), node: "n1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := stateOf(tt.nodes, tt.existing)
			a := newAttempt(c, newPodInfo(tt.pod), namespaceLabels)
			n := c.nodes[tt.node]
			if n == nil || n.node == nil {
				t.Fatalf("no node %s", tt.node)
			}
			if got := tt.filter(a, n); !reflect.DeepEqual(got, tt.want) {
				t.Errorf("reasons %q, want %q", got, tt.want)
			}
		})
	}
}
