package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"runtime/pprof"
	"strconv"
	"syscall"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/duet-net/duet/internal/agent/clusterdns"
	"github.com/duet-net/duet/internal/netaddr"
)

// dnsServer is one of the two servers compared, listening on loopback.
type dnsServer struct {
	name string
	addr string // host:port, UDP and TCP
	proc *child
}

// freePort is a port free for both UDP and TCP on 127.0.0.1.
func freePort() (int, error) {
	for range 20 {
		pc, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			return 0, err
		}
		port := pc.LocalAddr().(*net.UDPAddr).Port
		l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
		pc.Close()
		if err == nil {
			l.Close()
			return port, nil
		}
	}
	return 0, fmt.Errorf("no port free for both UDP and TCP on 127.0.0.1")
}

// pinned is argv run on one CPU with one Go processor, as the benchmark
// compares the servers: taskset binds every thread the process will
// have before it starts.
func pinned(cpu int, argv ...string) ([]string, []string) {
	return append([]string{"taskset", "-c", strconv.Itoa(cpu)}, argv...), []string{"GOMAXPROCS=1"}
}

// corefile is CoreDNS's configuration: the kubernetes plugin for the
// cluster domain and both reverse zones, with the plugins a Kubernetes
// cluster's Corefile has that work without the outside world (no
// forward, so no loop detection, and no reload). cache is off unless
// asked for: the cluster's DNS answers from its index, and a cache would
// keep a name's NXDOMAIN after its Service is created.
func corefile(port int, kubeconfig string, metricsPort int, cache bool) string {
	c := fmt.Sprintf(`.:%d {
    bind 127.0.0.1
    errors
    prometheus 127.0.0.1:%d
    kubernetes cluster.local in-addr.arpa ip6.arpa {
        kubeconfig %s
        pods insecure
        ttl 5
    }
    loadbalance
`, port, metricsPort, kubeconfig)
	if cache {
		c += "    cache 30\n"
	}
	return c + "}\n"
}

func startCoreDNS(coredns, dir, kubeconfig string, cpu int, cache bool) (*dnsServer, error) {
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	metricsPort, err := freePort()
	if err != nil {
		return nil, err
	}
	conf := filepath.Join(dir, "Corefile")
	if err := os.WriteFile(conf, []byte(corefile(port, kubeconfig, metricsPort, cache)), 0o644); err != nil {
		return nil, err
	}
	argv, env := pinned(cpu, coredns, "-conf", conf)
	p, err := start("coredns", filepath.Join(dir, "coredns.log"), env, argv...)
	if err != nil {
		return nil, err
	}
	return &dnsServer{name: "CoreDNS", addr: net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), proc: p}, nil
}

// startDuetDNS runs this program again as Duet's DNS server (serveDuetDNS).
func startDuetDNS(dir, kubeconfig string, cpu int, profile bool) (*dnsServer, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	argv, env := pinned(cpu, self, "-serve-duet-dns", "-kubeconfig", kubeconfig, "-port", strconv.Itoa(port))
	if profile {
		argv = append(argv, "-profile-dir", dir)
	}
	p, err := start("duet dns", filepath.Join(dir, "duet-dns.log"), env, argv...)
	if err != nil {
		return nil, err
	}
	return &dnsServer{name: "Duet", addr: net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), proc: p}, nil
}

// serveDuetDNS is Duet's cluster DNS as a node's agent runs it
// (clusterdns.Serve with the agent's metrics), alone in a process so that
// its memory and CPU are its own, on 127.0.0.1:port. With profileDir it
// writes its CPU profile and, when it stops, its heap profile there.
func serveDuetDNS(kubeconfig string, port int, profileDir string) (err error) {
	if profileDir != "" {
		f, err := os.Create(filepath.Join(profileDir, "duet-dns.cpu.pprof"))
		if err != nil {
			return err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer func() {
			pprof.StopCPUProfile()
			h, herr := os.Create(filepath.Join(profileDir, "duet-dns.heap.pprof"))
			if herr == nil {
				herr = errors.Join(pprof.WriteHeapProfile(h), h.Close())
			}
			err = errors.Join(err, herr)
		}()
	}
	// The client as duet agent makes it (cmd/duet/agent.go): no request
	// timeout, which would cut the informers' watches.
	cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return err
	}
	cfg.QPS, cfg.Burst = 50, 100
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return err
	}
	owned, err := netaddr.ParseCIDRList("owned", serviceRanges+","+podRanges)
	if err != nil {
		return err
	}
	l, err := clusterdns.Listen("", []netip.Addr{netip.MustParseAddr("127.0.0.1")}, port)
	if err != nil {
		return err
	}
	clusterdns.RegisterMetrics()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	return clusterdns.Serve(ctx, client, l, clusterdns.Options{Domain: "cluster.local", Owned: owned, Log: log})
}
