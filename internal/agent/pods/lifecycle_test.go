package pods

import (
	"context"
	"errors"
	"fmt"
	"k8s.io/apimachinery/pkg/util/intstr"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"slices"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	k8stesting "k8s.io/client-go/testing"

	"github.com/duet-net/duet/internal/agent/sandbox"
	"github.com/duet-net/duet/internal/alloc"
)

func condition(p *corev1.Pod, t corev1.PodConditionType) corev1.ConditionStatus {
	for _, c := range p.Status.Conditions {
		if c.Type == t {
			return c.Status
		}
	}
	return ""
}

// TestPodStartsDualStack checks that a pod gets a sandbox with one address
// of each pod CIDR, the primary family first in the request and in the
// status, and is reported Running and Ready with its container running.
func TestPodStartsDualStack(t *testing.T) {
	for _, tt := range []struct {
		name  string
		cidrs []netip.Prefix
	}{
		{"IPv4 primary", []netip.Prefix{v4CIDR, v6CIDR}},
		{"IPv6 primary", []netip.Prefix{v6CIDR, v4CIDR}},
		{"IPv4 only", []netip.Prefix{v4CIDR}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			e := newTestEnv(t, tt.cidrs...)
			e.create(t, newPod("web", corev1.RestartPolicyAlways, "app"))
			p := e.sync(t, "web")

			req, ok := e.net.requests["uid-web"]
			if !ok {
				t.Fatal("no sandbox was set up for the pod")
			}
			if len(req.Addrs) != len(tt.cidrs) {
				t.Fatalf("sandbox addresses %v, want one per pod CIDR %v", req.Addrs, tt.cidrs)
			}
			for i, cidr := range tt.cidrs {
				if a := req.Addrs[i]; !cidr.Contains(a.Addr()) || a.Bits() != cidr.Bits() {
					t.Errorf("sandbox address %d is %s, want one of %s with its prefix length", i, a, cidr)
				}
				if gw := sandbox.Gateway(cidr).Addr(); req.Gateways[i] != gw {
					t.Errorf("gateway %d is %s, want %s", i, req.Gateways[i], gw)
				}
			}
			held := e.podAddrs(t, "uid-web")
			if len(held) != len(tt.cidrs) {
				t.Fatalf("the store holds %v for the pod, want %d addresses", held, len(tt.cidrs))
			}
			var want []corev1.PodIP
			for i, a := range req.Addrs {
				want = append(want, corev1.PodIP{IP: a.Addr().String()})
				if !slices.Contains(held, a.Addr()) {
					t.Errorf("sandbox address %d (%s) is not reserved in the store (%v)", i, a, held)
				}
			}
			if !slices.Equal(p.Status.PodIPs, want) || p.Status.PodIP != want[0].IP {
				t.Errorf("status podIP %q podIPs %v, want %q %v", p.Status.PodIP, p.Status.PodIPs, want[0].IP, want)
			}
			if len(p.Status.HostIPs) != 2 || p.Status.HostIP != e.m.HostIPs[0].String() || p.Status.HostIPs[1].IP != e.m.HostIPs[1].String() {
				t.Errorf("status hostIP %q hostIPs %v, want the node's %v", p.Status.HostIP, p.Status.HostIPs, e.m.HostIPs)
			}
			if p.Status.Phase != corev1.PodRunning {
				t.Errorf("phase %s, want Running", p.Status.Phase)
			}
			for _, c := range []corev1.PodConditionType{corev1.PodScheduled, corev1.PodInitialized, corev1.ContainersReady, corev1.PodReady} {
				if s := condition(p, c); s != corev1.ConditionTrue {
					t.Errorf("condition %s is %q, want True", c, s)
				}
			}
			if len(p.Status.ContainerStatuses) != 1 {
				t.Fatalf("container statuses %v, want one", p.Status.ContainerStatuses)
			}
			cs := p.Status.ContainerStatuses[0]
			if cs.State.Running == nil || !cs.Ready || cs.RestartCount != 0 || cs.ContainerID != "duet://1000" {
				t.Errorf("container status %+v, want running, ready, no restarts, ID duet://1000", cs)
			}
			proc := e.run.next(t)
			if proc.spec.NetNS != e.net.sandboxes["uid-web"].NetNS {
				t.Errorf("container runs in %q, want the sandbox's %q", proc.spec.NetNS, e.net.sandboxes["uid-web"].NetNS)
			}
			if !slices.Equal(proc.spec.Argv, []string{"sleep", "3600"}) || !slices.Contains(proc.spec.Env, "POD_NAME=web") {
				t.Errorf("process argv %v env has POD_NAME=web: %v", proc.spec.Argv, slices.Contains(proc.spec.Env, "POD_NAME=web"))
			}
		})
	}
}

