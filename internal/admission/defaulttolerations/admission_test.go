package defaulttolerations

import (
	"context"
	"reflect"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apiserver/pkg/admission"
)

func seconds(s int64) *int64 { return &s }

func TestAdmit(t *testing.T) {
	notReady := corev1.Toleration{Key: corev1.TaintNodeNotReady, Operator: corev1.TolerationOpExists, Effect: corev1.TaintEffectNoExecute, TolerationSeconds: seconds(300)}
	unreachable := corev1.Toleration{Key: corev1.TaintNodeUnreachable, Operator: corev1.TolerationOpExists, Effect: corev1.TaintEffectNoExecute, TolerationSeconds: seconds(300)}
	own := corev1.Toleration{Key: corev1.TaintNodeUnreachable, Operator: corev1.TolerationOpExists, Effect: corev1.TaintEffectNoExecute, TolerationSeconds: seconds(10)}
	gpu := corev1.Toleration{Key: "gpu", Operator: corev1.TolerationOpExists, Effect: corev1.TaintEffectNoSchedule}
	tests := []struct {
		name        string
		op          admission.Operation
		subresource string
		have        []corev1.Toleration
		want        []corev1.Toleration
	}{
		{name: "none: both added", op: admission.Create, want: []corev1.Toleration{notReady, unreachable}},
		{name: "other tolerations kept first", op: admission.Create, have: []corev1.Toleration{gpu}, want: []corev1.Toleration{gpu, notReady, unreachable}},
		{name: "its own unreachable toleration stays, not-ready added", op: admission.Create, have: []corev1.Toleration{own}, want: []corev1.Toleration{own, notReady}},
		{name: "a toleration of the key with no effect counts", op: admission.Create,
			have: []corev1.Toleration{{Key: corev1.TaintNodeNotReady, Operator: corev1.TolerationOpExists}},
			want: []corev1.Toleration{{Key: corev1.TaintNodeNotReady, Operator: corev1.TolerationOpExists}, unreachable}},
		{name: "a toleration of everything counts for both", op: admission.Create,
			have: []corev1.Toleration{{Operator: corev1.TolerationOpExists}}, want: []corev1.Toleration{{Operator: corev1.TolerationOpExists}}},
		{name: "a NoSchedule toleration of the key does not count", op: admission.Create,
			have: []corev1.Toleration{{Key: corev1.TaintNodeUnreachable, Operator: corev1.TolerationOpExists, Effect: corev1.TaintEffectNoSchedule}},
			want: []corev1.Toleration{{Key: corev1.TaintNodeUnreachable, Operator: corev1.TolerationOpExists, Effect: corev1.TaintEffectNoSchedule}, notReady, unreachable}},
		{name: "status writes are left alone", op: admission.Create, subresource: "status"},
	}
	p := New(300, 300)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "p", Namespace: "default"}, Spec: corev1.PodSpec{Tolerations: tt.have}}
			if !p.Handles(tt.op) {
				t.Fatalf("does not handle %s", tt.op)
			}
			a := admission.NewAttributesRecord(pod, nil, corev1.SchemeGroupVersion.WithKind("Pod"), "default", "p",
				corev1.SchemeGroupVersion.WithResource("pods"), tt.subresource, tt.op, &metav1.CreateOptions{}, false, nil)
			if err := p.Admit(context.Background(), a, nil); err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(pod.Spec.Tolerations, tt.want) {
				t.Errorf("tolerations %+v, want %+v", pod.Spec.Tolerations, tt.want)
			}
		})
	}
	if p.Handles(admission.Update) {
		t.Error("handles updates")
	}
	// Each pod gets its own seconds, not one shared pointer.
	a, b := &corev1.Pod{}, &corev1.Pod{}
	for _, pod := range []*corev1.Pod{a, b} {
		attrs := admission.NewAttributesRecord(pod, nil, corev1.SchemeGroupVersion.WithKind("Pod"), "default", "p",
			corev1.SchemeGroupVersion.WithResource("pods"), "", admission.Create, &metav1.CreateOptions{}, false, nil)
		if err := p.Admit(context.Background(), attrs, nil); err != nil {
			t.Fatal(err)
		}
	}
	*a.Spec.Tolerations[0].TolerationSeconds = 1
	if *b.Spec.Tolerations[0].TolerationSeconds != 300 {
		t.Error("pods share their toleration seconds")
	}
}
