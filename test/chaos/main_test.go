//go:build chaos

// Package chaos injects failures into `duet up --servers 3` clusters under
// load and checks that the cluster keeps its promises: no acknowledged
// write lost, no address owned twice, agents working on. It needs root
// and is built with the chaos tag: make chaos runs it (make test too).
// CHAOS_REPEATS, CHAOS_SERVICES and CHAOS_PODS scale it down for a quick
// run; the defaults are the ones the figures are quoted for.
package chaos

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/klog/v2"

	"github.com/duet-net/duet/internal/apiserver"
	"github.com/duet-net/duet/internal/cluster"
	"github.com/duet-net/duet/internal/testutil/roottest"
	"github.com/duet-net/duet/test/harness"
)

func TestMain(m *testing.M) {
	if os.Geteuid() != 0 {
		if os.Getenv(roottest.RequireEnv) != "" {
			fmt.Fprintf(os.Stderr, "chaos: needs root (%s is set)\n", roottest.RequireEnv)
			os.Exit(1)
		}
		fmt.Println("chaos: skipped: every test here needs root (duet up, network namespaces, nftables)")
		os.Exit(0)
	}
	klog.LogToStderr(false)
	klog.SetOutput(io.Discard)
	os.Exit(harness.Main(m, "chaos"))
}

func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}

var (
	repeats  = envInt("CHAOS_REPEATS", 3)
	services = envInt("CHAOS_SERVICES", 2000)
	pods     = envInt("CHAOS_PODS", 200)
)

const workers = 16

// haCluster is a running duet up --servers 3.
type haCluster struct {
	*harness.UpCluster
	// Client goes through duet up's proxy, which follows the ready servers.
	Client  *kubernetes.Clientset
	Servers []*haServer
}

// haServer is one server of the cluster, reached from its own namespace
// (so that a partition of it does not cut the test off from it).
type haServer struct {
	Name, NetNS, DataDir, Addr string
	Client                     *kubernetes.Clientset
}

func fastConfig(cfg *rest.Config) *rest.Config {
	cfg.QPS, cfg.Burst = -1, 1000
	cfg.Timeout = 20 * time.Second
	return cfg
}

func startHA(t *testing.T, dataDir string) *haCluster {
	t.Helper()
	up := harness.StartUp(t, dataDir, "--servers", "3", "--nodes", "2")
	cfg, err := clientcmd.BuildConfigFromFlags("", up.Kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	c := &haCluster{UpCluster: up, Client: kubernetes.NewForConfigOrDie(fastConfig(cfg))}
	dirs, err := cluster.ServerDataDirs(dataDir)
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range dirs {
		name := filepath.Base(d.Dir)
		scfg, err := clientcmd.BuildConfigFromFlags("", filepath.Join(d.Dir, "admin.kubeconfig"))
		if err != nil {
			t.Fatal(err)
		}
		scfg.Dial = cluster.DialIn(d.NetNS)
		c.Servers = append(c.Servers, &haServer{Name: name, NetNS: d.NetNS, DataDir: d.Dir,
			Addr: strings.TrimPrefix(scfg.Host, "https://"), Client: kubernetes.NewForConfigOrDie(fastConfig(scfg))})
	}
	if len(c.Servers) != 3 {
		t.Fatalf("%d servers, want 3", len(c.Servers))
	}
	return c
}

// pid finds the running server process of s.
func (s *haServer) pid(t *testing.T) int {
	t.Helper()
	if pid := s.findPID(); pid != 0 {
		return pid
	}
	t.Fatalf("no running process of %s", s.Name)
	return 0
}

// findPID is the server's process ID, 0 if it runs not.
func (s *haServer) findPID() int {
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		data, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil {
			continue
		}
		args := strings.Split(strings.TrimRight(string(data), "\x00"), "\x00")
		for i, a := range args {
			if a == "--data-dir" && i+1 < len(args) && args[i+1] == s.DataDir && len(args) > 1 && args[1] == "server" {
				return pid
			}
		}
	}
	return 0
}

func (s *haServer) signal(t *testing.T, sig syscall.Signal) {
	t.Helper()
	if err := syscall.Kill(s.pid(t), sig); err != nil {
		t.Fatalf("signalling %s: %v", s.Name, err)
	}
}

// etcdStatus is the member's own view: its ID and its leader's.
func (s *haServer) etcdStatus(ctx context.Context) (id, leader uint64, err error) {
	endpoint, err := apiserver.EtcdClientURL(s.DataDir)
	if err != nil {
		return 0, 0, err
	}
	dial := cluster.DialIn(s.NetNS)
	c, err := clientv3.New(clientv3.Config{Endpoints: []string{endpoint}, DialTimeout: 5 * time.Second, Logger: zap.NewNop(),
		DialOptions: []grpc.DialOption{grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) { return dial(ctx, "tcp", addr) })}})
	if err != nil {
		return 0, 0, err
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	st, err := c.Status(ctx, endpoint)
	if err != nil {
		return 0, 0, err
	}
	return st.Header.MemberId, st.Leader, nil
}

// leader is the server whose etcd member leads.
func (c *haCluster) leader(t *testing.T) *haServer {
	t.Helper()
	var last error
	roottest.Eventually(t, 30*time.Second, "an etcd leader", func() error {
		for _, s := range c.Servers {
			id, leader, err := s.etcdStatus(context.Background())
			if err != nil {
				last = err
				continue
			}
			if id == leader {
				return nil
			}
		}
		return fmt.Errorf("no member says it leads: %v", last)
	})
	for _, s := range c.Servers {
		if id, leader, err := s.etcdStatus(context.Background()); err == nil && id == leader {
			return s
		}
	}
	t.Fatal("the leader vanished")
	return nil
}

// readyz is the server's /readyz answer (nil when ok).
func (s *haServer) readyz(ctx context.Context) error {
	body, err := s.Client.Discovery().RESTClient().Get().AbsPath("/readyz").Timeout(3 * time.Second).DoRaw(ctx)
	if err != nil {
		return fmt.Errorf("%v: %s", err, body)
	}
	return nil
}

// figures collects durations and prints their percentiles.
type figures struct {
	name string
	d    []time.Duration
}

func (f *figures) add(d time.Duration) { f.d = append(f.d, d) }

func (f *figures) String() string {
	if len(f.d) == 0 {
		return f.name + ": none"
	}
	s := append([]time.Duration(nil), f.d...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	pct := func(p float64) time.Duration { return s[min(len(s)-1, int(p*float64(len(s)-1)+0.5))] }
	var all []string
	for _, d := range f.d {
		all = append(all, d.Round(10*time.Millisecond).String())
	}
	return fmt.Sprintf("%s over %d repeats: p50 %v, p99 %v (each: %s)", f.name, len(s), pct(0.5).Round(10*time.Millisecond), pct(0.99).Round(10*time.Millisecond), strings.Join(all, ", "))
}