// TestSyncIdempotent checks that syncing a running pod again makes no
// second sandbox, reservation or process, and writes no status unchanged.
func TestSyncIdempotent(t *testing.T) {
	e := newTestEnv(t)
	e.create(t, newPod("web", corev1.RestartPolicyAlways, "app", "sidecar"))
	first := e.sync(t, "web")
	writes := countActions(e, "update", "status")
	for range 3 {
		e.sync(t, "web")
	}
	if e.net.setups != 1 {
		t.Errorf("%d sandboxes set up, want 1", e.net.setups)
	}
	if n := e.run.count(); n != 2 {
		t.Errorf("%d processes started, want 2 (one per container)", n)
	}
	held, cooling, err := countStore(e)
	if err != nil || held != 2 || cooling != 0 {
		t.Errorf("store holds %d, cools %d (err %v); want the one pod's 2 addresses", held, cooling, err)
	}
	if got := countActions(e, "update", "status"); got != writes {
		t.Errorf("%d status writes after syncing an unchanged pod again, want %d", got, writes)
	}
	if last := e.get(t, "web"); !slices.Equal(last.Status.PodIPs, first.Status.PodIPs) {
		t.Errorf("pod IPs changed from %v to %v", first.Status.PodIPs, last.Status.PodIPs)
	}
}

// TestFailedSetupReleasesAddresses checks that a pod whose sandbox cannot
// be wired holds no addresses afterwards, and that a later sync starts it.
func TestFailedSetupReleasesAddresses(t *testing.T) {
	e := newTestEnv(t)
	e.create(t, newPod("web", corev1.RestartPolicyAlways, "app"))
	e.net.setupErr = errors.New("veth: no space left")
	p := e.get(t, "web")
	if err := e.m.Sync(context.Background(), p.UID, p); err == nil {
		t.Fatal("Sync succeeded although the sandbox setup failed")
	}
	if held := e.podAddrs(t, "uid-web"); held != nil {
		t.Errorf("the pod still holds %v after its setup failed", held)
	}
	if held, _, _ := countStore(e); held != 0 {
		t.Errorf("%d addresses held after a failed setup, want 0", held)
	}
	if n := e.run.count(); n != 0 {
		t.Errorf("%d processes started for a pod without a sandbox", n)
	}
	e.net.setupErr = nil
	p = e.sync(t, "web")
	if p.Status.Phase != corev1.PodRunning || len(p.Status.PodIPs) != 2 {
		t.Errorf("after the retry: phase %s, IPs %v; want Running with two", p.Status.Phase, p.Status.PodIPs)
	}
}

