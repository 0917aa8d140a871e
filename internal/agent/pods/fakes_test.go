package pods

import (
	"context"
	"errors"
	"fmt"
	"github.com/duet-net/duet/internal/agent/podroot"
	"io"
	"log/slog"
	"net/netip"
	"slices"
	"sync"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/utils/clock"
	testingclock "k8s.io/utils/clock/testing"

	"github.com/duet-net/duet/internal/agent/sandbox"
	"github.com/duet-net/duet/internal/alloc"
	"github.com/duet-net/duet/internal/testutil/roottest"
)

// fakeNetwork is a Network in memory: sandboxes by ID, and namespace
// files without one.
type fakeNetwork struct {
	mu        sync.Mutex
	ensured   []sandbox.NodeConfig
	sandboxes map[string]*sandbox.Sandbox
	requests  map[string]sandbox.Request
	noID      []string // namespace paths List reports without an ID
	setups    int      // Setup calls that made a sandbox
	teardowns []string
	setupErr  error
}

func newFakeNetwork() *fakeNetwork {
	return &fakeNetwork{sandboxes: map[string]*sandbox.Sandbox{}, requests: map[string]sandbox.Request{}}
}

func (f *fakeNetwork) EnsureNode(_ string, cfg sandbox.NodeConfig) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.ensured = append(f.ensured, cfg)
	return nil
}

func (f *fakeNetwork) Setup(_ context.Context, _ string, req sandbox.Request) (*sandbox.Sandbox, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.setupErr != nil {
		return nil, f.setupErr
	}
	if sb, ok := f.sandboxes[req.ID]; ok {
		// As the real Setup: the same sandbox again, repaired to the
		// request's addresses.
		out := *sb
		out.Addrs, out.Gateways = slices.Clone(req.Addrs), slices.Clone(req.Gateways)
		f.sandboxes[req.ID] = &out
		return &out, nil
	}
	sb := &sandbox.Sandbox{ID: req.ID, NetNS: "/run/netns/fake-" + req.ID, IfName: req.IfName, Addrs: req.Addrs, Gateways: req.Gateways}
	f.sandboxes[req.ID] = sb
	f.requests[req.ID] = req
	f.setups++
	return sb, nil
}

func (f *fakeNetwork) Teardown(_ string, id string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.sandboxes, id)
	f.teardowns = append(f.teardowns, id)
	return nil
}

func (f *fakeNetwork) List(string) ([]sandbox.Entry, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []sandbox.Entry
	for id, sb := range f.sandboxes {
		out = append(out, sandbox.Entry{ID: id, NetNS: sb.NetNS})
	}
	for _, p := range f.noID {
		out = append(out, sandbox.Entry{NetNS: p})
	}
	return out, nil
}

func (f *fakeNetwork) TeardownNetNS(_ string, path string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	i := slices.Index(f.noID, path)
	if i < 0 {
		return fmt.Errorf("%s is not a sandbox namespace", path)
	}
	f.noID = slices.Delete(f.noID, i, i+1)
	return nil
}

func (f *fakeNetwork) sandbox(id string) (*sandbox.Sandbox, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	sb, ok := f.sandboxes[id]
	return sb, ok
}

// fakeRunner starts fakeProcesses, which run until the test ends them or
// a signal they do not ignore arrives.
type fakeRunner struct {
	started chan *fakeProcess
	mu      sync.Mutex
	procs   []*fakeProcess
	// ignoreTERM makes new processes ignore SIGTERM, as a slow shutdown.
	ignoreTERM bool
	startErr   error
	// byCommand takes the processes whose argv[0] is a key (exec probes'
	// commands) instead of started; count leaves them out.
	byCommand map[string]chan *fakeProcess
	probes    int
}

func newFakeRunner() *fakeRunner { return &fakeRunner{started: make(chan *fakeProcess, 100)} }

func (r *fakeRunner) Start(spec ProcessSpec) (Process, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.startErr != nil {
		return nil, r.startErr
	}
	p := &fakeProcess{spec: spec, pid: 1000 + len(r.procs) + r.probes, exited: make(chan struct{}), signals: make(chan syscall.Signal, 10), ignoreTERM: r.ignoreTERM}
	if ch, ok := r.byCommand[spec.Argv[0]]; ok {
		r.probes++
		ch <- p
		return p, nil
	}
	r.procs = append(r.procs, p)
	r.started <- p
	return p, nil
}

// route sends the processes of command cmd to a channel of their own
// (buffered: the probe that started one does not wait for the test).
func (r *fakeRunner) route(cmd string) chan *fakeProcess {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.byCommand == nil {
		r.byCommand = map[string]chan *fakeProcess{}
	}
	ch := make(chan *fakeProcess, 100)
	r.byCommand[cmd] = ch
	return ch
}

