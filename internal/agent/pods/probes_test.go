package pods

import (
	"fmt"
	"slices"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
)

// Exec probes run through the Runner, so the fake runner scripts them: a
// probe's process is routed by its command, and the test ends it with the
// exit code the probe should see.

func execProbe(cmd string) *corev1.Probe {
	return &corev1.Probe{ProbeHandler: corev1.ProbeHandler{Exec: &corev1.ExecAction{Command: []string{cmd}}},
		PeriodSeconds: 3, FailureThreshold: 1, SuccessThreshold: 1, TimeoutSeconds: 60}
}

// waitReady waits until the container's Ready is want, and the pod's
// ContainersReady and Ready conditions with it.
func (e *testEnv) waitReady(t *testing.T, name string, want bool) {
	t.Helper()
	status := corev1.ConditionFalse
	if want {
		status = corev1.ConditionTrue
	}
	e.eventually(t, fmt.Sprintf("ready %v", want), func() error {
		p := e.sync(t, name)
		cs := p.Status.ContainerStatuses[0]
		if cs.Ready != want || condition(p, corev1.ContainersReady) != status || condition(p, corev1.PodReady) != status {
			return fmt.Errorf("container ready %v, ContainersReady %s, Ready %s", cs.Ready, condition(p, corev1.ContainersReady), condition(p, corev1.PodReady))
		}
		return nil
	})
}

// TestReadinessAcrossRestarts checks that a readiness probe's results
// decide Ready, and that a restarted container is not Ready on its
// previous instance's verdict: only once its own probe succeeded.
func TestReadinessAcrossRestarts(t *testing.T) {
	e := newTestEnv(t)
	ready := e.run.route("ready")
	pod := newPod("web", corev1.RestartPolicyAlways, "app")
	pod.Spec.Containers[0].ReadinessProbe = execProbe("ready")
	e.create(t, pod)
	e.sync(t, "web")
	app := e.run.next(t)
	first := nextOf(t, ready, "readiness probe")
	if cs := e.status(t, "web"); cs.Ready || cs.State.Running == nil {
		t.Fatalf("container %+v: want running and not ready before its readiness probe answered", cs)
	}
	first.exit(0)
	e.waitReady(t, "web", true)
	for _, code := range []int{1, 0} {
		e.clk.waitTimer(t, 3*time.Second)
		e.clk.Step(3 * time.Second)
		nextOf(t, ready, "readiness probe").exit(code)
		e.waitReady(t, "web", code == 0)
	}

	app.exit(1) // the first restart is at once
	e.run.next(t)
	again := nextOf(t, ready, "readiness probe of the restarted container")
	cs := e.status(t, "web")
	if cs.State.Running == nil || cs.RestartCount != 1 {
		t.Fatalf("container %+v: want running again after one restart", cs)
	}
	if cs.Ready {
		t.Fatal("the restarted container is Ready before its own readiness probe answered")
	}
	again.exit(0)
	e.waitReady(t, "web", true)
}

