package cluster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"github.com/duet-net/duet/internal/agent/clusterdns"
	"github.com/duet-net/duet/internal/agent/podroot"
	"github.com/duet-net/duet/internal/deathsig"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/duet-net/duet/internal/netaddr"
	"github.com/duet-net/duet/internal/netns"
	"github.com/duet-net/duet/internal/pki"
)

// Defaults of `duet up`, IPv4 primary.
const (
	DefaultClusterCIDR  = "10.244.0.0/16,fd00:10:244::/56"
	DefaultServiceRange = "10.96.0.0/16,fd00:10:96::/108"
	// DefaultLBPools are documentation ranges, routed from the external
	// namespace to the nodes.
	DefaultLBPools = "192.0.2.0/24,2001:db8:0:2::/112"
)

// Options configure `duet up`.
type Options struct {
	DataDir      string
	Nodes        int
	ClusterCIDR  string
	ServiceRange string
	IPv6Primary  bool
	// SingleStack is "" (the families of ClusterCIDR), ipv4 or ipv6: the
	// entries of that family of ClusterCIDR, ServiceRange and LBPools.
	SingleStack string
	// LBPools are the LoadBalancer IP pools, CIDRs of either family.
	LBPools string
	// MasqConfig is an ip-masq-agent config file every agent watches.
	MasqConfig string
	// Images is an image table file every agent loads.
	Images string
	// ClusterDomain is the cluster's DNS domain ("" is cluster.local);
	// ResolvConf the resolver configuration whose nameservers every
	// node's DNS forwards other names to ("" is the host's).
	ClusterDomain, ResolvConf string
	// Servers is the number of API servers, each an etcd member; with
	// more than one, each runs in a namespace of its own (servers.go).
	Servers int
	// Binary is the duet executable the server and agents run as.
	Binary string
	Out    io.Writer
}

// state is what `duet down` needs after a crash.
type state struct {
	Nodes int   `json:"nodes"`
	PIDs  []int `json:"pids"`
}

