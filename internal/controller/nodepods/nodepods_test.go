package nodepods

import (
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes/fake"
)

func TestOn(t *testing.T) {
	inf := informers.NewSharedInformerFactory(fake.NewClientset(), 0).Core().V1().Pods().Informer()
	for range 2 {
		if err := AddIndex(inf); err != nil {
			t.Fatal(err)
		}
	}
	pod := func(name, node string) *corev1.Pod {
		return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "default"}, Spec: corev1.PodSpec{NodeName: node}}
	}
	for _, p := range []*corev1.Pod{pod("a1", "a"), pod("a2", "a"), pod("b1", "b"), pod("pending", "")} {
		if err := inf.GetIndexer().Add(p); err != nil {
			t.Fatal(err)
		}
	}
	for node, want := range map[string]int{"a": 2, "b": 1, "c": 0} {
		got, err := On(inf.GetIndexer(), node)
		if err != nil || len(got) != want {
			t.Errorf("On(%s) = %d pods, %v; want %d", node, len(got), err, want)
		}
		for _, p := range got {
			if p.Spec.NodeName != node {
				t.Errorf("On(%s) returned %s on %s", node, p.Name, p.Spec.NodeName)
			}
		}
	}
}
