// Package pods runs the pods bound to one node: a network namespace per
// pod wired to the node's bridge with one address of each family from the
// node's pod CIDRs (recorded in duet-ipam's durable store before use), the
// containers' commands run as processes inside that namespace, and the
// pod's status reported with the cluster's primary family first.
//
// Duet is a networking system, not an image runtime: a container's image is
// ignored and its command and args run as a host process.
package pods

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/record"
	"k8s.io/utils/clock"

	"github.com/duet-net/duet/internal/agent/crilog"
	"github.com/duet-net/duet/internal/agent/images"
	"github.com/duet-net/duet/internal/agent/objwatch"
	"github.com/duet-net/duet/internal/agent/podroot"
	"github.com/duet-net/duet/internal/agent/sandbox"
	"github.com/duet-net/duet/internal/agent/tokens"
	"github.com/duet-net/duet/internal/alloc"
	"github.com/duet-net/duet/internal/alloc/boltstore"
)

const (
	// Bridge is the node's pod bridge.
	Bridge = "duet0"
	ifName = "eth0"
	// network names the node's pod-IP store, kept in duet-ipam's format.
	network = "duet"
	// storeLockTimeout bounds the wait for the store's lock.
	storeLockTimeout = 30 * time.Second
)

// Manager runs the pods of one node.
type Manager struct {
	Client   kubernetes.Interface
	NodeName string
	NodeNS   string       // the node's network namespace path
	HostIPs  []netip.Addr // the node's InternalIPs, primary first
	Binary   string       // the duet executable, for ns-exec
	StateDir string       // IPAM store and container logs
	Log      *slog.Logger
	// OnChange is called when a pod's status should be reported again.
	OnChange func(namespace, name string)

	// LogOptions size and rotate container logs (crilog's defaults if zero).
	LogOptions crilog.Options
	// The node's edges, each nil for the real one: tests give fakes.

	// Network wires pod sandboxes; nil is SandboxNetwork.
	Network Network
	// Runner runs container processes; nil is NSEnterRunner{Binary}.
	Runner Runner
	// PodIPStore keeps the pod-address reservations; nil opens duet-ipam's
	// bbolt store under StateDir for each call.
	PodIPStore alloc.PodIPStore
	// Clock times restarts and grace periods; nil is the real clock.
	Clock clock.Clock
	// Worlds makes pods' UTS and mount namespaces; nil is PodRootWorlds
	// under StateDir.
	Worlds Worlds
	// Images is the image table; nil is the built-in one.
	Images     *images.Table
	imagesOnce sync.Once
	// ClusterDNS are the cluster DNS Service's IPs for pods' resolv.conf
	// (primary family first); none means the node's resolvers.
	ClusterDNS []netip.Addr
	// Services lists the cluster's Services for containers' service-link
	// variables; nil gives none.
	Services corelisters.ServiceLister
	// Events records Warning events on pods whose containers cannot
	// start; nil records none.
	Events record.EventRecorder
	// Tokens requests and caches pods' ServiceAccount tokens; nil is one
	// over Client and Clock.
	Tokens     *tokens.Manager
	tokensOnce sync.Once
	// ClusterDomain is the cluster's DNS domain ("" is cluster.local);
	// ResolvConf the node's resolver configuration ("" is
	// /etc/resolv.conf).
	ClusterDomain, ResolvConf string
	// Sources watches the ConfigMaps and Secrets of pods' volumes; nil is
	// one over Client.
	Sources     *objwatch.Watcher
	sourcesOnce sync.Once

	mu        sync.Mutex
	podCIDRs  []netip.Prefix
	podRanges []alloc.PodRangeSet // one per pod CIDR, in order; nil until known
	running   map[types.UID]*podRun
}

type podRun struct {
	pod        *corev1.Pod // as it was started
	sandbox    *sandbox.Sandbox
	world      World
	volumes    *volumeUpdater // nil without volumes to keep current
	containers map[string]*containerRun
	cancel     context.CancelFunc
	started    metav1.Time
	// files is what the pod's /etc/hosts and /etc/resolv.conf were last
	// written from (podfiles.go).
	files *podroot.Spec
	// terminating is set (under Manager.mu) once a graceful stop began.
	terminating bool
}

