package events

import (
	"context"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes/fake"
)

// Recorders of several components share one broadcaster, and each event
// reaches the API with its own component as source.
func TestOneBroadcasterManyComponents(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	client := fake.NewClientset()
	b := Start(ctx, client)
	defer b.Shutdown()
	node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n1", UID: "u1"}}
	want := map[string]string{"node-ipam-controller": "CIDRNotAvailable", "duet-agent": "MasqueradeConfigApplied"}
	b.Recorder(corev1.EventSource{Component: "node-ipam-controller"}).Event(node, corev1.EventTypeWarning, "CIDRNotAvailable", "full")
	b.Recorder(corev1.EventSource{Component: "duet-agent", Host: "n1"}).Event(node, corev1.EventTypeNormal, "MasqueradeConfigApplied", "ok")
	Discard.Event(node, corev1.EventTypeNormal, "Dropped", "never written")

	var got map[string]string
	err := wait.PollUntilContextTimeout(ctx, 10*time.Millisecond, 20*time.Second, true, func(ctx context.Context) (bool, error) {
		list, err := client.CoreV1().Events(metav1.NamespaceAll).List(ctx, metav1.ListOptions{})
		if err != nil {
			return false, err
		}
		got = map[string]string{}
		for _, e := range list.Items {
			got[e.Source.Component] = e.Reason
			if e.Source.Component == "duet-agent" && e.Source.Host != "n1" {
				t.Errorf("agent event from host %q, want n1", e.Source.Host)
			}
		}
		return len(got) == len(want), nil
	})
	if err != nil {
		t.Fatalf("events written: %v, want %v (%v)", got, want, err)
	}
	for c, r := range want {
		if got[c] != r {
			t.Errorf("component %s recorded %q, want %q", c, got[c], r)
		}
	}
}