// nextOf returns the next process of ch, failing the test after a while.
func nextOf(t *testing.T, ch chan *fakeProcess, what string) *fakeProcess {
	t.Helper()
	select {
	case p := <-ch:
		return p
	case <-time.After(10 * time.Second):
		t.Fatalf("no %s process started within 10 s", what)
		return nil
	}
}

func (r *fakeRunner) count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.procs)
}

// next returns the next process started, failing the test after a while.
func (r *fakeRunner) next(t *testing.T) *fakeProcess {
	t.Helper()
	select {
	case p := <-r.started:
		return p
	case <-time.After(10 * time.Second):
		t.Fatal("no process started within 10 s")
		return nil
	}
}

type fakeProcess struct {
	spec       ProcessSpec
	pid        int
	ignoreTERM bool
	signals    chan syscall.Signal
	once       sync.Once
	exited     chan struct{}
	code       int
}

func (p *fakeProcess) Pid() int { return p.pid }

func (p *fakeProcess) Wait() (int, error) {
	<-p.exited
	return p.code, nil
}

// exit ends the process with code; later calls do nothing.
func (p *fakeProcess) exit(code int) {
	p.once.Do(func() {
		p.code = code
		close(p.exited)
	})
}

func (p *fakeProcess) Signal(sig syscall.Signal) error {
	select {
	case <-p.exited:
		return errors.New("no such process")
	default:
	}
	p.signals <- sig
	if sig == syscall.SIGKILL || sig == syscall.SIGTERM && !p.ignoreTERM {
		p.exit(128 + int(sig))
	}
	return nil
}

// nextSignal returns the next signal the process got.
func (p *fakeProcess) nextSignal(t *testing.T) syscall.Signal {
	t.Helper()
	select {
	case s := <-p.signals:
		return s
	case <-time.After(10 * time.Second):
		t.Fatal("no signal within 10 s")
		return 0
	}
}

// testClock is a fake clock that tells the test of every timer set, so
// that it steps the clock only once the code waits on it.
type testClock struct {
	*testingclock.FakeClock
	timers chan time.Duration
}

func newTestClock() *testClock {
	return &testClock{FakeClock: testingclock.NewFakeClock(time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)), timers: make(chan time.Duration, 1000)}
}

func (c *testClock) After(d time.Duration) <-chan time.Time {
	ch := c.FakeClock.After(d)
	c.timers <- d
	return ch
}

func (c *testClock) NewTimer(d time.Duration) clock.Timer {
	tm := c.FakeClock.NewTimer(d)
	c.timers <- d
	return tm
}

// waitTimer waits until some code set a timer of d (others are skipped).
func (c *testClock) waitTimer(t *testing.T, d time.Duration) {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		select {
		case got := <-c.timers:
			if got == d {
				return
			}
		case <-deadline:
			t.Fatalf("no timer of %s set within 10 s", d)
		}
	}
}

// testEnv is a Manager over fakes, with the pod CIDRs set.
type testEnv struct {
	m      *Manager
	client *fake.Clientset
	net    *fakeNetwork
	run    *fakeRunner
	store  *alloc.MemPodIPStore
	clk    *testClock
	worlds *fakeWorlds
	cidrs  []netip.Prefix
}

var (
	v4CIDR = netip.MustParsePrefix("10.244.1.0/24")
	v6CIDR = netip.MustParsePrefix("fd00:10:244:1::/64")
	hostV4 = netip.MustParseAddr("192.168.10.2")
	hostV6 = netip.MustParseAddr("fd00:192:168:10::2")
)

func newTestEnv(t *testing.T, cidrs ...netip.Prefix) *testEnv {
	t.Helper()
	if len(cidrs) == 0 {
		cidrs = []netip.Prefix{v4CIDR, v6CIDR}
	}
	e := &testEnv{client: fake.NewClientset(), net: newFakeNetwork(), run: newFakeRunner(), store: alloc.NewMemPodIPStore(), clk: newTestClock(), worlds: &fakeWorlds{}, cidrs: cidrs}
	hostIPs := []netip.Addr{hostV4, hostV6}
	if cidrs[0].Addr().Is6() {
		hostIPs = []netip.Addr{hostV6, hostV4}
	}
	e.m = newTestManager(t, e, hostIPs)
	if err := e.m.SetPodCIDRs(cidrs); err != nil {
		t.Fatalf("SetPodCIDRs: %v", err)
	}
	return e
}