type containerRun struct {
	// started is closed after the first attempt to start the process, so
	// the first status report already shows it running.
	started chan struct{}
	// done is closed when the container will not run again.
	done     chan struct{}
	mu       sync.Mutex
	proc     Process
	env      []string     // the environment its process got
	io       *containerIO // the current instance's streams
	restarts int32
	state    corev1.ContainerState
	// lastTerm is how the previous instance ended.
	lastTerm *corev1.ContainerStateTerminated
	// startupDone and ready are the current instance's probe results.
	startupDone, ready bool
}

func (m *Manager) network() Network {
	if m.Network != nil {
		return m.Network
	}
	return SandboxNetwork{}
}

func (m *Manager) runner() Runner {
	if m.Runner != nil {
		return m.Runner
	}
	return NSEnterRunner{Binary: m.Binary}
}

func (m *Manager) clock() clock.Clock {
	if m.Clock != nil {
		return m.Clock
	}
	return clock.RealClock{}
}

func (m *Manager) now() metav1.Time { return metav1.NewTime(m.clock().Now()) }

// SetPodCIDRs prepares the node's bridge once its pod CIDRs are known,
// and again when they change (the Node was deleted and registered anew):
// pods started from then on get addresses of the new CIDRs.
func (m *Manager) SetPodCIDRs(cidrs []netip.Prefix) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.podRanges != nil && slices.Equal(m.podCIDRs, cidrs) {
		return nil
	}
	// Check the CIDRs before the bridge gets their gateways.
	ranges, err := alloc.NodePodRanges(cidrs)
	if err != nil {
		return fmt.Errorf("pod address ranges for %v: %w", cidrs, err)
	}
	if err := m.network().EnsureNode(m.NodeNS, sandbox.NodeConfig{Bridge: Bridge, PodCIDRs: cidrs}); err != nil {
		return fmt.Errorf("preparing the node's bridge: %w", err)
	}
	added, dropped := appendsFamily(m.podCIDRs, cidrs), dropsFamily(m.podCIDRs, cidrs)
	if added {
		m.Log.Info("the node gained a pod CIDR of a new family; running pods get an address of it in place", "old", m.podCIDRs, "new", cidrs)
	} else if dropped {
		m.Log.Info("the node dropped its pod CIDR of a family; running pods lose their address of it in place", "old", m.podCIDRs, "new", cidrs)
	} else if m.podCIDRs != nil {
		m.Log.Warn("the node's pod CIDRs changed; running pods keep their addresses", "old", m.podCIDRs, "new", cidrs)
	}
	m.podCIDRs, m.podRanges = slices.Clone(cidrs), ranges
	if m.running == nil {
		m.running = map[types.UID]*podRun{}
	}
	if added || dropped {
		m.pokeRunningLocked() // addfamily.go, removefamily.go
	}
	return nil
}

// Ready reports whether pods can be run (the node has its pod CIDRs).
func (m *Manager) Ready() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.podRanges != nil
}

// withPodIPs runs fn with the pod-IP policy over the node's store, open
// (and locked) for the call only, as duet-ipam opens it.
func (m *Manager) withPodIPs(fn func(*alloc.PodIPs) error) error {
	m.mu.Lock()
	ranges := m.podRanges
	m.mu.Unlock()
	return m.withPodIPsOf(ranges, fn)
}

// withPodIPsOf is withPodIPs over the given ranges.
func (m *Manager) withPodIPsOf(ranges []alloc.PodRangeSet, fn func(*alloc.PodIPs) error) error {
	st := m.PodIPStore
	if st == nil {
		bolt, err := boltstore.Open(filepath.Join(m.StateDir, "ipam"), network, storeLockTimeout)
		if err != nil {
			return err
		}
		defer bolt.Close()
		st = bolt
	}
	p, err := alloc.NewPodIPs(st, ranges, alloc.PodIPOptions{Cooldown: alloc.DefaultPodIPCooldown, Now: m.clock().Now})
	if err != nil {
		return err
	}
	return fn(p)
}

// Sync brings one pod to its desired state: running when it is bound here
// and not being deleted, gone otherwise. pod is nil when it was deleted.
func (m *Manager) Sync(ctx context.Context, uid types.UID, pod *corev1.Pod) error {
	if !m.Ready() {
		return errors.New("node has no pod CIDRs yet")
	}
	if pod == nil || pod.Spec.NodeName != m.NodeName {
		return m.stop(uid)
	}
	if pod.DeletionTimestamp != nil {
		return m.terminate(ctx, pod)
	}
	m.mu.Lock()
	run, ok := m.running[uid]
	m.mu.Unlock()
	if !ok {
		var err error
		if run, err = m.start(ctx, pod); err != nil {
			return err
		}
	} else {
		run.volumes.podChanged(pod)
		if err := m.followFamilies(ctx, pod, run); err != nil {
			return err
		}
	}
	return m.reportStatus(ctx, pod, run)
}

