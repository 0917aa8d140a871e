package pods

import (
	"context"
	"errors"
	"sync"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/duet-net/duet/internal/agent/probe"
)

// probeTiming is Kubernetes' defaults for a probe's unset fields.
func probeTiming(p *corev1.Probe) (delay, period time.Duration, success, failure int32) {
	delay = time.Duration(p.InitialDelaySeconds) * time.Second
	period = 10 * time.Second
	if p.PeriodSeconds > 0 {
		period = time.Duration(p.PeriodSeconds) * time.Second
	}
	success, failure = 1, 3
	if p.SuccessThreshold > 0 {
		success = p.SuccessThreshold
	}
	if p.FailureThreshold > 0 {
		failure = p.FailureThreshold
	}
	return delay, period, success, failure
}

// probeGracePeriod is how long a container that failed its liveness or
// startup probe has between SIGTERM and SIGKILL: the probe's
// terminationGracePeriodSeconds, else the pod's, else 30 s as the API
// defaults it.
func probeGracePeriod(pod *corev1.Pod, p *corev1.Probe) time.Duration {
	s := pod.Spec.TerminationGracePeriodSeconds
	if p.TerminationGracePeriodSeconds != nil {
		s = p.TerminationGracePeriodSeconds
	}
	if s == nil {
		return 30 * time.Second
	}
	return time.Duration(max(*s, 0)) * time.Second
}

// probeTarget is what a container's probes check: its pod's first
// address, dialled from inside the pod's network namespace, and commands
// run through the Runner as the container's own process runs (its
// namespaces, directory and environment).
func (m *Manager) probeTarget(run *podRun, c corev1.Container, cr *containerRun) probe.Target {
	t := probe.Target{Ports: c.Ports, Dial: probe.NetNSDial(run.sandbox.NetNS)}
	if addrs := run.addrs(); len(addrs) > 0 {
		t.PodIP = addrs[0]
	}
	t.Exec = func(ctx context.Context, argv []string) (int, error) {
		if len(argv) == 0 {
			return 0, errors.New("exec probe without a command")
		}
		if argv[0] == "duet" {
			argv = append([]string{m.Binary}, argv[1:]...) // as a container's own command
		}
		cr.mu.Lock()
		env := cr.env
		cr.mu.Unlock()
		proc, err := m.runner().Start(run.processSpec(c, argv, env))
		if err != nil {
			return 0, err
		}
		type exit struct {
			code int
			err  error
		}
		done := make(chan exit, 1)
		go func() {
			code, err := proc.Wait()
			done <- exit{code, err}
		}()
		select {
		case e := <-done:
			return e.code, e.err
		case <-ctx.Done(): // the probe's timeout, or the container ended
			_ = proc.Signal(syscall.SIGKILL)
			<-done
			return 0, ctx.Err()
		}
	}
	return t
}

// startProbes runs the probes of a container instance that started at
// startedAt: the startup probe first, then readiness and liveness.
// Readiness sets cr.ready; a failed startup or liveness probe stops the
// instance, which its restart policy then restarts. The returned stop
// ends them, waits until they have ended and clears their verdicts, so
// that none outlives its instance: a container is never Ready between a
// crash and the next start's probes.
func (m *Manager) startProbes(ctx context.Context, pod *corev1.Pod, c corev1.Container, cr *containerRun, run *podRun, proc Process, startedAt time.Time) (stop func()) {
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Go(func() { m.runProbes(ctx, &wg, pod, c, cr, run, proc, startedAt) })
	return func() {
		cancel()
		wg.Wait()
		cr.mu.Lock()
		cr.startupDone, cr.ready = false, false
		cr.mu.Unlock()
	}
}

func (m *Manager) runProbes(ctx context.Context, wg *sync.WaitGroup, pod *corev1.Pod, c corev1.Container, cr *containerRun, run *podRun, proc Process, startedAt time.Time) {
	target := m.probeTarget(run, c, cr)
	// A failed probe stops the instance as a deletion would: SIGTERM, and
	// SIGKILL when the grace period ends unless it exited (ctx ends).
	kill := func(why string, p *corev1.Probe, err error) {
		grace := probeGracePeriod(pod, p)
		m.Log.Info("container failed its probe and is restarted", "pod", pod.Namespace+"/"+pod.Name, "container", c.Name, "probe", why, "err", err, "gracePeriod", grace)
		_ = proc.Signal(syscall.SIGTERM)
		timer := m.clock().NewTimer(grace)
		defer timer.Stop()
		select {
		case <-ctx.Done():
		case <-timer.C():
			_ = proc.Signal(syscall.SIGKILL)
		}
	}
	if p := c.StartupProbe; p != nil {
		ok, err := m.probeUntil(ctx, startupProbe, p, target, startedAt, nil)
		if !ok {
			if ctx.Err() == nil {
				kill("startup", p, err)
			}
			return
		}
	}
	cr.mu.Lock()
	cr.startupDone = true
	cr.mu.Unlock()
	if c.StartupProbe != nil {
		m.poke(pod)
	}
	if p := c.LivenessProbe; p != nil {
		wg.Go(func() {
			if ok, err := m.probeUntil(ctx, livenessProbe, p, target, startedAt, nil); !ok && ctx.Err() == nil {
				kill("liveness", p, err)
			}
		})
	}
	if p := c.ReadinessProbe; p != nil {
		_, _ = m.probeUntil(ctx, readinessProbe, p, target, startedAt, func(ready bool) {
			cr.mu.Lock()
			changed := cr.ready != ready
			cr.ready = ready
			cr.mu.Unlock()
			if changed {
				m.poke(pod)
			}
		})
	}
}

type probeKind int

const (
	startupProbe probeKind = iota
	livenessProbe
	readinessProbe
)

// probeUntil probes on p's schedule; the initial delay counts from the
// container's start (startedAt), also for probes that waited for the
// startup probe, as the kubelet counts it. A startup probe returns true
// at its first success; startup and liveness probes return false after
// failureThreshold failures in a row; a readiness probe reports each
// result that crossed its threshold and goes on until ctx ends.
func (m *Manager) probeUntil(ctx context.Context, kind probeKind, p *corev1.Probe, t probe.Target, startedAt time.Time, report func(bool)) (bool, error) {
	delay, period, success, failure := probeTiming(p)
	clk := m.clock()
	if wait := delay - clk.Since(startedAt); wait > 0 {
		select {
		case <-ctx.Done():
			return false, ctx.Err()
		case <-clk.After(wait):
		}
	}
	var successes, failures int32
	for {
		err := probe.Run(ctx, p, t)
		if ctx.Err() != nil {
			return false, ctx.Err()
		}
		if err == nil {
			successes, failures = successes+1, 0
			if kind == startupProbe {
				return true, nil
			}
			if kind == readinessProbe && successes >= success {
				report(true)
			}
		} else {
			successes, failures = 0, failures+1
			if failures >= failure {
				if kind != readinessProbe {
					return false, err
				}
				report(false)
			}
		}
		select {
		case <-ctx.Done():
			return false, ctx.Err()
		case <-clk.After(period):
		}
	}
}