// TestStartupThenLiveness checks that the liveness probe starts only once
// the startup probe succeeded, that Started follows the startup probe,
// and that a liveness failure stops the container with the probe's grace
// period: SIGTERM, SIGKILL 5 s later; the killed process exited 137, and
// its restarted instance waits for its own startup probe.
func TestStartupThenLiveness(t *testing.T) {
	e := newTestEnv(t)
	startup, live := e.run.route("startup"), e.run.route("live")
	e.run.ignoreTERM = true
	pod := newPod("web", corev1.RestartPolicyAlways, "app")
	pod.Spec.Containers[0].StartupProbe = execProbe("startup")
	pod.Spec.Containers[0].LivenessProbe = execProbe("live")
	five := int64(5)
	pod.Spec.Containers[0].LivenessProbe.TerminationGracePeriodSeconds = &five
	e.create(t, pod)
	e.sync(t, "web")
	app := e.run.next(t)
	s := nextOf(t, startup, "startup probe")
	if cs := e.status(t, "web"); cs.Ready || *cs.Started {
		t.Fatalf("ready %v, started %v before the startup probe succeeded", cs.Ready, *cs.Started)
	}
	if len(live) != 0 {
		t.Fatal("the liveness probe ran before the startup probe succeeded")
	}
	s.exit(0)
	e.waitReady(t, "web", true)
	if cs := e.status(t, "web"); !*cs.Started {
		t.Fatal("not Started after the startup probe succeeded")
	}
	nextOf(t, live, "liveness probe").exit(1)
	if sig := app.nextSignal(t); sig != syscall.SIGTERM {
		t.Fatalf("signal %v after a liveness failure, want SIGTERM", sig)
	}
	e.clk.waitTimer(t, 5*time.Second) // the probe's grace period, not the pod's 30 s
	select {
	case sig := <-app.signals:
		t.Fatalf("signal %v before the probe's grace period ended", sig)
	default:
	}
	e.clk.Step(5 * time.Second)
	if sig := app.nextSignal(t); sig != syscall.SIGKILL {
		t.Fatalf("signal %v after the probe's grace period, want SIGKILL", sig)
	}
	e.run.next(t)
	nextOf(t, startup, "startup probe of the restarted container")
	cs := e.status(t, "web")
	if last := cs.LastTerminationState.Terminated; last == nil || last.ExitCode != 137 {
		t.Errorf("last state %+v, want terminated by SIGKILL (137)", cs.LastTerminationState)
	}
	if cs.State.Running == nil || cs.Ready || *cs.Started || cs.RestartCount != 1 {
		t.Errorf("restarted container %+v: want running, not ready, not started (its startup probe runs again), one restart", cs)
	}
}

// TestFailedProbeGracePeriod checks the grace period between SIGTERM and
// SIGKILL when a startup or liveness probe fails: the probe's
// terminationGracePeriodSeconds, else the pod's, else 30 s.
func TestFailedProbeGracePeriod(t *testing.T) {
	secs := func(s int64) *int64 { return &s }
	for _, tt := range []struct {
		name            string
		startup         bool
		pod, probeGrace *int64
		want            time.Duration
	}{
		{"liveness, no grace periods set", false, nil, nil, 30 * time.Second},
		{"liveness, the pod's", false, secs(7), nil, 7 * time.Second},
		{"liveness, the probe's over the pod's", false, secs(7), secs(2), 2 * time.Second},
		{"startup, the pod's", true, secs(9), nil, 9 * time.Second},
		{"startup, the probe's over the pod's", true, secs(9), secs(4), 4 * time.Second},
	} {
		t.Run(tt.name, func(t *testing.T) {
			e := newTestEnv(t)
			probes := e.run.route("check")
			e.run.ignoreTERM = true
			pod := newPod("web", corev1.RestartPolicyAlways, "app")
			pod.Spec.TerminationGracePeriodSeconds = tt.pod
			p := execProbe("check")
			p.TerminationGracePeriodSeconds = tt.probeGrace
			if tt.startup {
				pod.Spec.Containers[0].StartupProbe = p
			} else {
				pod.Spec.Containers[0].LivenessProbe = p
			}
			e.create(t, pod)
			e.sync(t, "web")
			app := e.run.next(t)
			nextOf(t, probes, "probe").exit(1)
			if sig := app.nextSignal(t); sig != syscall.SIGTERM {
				t.Fatalf("signal %v after the probe failed, want SIGTERM", sig)
			}
			e.clk.waitTimer(t, tt.want)
			e.clk.Step(tt.want - time.Millisecond)
			select {
			case sig := <-app.signals:
				t.Fatalf("signal %v before the grace period of %s ended", sig, tt.want)
			case <-time.After(50 * time.Millisecond):
			}
			e.clk.Step(time.Millisecond)
			if sig := app.nextSignal(t); sig != syscall.SIGKILL {
				t.Fatalf("signal %v after the grace period, want SIGKILL", sig)
			}
			e.run.next(t) // restarted
		})
	}
}

