package scheduler

import (
	"fmt"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/labels"
	corev1helpers "k8s.io/component-helpers/scheduling/corev1"
	"k8s.io/klog/v2"
)

// Why a node does not fit, in the words of Kubernetes' scheduler, whose
// messages users and tools match.
const (
	reasonUnschedulable        = "node(s) were unschedulable"
	reasonTaints               = "node(s) had untolerated taint(s)"
	reasonNodeAffinity         = "node(s) didn't match Pod's node affinity/selector"
	reasonPorts                = "node(s) didn't have free ports for the requested pod ports"
	reasonTooManyPods          = "Too many pods"
	reasonExistingAntiAffinity = "node(s) didn't satisfy existing pods anti-affinity rules"
	reasonAntiAffinity         = "node(s) didn't match pod anti-affinity rules"
	reasonAffinity             = "node(s) didn't match pod affinity rules"
)

func reasonInsufficient(name corev1.ResourceName) string { return fmt.Sprintf("Insufficient %s", name) }

// topologyCounts counts pods per topology domain: key, then value.
type topologyCounts map[string]map[string]int64

func (c topologyCounts) add(key, value string, n int64) {
	m := c[key]
	if m == nil {
		m = map[string]int64{}
		c[key] = m
	}
	m[value] += n
}

// at is the count of node's domain for key; false when node is in no
// domain of key.
func (c topologyCounts) at(node *corev1.Node, key string) (int64, bool) {
	v, ok := node.Labels[key]
	if !ok {
		return 0, false
	}
	return c[key][v], true
}

// attempt is what scheduling one pod computes once for every node.
type attempt struct {
	pod      *podInfo
	nsLabels func(string) labels.Set
	// existingAnti counts the domains of counted pods whose required
	// anti-affinity selects the pod; anti and affinity count, for the
	// pod's own required terms, the counted pods they select (affinity:
	// pods that all its terms select).
	existingAnti topologyCounts
	anti         topologyCounts
	affinity     topologyCounts
	// selfAffinity: the pod matches all its own affinity terms, so with
	// no pod anywhere matching them it may go anywhere they allow: the
	// first pod of a group that keeps together.
	selfAffinity bool
	// preferred sums, per domain, the weights of preferred (and
	// existing pods' required) affinity between the pod and counted pods.
	preferred topologyCounts
}

// newAttempt prepares scheduling p against the cache's counted pods.
func newAttempt(c *clusterState, p *podInfo, nsLabels func(string) labels.Set) *attempt {
	a := &attempt{pod: p, nsLabels: nsLabels, existingAnti: topologyCounts{}, anti: topologyCounts{}, affinity: topologyCounts{}, preferred: topologyCounts{}}
	// Counted pods' terms that select p.
	for key, e := range c.withAffinity {
		n := c.nodes[c.podNode[key]]
		if n == nil || n.node == nil || key == p.key {
			continue
		}
		for i := range e.antiAffinity {
			t := &e.antiAffinity[i]
			if v, ok := n.node.Labels[t.topologyKey]; ok && t.matches(p.pod, nsLabels) {
				a.existingAnti.add(t.topologyKey, v, 1)
			}
		}
		for i := range e.affinity {
			t := &e.affinity[i]
			if v, ok := n.node.Labels[t.topologyKey]; ok && t.matches(p.pod, nsLabels) {
				a.preferred.add(t.topologyKey, v, hardAffinityWeight)
			}
		}
		for i := range e.prefAffinity {
			t := &e.prefAffinity[i]
			if v, ok := n.node.Labels[t.topologyKey]; ok && t.matches(p.pod, nsLabels) {
				a.preferred.add(t.topologyKey, v, t.weight)
			}
		}
		for i := range e.prefAntiAffinity {
			t := &e.prefAntiAffinity[i]
			if v, ok := n.node.Labels[t.topologyKey]; ok && t.matches(p.pod, nsLabels) {
				a.preferred.add(t.topologyKey, v, -t.weight)
			}
		}
	}
	if !p.hasAffinity() {
		return a
	}
	a.selfAffinity = matchesAll(p.affinity, p.pod, nsLabels)
	// p's own terms against every counted pod.
	for _, n := range c.nodes {
		if n.node == nil {
			continue
		}
		labels := n.node.Labels
		for _, e := range n.pods {
			if e.key == p.key {
				continue
			}
			if len(p.affinity) > 0 && matchesAll(p.affinity, e.pod, nsLabels) {
				for i := range p.affinity {
					if v, ok := labels[p.affinity[i].topologyKey]; ok {
						a.affinity.add(p.affinity[i].topologyKey, v, 1)
					}
				}
			}
			for i := range p.antiAffinity {
				t := &p.antiAffinity[i]
				if v, ok := labels[t.topologyKey]; ok && t.matches(e.pod, nsLabels) {
					a.anti.add(t.topologyKey, v, 1)
				}
			}
			for i := range p.prefAffinity {
				t := &p.prefAffinity[i]
				if v, ok := labels[t.topologyKey]; ok && t.matches(e.pod, nsLabels) {
					a.preferred.add(t.topologyKey, v, t.weight)
				}
			}
			for i := range p.prefAntiAffinity {
				t := &p.prefAntiAffinity[i]
				if v, ok := labels[t.topologyKey]; ok && t.matches(e.pod, nsLabels) {
					a.preferred.add(t.topologyKey, v, -t.weight)
				}
			}
		}
	}
	return a
}

