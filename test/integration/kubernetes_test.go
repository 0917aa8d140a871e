package integration

import (
	"context"
	"fmt"
	"net"
	"net/url"
	"slices"
	"sort"
	"strconv"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
)

// kubernetesWait bounds how long the kubernetes Service's reconciler,
// which runs every 10s in every server, may take to act.
const kubernetesWait = 45 * time.Second

// serverAddr is where s serves, "ADDR:PORT", from its kubeconfig.
func serverAddr(t *testing.T, s *Server) string {
	t.Helper()
	u, err := url.Parse(s.Config.Host)
	fatalIf(t, err)
	return u.Host
}

// kubernetesEndpoints returns the "ADDR:PORT" pairs the kubernetes
// Service's EndpointSlices (of any family) and Endpoints list, each
// sorted.
func kubernetesEndpoints(ctx context.Context, client kubernetes.Interface) (fromSlices, fromEndpoints []string, err error) {
	list, err := client.DiscoveryV1().EndpointSlices("default").List(ctx, metav1.ListOptions{LabelSelector: discoveryv1.LabelServiceName + "=kubernetes"})
	if err != nil {
		return nil, nil, err
	}
	for _, s := range list.Items {
		for _, p := range s.Ports {
			for _, e := range s.Endpoints {
				for _, a := range e.Addresses {
					fromSlices = append(fromSlices, hostPort(a, int(*p.Port)))
				}
			}
		}
	}
	eps, err := client.CoreV1().Endpoints("default").Get(ctx, "kubernetes", metav1.GetOptions{})
	if err != nil {
		return nil, nil, err
	}
	for _, s := range eps.Subsets {
		for _, p := range s.Ports {
			for _, a := range s.Addresses {
				fromEndpoints = append(fromEndpoints, hostPort(a.IP, int(p.Port)))
			}
		}
	}
	sort.Strings(fromSlices)
	sort.Strings(fromEndpoints)
	return fromSlices, fromEndpoints, nil
}

func hostPort(addr string, port int) string { return net.JoinHostPort(addr, strconv.Itoa(port)) }

// awaitKubernetesEndpoints polls until the kubernetes Service's endpoints,
// in its slices and in its Endpoints, are exactly want, and returns how
// long that took.
func awaitKubernetesEndpoints(t *testing.T, client kubernetes.Interface, want []string, what string) time.Duration {
	t.Helper()
	want = slices.Clone(want)
	sort.Strings(want)
	start := time.Now()
	eventually(t, kubernetesWait, what, func() error {
		fromSlices, fromEndpoints, err := kubernetesEndpoints(ctxT(t), client)
		if err != nil {
			return err
		}
		if !slices.Equal(fromSlices, want) || !slices.Equal(fromEndpoints, want) {
			return fmt.Errorf("EndpointSlices list %v, Endpoints %v; want %v in both", fromSlices, fromEndpoints, want)
		}
		return nil
	})
	return time.Since(start)
}

