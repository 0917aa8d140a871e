package selectorindex

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/sets"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes/fake"
	endpointsliceutil "k8s.io/endpointslice/util"
)

// TestIndexAgreesWithScanning: random Pods and Services over a few labels;
// every lookup must equal what listing and matching everything gives.
func TestIndexAgreesWithScanning(t *testing.T) {
	factory := informers.NewSharedInformerFactory(fake.NewClientset(), 0)
	podInf, svcInf := factory.Core().V1().Pods().Informer(), factory.Core().V1().Services().Informer()
	for range 2 { // twice: idempotent
		if err := AddPodIndex(podInf); err != nil {
			t.Fatal(err)
		}
		if err := AddServiceIndex(svcInf); err != nil {
			t.Fatal(err)
		}
	}
	rnd := rand.New(rand.NewPCG(1, 2))
	randLabels := func(n int) map[string]string {
		m := map[string]string{}
		for range n {
			m[fmt.Sprintf("k%d", rnd.IntN(3))] = fmt.Sprintf("v%d", rnd.IntN(3))
		}
		return m
	}
	var pods []*v1.Pod
	var svcs []*v1.Service
	for i := range 300 {
		ns := []string{"a", "b"}[i%2]
		p := &v1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: fmt.Sprintf("p%d", i), Labels: randLabels(rnd.IntN(4))}}
		pods = append(pods, p)
		if err := podInf.GetIndexer().Add(p); err != nil {
			t.Fatal(err)
		}
		if i%3 == 0 {
			s := &v1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: fmt.Sprintf("s%d", i)}, Spec: v1.ServiceSpec{Selector: randLabels(1 + rnd.IntN(2))}}
			svcs = append(svcs, s)
			if err := svcInf.GetIndexer().Add(s); err != nil {
				t.Fatal(err)
			}
		}
	}
	for _, s := range svcs {
		got, err := PodsFor(podInf.GetIndexer(), s.Namespace, s.Spec.Selector)
		if err != nil {
			t.Fatal(err)
		}
		var want, have []string
		for _, p := range pods {
			if p.Namespace == s.Namespace && labels.SelectorFromSet(s.Spec.Selector).Matches(labels.Set(p.Labels)) {
				want = append(want, p.Name)
			}
		}
		for _, p := range got {
			have = append(have, p.Name)
		}
		slices.Sort(want)
		slices.Sort(have)
		if !slices.Equal(want, have) {
			t.Fatalf("PodsFor(%s/%s %v) = %v, want %v", s.Namespace, s.Name, s.Spec.Selector, have, want)
		}
	}
	scan := func(ns string, l map[string]string) sets.Set[string] {
		out := sets.New[string]()
		for _, s := range svcs {
			if s.Namespace == ns && labels.SelectorFromSet(s.Spec.Selector).Matches(labels.Set(l)) {
				out.Insert(ns + "/" + s.Name)
			}
		}
		return out
	}
	for _, p := range pods {
		got, err := ServicesFor(svcInf.GetIndexer(), p.Namespace, p.Labels)
		if err != nil {
			t.Fatal(err)
		}
		if want := scan(p.Namespace, p.Labels); !got.Equal(want) {
			t.Fatalf("ServicesFor(%s %v) = %v, want %v", p.Name, p.Labels, sets.List(got), sets.List(want))
		}
		// A label change alone concerns the Services that gained or lost it.
		old := randLabels(2)
		key := &endpointsliceutil.PodProjectionKey{Namespace: p.Namespace, Labels: p.Labels, OldLabels: old}
		got, _ = ServicesToUpdate(svcInf.GetIndexer(), key)
		if want := scan(p.Namespace, p.Labels).SymmetricDifference(scan(p.Namespace, old)); !got.Equal(want) {
			t.Fatalf("ServicesToUpdate labels-only = %v, want %v", sets.List(got), sets.List(want))
		}
		key.PodChanged = true
		got, _ = ServicesToUpdate(svcInf.GetIndexer(), key)
		if want := scan(p.Namespace, p.Labels).Union(scan(p.Namespace, old)); !got.Equal(want) {
			t.Fatalf("ServicesToUpdate changed pod = %v, want %v", sets.List(got), sets.List(want))
		}
	}
}
