package cluster

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/duet-net/duet/internal/failover"
	"github.com/duet-net/duet/internal/netns"
	"github.com/duet-net/duet/internal/pki"
)

// A cluster of several servers (duet up --servers N) runs each server in a
// namespace of its own on the underlay, bound to its underlay address, so
// that one can be killed or cut off (nftables in its namespace) without
// touching the others. The first server starts the etcd cluster, the
// others --join it. Agents follow the servers from their nodes'
// namespaces (duet agent --server, --api-netns); kubectl on the host
// reaches them through a local proxy in duet up that follows them too.

// MaxServers bounds --servers: their addresses lie below the nodes'.
const MaxServers = 7

// serverPort is the API port of every server, each on its own address.
const serverPort = 6443

// planServers adds n servers to the topology (none for one server: it
// runs in the host's namespace).
func (t *Topology) planServers(n int) error {
	if n < 1 || n > MaxServers {
		return fmt.Errorf("--servers must be between 1 and %d, got %d", MaxServers, n)
	}
	if n == 1 {
		return nil
	}
	for i := 1; i <= n; i++ {
		t.Servers = append(t.Servers, Node{
			Name:  fmt.Sprintf("server%d", i),
			NetNS: fmt.Sprintf("duet-%s-server%d", t.ID, i),
			IPv4:  addrAt(underlay4, 1+i),
			IPv6:  addrAt(underlay6, 1+i),
		})
	}
	return nil
}

// serversDir holds each server's data directory, DIR/servers/serverN.
func serversDir(dataDir string) string { return filepath.Join(dataDir, "servers") }

func serverDataDir(dataDir string, s Node) string { return filepath.Join(serversDir(dataDir), s.Name) }

// ServerURL is where a server of a several-server cluster serves.
func ServerURL(s Node) string {
	return "https://" + net.JoinHostPort(s.IPv4.String(), strconv.Itoa(serverPort))
}

// ServerDir is a server's data directory and how to reach it.
type ServerDir struct {
	Dir string
	// NetNS is the namespace the server runs in ("" for the host's).
	NetNS string
	// Dial connects from a namespace that reaches the server (nil: the
	// host's).
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)
}

// ServerDataDirs lists the servers of the cluster in dataDir: a duet
// server's --data-dir, or duet up's with one server or several.
func ServerDataDirs(dataDir string) ([]ServerDir, error) {
	entries, err := os.ReadDir(serversDir(dataDir))
	if errors.Is(err, os.ErrNotExist) {
		return []ServerDir{{Dir: dataDir}}, nil
	}
	if err != nil {
		return nil, err
	}
	topo, err := Plan(dataDir, 1)
	if err != nil {
		return nil, err
	}
	var out []ServerDir
	for _, e := range entries {
		if !e.IsDir() || !strings.HasPrefix(e.Name(), "server") {
			continue
		}
		ns := NetNSPath(fmt.Sprintf("duet-%s-%s", topo.ID, e.Name()))
		out = append(out, ServerDir{Dir: filepath.Join(serversDir(dataDir), e.Name()), NetNS: ns, Dial: DialIn(ns)})
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%s holds no server data directory", serversDir(dataDir))
	}
	return out, nil
}

// RestoreTarget is where a snapshot is restored for dataDir.
type RestoreTarget struct {
	Dir         string
	BindAddress string
	// Others are the other servers' data directories, whose etcd members
	// belong to the old cluster: they join the restored one afresh.
	Others []string
}

// RestoreTargetOf returns where `duet snapshot restore` restores: the
// first server's data directory of a several-server duet up, else dataDir.
func RestoreTargetOf(dataDir string) (RestoreTarget, error) {
	if _, err := os.Stat(serversDir(dataDir)); err != nil {
		return RestoreTarget{Dir: dataDir}, nil
	}
	topo, err := Plan(dataDir, 1)
	if err != nil {
		return RestoreTarget{}, err
	}
	if err := topo.planServers(MaxServers); err != nil {
		return RestoreTarget{}, err
	}
	t := RestoreTarget{Dir: serverDataDir(dataDir, topo.Servers[0]), BindAddress: topo.Servers[0].IPv4.String()}
	for _, s := range topo.Servers[1:] {
		t.Others = append(t.Others, serverDataDir(dataDir, s))
	}
	return t, nil
}

// DialIn connects from the network namespace at path.
func DialIn(path string) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		var c net.Conn
		err := netns.Do(path, func() error {
			var err error
			c, err = (&net.Dialer{Timeout: 10 * time.Second}).DialContext(ctx, network, addr)
			return err
		})
		return c, err
	}
}

// controlPlane is a running several-server control plane.
type controlPlane struct {
	servers []Node
	dataDir string
	// caDir holds the cluster CA (the first server's pki).
	caDir string
}