// Up starts a cluster and runs it until ctx is done, then tears it down.
// It returns nil after a clean teardown.
func Up(ctx context.Context, o Options) (err error) {
	if os.Geteuid() != 0 {
		return errors.New("duet up needs root: it creates network namespaces and links")
	}
	// Check the flags here, with the server's own rules, before building
	// anything.
	st, err := resolveStack(o)
	if err != nil {
		return err
	}
	clusterCIDR, serviceRange, lbPools := st.clusterCIDR, st.serviceRange, st.lbPools
	o.LBPools = st.lbPoolsFlag() // the servers' flag: pools of the cluster's families
	if o.Images != "" {
		if o.Images, err = filepath.Abs(o.Images); err != nil {
			return err
		}
	}
	if o.MasqConfig != "" {
		if o.MasqConfig, err = filepath.Abs(o.MasqConfig); err != nil {
			return err
		}
	}
	if o.ClusterDomain != "" {
		if _, err := clusterdns.CanonicalDomain(o.ClusterDomain); err != nil {
			return fmt.Errorf("--cluster-domain: %w", err)
		}
	}
	if o.ResolvConf != "" {
		if o.ResolvConf, err = filepath.Abs(o.ResolvConf); err != nil {
			return err
		}
	}
	topo, err := Plan(o.DataDir, o.Nodes)
	if err != nil {
		return err
	}
	if o.Servers == 0 {
		o.Servers = 1
	}
	if err := topo.planServers(o.Servers); err != nil {
		return err
	}
	topo.Families = st.families
	if err := os.MkdirAll(filepath.Join(o.DataDir, "logs"), 0o700); err != nil {
		return err
	}
	// A previous run that crashed leaves namespaces and processes behind.
	if err := Down(o.DataDir, io.Discard); err != nil {
		return fmt.Errorf("cleaning up a previous run: %w", err)
	}

	say := func(format string, args ...any) { fmt.Fprintf(o.Out, format+"\n", args...) }
	say("Creating the network: %d node namespaces on an underlay of %s…", o.Nodes, joinPrefixes(keepFamily([]netip.Prefix{underlay4, underlay6}, st.families...)))
	if err := topo.Create(); err != nil {
		return err
	}
	sup := &supervisor{say: say}
	defer func() {
		say("Stopping…")
		sup.stopAll()
		if derr := errors.Join(removeWorlds(o.DataDir), topo.Destroy()); derr != nil && err == nil {
			err = derr
		}
		_ = os.Remove(filepath.Join(o.DataDir, "up.json"))
		if err == nil {
			say("Stopped; nothing of the cluster is left running.")
		}
	}()
	sup.record = func(pids []int) {
		data, _ := json.Marshal(state{Nodes: o.Nodes, PIDs: pids})
		_ = os.WriteFile(filepath.Join(o.DataDir, "up.json"), data, 0o600)
	}

	say("Starting the control plane (cluster CIDRs %s, service ranges %s)…", clusterCIDR, serviceRange)
	kubeconfig := filepath.Join(o.DataDir, "admin.kubeconfig")
	_ = os.Remove(kubeconfig)
	var client kubernetes.Interface
	var ha *controlPlane
	if len(topo.Servers) > 0 {
		if ha, client, err = startServers(ctx, o, topo, sup, say, serviceRange, clusterCIDR, kubeconfig); err != nil {
			return err
		}
	} else if client, err = startServer(ctx, o, sup, serviceRange, clusterCIDR, kubeconfig); err != nil {
		return err
	}

	say("Starting %d node agents…", o.Nodes)
	for _, n := range topo.Nodes {
		nodeKubeconfig := filepath.Join(o.DataDir, "nodes", n.Name+".kubeconfig")
		if err := os.MkdirAll(filepath.Dir(nodeKubeconfig), 0o700); err != nil {
			return err
		}
		writeKubeconfig := pki.WriteNodeKubeconfig
		if ha != nil {
			writeKubeconfig = func(_, name, path string) error { return ha.nodeKubeconfig(name, path) }
		}
		if err := writeKubeconfig(o.DataDir, n.Name, nodeKubeconfig); err != nil {
			return err
		}
		var ips []string
		for _, ip := range n.IPs(st.families) {
			ips = append(ips, ip.String())
		}
		args := []string{"agent", "--kubeconfig", nodeKubeconfig, "--node-name", n.Name,
			"--netns", NetNSPath(n.NetNS), "--node-ip", strings.Join(ips, ","),
			"--state-dir", filepath.Join(o.DataDir, "nodes", n.Name),
			"--cluster-cidr", clusterCIDR, "--service-cluster-ip-range", serviceRange}
		if o.MasqConfig != "" {
			args = append(args, "--masq-config", o.MasqConfig)
		}
		if o.Images != "" {
			args = append(args, "--images", o.Images)
		}
		if o.ClusterDomain != "" {
			args = append(args, "--cluster-domain", o.ClusterDomain)
		}
		if o.ResolvConf != "" {
			args = append(args, "--resolv-conf", o.ResolvConf)
		}
		if ha != nil {
			// Servers in namespaces of their own cannot reach an agent's
			// streaming port on the host's loopback: no exec or logs yet.
			args = append(args, ha.agentArgs(n)...)
		} else {
			stream, serr := agentStreamingArgs(o.DataDir, n.Name)
			if serr != nil {
				return serr
			}
			args = append(args, stream...)
		}
		if mport, err := freeLoopbackPort(); err == nil {
			addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(mport))
			args = append(args, "--metrics-bind-address", addr)
			say("  %s: metrics at http://%s/metrics", n.Name, addr)
		}
		_, err := sup.start(n.Name+"'s agent", o.Binary, filepath.Join(o.DataDir, "logs", n.Name+".log"), args...)
		if err != nil {
			return err
		}
	}

	say("Waiting for the nodes to be Ready with a pod CIDR of each family…")
	podCIDRs, err := waitForNodes(ctx, client, o.Nodes, len(st.families))
	if err != nil {
		return err
	}
	if err := topo.RouteExternal(podCIDRs, lbPools); err != nil {
		return err
	}
	if len(lbPools) > 0 {
		say("LoadBalancer IPs come from %s, routed from the external namespace (duet exec --external).", st.lbPoolsFlag())
	}
	say("Cluster ready. kubeconfig: %s", kubeconfig)
	say("Try: kubectl --kubeconfig %s get nodes -o wide", kubeconfig)

	// Run until asked to stop; the supervisor restarts what dies.
	<-ctx.Done()
	return nil
}

// startServer starts the one server of the cluster, in the host's
// namespace on loopback.
func startServer(ctx context.Context, o Options, sup *supervisor, serviceRange, clusterCIDR, kubeconfig string) (kubernetes.Interface, error) {
	// One port for the cluster's life: a restarted server must be where the
	// agents' kubeconfigs say it is.
	port, err := freeLoopbackPort()
	if err != nil {
		return nil, err
	}
	serverArgs := []string{"server", "--data-dir", o.DataDir, "--secure-port", strconv.Itoa(port),
		"--service-cluster-ip-range", serviceRange, "--cluster-cidr", clusterCIDR}
	if o.LBPools != "" {
		serverArgs = append(serverArgs, "--load-balancer-ip-pool", o.LBPools)
	}
	if err := writeServerArgs(o.DataDir, serverArgs); err != nil {
		return nil, err
	}
	server, err := sup.start("the control plane", o.Binary, filepath.Join(o.DataDir, "logs", "server.log"), serverArgs...)
	if err != nil {
		return nil, err
	}
	sup.argsFile(server, filepath.Join(o.DataDir, ServerArgsFile))
	return waitForServer(ctx, kubeconfig, server)

}

