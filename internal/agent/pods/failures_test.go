package pods

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"

	"github.com/duet-net/duet/internal/agent/images"
)

// The waiting reason of each way an image cannot be run, and what its
// message names.
func TestImageFailureReasons(t *testing.T) {
	table := images.New()
	gone := filepath.Join(t.TempDir(), "gone")
	if err := table.Set("example.com/gone", images.Image{Entrypoint: []string{"/gone"}, Files: map[string]string{"/gone": gone}}); err != nil {
		t.Fatal(err)
	}
	if err := table.Set("example.com/empty", images.Image{}); err != nil {
		t.Fatal(err)
	}
	m := &Manager{Images: table}
	for _, tc := range []struct {
		name    string
		c       corev1.Container
		reason  string
		message []string
	}{
		{"unknown image, no command", corev1.Container{Image: "nginx:1.27"}, "ImageNotInTable", []string{`"nginx:1.27"`, "--images"}},
		{"the image's host file is missing", corev1.Container{Image: "example.com/gone:1"}, "ImageFileMissing", []string{"example.com/gone:1", gone, "/gone"}},
		{"the image's host file is missing, even with a command", corev1.Container{Image: "example.com/gone", Command: []string{"/bin/true"}}, "ImageFileMissing", []string{gone}},
		{"a reference that does not parse", corev1.Container{Image: "Bad Name"}, "InvalidImageName", []string{`"Bad Name"`}},
		{"an image with nothing to run and no command", corev1.Container{Image: "example.com/empty"}, "NoCommand", []string{"example.com/empty"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, _, err := m.resolveImage(tc.c)
			if got := failureReason(err); err == nil || got != tc.reason {
				t.Fatalf("err = %v (reason %s), want reason %s", err, got, tc.reason)
			}
			for _, s := range tc.message {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("message %q does not name %q", err, s)
				}
			}
		})
	}
	if got := failureReason(errors.New("exec failed")); got != "RunContainerError" {
		t.Errorf("failureReason of a plain error = %s", got)
	}
}

// waitingOf is the waiting state of a pod's one container, or nil.
func waitingOf(p *corev1.Pod) *corev1.ContainerStateWaiting {
	if len(p.Status.ContainerStatuses) != 1 {
		return nil
	}
	return p.Status.ContainerStatuses[0].State.Waiting
}

// eventRecorder keeps the events recorded, with the object each is on.
type eventRecorder struct{ events chan string }

func newEventRecorder() *eventRecorder { return &eventRecorder{events: make(chan string, 100)} }

func (r *eventRecorder) Event(obj runtime.Object, typ, reason, msg string) {
	what := fmt.Sprintf("%T", obj)
	if ref, ok := obj.(*corev1.ObjectReference); ok {
		what = fmt.Sprintf("%s %s/%s %s %s", ref.Kind, ref.Namespace, ref.Name, ref.UID, ref.FieldPath)
	}
	r.events <- fmt.Sprintf("%s: %s %s %s", what, typ, reason, msg)
}

func (r *eventRecorder) Eventf(obj runtime.Object, typ, reason, format string, args ...any) {
	r.Event(obj, typ, reason, fmt.Sprintf(format, args...))
}

func (r *eventRecorder) AnnotatedEventf(obj runtime.Object, _ map[string]string, typ, reason, format string, args ...any) {
	r.Eventf(obj, typ, reason, format, args...)
}

// next is the next event recorded, failing the test after a while.
func (r *eventRecorder) next(t *testing.T) string {
	t.Helper()
	select {
	case e := <-r.events:
		return e
	case <-time.After(10 * time.Second):
		t.Fatal("no event within 10 s")
		return ""
	}
}

// A container whose image is not in the table waits with
// ImageNotInTable, and a Warning event on the pod says which image and
// what to do; nothing runs, and nothing is tried again.
func TestImageNotInTableReported(t *testing.T) {
	e := newTestEnv(t)
	rec := newEventRecorder()
	e.m.Events = rec
	p := newPod("web", corev1.RestartPolicyAlways, "app")
	p.Spec.Containers[0].Image, p.Spec.Containers[0].Command = "nginx:1.27", nil
	e.create(t, p)
	got := e.sync(t, "web")
	w := waitingOf(got)
	if w == nil || w.Reason != "ImageNotInTable" || !strings.Contains(w.Message, "--images") {
		t.Fatalf("container state %+v, want waiting with ImageNotInTable naming --images", got.Status.ContainerStatuses)
	}
	if got.Status.Phase != corev1.PodPending {
		t.Errorf("phase %s, want Pending", got.Status.Phase)
	}
	ev := rec.next(t)
	for _, want := range []string{"Pod default/web uid-web spec.containers{app}: Warning Failed Error: ", `"nginx:1.27"`, "--images"} {
		if !strings.Contains(ev, want) {
			t.Errorf("event %q lacks %q", ev, want)
		}
	}
	if n := e.run.count(); n != 0 {
		t.Errorf("%d processes started", n)
	}
	// No retry: the container's supervisor is done.
	e.m.mu.Lock()
	cr := e.m.running["uid-web"].containers["app"]
	e.m.mu.Unlock()
	select {
	case <-cr.done:
	case <-time.After(10 * time.Second):
		t.Error("the supervisor of a container whose image is not in the table still runs")
	}
}

