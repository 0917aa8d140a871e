package apps

import (
	"context"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	autoscalingv1 "k8s.io/api/autoscaling/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apiserver/pkg/registry/rest"
	"k8s.io/utils/ptr"
)

func TestScaleUpdate(t *testing.T) {
	stored := newDeployment(func(d *appsv1.Deployment) {
		d.UID = "uid-web"
		d.Spec.Replicas = ptr.To[int32](3)
		d.Spec.Selector.MatchLabels["tier"] = "front"
		d.Status.Replicas = 2
	})
	scale, err := deploymentScale.scale(stored)
	if err != nil {
		t.Fatal(err)
	}
	want := autoscalingv1.Scale{
		ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: "default", UID: "uid-web", ResourceVersion: "1"},
		Spec:       autoscalingv1.ScaleSpec{Replicas: 3},
		Status:     autoscalingv1.ScaleStatus{Replicas: 2, Selector: "app=web,tier=front"},
	}
	if !equal(*scale, want) {
		t.Fatalf("scale of the Deployment = %+v, want %+v", *scale, want)
	}

	for _, tc := range []struct {
		name     string
		scale    func(*autoscalingv1.Scale)
		old      func(*appsv1.Deployment)
		replicas int32
		check    func(error) bool
	}{
		{"replicas", func(s *autoscalingv1.Scale) { s.Spec.Replicas = 5 }, nil, 5, nil},
		{"to zero", func(s *autoscalingv1.Scale) { s.Spec.Replicas = 0 }, nil, 0, nil},
		{"negative", func(s *autoscalingv1.Scale) { s.Spec.Replicas = -1 }, nil, 0, func(err error) bool {
			st, ok := err.(apierrors.APIStatus)
			return apierrors.IsInvalid(err) && ok && len(st.Status().Details.Causes) == 1 && st.Status().Details.Causes[0].Field == "spec.replicas"
		}},
		{"another object's UID", func(s *autoscalingv1.Scale) { s.UID = "uid-other" }, nil, 0, apierrors.IsConflict},
		{"no object stored", func(s *autoscalingv1.Scale) { s.Spec.Replicas = 5 }, func(d *appsv1.Deployment) { d.ResourceVersion = "" }, 0, apierrors.IsNotFound},
	} {
		t.Run(tc.name, func(t *testing.T) {
			old := stored.DeepCopy()
			if tc.old != nil {
				tc.old(old)
			}
			s := want.DeepCopy()
			tc.scale(s)
			u := &scaleUpdate{name: "web", req: rest.DefaultUpdatedObjectInfo(s), kind: deploymentScale}
			obj, err := u.UpdatedObject(context.Background(), old)
			if tc.check != nil {
				if err == nil || !tc.check(err) {
					t.Fatalf("err = %v, want another", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			d := obj.(*appsv1.Deployment)
			if *d.Spec.Replicas != tc.replicas || d.Spec.Template.Spec.Containers[0].Image != stored.Spec.Template.Spec.Containers[0].Image {
				t.Errorf("replicas %d (template image %s), want %d and the template unchanged", *d.Spec.Replicas, d.Spec.Template.Spec.Containers[0].Image, tc.replicas)
			}
			if *stored.Spec.Replicas != 3 {
				t.Error("the stored object was changed")
			}
		})
	}
}

// The ReplicaSet's scale reads and writes its own fields.
func TestReplicaSetScale(t *testing.T) {
	rs := &appsv1.ReplicaSet{
		ObjectMeta: metav1.ObjectMeta{Name: "web-1", Namespace: "default", ResourceVersion: "4"},
		Spec:       appsv1.ReplicaSetSpec{Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "web"}}},
		Status:     appsv1.ReplicaSetStatus{Replicas: 1},
	}
	scale, err := replicaSetScale.scale(rs)
	if err != nil {
		t.Fatal(err)
	}
	if scale.Spec.Replicas != 1 || scale.Status.Replicas != 1 || scale.Status.Selector != "app=web" {
		t.Errorf("scale of a ReplicaSet without replicas = %+v, want 1 (the default), 1, app=web", scale)
	}
	replicaSetScale.setReplicas(rs, 4)
	if *rs.Spec.Replicas != 4 {
		t.Errorf("replicas = %d after setting 4", *rs.Spec.Replicas)
	}
}