// TestGracefulDelete checks a pod's deletion: SIGTERM first, SIGKILL only
// when the grace period ends (for a container that ignores SIGTERM), then
// the sandbox goes, the addresses are released and the pod object is
// deleted with grace period 0 and its UID as precondition.
func TestGracefulDelete(t *testing.T) {
	for _, tt := range []struct {
		name       string
		grace      int64
		ignoreTERM bool
	}{
		{"container exits on SIGTERM", 30, false},
		{"container ignores SIGTERM", 30, true},
		{"grace period zero", 0, true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			e := newTestEnv(t)
			e.run.ignoreTERM = tt.ignoreTERM
			e.create(t, newPod("web", corev1.RestartPolicyAlways, "app"))
			e.sync(t, "web")
			proc := e.run.next(t)
			addrs := e.podAddrs(t, "uid-web")

			p := e.get(t, "web")
			now := metav1.NewTime(e.clk.Now())
			p.DeletionTimestamp, p.DeletionGracePeriodSeconds = &now, &tt.grace
			if err := e.m.Sync(context.Background(), p.UID, p); err != nil {
				t.Fatalf("Sync of the deleted pod: %v", err)
			}
			if sig := proc.nextSignal(t); sig != syscall.SIGTERM {
				t.Fatalf("first signal %v, want SIGTERM", sig)
			}
			if tt.ignoreTERM && tt.grace > 0 {
				e.clk.waitTimer(t, time.Duration(tt.grace)*time.Second)
				if _, ok := e.net.sandbox("uid-web"); !ok || len(proc.signals) > 0 || deleted(e) {
					t.Fatal("the pod was stopped before its grace period ended")
				}
				e.clk.Step(time.Duration(tt.grace) * time.Second)
			}
			if tt.ignoreTERM {
				if sig := proc.nextSignal(t); sig != syscall.SIGKILL {
					t.Fatalf("signal %v after the grace period, want SIGKILL", sig)
				}
			}
			e.eventually(t, "the pod object is deleted", func() error {
				if !deleted(e) {
					return errors.New("no delete yet")
				}
				return nil
			})
			if _, ok := e.net.sandbox("uid-web"); ok {
				t.Error("the sandbox is still there")
			}
			if held := e.podAddrs(t, "uid-web"); held != nil {
				t.Errorf("the pod still holds %v", held)
			}
			if held, cooling, _ := countStore(e); held != 0 || cooling != len(addrs) {
				t.Errorf("store holds %d, cools %d; want 0 and the pod's %d addresses cooling down", held, cooling, len(addrs))
			}
			del := deleteAction(e)
			o := del.GetDeleteOptions()
			if o.GracePeriodSeconds == nil || *o.GracePeriodSeconds != 0 || o.Preconditions == nil || o.Preconditions.UID == nil || *o.Preconditions.UID != "uid-web" {
				t.Errorf("pod deleted with %+v, want grace period 0 and precondition UID uid-web", o)
			}
			e.m.mu.Lock()
			_, running := e.m.running["uid-web"]
			e.m.mu.Unlock()
			if running {
				t.Error("the manager still runs the pod")
			}
		})
	}
}