// TestKubernetesServiceIsReconciled: default/kubernetes lists its server;
// deleted, it comes back with its reserved cluster IP, its record and its
// endpoints; its ports changed, they are put back.
func TestKubernetesServiceIsReconciled(t *testing.T) {
	t.Parallel()
	srv := StartServer(t, ServerOptions{ServiceRanges: v4Range + "," + v6Range})
	ctx := ctxT(t)
	self := serverAddr(t, srv)
	_, p, err := net.SplitHostPort(self)
	fatalIf(t, err)
	port, err := strconv.Atoi(p)
	fatalIf(t, err)
	awaitKubernetesEndpoints(t, srv.Client, []string{self}, "the kubernetes Service lists its server")

	services := srv.Client.CoreV1().Services("default")
	first := static(corev1.IPv4Protocol, 1)
	check := func(svc *corev1.Service) error {
		want := []corev1.ServicePort{{Name: "https", Protocol: corev1.ProtocolTCP, Port: 443, TargetPort: intstr.FromInt32(int32(port))}}
		if svc.Spec.ClusterIP != first || !slices.Equal(svc.Spec.Ports, want) || svc.Spec.Type != corev1.ServiceTypeClusterIP {
			return fmt.Errorf("kubernetes Service: clusterIP %s type %s ports %+v; want %s ClusterIP %+v", svc.Spec.ClusterIP, svc.Spec.Type, svc.Spec.Ports, first, want)
		}
		rec, err := srv.Client.NetworkingV1().IPAddresses().Get(ctx, first, metav1.GetOptions{})
		if err != nil {
			return fmt.Errorf("its IPAddress: %w", err)
		}
		if r := rec.Spec.ParentRef; r == nil || r.Namespace != "default" || r.Name != "kubernetes" {
			return fmt.Errorf("IPAddress %s names %+v", first, r)
		}
		return nil
	}

	fatalIf(t, services.Delete(ctx, "kubernetes", metav1.DeleteOptions{}))
	deleted := time.Now()
	eventually(t, kubernetesWait, "the deleted kubernetes Service comes back", func() error {
		svc, err := services.Get(ctx, "kubernetes", metav1.GetOptions{})
		if err != nil {
			return err
		}
		return check(svc)
	})
	t.Logf("the kubernetes Service came back %v after its deletion", time.Since(deleted).Round(time.Millisecond))
	// Deleting the Service deleted its Endpoints; they come back too.
	awaitKubernetesEndpoints(t, srv.Client, []string{self}, "the recreated kubernetes Service lists its server")

	svc, err := services.Get(ctx, "kubernetes", metav1.GetOptions{})
	fatalIf(t, err)
	svc.Spec.Ports = []corev1.ServicePort{{Name: "http", Protocol: corev1.ProtocolTCP, Port: 80, TargetPort: intstr.FromInt32(8080)}}
	_, err = services.Update(ctx, svc, metav1.UpdateOptions{})
	fatalIf(t, err)
	eventually(t, kubernetesWait, "the kubernetes Service's ports are put back", func() error {
		svc, err := services.Get(ctx, "kubernetes", metav1.GetOptions{})
		if err != nil {
			return err
		}
		return check(svc)
	})
	fatalIf(t, checkAllocations(ctx, srv.Client, nil, allocationCheck{ranges: mustPrefixes(v4Range + "," + v6Range)}))
}

// TestKubernetesEndpointsFollowReplicas: two servers on one etcd, on
// different addresses, are both in the kubernetes Service's endpoints; one
// killed leaves them once its lease has expired, one stopped leaves them
// at once.
func TestKubernetesEndpointsFollowReplicas(t *testing.T) {
	t.Parallel()
	etcdURL := startEtcd(t)
	a := StartServer(t, ServerOptions{ServiceRanges: v4Range, EtcdServers: etcdURL})
	b := StartServer(t, ServerOptions{ServiceRanges: v4Range, EtcdServers: etcdURL, Extra: []string{"--bind-address", "127.0.0.2"}})
	both := []string{serverAddr(t, a), serverAddr(t, b)}
	took := awaitKubernetesEndpoints(t, a.Client, both, "both servers in the kubernetes Service's endpoints")
	t.Logf("both servers listed %v after the second was ready", took.Round(time.Millisecond))

	b.Kill(t)
	took = awaitKubernetesEndpoints(t, a.Client, both[:1], "the killed server leaves the endpoints once its lease expires")
	t.Logf("the killed server left the endpoints %v after SIGKILL (lease TTL 15s, reconciled every 10s)", took.Round(time.Millisecond))

	b.Restart(t)
	both[1] = serverAddr(t, b)
	awaitKubernetesEndpoints(t, a.Client, both, "the restarted server is listed again")
	fatalIf(t, b.Stop())
	took = awaitKubernetesEndpoints(t, a.Client, both[:1], "the stopped server leaves the endpoints")
	t.Logf("the stopped server left the endpoints %v after it exited (it revokes its lease)", took.Round(time.Millisecond))
}