// TestProbeInitialDelayCountsFromStart checks that a liveness probe's
// initial delay counts from the container's start, not from the end of
// its startup probe: a startup probe that passed after 4 s leaves 6 s of
// a 10 s delay.
func TestProbeInitialDelayCountsFromStart(t *testing.T) {
	e := newTestEnv(t)
	startup, live := e.run.route("startup"), e.run.route("live")
	pod := newPod("web", corev1.RestartPolicyAlways, "app")
	pod.Spec.Containers[0].StartupProbe = execProbe("startup")
	pod.Spec.Containers[0].StartupProbe.PeriodSeconds = 4
	pod.Spec.Containers[0].StartupProbe.FailureThreshold = 10
	pod.Spec.Containers[0].LivenessProbe = execProbe("live")
	pod.Spec.Containers[0].LivenessProbe.InitialDelaySeconds = 10
	e.create(t, pod)
	e.sync(t, "web")
	e.run.next(t)
	nextOf(t, startup, "startup probe").exit(1)
	e.clk.waitTimer(t, 4*time.Second)
	e.clk.Step(4 * time.Second)
	nextOf(t, startup, "startup probe").exit(0)
	e.clk.waitTimer(t, 6*time.Second)
	if len(live) != 0 {
		t.Fatal("the liveness probe ran before its initial delay")
	}
	e.clk.Step(6 * time.Second)
	nextOf(t, live, "liveness probe")
}

// TestExecProbeRunsInTheContainer checks that an exec probe's command runs
// as the container's process does (its network namespace, world,
// directory and environment), that its exit code decides readiness, and
// that one that outlives the probe's timeout is killed and fails.
func TestExecProbeRunsInTheContainer(t *testing.T) {
	e := newTestEnv(t)
	probes := e.run.route("check-ready")
	pod := newPod("web", corev1.RestartPolicyAlways, "app")
	c := &pod.Spec.Containers[0]
	c.Env = []corev1.EnvVar{{Name: "MODE", Value: "probe-me"}}
	c.WorkingDir = "/srv"
	c.ReadinessProbe = execProbe("check-ready")
	c.ReadinessProbe.Exec.Command = []string{"check-ready", "--quick"}
	c.ReadinessProbe.TimeoutSeconds = 1
	e.create(t, pod)
	e.sync(t, "web")
	app := e.run.next(t)
	for _, code := range []int{1, 0} {
		p := nextOf(t, probes, "probe")
		if !slices.Equal(p.spec.Argv, []string{"check-ready", "--quick"}) || p.spec.NetNS != app.spec.NetNS ||
			!slices.Equal(p.spec.NSArgs, app.spec.NSArgs) || p.spec.Dir != "/srv" || !slices.Contains(p.spec.Env, "MODE=probe-me") {
			t.Fatalf("probe process %+v, want check-ready --quick as the container runs (%+v)", p.spec, app.spec)
		}
		p.exit(code)
		e.waitReady(t, "web", code == 0)
		e.clk.waitTimer(t, 3*time.Second)
		e.clk.Step(3 * time.Second)
	}
	hung := nextOf(t, probes, "probe")
	if sig := hung.nextSignal(t); sig != syscall.SIGKILL {
		t.Fatalf("signal %v to a probe past its timeout, want SIGKILL", sig)
	}
	e.waitReady(t, "web", false)
}

func TestProbeGracePeriod(t *testing.T) {
	secs := func(s int64) *int64 { return &s }
	for _, tt := range []struct {
		pod, probe *int64
		want       time.Duration
	}{
		{nil, nil, 30 * time.Second},
		{secs(0), nil, 0},
		{secs(12), nil, 12 * time.Second},
		{secs(12), secs(1), time.Second},
		{nil, secs(3), 3 * time.Second},
	} {
		pod := &corev1.Pod{Spec: corev1.PodSpec{TerminationGracePeriodSeconds: tt.pod}}
		if got := probeGracePeriod(pod, &corev1.Probe{TerminationGracePeriodSeconds: tt.probe}); got != tt.want {
			t.Errorf("pod %v, probe %v: %s, want %s", ptrString(tt.pod), ptrString(tt.probe), got, tt.want)
		}
	}
}

func ptrString(p *int64) string {
	if p == nil {
		return "unset"
	}
	return fmt.Sprint(*p)
}
