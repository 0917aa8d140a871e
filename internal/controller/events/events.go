// Package events gives a process its one event broadcaster. Every
// controller and loop of the process records through a recorder of its
// own component, and the events of all of them reach the API through one
// sink, one correlator (which folds repeats and rate-limits per component
// and object, so components do not throttle each other) and one goroutine,
// as in kube-controller-manager.
package events

import (
	"context"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	typedcorev1 "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/client-go/tools/record"
)

// Broadcaster is a process's event broadcaster.
type Broadcaster struct {
	b record.EventBroadcaster
}

// Start returns a broadcaster that writes events through client until ctx
// is done (or Shutdown).
func Start(ctx context.Context, client kubernetes.Interface) *Broadcaster {
	b := record.NewBroadcaster(record.WithContext(ctx))
	b.StartRecordingToSink(&typedcorev1.EventSinkImpl{Interface: client.CoreV1().Events("")})
	return &Broadcaster{b: b}
}

// Recorder returns a recorder of events from source: the component and,
// for a node's agent, the host.
func (b *Broadcaster) Recorder(source corev1.EventSource) record.EventRecorder {
	return b.b.NewRecorder(scheme.Scheme, source)
}

// Shutdown stops the broadcaster; events recorded later are dropped.
func (b *Broadcaster) Shutdown() { b.b.Shutdown() }

// Discard is the recorder of a component given none: it drops every
// event.
var Discard record.EventRecorder = discard{}

type discard struct{}

func (discard) Event(runtime.Object, string, string, string)          {}
func (discard) Eventf(runtime.Object, string, string, string, ...any) {}
func (discard) AnnotatedEventf(runtime.Object, map[string]string, string, string, string, ...any) {
}