// start reserves addresses, wires the sandbox and starts the containers;
// on failure it leaves nothing behind.
func (m *Manager) start(ctx context.Context, pod *corev1.Pod) (_ *podRun, err error) {
	begin := time.Now()
	stage := begin
	var sb *sandbox.Sandbox
	var addrs []netip.Addr
	// The addresses are of these CIDRs, one each in order, even if the
	// node's change meanwhile: the pod's next sync follows them.
	m.mu.Lock()
	cidrs, ranges := m.podCIDRs, m.podRanges
	m.mu.Unlock()
	if pod.Spec.HostNetwork {
		sb, addrs = m.hostSandbox(pod), slices.Clone(m.HostIPs)
	} else {
		owner := podAttachment(pod.UID)
		err = m.withPodIPsOf(ranges, func(p *alloc.PodIPs) error {
			var err error
			addrs, err = p.Reserve(owner, heldInRange(p, owner))
			return err
		})
		if err != nil {
			return nil, fmt.Errorf("reserving addresses for %s/%s: %w", pod.Namespace, pod.Name, err)
		}
		defer func() {
			if err != nil {
				m.release(owner)
			}
		}()
		observeStage("ipam", begin)
		stage = time.Now()
		req := sandbox.Request{ID: string(pod.UID), Bridge: Bridge, IfName: ifName}
		for i, a := range addrs {
			cidr := cidrs[i]
			req.Addrs = append(req.Addrs, netip.PrefixFrom(a, cidr.Bits()))
			req.Gateways = append(req.Gateways, sandbox.Gateway(cidr).Addr())
		}
		if sb, err = m.network().Setup(ctx, m.NodeNS, req); err != nil {
			return nil, fmt.Errorf("wiring %s/%s: %w", pod.Namespace, pod.Name, err)
		}
	}
	observeStage("sandbox", stage)
	stage = time.Now()
	world, spec, err := m.makeWorld(ctx, pod, addrs)
	if err != nil {
		_ = m.network().Teardown(m.NodeNS, string(pod.UID))
		return nil, fmt.Errorf("making the world of %s/%s: %w", pod.Namespace, pod.Name, err)
	}
	observeStage("world", stage)
	stage = time.Now()
	runCtx, cancel := context.WithCancel(context.Background())
	run := &podRun{pod: pod.DeepCopy(), sandbox: sb, world: world, containers: map[string]*containerRun{}, cancel: cancel, started: m.now(), files: filesSpec(spec)}
	logDir := filepath.Join(m.StateDir, "pods", pod.Namespace+"_"+pod.Name+"_"+string(pod.UID))
	if err := os.MkdirAll(logDir, 0o700); err != nil {
		cancel()
		_ = m.worlds().Remove(string(pod.UID))
		_ = m.network().Teardown(m.NodeNS, string(pod.UID))
		return nil, err
	}
	for _, c := range pod.Spec.Containers {
		cr := &containerRun{started: make(chan struct{}), done: make(chan struct{}), state: corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{Reason: "ContainerCreating"}}}
		run.containers[c.Name] = cr
		go m.supervise(runCtx, pod.DeepCopy(), c, cr, run, m.containerLogDir(pod, c.Name))
	}
	run.volumes = m.startVolumeUpdates(runCtx, pod, run, spec)
	// A bound on the wait, not a timing of the pod's: the real clock.
	wait := time.NewTimer(5 * time.Second)
	defer wait.Stop()
	for _, cr := range run.containers {
		select {
		case <-cr.started:
			continue
		case <-wait.C:
		}
		break
	}
	observeStage("containers", stage)
	observeStage("total", begin)
	m.mu.Lock()
	m.running[pod.UID] = run
	changed := !slices.Equal(m.podCIDRs, cidrs)
	m.mu.Unlock()
	if changed {
		m.poke(pod) // the node's pod CIDRs changed while it started
	}
	m.Log.Info("pod started", "pod", pod.Namespace+"/"+pod.Name, "ips", addrs)
	return run, nil
}

