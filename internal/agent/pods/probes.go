package pods

import (
	"context"
	"net"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/duet-net/duet/internal/agent/probe"
	"github.com/duet-net/duet/internal/netns"
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

// probeTarget is what a container's probes check: its pod's first
// address, dialled from inside the pod's network namespace, and commands
// run in its namespaces with its environment.
func (m *Manager) probeTarget(run *podRun, c corev1.Container, cr *containerRun) probe.Target {
	t := probe.Target{Ports: c.Ports}
	if addrs := run.addrs(); len(addrs) > 0 {
		t.PodIP = addrs[0]
	}
	t.Dial = func(ctx context.Context, network, address string) (net.Conn, error) {
		var d net.Dialer
		if run.sandbox.NetNS == "" {
			return d.DialContext(ctx, network, address)
		}
		// A socket stays in the namespace it was made in.
		var conn net.Conn
		err := netns.Do(run.sandbox.NetNS, func() error {
			var err error
			conn, err = d.DialContext(ctx, network, address)
			return err
		})
		return conn, err
	}
	t.Exec = func(ctx context.Context, argv []string) (int, error) {
		cmd := m.commandIn(run, c.Name, c.WorkingDir, argv)
		cr.mu.Lock()
		cmd.Env = cr.env
		cr.mu.Unlock()
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
		if err := cmd.Start(); err != nil {
			return 0, err
		}
		stop := stopGroup(ctx, cmd)
		defer stop()
		code, ok := exitCode(cmd.Wait())
		if !ok {
			return 0, ctx.Err()
		}
		return code, nil
	}
	return t
}

// runProbes runs a container instance's probes until ctx ends (the
// instance ended): the startup probe first, then readiness and liveness.
// Readiness sets cr.ready; a failed startup or liveness probe stops the
// instance, which its restart policy then restarts.
func (m *Manager) runProbes(ctx context.Context, pod *corev1.Pod, c corev1.Container, cr *containerRun, run *podRun, proc Process) {
	target := m.probeTarget(run, c, cr)
	kill := func(why string, err error) {
		m.Log.Info("container failed its probe and is restarted", "pod", pod.Namespace+"/"+pod.Name, "container", c.Name, "probe", why, "err", err)
		_ = proc.Signal(syscall.SIGTERM)
		grace := 30 * time.Second
		if pod.Spec.TerminationGracePeriodSeconds != nil {
			grace = time.Duration(*pod.Spec.TerminationGracePeriodSeconds) * time.Second
		}
		select {
		case <-ctx.Done():
		case <-m.clock().After(grace):
			_ = proc.Signal(syscall.SIGKILL)
		}
	}
	if p := c.StartupProbe; p != nil {
		ok, err := m.probeUntil(ctx, startupProbe, p, target, nil)
		if !ok {
			if ctx.Err() == nil {
				kill("startup", err)
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
		go func() {
			if ok, err := m.probeUntil(ctx, livenessProbe, p, target, nil); !ok && ctx.Err() == nil {
				kill("liveness", err)
			}
		}()
	}
	if p := c.ReadinessProbe; p != nil {
		_, _ = m.probeUntil(ctx, readinessProbe, p, target, func(ready bool) {
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

// probeUntil probes on p's schedule. A startup probe returns true at its
// first success; startup and liveness probes return false after
// failureThreshold failures in a row; a readiness probe reports each
// result that crossed its threshold and goes on until ctx ends.
func (m *Manager) probeUntil(ctx context.Context, kind probeKind, p *corev1.Probe, t probe.Target, report func(bool)) (bool, error) {
	delay, period, success, failure := probeTiming(p)
	clk := m.clock()
	select {
	case <-ctx.Done():
		return false, ctx.Err()
	case <-clk.After(delay):
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
