package core

import (
	"context"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func TestPodGracefulDelete(t *testing.T) {
	i64 := func(v int64) *int64 { return &v }
	for _, tc := range []struct {
		name      string
		nodeName  string
		phase     corev1.PodPhase
		podGrace  *int64
		reqGrace  *int64
		wantGrace int64
	}{
		{name: "scheduled pod, pod's period", nodeName: "n1", podGrace: i64(30), wantGrace: 30},
		{name: "request's period wins", nodeName: "n1", podGrace: i64(30), reqGrace: i64(5), wantGrace: 5},
		{name: "force", nodeName: "n1", podGrace: i64(30), reqGrace: i64(0), wantGrace: 0},
		{name: "unscheduled goes at once", podGrace: i64(30), wantGrace: 0},
		{name: "finished goes at once", nodeName: "n1", phase: corev1.PodSucceeded, podGrace: i64(30), wantGrace: 0},
		{name: "failed goes at once", nodeName: "n1", phase: corev1.PodFailed, podGrace: i64(30), wantGrace: 0},
		{name: "negative means soon", nodeName: "n1", reqGrace: i64(-3), wantGrace: 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pod := &corev1.Pod{Spec: corev1.PodSpec{NodeName: tc.nodeName, TerminationGracePeriodSeconds: tc.podGrace}, Status: corev1.PodStatus{Phase: tc.phase}}
			opts := &metav1.DeleteOptions{GracePeriodSeconds: tc.reqGrace}
			if !podGracefulDelete(context.Background(), pod, opts) {
				t.Fatal("not graceful")
			}
			if opts.GracePeriodSeconds == nil || *opts.GracePeriodSeconds != tc.wantGrace {
				t.Fatalf("grace period %v, want %d", opts.GracePeriodSeconds, tc.wantGrace)
			}
		})
	}
	if podGracefulDelete(context.Background(), &corev1.Pod{}, nil) {
		t.Error("nil options: graceful")
	}
}

func TestMarkScheduled(t *testing.T) {
	unschedulable := corev1.PodCondition{Type: corev1.PodScheduled, Status: corev1.ConditionFalse, Reason: corev1.PodReasonUnschedulable, Message: "0/1 nodes are available"}
	ready := corev1.PodCondition{Type: corev1.PodReady, Status: corev1.ConditionFalse}
	for _, tc := range []struct {
		name            string
		oldNode, node   string
		conds           []corev1.PodCondition
		wantScheduled   corev1.ConditionStatus // "" for no condition
		wantConditions  int
		wantReasonEmpty bool
	}{
		{name: "binding replaces Unschedulable", node: "n1", conds: []corev1.PodCondition{ready, unschedulable}, wantScheduled: corev1.ConditionTrue, wantConditions: 2, wantReasonEmpty: true},
		{name: "binding adds the condition", node: "n1", wantScheduled: corev1.ConditionTrue, wantConditions: 1, wantReasonEmpty: true},
		{name: "an update of an unbound pod leaves it", conds: []corev1.PodCondition{unschedulable}, wantScheduled: corev1.ConditionFalse, wantConditions: 1},
		{name: "an update of a bound pod leaves it", oldNode: "n1", node: "n1", wantConditions: 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			old := &corev1.Pod{Spec: corev1.PodSpec{NodeName: tc.oldNode}}
			pod := &corev1.Pod{Spec: corev1.PodSpec{NodeName: tc.node}, Status: corev1.PodStatus{Conditions: append([]corev1.PodCondition{}, tc.conds...)}}
			markScheduled(pod, old)
			if len(pod.Status.Conditions) != tc.wantConditions {
				t.Fatalf("conditions %+v, want %d", pod.Status.Conditions, tc.wantConditions)
			}
			var got corev1.ConditionStatus
			for _, c := range pod.Status.Conditions {
				if c.Type == corev1.PodScheduled {
					got = c.Status
					if tc.wantReasonEmpty && (c.Reason != "" || c.Message != "") {
						t.Errorf("PodScheduled kept reason %q message %q", c.Reason, c.Message)
					}
				}
			}
			if got != tc.wantScheduled {
				t.Errorf("PodScheduled %q, want %q", got, tc.wantScheduled)
			}
		})
	}
}