// containerProcess returns the argv and environment of a container's
// process: the image table's entrypoint and command under Docker's rules,
// the container's env, and $(VAR) references in command and args
// expanded from it.
func (m *Manager) containerProcess(ctx context.Context, pod *corev1.Pod, c corev1.Container, podIPs []netip.Addr) (argv, env []string, err error) {
	argv, img, err := m.resolveImage(c)
	if err != nil {
		return nil, nil, err
	}
	env, vars, err := m.containerEnv(ctx, pod, c, img, podIPs)
	if err != nil {
		return nil, nil, &ContainerConfigError{Reason: "CreateContainerConfigError", Err: err}
	}
	for i := range argv {
		argv[i] = expand(argv[i], vars)
	}
	if argv[0] == "duet" {
		argv[0] = m.Binary // pods may run duet itself (duet netexec) wherever it is installed
	}
	return argv, env, nil
}

// supervise runs a container's command and restarts it per restartPolicy.
func (m *Manager) supervise(ctx context.Context, pod *corev1.Pod, c corev1.Container, cr *containerRun, run *podRun, logDir string) {
	clk := m.clock()
	// The kubelet's back-off: the first restart at once, then 10 s
	// doubling to 5 min, and at once again after 10 min of running.
	var backoff, startBackoff time.Duration
	first := true
	startedOnce := func() {
		if first {
			first = false
			close(cr.started)
		}
	}
	defer startedOnce()
	defer close(cr.done)
	for ctx.Err() == nil {
		argv, env, err := m.containerProcess(ctx, pod, c, run.addrs())
		if err != nil {
			if m.cannotStart(pod, c, cr, err) && !first {
				m.poke(pod)
			}
			startedOnce()
			if !m.waitToRetryStart(ctx, failureReason(err), &startBackoff) {
				return
			}
			continue
		}
		startBackoff = 0
		cio, err := m.openContainerIO(c, cr, logDir)
		if err != nil {
			cr.set(corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{Reason: "RunContainerError", Message: err.Error()}})
			return
		}
		proc, err := cio.start(m.runner(), run.processSpec(c, argv, env))
		if err != nil {
			cio.finish()
			cr.set(corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{Reason: "RunContainerError", Message: err.Error()}})
			return
		}
		cr.mu.Lock()
		cr.proc, cr.io, cr.env = proc, cio, env
		cr.state = corev1.ContainerState{Running: &corev1.ContainerStateRunning{StartedAt: m.now()}}
		cr.mu.Unlock()
		if first {
			startedOnce() // the pod's first status report follows
		} else {
			m.poke(pod)
		}
		stopProbes := m.startProbes(ctx, pod, c, cr, run, proc, clk.Now())
		code, _ := proc.Wait()
		stopProbes()
		cio.finish()
		reason := "Completed"
		if code != 0 {
			reason = "Error"
		}
		cr.mu.Lock()
		started := cr.state.Running.StartedAt
		term := &corev1.ContainerStateTerminated{ExitCode: int32(code), Reason: reason, StartedAt: started, FinishedAt: m.now()}
		cr.state = corev1.ContainerState{Terminated: term}
		cr.mu.Unlock()
		if ctx.Err() != nil {
			return
		}
		m.poke(pod)
		restart := pod.Spec.RestartPolicy == corev1.RestartPolicyAlways || pod.Spec.RestartPolicy == corev1.RestartPolicyOnFailure && code != 0
		if !restart {
			return
		}
		if term.FinishedAt.Sub(started.Time) >= 10*time.Minute {
			backoff = 0
		}
		if backoff > 0 {
			cr.mu.Lock()
			cr.lastTerm = term
			cr.state = corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{Reason: "CrashLoopBackOff",
				Message: fmt.Sprintf("back-off %s restarting failed container=%s pod=%s_%s(%s)", backoff, c.Name, pod.Name, pod.Namespace, pod.UID)}}
			cr.mu.Unlock()
			m.poke(pod)
			select {
			case <-ctx.Done():
				return
			case <-clk.After(backoff):
			}
		}
		backoff = min(max(2*backoff, 10*time.Second), 5*time.Minute)
		cr.mu.Lock()
		cr.restarts++
		cr.lastTerm = term
		cr.mu.Unlock()
	}
}

func (cr *containerRun) set(s corev1.ContainerState) {
	cr.mu.Lock()
	defer cr.mu.Unlock()
	cr.state = s
}

// poke asks for the pod's status to be reported again.
func (m *Manager) poke(pod *corev1.Pod) {
	if m.OnChange != nil {
		m.OnChange(pod.Namespace, pod.Name)
	}
}

