package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/utils/ptr"
)

// The benchmark cluster's address ranges: service ranges with room for
// its 10,000 Services, and a pod range the headless Services' endpoints
// come from.
const (
	serviceRanges = "10.96.0.0/16,fd00:10:96::/108"
	podRanges     = "10.244.0.0/16,fd00:10:244::/56"
	zone          = "cluster.local."
	namespaces    = 100
)

// child is a process the benchmark started and must stop.
type child struct {
	name string
	cmd  *exec.Cmd
	done chan struct{}
	err  error
}

// start runs argv with its output appended to logPath. The process is
// killed if the benchmark dies without stopping it.
func start(name, logPath string, env []string, argv ...string) (*child, error) {
	logf, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Env = append(os.Environ(), env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return nil, fmt.Errorf("starting %s: %w", name, err)
	}
	c := &child{name: name, cmd: cmd, done: make(chan struct{})}
	go func() {
		c.err = cmd.Wait()
		logf.Close()
		close(c.done)
	}()
	return c, nil
}

func (c *child) pid() int { return c.cmd.Process.Pid }

func (c *child) exited() bool {
	select {
	case <-c.done:
		return true
	default:
		return false
	}
}

// stop sends SIGTERM and, after 20 s, SIGKILL, and waits for the exit.
func (c *child) stop() {
	if c == nil || c.exited() {
		return
	}
	_ = c.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-c.done:
	case <-time.After(20 * time.Second):
		_ = c.cmd.Process.Kill()
		<-c.done
	}
}

// startServer runs `duet server` on a data directory under dir and
// returns it with its admin kubeconfig once /readyz says ok.
func startServer(ctx context.Context, duet, dir string) (*child, string, error) {
	data := filepath.Join(dir, "server")
	pr, pw := io.Pipe()
	logf, err := os.Create(filepath.Join(dir, "duet-server.log"))
	if err != nil {
		return nil, "", err
	}
	cmd := exec.Command(duet, "server", "--data-dir", data, "--secure-port", "0", "--service-cluster-ip-range", serviceRanges)
	cmd.Stdout, cmd.Stderr = pw, pw
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return nil, "", fmt.Errorf("starting duet server: %w", err)
	}
	srv := &child{name: "duet server", cmd: cmd, done: make(chan struct{})}
	kubeconfig := make(chan string, 1)
	go func() {
		r := bufio.NewReader(pr)
		sent := false
		for {
			line, err := r.ReadString('\n')
			_, _ = logf.WriteString(line)
			if rest, ok := strings.CutPrefix(line, "kubeconfig: "); ok && !sent {
				kubeconfig <- strings.TrimSpace(rest)
				sent = true
			}
			if err != nil {
				return
			}
		}
	}()
	go func() {
		srv.err = cmd.Wait()
		_ = pw.Close()
		logf.Close()
		close(srv.done)
	}()
	var path string
	select {
	case path = <-kubeconfig:
	case <-srv.done:
		return nil, "", fmt.Errorf("duet server exited (%v); see %s", srv.err, logf.Name())
	case <-time.After(2 * time.Minute):
		srv.stop()
		return nil, "", fmt.Errorf("duet server printed no kubeconfig in 2 minutes; see %s", logf.Name())
	}
	client, err := newClient(path)
	if err != nil {
		srv.stop()
		return nil, "", err
	}
	err = wait.PollUntilContextTimeout(ctx, 50*time.Millisecond, 2*time.Minute, true, func(ctx context.Context) (bool, error) {
		if srv.exited() {
			return false, fmt.Errorf("duet server exited: %v", srv.err)
		}
		body, err := client.Discovery().RESTClient().Get().AbsPath("/readyz").DoRaw(ctx)
		return err == nil && strings.TrimSpace(string(body)) == "ok", nil
	})
	if err != nil {
		srv.stop()
		return nil, "", fmt.Errorf("duet server not ready: %w", err)
	}
	return srv, path, nil
}

func newClient(kubeconfig string) (*kubernetes.Clientset, error) {
	cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return nil, err
	}
	cfg.QPS, cfg.Burst = -1, 1000
	cfg.Timeout = time.Minute
	return kubernetes.NewForConfig(cfg)
}

// population is what the benchmark put in the cluster.
type population struct {
	// services are the dual-stack Services with cluster IPs, and
	// headless the headless ones with their endpoints' addresses.
	services []serviceAddrs
	headless []serviceAddrs
}

type serviceAddrs struct {
	name, ns string
	v4, v6   []netip.Addr
}

func (s serviceAddrs) fqdn() string { return s.name + "." + s.ns + ".svc." + zone }

func benchNamespace(i int) string { return fmt.Sprintf("bench-%d", i%namespaces) }

// populate creates nServices dual-stack Services and nHeadless headless
// Services, each with nEndpoints ready endpoints of each family in two
// EndpointSlices, spread over the benchmark's namespaces, with workers
// requests at a time.
func populate(ctx context.Context, client kubernetes.Interface, nServices, nHeadless, nEndpoints, workers int) (*population, error) {
	for i := range namespaces {
		ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: benchNamespace(i)}}
		if _, err := client.CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{}); err != nil {
			return nil, fmt.Errorf("creating namespace %s: %w", ns.Name, err)
		}
	}
	pop := &population{services: make([]serviceAddrs, nServices), headless: make([]serviceAddrs, nHeadless)}
	jobs := make(chan int)
	errc := make(chan error, workers)
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for i := range jobs {
				var err error
				if i < nServices {
					pop.services[i], err = createService(ctx, client, i)
				} else {
					pop.headless[i-nServices], err = createHeadless(ctx, client, i-nServices, nEndpoints)
				}
				if err != nil {
					errc <- err
					return
				}
			}
		})
	}
	var err error