// TestReconcileAfterRestart checks what a restarted agent does with what
// the last one left: sandboxes and reservations of pods no longer bound
// here go, those of pods still bound stay, and such a pod keeps its
// addresses when it is started again.
func TestReconcileAfterRestart(t *testing.T) {
	e := newTestEnv(t)
	for _, name := range []string{"keep", "gone"} {
		e.create(t, newPod(name, corev1.RestartPolicyAlways, "app"))
		e.sync(t, name)
	}
	keepAddrs := e.podAddrs(t, "uid-keep")
	// A crash between reserving and wiring leaves a reservation alone, and
	// one between making a namespace file and labelling it a file alone.
	orphan := newPod("orphan", corev1.RestartPolicyAlways, "app")
	if err := e.m.withPodIPs(func(p *alloc.PodIPs) error {
		_, err := p.Reserve(podAttachment(orphan.UID), nil)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	e.net.noID = []string{"/run/netns/duet-half-made"}

	m2 := newTestManager(t, e, e.m.HostIPs) // the agent, restarted
	if err := m2.SetPodCIDRs(e.cidrs); err != nil {
		t.Fatal(err)
	}
	if err := m2.Reconcile(map[types.UID]bool{"uid-keep": true}); err != nil {
		t.Fatalf("Reconcile: %v", err)
	}
	if _, ok := e.net.sandbox("uid-gone"); ok {
		t.Error("the sandbox of a pod no longer bound here survived")
	}
	if _, ok := e.net.sandbox("uid-keep"); !ok {
		t.Error("the sandbox of a pod still bound here was removed")
	}
	if len(e.net.noID) != 0 {
		t.Errorf("namespaces without an ID survived: %v", e.net.noID)
	}
	for _, uid := range []string{"uid-gone", "uid-orphan"} {
		if held := e.podAddrs(t, uid); held != nil {
			t.Errorf("%s still holds %v", uid, held)
		}
	}
	if held := e.podAddrs(t, "uid-keep"); !slices.Equal(held, keepAddrs) {
		t.Errorf("uid-keep holds %v, want %v as before the restart", held, keepAddrs)
	}
	p := e.get(t, "keep")
	if err := m2.Sync(context.Background(), p.UID, p); err != nil {
		t.Fatal(err)
	}
	p = e.get(t, "keep")
	if p.Status.PodIP != keepAddrs[0].String() {
		t.Errorf("after the restart the pod has IP %s, want %s as before", p.Status.PodIP, keepAddrs[0])
	}
	if e.net.setups != 2 {
		t.Errorf("%d sandboxes made in all, want 2: the restart repairs, not remakes", e.net.setups)
	}
}

// TestSetPodCIDRs checks that setting the node's pod CIDRs prepares the
// bridge once per change, also when only the CIDRs (not their count)
// change, and that pods started afterwards get the new CIDRs' addresses.
func TestSetPodCIDRs(t *testing.T) {
	other4 := netip.MustParsePrefix("10.244.7.0/24")
	other6 := netip.MustParsePrefix("fd00:10:244:7::/64")
	for _, tt := range []struct {
		name       string
		next       []netip.Prefix
		wantEnsure int
	}{
		{"the same again", []netip.Prefix{v4CIDR, v6CIDR}, 1},
		{"other CIDRs of the same count", []netip.Prefix{other4, other6}, 2},
		{"single-stack to dual-stack", []netip.Prefix{v4CIDR, other6}, 2},
	} {
		t.Run(tt.name, func(t *testing.T) {
			e := newTestEnv(t, v4CIDR, v6CIDR)
			if err := e.m.SetPodCIDRs(slices.Clone(tt.next)); err != nil {
				t.Fatalf("SetPodCIDRs(%v): %v", tt.next, err)
			}
			if len(e.net.ensured) != tt.wantEnsure {
				t.Fatalf("bridge prepared %d times, want %d", len(e.net.ensured), tt.wantEnsure)
			}
			last := e.net.ensured[len(e.net.ensured)-1]
			if last.Bridge != Bridge || !slices.Equal(last.PodCIDRs, tt.next) {
				t.Errorf("bridge prepared with %+v, want %s with %v", last, Bridge, tt.next)
			}
			e.create(t, newPod("web", corev1.RestartPolicyAlways, "app"))
			p := e.sync(t, "web")
			for i, ip := range p.Status.PodIPs {
				if a := netip.MustParseAddr(ip.IP); !tt.next[i].Contains(a) {
					t.Errorf("pod IP %d is %s, want one of %s", i, a, tt.next[i])
				}
			}
		})
	}
}

// TestSetPodCIDRsSingleThenDual checks the change of count as well.
func TestSetPodCIDRsSingleThenDual(t *testing.T) {
	e := newTestEnv(t, v4CIDR)
	if err := e.m.SetPodCIDRs([]netip.Prefix{v4CIDR, v6CIDR}); err != nil {
		t.Fatal(err)
	}
	e.create(t, newPod("web", corev1.RestartPolicyAlways, "app"))
	if p := e.sync(t, "web"); len(p.Status.PodIPs) != 2 {
		t.Errorf("pod IPs %v after the node became dual-stack, want two", p.Status.PodIPs)
	}
}

// TestRestartPolicy checks, per restartPolicy and exit code, whether a
// container that exits is started again and the pod's phase.
func TestRestartPolicy(t *testing.T) {
	for _, tt := range []struct {
		policy      corev1.RestartPolicy
		code        int
		restart     bool
		phase       corev1.PodPhase
		termination string
	}{
		{corev1.RestartPolicyAlways, 0, true, corev1.PodRunning, "Completed"},
		{corev1.RestartPolicyAlways, 3, true, corev1.PodRunning, "Error"},
		{corev1.RestartPolicyOnFailure, 0, false, corev1.PodSucceeded, "Completed"},
		{corev1.RestartPolicyOnFailure, 3, true, corev1.PodRunning, "Error"},
		{corev1.RestartPolicyNever, 0, false, corev1.PodSucceeded, "Completed"},
		{corev1.RestartPolicyNever, 3, false, corev1.PodFailed, "Error"},
	} {
		t.Run(fmt.Sprintf("%s exit %d", tt.policy, tt.code), func(t *testing.T) {
			e := newTestEnv(t)
			e.create(t, newPod("job", tt.policy, "app"))
			e.sync(t, "job")
			proc := e.run.next(t)
			proc.exit(tt.code)
			cr := e.container(t, "uid-job", "app")
			if tt.restart {
				// The first restart is at once; the next waits 10 s in
				// CrashLoopBackOff, with the last termination shown.
				e.run.next(t).exit(tt.code)
				e.clk.waitTimer(t, 10*time.Second)
				e.eventually(t, "CrashLoopBackOff", func() error {
					cs := e.sync(t, "job").Status.ContainerStatuses[0]
					if cs.State.Waiting == nil || cs.State.Waiting.Reason != "CrashLoopBackOff" || cs.Ready {
						return fmt.Errorf("state %+v ready %v", cs.State, cs.Ready)
					}
					if cs.LastTerminationState.Terminated == nil || cs.LastTerminationState.Terminated.ExitCode != int32(tt.code) {
						return fmt.Errorf("last state %+v", cs.LastTerminationState)
					}
					return nil
				})
				e.clk.Step(10 * time.Second)
				e.run.next(t)
				e.eventually(t, "the container runs again", func() error {
					p := e.sync(t, "job")
					cs := p.Status.ContainerStatuses[0]
					if cs.State.Running == nil || cs.RestartCount != 2 {
						return fmt.Errorf("state %+v, restarts %d", cs.State, cs.RestartCount)
					}
					if p.Status.Phase != tt.phase {
						return fmt.Errorf("phase %s, want %s", p.Status.Phase, tt.phase)
					}
					return nil
				})
				return
			}
			select {
			case <-cr.done:
			case <-time.After(10 * time.Second):
				t.Fatal("the container's supervisor still runs; it should not restart")
			}
			p := e.sync(t, "job")
			cs := p.Status.ContainerStatuses[0]
			if cs.State.Terminated == nil || cs.State.Terminated.ExitCode != int32(tt.code) || cs.State.Terminated.Reason != tt.termination {
				t.Errorf("state %+v, want terminated with %d (%s)", cs.State, tt.code, tt.termination)
			}
			if p.Status.Phase != tt.phase {
				t.Errorf("phase %s, want %s", p.Status.Phase, tt.phase)
			}
			if cs.Ready || condition(p, corev1.PodReady) != corev1.ConditionFalse {
				t.Errorf("a terminated container is ready (%v) or the pod Ready (%s)", cs.Ready, condition(p, corev1.PodReady))
			}
			if n := e.run.count(); n != 1 {
				t.Errorf("%d processes started, want 1", n)
			}
		})
	}
}

func (e *testEnv) container(t *testing.T, uid types.UID, name string) *containerRun {
	t.Helper()
	e.m.mu.Lock()
	defer e.m.mu.Unlock()
	run, ok := e.m.running[uid]
	if !ok {
		t.Fatalf("pod %s is not running", uid)
	}
	return run.containers[name]
}

func countActions(e *testEnv, verb, sub string) int {
	n := 0
	for _, a := range e.client.Actions() {
		if a.GetVerb() == verb && a.GetSubresource() == sub && a.GetResource().Resource == "pods" {
			n++
		}
	}
	return n
}

func deleteAction(e *testEnv) k8stesting.DeleteAction {
	for _, a := range e.client.Actions() {
		if d, ok := a.(k8stesting.DeleteAction); ok && a.GetResource().Resource == "pods" {
			return d
		}
	}
	return nil
}

func deleted(e *testEnv) bool { return deleteAction(e) != nil }

func countStore(e *testEnv) (held, cooling int, err error) { return alloc.CountPodIPs(e.store) }

// A hostNetwork pod runs in the node's namespace with the node's
// InternalIPs as its addresses: no sandbox, no reservation; its world is
// still its own.
func TestHostNetworkPod(t *testing.T) {
	e := newTestEnv(t)
	p := newPod("hn", corev1.RestartPolicyAlways, "app")
	p.Spec.HostNetwork = true
	e.create(t, p)
	got := e.sync(t, "hn")
	if _, ok := e.net.requests["uid-hn"]; ok {
		t.Error("a sandbox was set up for a hostNetwork pod")
	}
	if held := e.podAddrs(t, "uid-hn"); len(held) != 0 {
		t.Errorf("the store holds %v for a hostNetwork pod", held)
	}
	want := []corev1.PodIP{{IP: e.m.HostIPs[0].String()}, {IP: e.m.HostIPs[1].String()}}
	if !slices.Equal(got.Status.PodIPs, want) || got.Status.PodIP != want[0].IP {
		t.Errorf("podIPs %v, want the node's %v", got.Status.PodIPs, want)
	}
	proc := e.run.next(t)
	if proc.spec.NetNS != e.m.NodeNS {
		t.Errorf("container runs in %q, want the node's %q", proc.spec.NetNS, e.m.NodeNS)
	}
	if !e.worlds.uids["uid-hn"] {
		t.Error("the pod has no world")
	}
	if err := e.m.Sync(context.Background(), "uid-hn", nil); err != nil {
		t.Fatal(err)
	}
	if e.worlds.uids["uid-hn"] {
		t.Error("the pod's world outlived it")
	}
}

// A readiness probe decides the container's and the pod's Ready, on the
// probe's schedule: not before its initial delay, false again after a
// failure.
func TestReadinessProbe(t *testing.T) {
	var healthy atomic.Bool
	healthy.Store(true)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		if !healthy.Load() {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
	}))
	defer srv.Close()
	ap := netip.MustParseAddrPort(srv.Listener.Addr().String())

	e := newTestEnv(t)
	e.m.NodeNS = "" // the test's own namespace, where the server listens
	p := newPod("probed", corev1.RestartPolicyAlways, "app")
	p.Spec.HostNetwork = true
	p.Spec.Containers[0].ReadinessProbe = &corev1.Probe{
		InitialDelaySeconds: 10, PeriodSeconds: 5, FailureThreshold: 1,
		ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Host: ap.Addr().String(), Port: intstr.FromInt32(int32(ap.Port())), Path: "/healthz"}},
	}
	e.create(t, p)
	ready := func() corev1.ConditionStatus { return condition(e.sync(t, "probed"), corev1.PodReady) }
	if got := ready(); got != corev1.ConditionFalse {
		t.Fatalf("Ready %s before the first probe, want False", got)
	}
	e.clk.waitTimer(t, 10*time.Second)
	e.clk.Step(10 * time.Second)
	e.eventually(t, "Ready after a successful probe", func() error {
		if got := ready(); got != corev1.ConditionTrue {
			return fmt.Errorf("Ready %s", got)
		}
		return nil
	})
	healthy.Store(false)
	e.clk.waitTimer(t, 5*time.Second)
	e.clk.Step(5 * time.Second)
	e.eventually(t, "not Ready after a failed probe", func() error {
		if got := ready(); got != corev1.ConditionFalse {
			return fmt.Errorf("Ready %s", got)
		}
		return nil
	})
}