// terminate stops a pod being deleted gracefully: its containers get
// SIGTERM, and SIGKILL when the deletion's grace period ends; then the
// sandbox goes, the addresses are released and the pod is deleted for good
// (grace period zero, only this UID). It returns at once; the wait runs
// in the background so that one slow pod holds up no other.
func (m *Manager) terminate(ctx context.Context, pod *corev1.Pod) error {
	m.mu.Lock()
	run, ok := m.running[pod.UID]
	begin := ok && !run.terminating
	if ok {
		run.terminating = true
	}
	m.mu.Unlock()
	if !ok {
		// Nothing runs (stopped already, or an agent restart): finish.
		if err := m.stop(pod.UID); err != nil {
			return err
		}
		return m.deletePod(ctx, pod)
	}
	if !begin {
		return nil // under way
	}
	grace := time.Duration(0)
	if pod.DeletionGracePeriodSeconds != nil {
		grace = time.Duration(*pod.DeletionGracePeriodSeconds) * time.Second
	}
	run.cancel() // no restarts from now on
	for _, cr := range run.containers {
		cr.signal(syscall.SIGTERM)
	}
	m.Log.Info("stopping pod", "pod", pod.Namespace+"/"+pod.Name, "gracePeriod", grace)
	go func() {
		if grace > 0 {
			timer := m.clock().NewTimer(grace)
			defer timer.Stop()
			for _, cr := range run.containers {
				select {
				case <-cr.done:
					continue
				case <-timer.C():
				}
				break
			}
		}
		// What still runs is killed by stop.
		if err := m.stop(pod.UID); err != nil {
			m.Log.Error("stopping pod", "pod", pod.Namespace+"/"+pod.Name, "err", err)
		} else if err := m.deletePod(context.Background(), pod); err != nil {
			m.Log.Error("deleting stopped pod", "pod", pod.Namespace+"/"+pod.Name, "err", err)
		}
		m.poke(pod) // a failure above is retried by the next sync
	}()
	return nil
}

// deletePod removes a stopped pod's object for good.
func (m *Manager) deletePod(ctx context.Context, pod *corev1.Pod) error {
	zero, uid := int64(0), pod.UID
	err := m.Client.CoreV1().Pods(pod.Namespace).Delete(ctx, pod.Name, metav1.DeleteOptions{
		GracePeriodSeconds: &zero, Preconditions: &metav1.Preconditions{UID: &uid},
	})
	if apierrors.IsNotFound(err) || apierrors.IsConflict(err) {
		return nil // gone already, or another pod of that name now
	}
	return err
}

func (cr *containerRun) signal(sig syscall.Signal) {
	cr.mu.Lock()
	defer cr.mu.Unlock()
	if cr.proc != nil {
		_ = cr.proc.Signal(sig)
	}
}

// stop kills a pod's containers, removes its sandbox and releases its
// addresses. Each step is idempotent, so a half-stopped pod is finished by
// the next call.
func (m *Manager) stop(uid types.UID) error {
	m.mu.Lock()
	run, ok := m.running[uid]
	delete(m.running, uid)
	m.mu.Unlock()
	if ok {
		run.cancel()
		for _, cr := range run.containers {
			cr.signal(syscall.SIGKILL)
		}
	}
	if err := m.worlds().Remove(string(uid)); err != nil {
		return err
	}
	if err := m.network().Teardown(m.NodeNS, string(uid)); err != nil {
		return err
	}
	m.release(podAttachment(uid))
	m.removeLogs(uid)
	m.tokens().Forget(uid)
	if ok {
		m.Log.Info("pod stopped", "uid", uid)
	}
	return nil
}

// podAttachment is whom a pod's addresses are reserved for in the store.
func podAttachment(uid types.UID) alloc.Attachment {
	return alloc.Attachment{ContainerID: string(uid), IfName: ifName}
}

func (m *Manager) release(owner alloc.Attachment) {
	err := m.withPodIPs(func(p *alloc.PodIPs) error {
		_, err := p.Release(owner)
		return err
	})
	if err != nil {
		m.Log.Error("releasing addresses", "owner", owner.String(), "err", err)
	}
}

