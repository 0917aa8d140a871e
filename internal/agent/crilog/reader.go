package crilog

import (
	"context"
	"fmt"
	"io"
	"time"

	corev1 "k8s.io/api/core/v1"
	internalapi "k8s.io/cri-api/pkg/apis"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
	"k8s.io/cri-client/pkg/logs"
)

// ReadOptions select what Read writes, as PodLogOptions do.
type ReadOptions = logs.LogOptions

// NewReadOptions turns a pods/log request's options into ReadOptions, as
// the kubelet does: sinceSeconds counts back from now, and sinceTime wins
// when both are given.
func NewReadOptions(o *corev1.PodLogOptions, now time.Time) *ReadOptions {
	r := &ReadOptions{
		TailLines:  o.TailLines,
		LimitBytes: o.LimitBytes,
		Follow:     o.Follow,
		Timestamp:  o.Timestamps,
	}
	if o.SinceSeconds != nil {
		r.Since = now.Add(-time.Duration(*o.SinceSeconds) * time.Second)
	}
	if o.SinceTime != nil && (o.SinceSeconds == nil || o.SinceTime.After(r.Since)) {
		r.Since = o.SinceTime.Time
	}
	return r
}

// Read writes the log at path to stdout and stderr (nil skips a stream).
// When following, it keeps reading, across rotations, while running
// reports the container instance as running, and stops at the end of the
// file once it does not (or when ctx ends).
func Read(ctx context.Context, path string, opts *ReadOptions, running func() bool, stdout, stderr io.Writer) error {
	if running == nil {
		running = func() bool { return false }
	}
	if err := logs.ReadLogs(ctx, path, path, opts, instanceStatus{running: running}, stdout, stderr); err != nil {
		return fmt.Errorf("reading container log: %w", err)
	}
	return nil
}

// instanceStatus answers the one question the kubelet's reader asks its
// runtime while following: is the container still running. The rest of
// the runtime interface is never called.
type instanceStatus struct {
	internalapi.RuntimeService
	running func() bool
}

func (s instanceStatus) ContainerStatus(_ context.Context, id string, _ bool) (*runtimeapi.ContainerStatusResponse, error) {
	state := runtimeapi.ContainerState_CONTAINER_EXITED
	if s.running() {
		state = runtimeapi.ContainerState_CONTAINER_RUNNING
	}
	return &runtimeapi.ContainerStatusResponse{Status: &runtimeapi.ContainerStatus{Id: id, State: state}}, nil
}
