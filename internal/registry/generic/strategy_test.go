package generic

import (
	"context"
	"testing"

	corev1 "k8s.io/api/core/v1"
	apiequality "k8s.io/apimachinery/pkg/api/equality"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/structured-merge-diff/v6/fieldpath"
)

// A status write keeps the stored spec whatever the client sent, takes its
// status, and its metadata except what KeepMeta names.
func TestStatusStrategyPrepareForUpdate(t *testing.T) {
	owner := []metav1.OwnerReference{{APIVersion: "v1", Kind: "Node", Name: "n1", UID: "u1"}}
	stored := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "p", Namespace: "default", ResourceVersion: "5", Labels: map[string]string{"app": "web"},
			Annotations: map[string]string{"a": "1"}, OwnerReferences: owner},
		Spec:   corev1.PodSpec{NodeName: "n1", ActiveDeadlineSeconds: ptr.To[int64](10)},
		Status: corev1.PodStatus{Phase: corev1.PodPending},
	}
	sent := stored.DeepCopy()
	sent.ResourceVersion = "5"
	sent.Spec.NodeName = "n2"
	sent.Spec.ActiveDeadlineSeconds = ptr.To[int64](20)
	sent.Labels = map[string]string{"app": "db"}
	sent.Annotations = map[string]string{"a": "2"}
	sent.OwnerReferences = nil
	sent.Status.Phase = corev1.PodRunning

	for _, tt := range []struct {
		name string
		keep []MetaField
		want func(*corev1.Pod)
	}{
		{"metadata as sent (core/v1 Services, Nodes)", nil, func(p *corev1.Pod) {
			p.Labels, p.Annotations, p.OwnerReferences = sent.Labels, sent.Annotations, nil
		}},
		{"owner references kept (Pods)", []MetaField{MetaOwnerReferences, MetaDeletionTimestamp}, func(p *corev1.Pod) {
			p.Labels, p.Annotations = sent.Labels, sent.Annotations
		}},
		{"all metadata kept (ServiceCIDRs)", KeepAllMeta, func(*corev1.Pod) {}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			s := &StatusStrategy{Strategy: &Strategy{HasStatus: true, Namespaced: true}, KeepMeta: tt.keep}
			obj := sent.DeepCopy()
			s.PrepareForUpdate(context.Background(), obj, stored.DeepCopy())
			want := stored.DeepCopy()
			want.Status = sent.Status
			tt.want(want)
			if !apiequality.Semantic.DeepEqual(obj, want) {
				t.Errorf("prepared\n%+v\nwant\n%+v", obj, want)
			}
		})
	}
}

func TestStatusStrategyResetFields(t *testing.T) {
	s := &StatusStrategy{Strategy: &Strategy{APIVersion: "v1"}, KeepMeta: []MetaField{MetaOwnerReferences}}
	got := s.GetResetFields()["v1"]
	for _, p := range []fieldpath.Path{fieldpath.MakePathOrDie("spec"), fieldpath.MakePathOrDie("metadata", "ownerReferences")} {
		if !got.Has(p) {
			t.Errorf("reset fields %v lack %v", got, p)
		}
	}
	if got.Has(fieldpath.MakePathOrDie("metadata", "labels")) {
		t.Errorf("reset fields %v include metadata.labels, which a status write may change", got)
	}
}
