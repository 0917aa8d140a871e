package nodelifecycle

import (
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// managed is every taint this controller owns, by key and effect: each is
// present exactly while its condition holds. Other taints on a node,
// including other effects of the same keys, are the administrator's.
var managed = []corev1.Taint{
	{Key: corev1.TaintNodeNotReady, Effect: corev1.TaintEffectNoSchedule},
	{Key: corev1.TaintNodeNotReady, Effect: corev1.TaintEffectNoExecute},
	{Key: corev1.TaintNodeUnreachable, Effect: corev1.TaintEffectNoSchedule},
	{Key: corev1.TaintNodeUnreachable, Effect: corev1.TaintEffectNoExecute},
	{Key: corev1.TaintNodeMemoryPressure, Effect: corev1.TaintEffectNoSchedule},
	{Key: corev1.TaintNodeDiskPressure, Effect: corev1.TaintEffectNoSchedule},
	{Key: corev1.TaintNodePIDPressure, Effect: corev1.TaintEffectNoSchedule},
	{Key: corev1.TaintNodeNetworkUnavailable, Effect: corev1.TaintEffectNoSchedule},
	{Key: corev1.TaintNodeUnschedulable, Effect: corev1.TaintEffectNoSchedule},
}

func isManaged(t *corev1.Taint) bool {
	for i := range managed {
		if managed[i].MatchTaint(t) {
			return true
		}
	}
	return false
}

func condition(node *corev1.Node, t corev1.NodeConditionType) *corev1.NodeCondition {
	for i := range node.Status.Conditions {
		if node.Status.Conditions[i].Type == t {
			return &node.Status.Conditions[i]
		}
	}
	return nil
}

// conditionTaints are the managed taints node's state calls for, as
// Kubernetes' node lifecycle controller sets them: a node whose Ready
// condition is False is not-ready, Unknown (its agent stopped reporting)
// unreachable, both to keep new pods off (NoSchedule) and to evict those
// that do not tolerate it (NoExecute); pressure, an unavailable network
// and cordoning keep new pods off.
func conditionTaints(node *corev1.Node) []corev1.Taint {
	var out []corev1.Taint
	both := func(key string) {
		out = append(out, corev1.Taint{Key: key, Effect: corev1.TaintEffectNoSchedule}, corev1.Taint{Key: key, Effect: corev1.TaintEffectNoExecute})
	}
	if ready := condition(node, corev1.NodeReady); ready != nil {
		switch ready.Status {
		case corev1.ConditionFalse:
			both(corev1.TaintNodeNotReady)
		case corev1.ConditionUnknown:
			both(corev1.TaintNodeUnreachable)
		}
	}
	for _, c := range []struct {
		cond corev1.NodeConditionType
		key  string
	}{
		{corev1.NodeMemoryPressure, corev1.TaintNodeMemoryPressure},
		{corev1.NodeDiskPressure, corev1.TaintNodeDiskPressure},
		{corev1.NodePIDPressure, corev1.TaintNodePIDPressure},
		{corev1.NodeNetworkUnavailable, corev1.TaintNodeNetworkUnavailable},
	} {
		if cond := condition(node, c.cond); cond != nil && cond.Status == corev1.ConditionTrue {
			out = append(out, corev1.Taint{Key: c.key, Effect: corev1.TaintEffectNoSchedule})
		}
	}
	if node.Spec.Unschedulable {
		out = append(out, corev1.Taint{Key: corev1.TaintNodeUnschedulable, Effect: corev1.TaintEffectNoSchedule})
	}
	return out
}

// desiredTaints is node's taint list with the managed taints made what
// its state calls for: the others kept in order, managed ones that stay
// keeping their timeAdded, new NoExecute ones added at now (the taint
// eviction counts tolerationSeconds from it). It returns false when the
// list is already right.
func desiredTaints(node *corev1.Node, now time.Time) ([]corev1.Taint, bool) {
	want := conditionTaints(node)
	placed := make([]bool, len(want))
	var out []corev1.Taint
	changed := false
	for _, t := range node.Spec.Taints {
		if !isManaged(&t) {
			out = append(out, t)
			continue
		}
		kept := false
		for i := range want {
			if !placed[i] && want[i].MatchTaint(&t) {
				out = append(out, t)
				placed[i], kept = true, true
				break
			}
		}
		changed = changed || !kept
	}
	for i, t := range want {
		if placed[i] {
			continue
		}
		if t.Effect == corev1.TaintEffectNoExecute {
			at := metav1.NewTime(now)
			t.TimeAdded = &at
		}
		out = append(out, t)
		changed = true
	}
	return out, changed
}