// An env entry of a ConfigMap key that is missing (and not optional)
// keeps the container waiting with CreateContainerConfigError and a
// Warning event; once the key is there, the next attempt (10 s on)
// starts it with the value.
func TestCreateContainerConfigErrorRetried(t *testing.T) {
	e := newTestEnv(t)
	rec := newEventRecorder()
	e.m.Events = rec
	ctx := context.Background()
	cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "settings"}, Data: map[string]string{"other": "x"}}
	if _, err := e.client.CoreV1().ConfigMaps("default").Create(ctx, cm, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	p := newPod("web", corev1.RestartPolicyAlways, "app")
	p.Spec.Containers[0].Env = []corev1.EnvVar{{Name: "LEVEL", ValueFrom: &corev1.EnvVarSource{ConfigMapKeyRef: &corev1.ConfigMapKeySelector{
		LocalObjectReference: corev1.LocalObjectReference{Name: "settings"}, Key: "level"}}}}
	e.create(t, p)
	got := e.sync(t, "web")
	if w := waitingOf(got); w == nil || w.Reason != "CreateContainerConfigError" || !strings.Contains(w.Message, `"level"`) {
		t.Fatalf("container state %+v, want waiting with CreateContainerConfigError naming the key", got.Status.ContainerStatuses)
	}
	if ev := rec.next(t); !strings.Contains(ev, "Warning Failed Error: ") || !strings.Contains(ev, `"level"`) {
		t.Errorf("event %q, want a Warning Failed naming the key", ev)
	}

	cm.Data["level"] = "debug"
	if _, err := e.client.CoreV1().ConfigMaps("default").Update(ctx, cm, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	e.clk.waitTimer(t, startRetryFirst)
	e.clk.Step(startRetryFirst)
	proc := e.run.next(t)
	if !containsString(proc.spec.Env, "LEVEL=debug") {
		t.Errorf("the process's environment lacks LEVEL=debug: %v", proc.spec.Env)
	}
	e.eventually(t, "the container reported running", func() error {
		p := e.sync(t, "web")
		if len(p.Status.ContainerStatuses) != 1 || p.Status.ContainerStatuses[0].State.Running == nil {
			return fmt.Errorf("statuses %+v", p.Status.ContainerStatuses)
		}
		if n := p.Status.ContainerStatuses[0].RestartCount; n != 0 {
			return fmt.Errorf("restart count %d: a container that never ran did not restart", n)
		}
		return nil
	})
}

// Attempts that keep failing back off, 10 s doubling to 5 min.
func TestStartRetryBacksOff(t *testing.T) {
	e := newTestEnv(t)
	p := newPod("web", corev1.RestartPolicyAlways, "app")
	p.Spec.Containers[0].EnvFrom = []corev1.EnvFromSource{{SecretRef: &corev1.SecretEnvSource{LocalObjectReference: corev1.LocalObjectReference{Name: "absent"}}}}
	e.create(t, p)
	if w := waitingOf(e.sync(t, "web")); w == nil || w.Reason != "CreateContainerConfigError" {
		t.Fatalf("waiting %+v, want CreateContainerConfigError", w)
	}
	for _, d := range []time.Duration{10 * time.Second, 20 * time.Second, 40 * time.Second, 80 * time.Second, 160 * time.Second, 5 * time.Minute, 5 * time.Minute} {
		e.clk.waitTimer(t, d)
		e.clk.Step(d)
	}
	if n := e.run.count(); n != 0 {
		t.Errorf("%d processes started without the Secret", n)
	}
}

// A volume whose ConfigMap is missing fails the pod's start, which is
// retried, with a FailedMount event naming the volume.
func TestFailedMountEvent(t *testing.T) {
	e := newTestEnv(t)
	rec := newEventRecorder()
	e.m.Events = rec
	p := newPod("web", corev1.RestartPolicyAlways, "app")
	p.Spec.Volumes = []corev1.Volume{{Name: "cfg", VolumeSource: corev1.VolumeSource{ConfigMap: &corev1.ConfigMapVolumeSource{
		LocalObjectReference: corev1.LocalObjectReference{Name: "absent"}}}}}
	p = e.create(t, p)
	if err := e.m.Sync(context.Background(), p.UID, p); err == nil {
		t.Fatal("Sync of a pod whose volume's ConfigMap is missing succeeded")
	}
	ev := rec.next(t)
	for _, want := range []string{"Pod default/web uid-web : Warning FailedMount", `volume "cfg"`, `"absent"`} {
		if !strings.Contains(ev, want) {
			t.Errorf("event %q lacks %q", ev, want)
		}
	}
}

func containsString(l []string, s string) bool {
	for _, x := range l {
		if x == s {
			return true
		}
	}
	return false
}