feed:
	for i := range nServices + nHeadless {
		select {
		case jobs <- i:
		case err = <-errc:
			break feed
		case <-ctx.Done():
			err = ctx.Err()
			break feed
		}
	}
	close(jobs)
	wg.Wait()
	if err == nil {
		select {
		case err = <-errc:
		default:
		}
	}
	return pop, err
}

var requireDualStack = corev1.IPFamilyPolicyRequireDualStack

func createService(ctx context.Context, client kubernetes.Interface, i int) (serviceAddrs, error) {
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("svc-%d", i), Namespace: benchNamespace(i)},
		Spec: corev1.ServiceSpec{
			IPFamilyPolicy: &requireDualStack,
			Ports:          []corev1.ServicePort{{Name: "http", Port: 80, Protocol: corev1.ProtocolTCP}},
		},
	}
	out, err := client.CoreV1().Services(svc.Namespace).Create(ctx, svc, metav1.CreateOptions{})
	if err != nil {
		return serviceAddrs{}, fmt.Errorf("creating service %s/%s: %w", svc.Namespace, svc.Name, err)
	}
	sa := serviceAddrs{name: svc.Name, ns: svc.Namespace}
	for _, s := range out.Spec.ClusterIPs {
		ip, err := netip.ParseAddr(s)
		if err != nil {
			return sa, fmt.Errorf("service %s/%s: cluster IP %q: %w", svc.Namespace, svc.Name, s, err)
		}
		if ip.Is4() {
			sa.v4 = append(sa.v4, ip)
		} else {
			sa.v6 = append(sa.v6, ip)
		}
	}
	if len(sa.v4) != 1 || len(sa.v6) != 1 {
		return sa, fmt.Errorf("service %s/%s: cluster IPs %v, want one of each family", svc.Namespace, svc.Name, out.Spec.ClusterIPs)
	}
	return sa, nil
}

// endpointAddrs are the addresses of headless Service i's endpoints:
// 10.244.<i/25>.<(i%25)*10+j+1> and fd00:10:244::<i>:<j+1>.
func endpointAddrs(i, n int) (v4, v6 []netip.Addr) {
	for j := range n {
		v4 = append(v4, netip.AddrFrom4([4]byte{10, 244, byte(i / 25), byte((i%25)*n + j + 1)}))
		v6 = append(v6, netip.MustParseAddr(fmt.Sprintf("fd00:10:244::%x:%x", i+1, j+1)))
	}
	return v4, v6
}

func createHeadless(ctx context.Context, client kubernetes.Interface, i, nEndpoints int) (serviceAddrs, error) {
	if nEndpoints > 10 {
		return serviceAddrs{}, errors.New("at most 10 endpoints per headless Service (their IPv4 addresses would overlap)")
	}
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("hl-%d", i), Namespace: benchNamespace(i)},
		Spec: corev1.ServiceSpec{
			ClusterIP:      corev1.ClusterIPNone,
			IPFamilyPolicy: &requireDualStack,
			Ports:          []corev1.ServicePort{{Name: "http", Port: 80, Protocol: corev1.ProtocolTCP}},
		},
	}
	if _, err := client.CoreV1().Services(svc.Namespace).Create(ctx, svc, metav1.CreateOptions{}); err != nil {
		return serviceAddrs{}, fmt.Errorf("creating service %s/%s: %w", svc.Namespace, svc.Name, err)
	}
	sa := serviceAddrs{name: svc.Name, ns: svc.Namespace}
	sa.v4, sa.v6 = endpointAddrs(i, nEndpoints)
	ready, name, proto, port := true, "http", corev1.ProtocolTCP, int32(8080)
	for _, fam := range []struct {
		t     discoveryv1.AddressType
		addrs []netip.Addr
	}{{discoveryv1.AddressTypeIPv4, sa.v4}, {discoveryv1.AddressTypeIPv6, sa.v6}} {
		s := &discoveryv1.EndpointSlice{
			ObjectMeta: metav1.ObjectMeta{
				Name: svc.Name + "-" + strings.ToLower(string(fam.t)), Namespace: svc.Namespace,
				Labels: map[string]string{discoveryv1.LabelServiceName: svc.Name, discoveryv1.LabelManagedBy: "dnsbench"},
			},
			AddressType: fam.t,
			Ports:       []discoveryv1.EndpointPort{{Name: &name, Protocol: &proto, Port: &port}},
		}
		// As the EndpointSlice controller writes them: each endpoint a
		// pod's, on a node.
		for j, a := range fam.addrs {
			node := fmt.Sprintf("node-%d", j%3)
			s.Endpoints = append(s.Endpoints, discoveryv1.Endpoint{
				Addresses:  []string{a.String()},
				Conditions: discoveryv1.EndpointConditions{Ready: &ready, Serving: &ready, Terminating: ptr.To(false)},
				NodeName:   &node,
				TargetRef:  &corev1.ObjectReference{Kind: "Pod", Namespace: svc.Namespace, Name: fmt.Sprintf("%s-%d", svc.Name, j), UID: types.UID(fmt.Sprintf("00000000-0000-0000-%04x-%012x", j, i))},
			})
		}
		if _, err := client.DiscoveryV1().EndpointSlices(svc.Namespace).Create(ctx, s, metav1.CreateOptions{}); err != nil {
			return sa, fmt.Errorf("creating endpointslice %s/%s: %w", s.Namespace, s.Name, err)
		}
	}
	return sa, nil
}
