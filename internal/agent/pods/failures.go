package pods

import (
	"context"
	"errors"
	"time"

	corev1 "k8s.io/api/core/v1"
)

// A container that cannot start is reported as the kubelet reports one:
// it waits with a reason in its status, and a Warning event on the pod
// (reason Failed, "Error: " and the error) says why where kubectl
// describe shows it. What may come later (a ConfigMap or Secret, an
// image's host file once built) is tried again with back-off; what
// cannot change while the agent runs (an image missing from its table,
// an invalid image name) is not.

// Back-off between attempts to start a container that could not start,
// the kubelet's for images: 10 s doubling to 5 min.
const (
	startRetryFirst = 10 * time.Second
	startRetryMax   = 5 * time.Minute
)

// Event reasons of containers that cannot start, the kubelet's.
const (
	EventFailed        = "Failed"
	EventInspectFailed = "InspectFailed"
	EventFailedMount   = "FailedMount"
)

// failureReason is the waiting reason of an error containerProcess gave.
func failureReason(err error) string {
	var ce *ContainerConfigError
	if errors.As(err, &ce) {
		return ce.Reason
	}
	return "RunContainerError"
}

// retriable reports whether an attempt later may succeed where this one
// failed for reason.
func retriable(reason string) bool {
	switch reason {
	case "ImageNotInTable", "InvalidImageName", "NoCommand":
		return false // the image table is the agent's for its life
	}
	return true
}

// cannotStart reports why a container cannot start: its waiting state,
// a log line and a Warning event. It reports whether the state changed.
func (m *Manager) cannotStart(pod *corev1.Pod, c corev1.Container, cr *containerRun, err error) bool {
	w := &corev1.ContainerStateWaiting{Reason: failureReason(err), Message: err.Error()}
	cr.mu.Lock()
	old := cr.state.Waiting
	changed := old == nil || old.Reason != w.Reason || old.Message != w.Message
	cr.state = corev1.ContainerState{Waiting: w}
	cr.mu.Unlock()
	if changed {
		m.Log.Warn("container cannot start", "pod", pod.Namespace+"/"+pod.Name, "container", c.Name, "reason", w.Reason, "err", err)
	}
	if m.Events != nil {
		reason := EventFailed
		if w.Reason == "InvalidImageName" {
			reason = EventInspectFailed
		}
		// Every attempt: the event correlator counts repeats in one event.
		m.Events.Eventf(objectRef(pod, c.Name), corev1.EventTypeWarning, reason, "Error: %v", err)
	}
	return changed
}

// objectRef is a pod, or one of its containers, as events name it.
func objectRef(pod *corev1.Pod, container string) *corev1.ObjectReference {
	ref := &corev1.ObjectReference{
		Kind: "Pod", APIVersion: "v1", Namespace: pod.Namespace, Name: pod.Name, UID: pod.UID,
		ResourceVersion: pod.ResourceVersion,
	}
	if container != "" {
		ref.FieldPath = "spec.containers{" + container + "}"
	}
	return ref
}

// waitToRetryStart waits before the next attempt to start a container
// that failed for reason, doubling *backoff. It reports false when no
// attempt is to follow: the failure is permanent or ctx ended.
func (m *Manager) waitToRetryStart(ctx context.Context, reason string, backoff *time.Duration) bool {
	if !retriable(reason) {
		return false
	}
	*backoff = min(max(2**backoff, startRetryFirst), startRetryMax)
	select {
	case <-ctx.Done():
		return false
	case <-m.clock().After(*backoff):
		return true
	}
}
