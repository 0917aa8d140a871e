package pods

import (
	"fmt"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// status syncs the one-container pod name and returns its container's status.
func (e *testEnv) status(t *testing.T, name string) corev1.ContainerStatus {
	t.Helper()
	p := e.sync(t, name)
	if len(p.Status.ContainerStatuses) != 1 {
		t.Fatalf("container statuses %v, want one", p.Status.ContainerStatuses)
	}
	return p.Status.ContainerStatuses[0]
}

func TestPodPhase(t *testing.T) {
	running := corev1.ContainerStatus{State: corev1.ContainerState{Running: &corev1.ContainerStateRunning{}}}
	creating := corev1.ContainerStatus{State: corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{Reason: "ContainerCreating"}}}
	exited := func(code int32) corev1.ContainerStatus {
		return corev1.ContainerStatus{State: corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{ExitCode: code}}}
	}
	backingOff := func(code int32) corev1.ContainerStatus {
		return corev1.ContainerStatus{
			State:                corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{Reason: "CrashLoopBackOff"}},
			LastTerminationState: corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{ExitCode: code}},
		}
	}
	const (
		always    = corev1.RestartPolicyAlways
		onFailure = corev1.RestartPolicyOnFailure
		never     = corev1.RestartPolicyNever
	)
	for _, tt := range []struct {
		name   string
		policy corev1.RestartPolicy
		cs     []corev1.ContainerStatus
		want   corev1.PodPhase
	}{
		{"a container not started yet", always, []corev1.ContainerStatus{running, creating}, corev1.PodPending},
		{"no containers", always, nil, corev1.PodPending},
		{"all running", never, []corev1.ContainerStatus{running, running}, corev1.PodRunning},
		{"Never, one running and one done", never, []corev1.ContainerStatus{running, exited(1)}, corev1.PodRunning},
		{"Always, all exited 0", always, []corev1.ContainerStatus{exited(0), exited(0)}, corev1.PodRunning},
		{"Always, crash-looping", always, []corev1.ContainerStatus{backingOff(1)}, corev1.PodRunning},
		{"OnFailure, all exited 0", onFailure, []corev1.ContainerStatus{exited(0), exited(0)}, corev1.PodSucceeded},
		{"OnFailure, one done and one failed backing off", onFailure, []corev1.ContainerStatus{exited(0), backingOff(2)}, corev1.PodRunning},
		{"OnFailure, one done and one failed", onFailure, []corev1.ContainerStatus{exited(0), exited(2)}, corev1.PodRunning},
		{"Never, all exited 0", never, []corev1.ContainerStatus{exited(0), exited(0)}, corev1.PodSucceeded},
		{"Never, one failed", never, []corev1.ContainerStatus{exited(0), exited(137)}, corev1.PodFailed},
	} {
		if got := podPhase(tt.policy, tt.cs); got != tt.want {
			t.Errorf("%s: phase %s, want %s", tt.name, got, tt.want)
		}
	}
}

// TestCrashLoopBackOff checks the delays between the restarts of a
// container that keeps crashing: the first at once, then 10 s doubling
// (10, 20, 40 s); a run of ten minutes starts over. The restart count, the
// back-off message and the last state follow along.
func TestCrashLoopBackOff(t *testing.T) {
	e := newTestEnv(t)
	e.create(t, newPod("crash", corev1.RestartPolicyAlways, "app"))
	e.sync(t, "crash")
	for i, tt := range []struct {
		run   time.Duration // how long the process runs before it crashes
		delay time.Duration // the back-off that follows; 0 is a restart at once
	}{
		{time.Second, 0},
		{time.Second, 10 * time.Second},
		{time.Second, 20 * time.Second},
		{time.Second, 40 * time.Second},
		{10 * time.Minute, 0},
		{time.Second, 10 * time.Second},
	} {
		crash := i + 1
		proc := e.run.next(t)
		e.eventually(t, "the container runs", func() error {
			cs := e.status(t, "crash")
			if cs.State.Running == nil || cs.ContainerID != fmt.Sprintf("duet://%d", proc.pid) {
				return fmt.Errorf("state %+v, ID %s", cs.State, cs.ContainerID)
			}
			return nil
		})
		e.clk.Step(tt.run)
		proc.exit(crash)
		if tt.delay == 0 {
			continue // the next round waits for the new process
		}
		e.clk.waitTimer(t, tt.delay)
		p := e.sync(t, "crash")
		cs := p.Status.ContainerStatuses[0]
		if w := cs.State.Waiting; w == nil || w.Reason != "CrashLoopBackOff" || w.Message != fmt.Sprintf("back-off %s restarting failed container=app pod=crash_default(uid-crash)", tt.delay) {
			t.Fatalf("crash %d: state %+v, want CrashLoopBackOff for %s", crash, cs.State, tt.delay)
		}
		last := cs.LastTerminationState.Terminated
		if last == nil || last.ExitCode != int32(crash) || last.FinishedAt.Sub(last.StartedAt.Time) != tt.run {
			t.Fatalf("crash %d: last state %+v, want exit %d after %s", crash, cs.LastTerminationState, crash, tt.run)
		}
		if cs.RestartCount != int32(i) || cs.Ready || p.Status.Phase != corev1.PodRunning || condition(p, corev1.PodReady) != corev1.ConditionFalse {
			t.Fatalf("crash %d: restarts %d, ready %v, phase %s, Ready %s; want %d, false, Running, False",
				crash, cs.RestartCount, cs.Ready, p.Status.Phase, condition(p, corev1.PodReady), i)
		}
		e.clk.Step(tt.delay)
	}
}

// TestReadinessGate checks that a pod with a readiness gate is Ready only
// once another party set the gate's condition, and that the agent's
// status updates keep that condition.
func TestReadinessGate(t *testing.T) {
	e := newTestEnv(t)
	const gate = corev1.PodConditionType("example.com/lb-ready")
	pod := newPod("web", corev1.RestartPolicyAlways, "app")
	pod.Spec.ReadinessGates = []corev1.PodReadinessGate{{ConditionType: gate}}
	e.create(t, pod)
	p := e.sync(t, "web")
	if condition(p, corev1.ContainersReady) != corev1.ConditionTrue || condition(p, corev1.PodReady) != corev1.ConditionFalse {
		t.Fatalf("ContainersReady %s, Ready %s; want True and False while the gate is unset", condition(p, corev1.ContainersReady), condition(p, corev1.PodReady))
	}
	for _, st := range []corev1.ConditionStatus{corev1.ConditionFalse, corev1.ConditionTrue} {
		p = e.get(t, "web")
		p.Status.Conditions = append(othersConditions(p.Status.Conditions, []corev1.PodCondition{{Type: gate}}), corev1.PodCondition{Type: gate, Status: st})
		if _, err := e.client.CoreV1().Pods("default").UpdateStatus(t.Context(), p, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		p = e.sync(t, "web")
		want := corev1.ConditionFalse
		if st == corev1.ConditionTrue {
			want = corev1.ConditionTrue
		}
		if condition(p, corev1.PodReady) != want || condition(p, gate) != st {
			t.Errorf("gate %s: Ready %s, gate after the agent's update %s; want %s and %s", st, condition(p, corev1.PodReady), condition(p, gate), want, st)
		}
	}
}