// primaryFirst reorders a two-entry list so the requested family leads.
func primaryFirst(value string, ipv6 bool) (string, error) {
	parts := strings.Split(value, ",")
	if !ipv6 || len(parts) != 2 {
		return value, nil
	}
	first, err := netaddr.ParseCIDR(strings.TrimSpace(parts[0]))
	if err != nil {
		return "", err
	}
	if first.Addr().Is4() {
		parts[0], parts[1] = parts[1], parts[0]
	}
	return strings.Join(parts, ","), nil
}

// supervisor runs the cluster's processes and restarts any that dies
// (a crash, or a kill -9 in a test), as an init system would.
type supervisor struct {
	mu       sync.Mutex
	children []*child
	stopping bool
	say      func(string, ...any)
	record   func(pids []int)
}

type child struct {
	name string
	cmd  *exec.Cmd
	done chan struct{} // closed when cmd has exited
	// args is read again at each restart when set (ServerArgsFile).
	args string
}

// argsFile makes the supervisor restart cmd with the arguments recorded
// at path.
func (s *supervisor) argsFile(cmd *exec.Cmd, path string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, c := range s.children {
		if c.cmd == cmd {
			c.args = path
		}
	}
}

func (s *supervisor) start(name, binary, logFile string, args ...string) (*exec.Cmd, error) {
	cmd, err := spawn(binary, logFile, args...)
	if err != nil {
		return nil, err
	}
	c := &child{name: name, cmd: cmd, done: make(chan struct{})}
	s.mu.Lock()
	s.children = append(s.children, c)
	s.recordLocked()
	s.mu.Unlock()
	go s.watch(c, binary, logFile, args)
	return cmd, nil
}

func (s *supervisor) watch(c *child, binary, logFile string, args []string) {
	for {
		err := c.cmd.Wait()
		close(c.done)
		s.mu.Lock()
		stopping := s.stopping
		s.mu.Unlock()
		if stopping {
			return
		}
		s.say("%s exited (%v); restarting it (log: %s)", c.name, err, logFile)
		time.Sleep(time.Second) // do not spin on a process that cannot start
		s.mu.Lock()
		argsPath := c.args
		s.mu.Unlock()
		if argsPath != "" {
			if recorded, rerr := readServerArgs(argsPath); rerr != nil {
				s.say("%s: %v; restarting with the previous arguments", c.name, rerr)
			} else {
				args = recorded
			}
		}
		cmd, serr := spawn(binary, logFile, args...)
		s.mu.Lock()
		if s.stopping || serr != nil {
			s.mu.Unlock()
			if serr != nil {
				s.say("restarting %s failed: %v", c.name, serr)
			}
			if cmd != nil {
				_ = cmd.Process.Kill()
			}
			return
		}
		c.cmd, c.done = cmd, make(chan struct{})
		s.recordLocked()
		s.mu.Unlock()
	}
}

func (s *supervisor) recordLocked() {
	var pids []int
	for _, c := range s.children {
		pids = append(pids, c.cmd.Process.Pid)
	}
	if s.record != nil {
		s.record(pids)
	}
}

// stopAll stops agents before the server, each with SIGTERM and, after a
// grace period, SIGKILL.
func (s *supervisor) stopAll() {
	s.mu.Lock()
	s.stopping = true
	children := append([]*child(nil), s.children...)
	s.mu.Unlock()
	for i := len(children) - 1; i >= 0; i-- {
		c := children[i]
		s.mu.Lock()
		cmd, done := c.cmd, c.done
		s.mu.Unlock()
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
	}
}

