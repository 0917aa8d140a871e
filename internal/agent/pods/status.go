package pods

import (
	"slices"

	corev1 "k8s.io/api/core/v1"
)

// podPhase is a pod's phase from its containers' states, by the kubelet's
// rules: Pending while a container has not run yet; Running while one
// runs, or when all have stopped and some will be restarted; Succeeded
// or Failed once all have stopped for good. A container waiting to be
// restarted (CrashLoopBackOff) counts as stopped, with its last exit code.
func podPhase(policy corev1.RestartPolicy, statuses []corev1.ContainerStatus) corev1.PodPhase {
	waiting, running, stopped, succeeded := 0, 0, 0, 0
	for _, st := range statuses {
		term := st.State.Terminated
		switch {
		case st.State.Running != nil:
			running++
			continue
		case term == nil && st.LastTerminationState.Terminated != nil:
			term = st.LastTerminationState.Terminated
		case term == nil:
			waiting++
			continue
		}
		stopped++
		if term.ExitCode == 0 {
			succeeded++
		}
	}
	switch {
	case waiting > 0 || running+stopped == 0:
		return corev1.PodPending
	case running > 0:
		return corev1.PodRunning
	case policy == corev1.RestartPolicyAlways:
		return corev1.PodRunning // all are restarted
	case stopped == succeeded:
		return corev1.PodSucceeded
	case policy == corev1.RestartPolicyNever:
		return corev1.PodFailed
	default:
		return corev1.PodRunning // OnFailure: the failed ones are restarted
	}
}

// readinessGatesTrue reports whether every condition the pod's readiness
// gates name is True; others (a load balancer controller) set them.
func readinessGatesTrue(pod *corev1.Pod) bool {
	for _, g := range pod.Spec.ReadinessGates {
		i := slices.IndexFunc(pod.Status.Conditions, func(c corev1.PodCondition) bool { return c.Type == g.ConditionType })
		if i < 0 || pod.Status.Conditions[i].Status != corev1.ConditionTrue {
			return false
		}
	}
	return true
}

// othersConditions are the conditions of old that the agent does not own
// (readiness gates', DisruptionTarget...): a status update keeps them.
func othersConditions(old, owned []corev1.PodCondition) []corev1.PodCondition {
	var out []corev1.PodCondition
	for _, c := range old {
		if !slices.ContainsFunc(owned, func(o corev1.PodCondition) bool { return o.Type == c.Type }) {
			out = append(out, c)
		}
	}
	return out
}