func matchesAll(terms []term, pod *corev1.Pod, nsLabels func(string) labels.Set) bool {
	for i := range terms {
		if !terms[i].matches(pod, nsLabels) {
			return false
		}
	}
	return true
}

// filter is one test a node must pass; it returns why the node does not
// fit, or nothing.
type filter func(a *attempt, n *nodeInfo) []string

// filters run in this order; a node is reported with the reasons of the
// first it fails, as Kubernetes' scheduler reports it.
var filters = []filter{
	fitsUnschedulable,
	fitsTaints,
	fitsNodeAffinity,
	fitsPorts,
	fitsResources,
	fitsPodAffinity,
}

var unschedulableTaint = corev1.Taint{Key: corev1.TaintNodeUnschedulable, Effect: corev1.TaintEffectNoSchedule}

// fitsUnschedulable: a cordoned node takes only pods that tolerate being
// cordoned.
func fitsUnschedulable(a *attempt, n *nodeInfo) []string {
	if n.node.Spec.Unschedulable && !corev1helpers.TolerationsTolerateTaint(klog.Background(), a.pod.pod.Spec.Tolerations, &unschedulableTaint, false) {
		return []string{reasonUnschedulable}
	}
	return nil
}

// fitsTaints: every NoSchedule and NoExecute taint must be tolerated.
func fitsTaints(a *attempt, n *nodeInfo) []string {
	_, untolerated := corev1helpers.FindMatchingUntoleratedTaint(klog.Background(), n.node.Spec.Taints, a.pod.pod.Spec.Tolerations, func(t *corev1.Taint) bool {
		return t.Effect == corev1.TaintEffectNoSchedule || t.Effect == corev1.TaintEffectNoExecute
	}, false)
	if untolerated {
		return []string{reasonTaints}
	}
	return nil
}

// fitsNodeAffinity: the nodeSelector and the required node affinity.
func fitsNodeAffinity(a *attempt, n *nodeInfo) []string {
	if ok, err := a.pod.nodeAffinity.Match(n.node); !ok || err != nil {
		return []string{reasonNodeAffinity}
	}
	return nil
}

// fitsPorts: no host port of the pod is taken on the node.
func fitsPorts(a *attempt, n *nodeInfo) []string {
	for _, want := range a.pod.ports {
		for _, have := range n.ports {
			if want.conflicts(have) {
				return []string{reasonPorts}
			}
		}
	}
	return nil
}

// fitsResources: what the pod requests fits in what the node's pods leave
// of its allocatable, and the node runs fewer pods than it allows.
func fitsResources(a *attempt, n *nodeInfo) []string {
	var out []string
	if int64(len(n.pods))+1 > n.allocatablePod {
		out = append(out, reasonTooManyPods)
	}
	req := &a.pod.requests
	if req.milliCPU > 0 && req.milliCPU > n.allocatable.milliCPU-n.requested.milliCPU {
		out = append(out, reasonInsufficient(corev1.ResourceCPU))
	}
	if req.memory > 0 && req.memory > n.allocatable.memory-n.requested.memory {
		out = append(out, reasonInsufficient(corev1.ResourceMemory))
	}
	if req.ephemeral > 0 && req.ephemeral > n.allocatable.ephemeral-n.requested.ephemeral {
		out = append(out, reasonInsufficient(corev1.ResourceEphemeralStorage))
	}
	for name, v := range req.scalar {
		if v > 0 && v > n.allocatable.scalar[name]-n.requested.scalar[name] {
			out = append(out, reasonInsufficient(name))
		}
	}
	return out
}

// fitsPodAffinity: each of the pod's affinity terms finds its pods in the
// node's domain, no pod its anti-affinity shuns is there, and no counted
// pod's anti-affinity shuns the pod there (checked in this order, as
// Kubernetes' scheduler does, for the same reason in the same case).
func fitsPodAffinity(a *attempt, n *nodeInfo) []string {
	for i := range a.pod.affinity {
		if _, inDomain := n.node.Labels[a.pod.affinity[i].topologyKey]; !inDomain {
			return []string{reasonAffinity}
		}
	}
	for i := range a.pod.affinity {
		if c, _ := a.affinity.at(n.node, a.pod.affinity[i].topologyKey); c <= 0 {
			if len(a.affinity) == 0 && a.selfAffinity {
				break
			}
			return []string{reasonAffinity}
		}
	}
	for i := range a.pod.antiAffinity {
		if c, _ := a.anti.at(n.node, a.pod.antiAffinity[i].topologyKey); c > 0 {
			return []string{reasonAntiAffinity}
		}
	}
	for key, values := range a.existingAnti {
		if v, ok := n.node.Labels[key]; ok && values[v] > 0 {
			return []string{reasonExistingAntiAffinity}
		}
	}
	return nil
}