// Reconcile removes sandboxes and reservations of pods that are no longer
// bound here, after a restart (the agent may have been killed at any
// point). keep holds the UIDs of the pods bound to this node.
func (m *Manager) Reconcile(keep map[types.UID]bool) error {
	entries, err := m.network().List(m.NodeNS)
	if err != nil {
		return err
	}
	for _, e := range entries {
		if e.ID == "" {
			_ = m.network().TeardownNetNS(m.NodeNS, e.NetNS)
			continue
		}
		if !keep[types.UID(e.ID)] {
			if err := m.stop(types.UID(e.ID)); err != nil {
				return err
			}
		}
	}
	// Worlds without a sandbox (a crash between making one and the
	// other) go too, and so do reservations without a sandbox.
	worlds, err := m.worlds().List()
	if err != nil {
		return err
	}
	for _, uid := range worlds {
		if !keep[types.UID(uid)] {
			if err := m.worlds().Remove(uid); err != nil {
				return err
			}
		}
	}
	valid := make([]alloc.Attachment, 0, len(keep))
	for uid := range keep {
		valid = append(valid, podAttachment(uid))
	}
	return m.withPodIPs(func(p *alloc.PodIPs) error {
		_, err := p.GC(valid)
		return err
	})
}

// reportStatus writes the pod's status: phase, IPs (primary family first,
// the order of the node's pod CIDRs), conditions and container statuses.
func (m *Manager) reportStatus(ctx context.Context, pod *corev1.Pod, run *podRun) error {
	p := pod.DeepCopy()
	s := &p.Status
	s.PodIPs = nil
	for _, a := range run.sandbox.Addrs {
		s.PodIPs = append(s.PodIPs, corev1.PodIP{IP: a.Addr().String()})
	}
	if len(s.PodIPs) > 0 {
		s.PodIP = s.PodIPs[0].IP
	}
	s.HostIPs = nil
	for _, ip := range m.HostIPs {
		s.HostIPs = append(s.HostIPs, corev1.HostIP{IP: ip.String()})
	}
	if len(s.HostIPs) > 0 {
		s.HostIP = s.HostIPs[0].IP
	}
	if s.StartTime == nil {
		s.StartTime = &run.started
	}
	allReady := true
	s.ContainerStatuses = nil
	for _, c := range pod.Spec.Containers {
		cr := run.containers[c.Name]
		cr.mu.Lock()
		st := corev1.ContainerStatus{Name: c.Name, Image: c.Image, ImageID: "", State: cr.state, RestartCount: cr.restarts}
		if cr.proc != nil {
			st.ContainerID = fmt.Sprintf("duet://%d", cr.proc.Pid())
		}
		if cr.lastTerm != nil {
			st.LastTerminationState = corev1.ContainerState{Terminated: cr.lastTerm.DeepCopy()}
		}
		cr.mu.Unlock()
		running := st.State.Running != nil
		cr.mu.Lock()
		started := running && (c.StartupProbe == nil || cr.startupDone)
		st.Ready = started && (c.ReadinessProbe == nil || cr.ready)
		cr.mu.Unlock()
		st.Started = &started
		allReady = allReady && st.Ready
		s.ContainerStatuses = append(s.ContainerStatuses, st)
	}
	s.Phase = podPhase(pod.Spec.RestartPolicy, s.ContainerStatuses)
	now := m.now()
	cond := func(t corev1.PodConditionType, ok bool) corev1.PodCondition {
		status := corev1.ConditionFalse
		if ok {
			status = corev1.ConditionTrue
		}
		for _, c := range pod.Status.Conditions {
			if c.Type == t && c.Status == status {
				return c
			}
		}
		return corev1.PodCondition{Type: t, Status: status, LastTransitionTime: now}
	}
	s.Conditions = []corev1.PodCondition{
		cond(corev1.PodScheduled, true),
		cond(corev1.PodInitialized, true),
		cond(corev1.PodReadyToStartContainers, true),
		cond(corev1.ContainersReady, allReady),
		cond(corev1.PodReady, allReady && readinessGatesTrue(pod)),
	}
	s.Conditions = append(s.Conditions, othersConditions(pod.Status.Conditions, s.Conditions)...)
	if equalStatus(&pod.Status, s) {
		return nil
	}
	_, err := m.Client.CoreV1().Pods(p.Namespace).UpdateStatus(ctx, p, metav1.UpdateOptions{})
	if apierrors.IsNotFound(err) || apierrors.IsConflict(err) {
		return nil // a newer version is on its way through the informer
	}
	return err
}

func equalStatus(a, b *corev1.PodStatus) bool {
	x, _ := json.Marshal(a)
	y, _ := json.Marshal(b)
	return string(x) == string(y)
}
