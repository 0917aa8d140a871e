package nodelifecycle

import (
	"reflect"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func TestDesiredTaints(t *testing.T) {
	now := time.Unix(5000, 0)
	earlier := metav1.NewTime(time.Unix(4000, 0))
	at := metav1.NewTime(now)
	ready := func(s corev1.ConditionStatus) corev1.NodeCondition {
		return corev1.NodeCondition{Type: corev1.NodeReady, Status: s}
	}
	taint := func(key string, effect corev1.TaintEffect, added *metav1.Time) corev1.Taint {
		return corev1.Taint{Key: key, Effect: effect, TimeAdded: added}
	}
	admin := taint("dedicated", corev1.TaintEffectNoSchedule, nil)
	tests := []struct {
		name        string
		conditions  []corev1.NodeCondition
		cordoned    bool
		have        []corev1.Taint
		want        []corev1.Taint
		wantChanged bool
	}{
		{name: "ready node, no taints", conditions: []corev1.NodeCondition{ready(corev1.ConditionTrue)}},
		{name: "a node that never posted Ready is not tainted (until it is Unknown)"},
		{name: "Ready=False: not-ready, NoSchedule and NoExecute (timed)", conditions: []corev1.NodeCondition{ready(corev1.ConditionFalse)},
			want:        []corev1.Taint{taint(corev1.TaintNodeNotReady, corev1.TaintEffectNoSchedule, nil), taint(corev1.TaintNodeNotReady, corev1.TaintEffectNoExecute, &at)},
			wantChanged: true},
		{name: "Ready=Unknown: unreachable, keeping the administrator's taints first", conditions: []corev1.NodeCondition{ready(corev1.ConditionUnknown)},
			have:        []corev1.Taint{admin},
			want:        []corev1.Taint{admin, taint(corev1.TaintNodeUnreachable, corev1.TaintEffectNoSchedule, nil), taint(corev1.TaintNodeUnreachable, corev1.TaintEffectNoExecute, &at)},
			wantChanged: true},
		{name: "still Unknown: taints kept with their time", conditions: []corev1.NodeCondition{ready(corev1.ConditionUnknown)},
			have: []corev1.Taint{taint(corev1.TaintNodeUnreachable, corev1.TaintEffectNoExecute, &earlier), taint(corev1.TaintNodeUnreachable, corev1.TaintEffectNoSchedule, nil)},
			want: []corev1.Taint{taint(corev1.TaintNodeUnreachable, corev1.TaintEffectNoExecute, &earlier), taint(corev1.TaintNodeUnreachable, corev1.TaintEffectNoSchedule, nil)}},
		{name: "unreachable becomes not-ready", conditions: []corev1.NodeCondition{ready(corev1.ConditionFalse)},
			have:        []corev1.Taint{taint(corev1.TaintNodeUnreachable, corev1.TaintEffectNoSchedule, nil), taint(corev1.TaintNodeUnreachable, corev1.TaintEffectNoExecute, &earlier)},
			want:        []corev1.Taint{taint(corev1.TaintNodeNotReady, corev1.TaintEffectNoSchedule, nil), taint(corev1.TaintNodeNotReady, corev1.TaintEffectNoExecute, &at)},
			wantChanged: true},
		{name: "back to Ready: managed taints go, others stay", conditions: []corev1.NodeCondition{ready(corev1.ConditionTrue)},
			have:        []corev1.Taint{taint(corev1.TaintNodeUnreachable, corev1.TaintEffectNoExecute, &earlier), admin, taint(corev1.TaintNodeUnreachable, corev1.TaintEffectNoSchedule, nil)},
			want:        []corev1.Taint{admin},
			wantChanged: true},
		{name: "another effect of a managed key is the administrator's", conditions: []corev1.NodeCondition{ready(corev1.ConditionTrue)},
			have: []corev1.Taint{taint(corev1.TaintNodeNotReady, corev1.TaintEffectPreferNoSchedule, nil)},
			want: []corev1.Taint{taint(corev1.TaintNodeNotReady, corev1.TaintEffectPreferNoSchedule, nil)}},
		{name: "cordoned", conditions: []corev1.NodeCondition{ready(corev1.ConditionTrue)}, cordoned: true,
			want: []corev1.Taint{taint(corev1.TaintNodeUnschedulable, corev1.TaintEffectNoSchedule, nil)}, wantChanged: true},
		{name: "uncordoned", conditions: []corev1.NodeCondition{ready(corev1.ConditionTrue)},
			have: []corev1.Taint{taint(corev1.TaintNodeUnschedulable, corev1.TaintEffectNoSchedule, nil)}, wantChanged: true},
		{name: "pressure and network", conditions: []corev1.NodeCondition{ready(corev1.ConditionTrue),
			{Type: corev1.NodeMemoryPressure, Status: corev1.ConditionTrue}, {Type: corev1.NodeDiskPressure, Status: corev1.ConditionFalse},
			{Type: corev1.NodePIDPressure, Status: corev1.ConditionTrue}, {Type: corev1.NodeNetworkUnavailable, Status: corev1.ConditionTrue}},
			want: []corev1.Taint{taint(corev1.TaintNodeMemoryPressure, corev1.TaintEffectNoSchedule, nil), taint(corev1.TaintNodePIDPressure, corev1.TaintEffectNoSchedule, nil),
				taint(corev1.TaintNodeNetworkUnavailable, corev1.TaintEffectNoSchedule, nil)},
			wantChanged: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			node := &corev1.Node{Spec: corev1.NodeSpec{Unschedulable: tt.cordoned, Taints: tt.have}, Status: corev1.NodeStatus{Conditions: tt.conditions}}
			got, changed := desiredTaints(node, now)
			if changed != tt.wantChanged || !reflect.DeepEqual(got, tt.want) {
				t.Errorf("desiredTaints = %+v, changed %v; want %+v, changed %v", got, changed, tt.want, tt.wantChanged)
			}
		})
	}
}

func TestUnknownConditions(t *testing.T) {
	now := time.Unix(5000, 0)
	created := metav1.NewTime(time.Unix(1000, 0))
	node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{CreationTimestamp: created}, Status: corev1.NodeStatus{Conditions: []corev1.NodeCondition{
		{Type: corev1.NodeReady, Status: corev1.ConditionTrue, Reason: "DuetAgentReady", LastHeartbeatTime: metav1.NewTime(time.Unix(4000, 0))},
	}}}
	got, changed := unknownConditions(node, now)
	if !changed || node.Status.Conditions[0].Status != corev1.ConditionTrue {
		t.Fatalf("changed %v; the original was modified: %+v", changed, node.Status.Conditions)
	}
	if len(got.Status.Conditions) != 4 {
		t.Fatalf("conditions %+v, want Ready and three pressure conditions", got.Status.Conditions)
	}
	for _, c := range got.Status.Conditions {
		want := ReasonStatusNeverUpdated
		if c.Type == corev1.NodeReady {
			want = ReasonStatusUnknown
			if !c.LastHeartbeatTime.Equal(&node.Status.Conditions[0].LastHeartbeatTime) {
				t.Errorf("Ready's last heartbeat changed to %v", c.LastHeartbeatTime)
			}
		}
		if c.Status != corev1.ConditionUnknown || c.Reason != want || !c.LastTransitionTime.Time.Equal(now) {
			t.Errorf("%s: %+v, want Unknown %s at %v", c.Type, c, want, now)
		}
	}
	if _, again := unknownConditions(got, now.Add(time.Minute)); again {
		t.Errorf("an Unknown node changed again")
	}
}