// newTestManager is a manager over e's fakes, as after an agent restart.
func newTestManager(t *testing.T, e *testEnv, hostIPs []netip.Addr) *Manager {
	m := &Manager{
		Client: e.client, NodeName: "n1", NodeNS: "/run/netns/node-n1", HostIPs: hostIPs,
		Binary: "/usr/local/bin/duet", StateDir: t.TempDir(), Log: slog.New(slog.NewTextHandler(io.Discard, nil)),
		Network: e.net, Runner: e.run, PodIPStore: e.store, Clock: e.clk, Worlds: e.worlds,
	}
	t.Cleanup(func() { stopAll(m) })
	return m
}

// stopAll stops what a test left running, so that no goroutine outlives it.
func stopAll(m *Manager) {
	m.mu.Lock()
	var uids []string
	for uid := range m.running {
		uids = append(uids, string(uid))
	}
	m.mu.Unlock()
	for _, uid := range uids {
		_ = m.stop(types.UID(uid))
	}
}

// newPod is a pod bound to n1 with one container per name.
func newPod(name string, policy corev1.RestartPolicy, containers ...string) *corev1.Pod {
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "default", UID: types.UID("uid-" + name)},
		Spec:       corev1.PodSpec{NodeName: "n1", RestartPolicy: policy},
	}
	for _, c := range containers {
		p.Spec.Containers = append(p.Spec.Containers, corev1.Container{Name: c, Image: "busybox", Command: []string{"sleep", "3600"}})
	}
	return p
}

func (e *testEnv) create(t *testing.T, p *corev1.Pod) *corev1.Pod {
	t.Helper()
	out, err := e.client.CoreV1().Pods(p.Namespace).Create(context.Background(), p, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("creating pod %s: %v", p.Name, err)
	}
	return out
}

// get returns the pod as the API has it now.
func (e *testEnv) get(t *testing.T, name string) *corev1.Pod {
	t.Helper()
	p, err := e.client.CoreV1().Pods("default").Get(context.Background(), name, metav1.GetOptions{})
	if err != nil {
		t.Fatalf("getting pod %s: %v", name, err)
	}
	return p
}

// sync syncs the pod as the API has it now, as the agent's informer would.
func (e *testEnv) sync(t *testing.T, name string) *corev1.Pod {
	t.Helper()
	p := e.get(t, name)
	if err := e.m.Sync(context.Background(), p.UID, p); err != nil {
		t.Fatalf("Sync(%s): %v", name, err)
	}
	return e.get(t, name)
}

// eventually polls cond (which syncs the pod) until it holds.
func (e *testEnv) eventually(t *testing.T, what string, cond func() error) {
	t.Helper()
	roottest.Eventually(t, 10*time.Second, what, cond)
}

func (e *testEnv) podAddrs(t *testing.T, uid string) []netip.Addr {
	t.Helper()
	sets, err := alloc.NodePodRanges(e.cidrs)
	if err != nil {
		t.Fatal(err)
	}
	p, err := alloc.NewPodIPs(e.store, sets, alloc.PodIPOptions{})
	if err != nil {
		t.Fatal(err)
	}
	addrs, err := p.Lookup(alloc.Attachment{ContainerID: uid, IfName: ifName})
	if err != nil {
		t.Fatal(err)
	}
	return addrs
}

// fakeWorlds keeps pods' worlds as a set of UIDs, with the spec each was
// made from and the volume updates each got.
type fakeWorlds struct {
	mu      sync.Mutex
	uids    map[string]bool
	specs   map[string]*podroot.Spec
	updates map[string][][]podroot.Volume
	// rewrites counts the rewrites of each pod's /etc files.
	rewrites map[string]int
	// updated is told the UID of every update.
	updated chan string
}

type fakeWorld struct {
	uid string
	f   *fakeWorlds
}

func (w fakeWorld) EnterArgs(container string) []string {
	return []string{"--uts=/fake/" + w.uid, "--mount=/fake/" + w.uid + "/" + container}
}

func (w fakeWorld) Update(volumes []podroot.Volume) error {
	w.f.mu.Lock()
	if w.f.updates == nil {
		w.f.updates = map[string][][]podroot.Volume{}
	}
	w.f.updates[w.uid] = append(w.f.updates[w.uid], volumes)
	ch := w.f.updated
	w.f.mu.Unlock()
	if ch != nil {
		ch <- w.uid
	}
	return nil
}

func (f *fakeWorlds) Create(_ context.Context, s *podroot.Spec) (World, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.uids == nil {
		f.uids = map[string]bool{}
		f.specs = map[string]*podroot.Spec{}
	}
	f.uids[s.UID] = true
	f.specs[s.UID] = s
	return fakeWorld{uid: s.UID, f: f}, nil
}

func (f *fakeWorlds) Remove(uid string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.uids, uid)
	return nil
}

func (f *fakeWorlds) List() ([]string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []string
	for uid := range f.uids {
		out = append(out, uid)
	}
	return out, nil
}
