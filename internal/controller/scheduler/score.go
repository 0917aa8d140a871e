package scheduler

import (
	corev1 "k8s.io/api/core/v1"
	corev1helpers "k8s.io/component-helpers/scheduling/corev1"
	"k8s.io/klog/v2"
)

// maxScore is the best score a scorer gives a node, after normalizing.
const maxScore = 100

// scorer rates the nodes that fit: raw gives each node a number,
// normalize maps them onto 0..maxScore, and the weighted sum of every
// scorer's picks the node. The weights are those of Kubernetes' default
// profile, for the scorers Duet has.
type scorer struct {
	name      string
	weight    int64
	raw       func(a *attempt, n *nodeInfo) int64
	normalize func(scores []int64)
}

var scorers = []scorer{
	{"TaintToleration", 3, scoreTaints, normalizeReverse},
	{"NodeAffinity", 2, scoreNodeAffinity, normalizeMax},
	{"InterPodAffinity", 2, scorePodAffinity, normalizeMinMax},
	{"Spread", 2, scoreSpread, normalizeReverse},
	{"LeastAllocated", 1, scoreLeastAllocated, nil},
}

// scoreTaints counts the PreferNoSchedule taints the pod does not
// tolerate: fewer is better.
func scoreTaints(a *attempt, n *nodeInfo) int64 {
	var count int64
	for i := range n.node.Spec.Taints {
		t := &n.node.Spec.Taints[i]
		if t.Effect == corev1.TaintEffectPreferNoSchedule && !corev1helpers.TolerationsTolerateTaint(klog.Background(), a.pod.pod.Spec.Tolerations, t, false) {
			count++
		}
	}
	return count
}

// scoreNodeAffinity sums the weights of the preferred node affinity terms
// the node matches.
func scoreNodeAffinity(a *attempt, n *nodeInfo) int64 {
	if a.pod.preferredNodes == nil {
		return 0
	}
	return a.pod.preferredNodes.Score(n.node)
}

// scorePodAffinity sums the preferred pod affinity weights of the node's
// domains: positive for pods the pod likes (or that like it), negative
// for pods it shuns (or that shun it).
func scorePodAffinity(a *attempt, n *nodeInfo) int64 {
	var s int64
	for key, values := range a.preferred {
		if v, ok := n.node.Labels[key]; ok {
			s += values[v]
		}
	}
	return s
}

// scoreSpread counts the node's pods that belong to the same controller
// (a ReplicaSet, a StatefulSet...) as the pod: fewer is better, so that a
// workload's replicas spread over nodes.
func scoreSpread(a *attempt, n *nodeInfo) int64 {
	owner := controllerUID(a.pod.pod)
	if owner == "" {
		return 0
	}
	var count int64
	for _, p := range n.pods {
		if controllerUID(p.pod) == owner {
			count++
		}
	}
	return count
}

func controllerUID(pod *corev1.Pod) string {
	for _, ref := range pod.OwnerReferences {
		if ref.Controller != nil && *ref.Controller {
			return string(ref.UID)
		}
	}
	return ""
}

// scoreLeastAllocated favours the node with most cpu and memory left, pods
// without requests counting as small ones; it is already on 0..maxScore.
func scoreLeastAllocated(a *attempt, n *nodeInfo) int64 {
	free := func(requested, allocatable int64) int64 {
		if allocatable <= 0 || requested > allocatable {
			return 0
		}
		return (allocatable - requested) * maxScore / allocatable
	}
	cpu := free(n.nonZeroCPU+a.pod.nonZeroCPU, n.allocatable.milliCPU)
	mem := free(n.nonZeroMemory+a.pod.nonZeroMemory, n.allocatable.memory)
	return (cpu + mem) / 2
}

// normalizeMax scales so that the highest becomes maxScore.
func normalizeMax(scores []int64) {
	var top int64
	for _, s := range scores {
		top = max(top, s)
	}
	for i := range scores {
		if top > 0 {
			scores[i] = scores[i] * maxScore / top
		}
	}
}

// normalizeReverse is normalizeMax upside down: the lowest count becomes
// maxScore (all maxScore when all are zero).
func normalizeReverse(scores []int64) {
	var top int64
	for _, s := range scores {
		top = max(top, s)
	}
	for i := range scores {
		if top == 0 {
			scores[i] = maxScore
		} else {
			scores[i] = maxScore - scores[i]*maxScore/top
		}
	}
}

// normalizeMinMax maps the lowest to 0 and the highest to maxScore (all 0
// when they are equal).
func normalizeMinMax(scores []int64) {
	if len(scores) == 0 {
		return
	}
	lo, hi := scores[0], scores[0]
	for _, s := range scores {
		lo, hi = min(lo, s), max(hi, s)
	}
	for i := range scores {
		if hi == lo {
			scores[i] = 0
		} else {
			scores[i] = (scores[i] - lo) * maxScore / (hi - lo)
		}
	}
}