// startServers starts the servers one after the other, each joining the
// ones before, then serves kubeconfig's clients through a local proxy
// that follows them. It returns a client of the cluster.
func startServers(ctx context.Context, o Options, topo Topology, sup *supervisor, say func(string, ...any), serviceRange, clusterCIDR, kubeconfig string) (*controlPlane, kubernetes.Interface, error) {
	cp := &controlPlane{servers: topo.Servers, dataDir: o.DataDir, caDir: filepath.Join(serverDataDir(o.DataDir, topo.Servers[0]), "pki")}
	for i, s := range topo.Servers {
		dir := serverDataDir(o.DataDir, s)
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return nil, nil, err
		}
		args := []string{"ns-exec", NetNSPath(s.NetNS), "--", o.Binary, "server", "--data-dir", dir,
			"--bind-address", s.IPv4.String(), "--secure-port", strconv.Itoa(serverPort),
			"--service-cluster-ip-range", serviceRange, "--cluster-cidr", clusterCIDR}
		if o.LBPools != "" {
			args = append(args, "--load-balancer-ip-pool", o.LBPools)
		}
		if i > 0 {
			var others []string
			for _, p := range topo.Servers {
				if p.Name != s.Name {
					others = append(others, ServerURL(p))
				}
			}
			args = append(args, "--join", strings.Join(others, ","),
				"--token-file", filepath.Join(serverDataDir(o.DataDir, topo.Servers[0]), "join-token"))
		}
		say("  %s at %s (namespace %s)", s.Name, ServerURL(s), s.NetNS)
		proc, err := sup.start(s.Name, o.Binary, filepath.Join(o.DataDir, "logs", s.Name+".log"), args...)
		if err != nil {
			return nil, nil, err
		}
		if err := waitForServerIn(ctx, filepath.Join(dir, "admin.kubeconfig"), NetNSPath(topo.External), proc); err != nil {
			return nil, nil, fmt.Errorf("%s: %w", s.Name, err)
		}
	}

	// kubectl on the host reaches the servers through a proxy on
	// loopback; every server's certificate holds 127.0.0.1.
	first, err := clientcmd.LoadFromFile(filepath.Join(serverDataDir(o.DataDir, topo.Servers[0]), "admin.kubeconfig"))
	if err != nil {
		return nil, nil, err
	}
	caPEM, err := os.ReadFile(filepath.Join(cp.caDir, "ca.crt"))
	if err != nil {
		return nil, nil, err
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(caPEM)
	var addrs []string
	for _, s := range topo.Servers {
		addrs = append(addrs, strings.TrimPrefix(ServerURL(s), "https://"))
	}
	d, err := failover.New(addrs, failover.Options{TLS: &tls.Config{RootCAs: roots, ServerName: failover.ServerName, MinVersion: tls.VersionTLS12}, NetNS: NetNSPath(topo.External)})
	if err != nil {
		return nil, nil, err
	}
	go d.Run(ctx)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, nil, fmt.Errorf("listening for the API proxy: %w", err)
	}
	go func() { _ = failover.Proxy(ctx, l, d) }()
	for _, c := range first.Clusters {
		c.Server = "https://" + l.Addr().String()
	}
	if err := clientcmd.WriteToFile(*first, kubeconfig); err != nil {
		return nil, nil, err
	}
	say("  kubectl reaches the servers through a proxy at https://%s that follows the ready ones", l.Addr())
	cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return nil, nil, err
	}
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, nil, err
	}
	return cp, client, nil
}

// nodeKubeconfig writes a node's kubeconfig, of the cluster CA, for the
// first server (agents follow all of them with --server).
func (cp *controlPlane) nodeKubeconfig(node, path string) error {
	return pki.WriteNodeKubeconfig(serverDataDir(cp.dataDir, cp.servers[0]), node, path)
}

// agentArgs make a node's agent follow the servers from the node's
// namespace.
func (cp *controlPlane) agentArgs(n Node) []string {
	var urls []string
	for _, s := range cp.servers {
		urls = append(urls, ServerURL(s))
	}
	return []string{"--server", strings.Join(urls, ","), "--api-netns", NetNSPath(n.NetNS)}
}

// waitForServerIn waits until the server whose admin kubeconfig is
// kubeconfig reports ready, reaching it from the namespace at nsPath.
func waitForServerIn(ctx context.Context, kubeconfig, nsPath string, proc *exec.Cmd) error {
	var last string
	err := wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, 3*time.Minute, true, func(ctx context.Context) (bool, error) {
		if proc.ProcessState != nil {
			return false, fmt.Errorf("exited (see %s)", logOf(proc))
		}
		if _, err := os.Stat(kubeconfig); err != nil {
			last = "no kubeconfig yet"
			return false, nil
		}
		cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
		if err != nil {
			return false, nil
		}
		cfg.Dial = DialIn(nsPath)
		cfg.Timeout = 5 * time.Second
		c, err := kubernetes.NewForConfig(cfg)
		if err != nil {
			return false, err
		}
		body, err := c.Discovery().RESTClient().Get().AbsPath("/readyz").DoRaw(ctx)
		if err != nil {
			last = err.Error()
			return false, nil
		}
		return string(body) == "ok", nil
	})
	if err != nil {
		return fmt.Errorf("waiting for the server to be ready: %w (last: %s)", err, last)
	}
	return nil
}