func spawn(binary, logFile string, args ...string) (*exec.Cmd, error) {
	f, err := os.OpenFile(logFile, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(binary, args...)
	cmd.Stdout, cmd.Stderr = f, f
	// Children get their own process group so that a ^C in the terminal
	// reaches duet up only, which stops them in order.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
	if err := deathsig.Start(cmd); err != nil {
		f.Close()
		return nil, fmt.Errorf("starting duet %s: %w", args[0], err)
	}
	f.Close()
	return cmd, nil
}

func logOf(p *exec.Cmd) string {
	if f, ok := p.Stdout.(*os.File); ok {
		return f.Name()
	}
	return "its log"
}

func waitForServer(ctx context.Context, kubeconfig string, server *exec.Cmd) (kubernetes.Interface, error) {
	var client kubernetes.Interface
	err := wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, 2*time.Minute, true, func(ctx context.Context) (bool, error) {
		if server.ProcessState != nil {
			return false, fmt.Errorf("duet server exited (see %s)", logOf(server))
		}
		if _, err := os.Stat(kubeconfig); err != nil {
			return false, nil
		}
		cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
		if err != nil {
			return false, nil
		}
		c, err := kubernetes.NewForConfig(cfg)
		if err != nil {
			return false, err
		}
		body, err := c.Discovery().RESTClient().Get().AbsPath("/readyz").DoRaw(ctx)
		if err != nil || string(body) != "ok" {
			return false, nil
		}
		client = c
		return true, nil
	})
	if err != nil {
		return nil, fmt.Errorf("waiting for duet server: %w (see %s)", err, logOf(server))
	}
	return client, nil
}

func waitForNodes(ctx context.Context, client kubernetes.Interface, want, families int) (map[string][]netip.Prefix, error) {
	var last string
	podCIDRs := map[string][]netip.Prefix{}
	err := wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, 2*time.Minute, true, func(ctx context.Context) (bool, error) {
		nodes, err := client.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
		if err != nil {
			return false, nil
		}
		ready := 0
		for _, n := range nodes.Items {
			if isReady(&n) && len(n.Spec.PodCIDRs) == families {
				ready++
				podCIDRs[n.Name] = nil
				for _, c := range n.Spec.PodCIDRs {
					if p, err := netip.ParsePrefix(c); err == nil {
						podCIDRs[n.Name] = append(podCIDRs[n.Name], p)
					}
				}
			}
		}
		last = fmt.Sprintf("%d of %d nodes ready", ready, want)
		return ready == want, nil
	})
	if err != nil {
		return nil, fmt.Errorf("waiting for nodes: %s: %w (see the logs in the data directory)", last, err)
	}
	return podCIDRs, nil
}

func freeLoopbackPort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("finding a free port for the API: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func isReady(n *corev1.Node) bool {
	for _, c := range n.Status.Conditions {
		if c.Type == corev1.NodeReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// Down removes what a crashed `duet up` left: its processes and its
// namespaces. It is safe to run when nothing is left.
func Down(dataDir string, out io.Writer) error {
	var st state
	if data, err := os.ReadFile(filepath.Join(dataDir, "up.json")); err == nil {
		_ = json.Unmarshal(data, &st)
	}
	for _, pid := range st.PIDs {
		if p, err := os.FindProcess(pid); err == nil && p.Signal(syscall.Signal(0)) == nil {
			if isDuet(pid) {
				fmt.Fprintf(out, "stopping process %d\n", pid)
				_ = p.Signal(syscall.SIGKILL)
			}
		}
	}
	// Namespaces are found by the data directory's ID, whatever the node
	// count was; pods' namespaces by their nodes'.
	topo, err := Plan(dataDir, 200)
	if err != nil {
		return err
	}
	errs := []error{removeWorlds(dataDir), topo.removeSandboxes()}
	// The list includes namespaces hidden under a second mount of
	// /run/netns, which earlier versions left.
	names, err := netns.List()
	if err != nil {
		errs = append(errs, err)
	}
	for _, name := range names {
		if strings.HasPrefix(name, "duet-"+topo.ID+"-") {
			fmt.Fprintf(out, "deleting namespace %s\n", name)
			if err := destroyOne(name); err != nil {
				errs = append(errs, err)
			}
		}
	}
	_ = os.Remove(filepath.Join(dataDir, "up.json"))
	return errors.Join(errs...)
}

// removeWorlds removes the pods' worlds (UTS and mount namespaces pinned
// under each node's state directory) that the agents left.
func removeWorlds(dataDir string) error {
	dirs, err := filepath.Glob(filepath.Join(dataDir, "nodes", "*"))
	if err != nil {
		return err
	}
	var errs []error
	for _, d := range dirs {
		if fi, err := os.Stat(d); err == nil && fi.IsDir() {
			errs = append(errs, podroot.RemoveAll(d))
		}
	}
	return errors.Join(errs...)
}

func isDuet(pid int) bool {
	exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid))
	return err == nil && strings.Contains(filepath.Base(exe), "duet")
}
