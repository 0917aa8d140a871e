package clusterdns

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"time"

	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"

	"github.com/duet-net/duet/internal/netns"
)

// DefaultTTL is how long clients may keep an answer (and a NXDOMAIN):
// CoreDNS's default, short enough that a changed Service shows soon.
const DefaultTTL = 5 * time.Second

// Options configure a node's cluster DNS.
type Options struct {
	// Domain is the cluster domain ("" is cluster.local).
	Domain string
	// TTL of the records (0 is DefaultTTL).
	TTL time.Duration
	// Owned are the cluster's service and pod CIDRs, whose reverse
	// names DNS answers itself.
	Owned []netip.Prefix
	// Upstreams (host:port) answer names outside the cluster domain.
	Upstreams []string
	// NetNS is the network namespace upstreams are asked from ("" for the
	// process's own): the node's, where its resolver configuration holds.
	NetNS string
	Log   *slog.Logger
}

// Serve answers DNS on l from informers on client until ctx ends. It
// answers SERVFAIL for the cluster's names until the informers have
// synced, so pods starting with the agent retry rather than cache a
// NXDOMAIN.
func Serve(ctx context.Context, client kubernetes.Interface, l *Listeners, o Options) error {
	if o.Domain == "" {
		o.Domain = "cluster.local"
	}
	if o.TTL == 0 {
		o.TTL = DefaultTTL
	}
	log := o.Log
	if log == nil {
		log = slog.Default()
	}
	src := NewIndex()
	controllers := informers(client, src)
	src.HasSynced = func() bool {
		for _, c := range controllers {
			if !c.HasSynced() {
				return false
			}
		}
		return true
	}
	resolver, err := NewResolver(o.Domain, o.TTL, src, o.Owned)
	if err != nil {
		return err
	}
	dial, closeNS, err := dialIn(o.NetNS)
	if err != nil {
		return err
	}
	defer closeNS()
	h := &Handler{Resolver: resolver, Forwarder: NewForwarder(o.Upstreams, dial, 0), Log: log}
	var wg sync.WaitGroup
	defer wg.Wait()
	ictx, stopInformers := context.WithCancel(ctx)
	defer stopInformers()
	for _, c := range controllers {
		wg.Go(func() { c.RunWithContext(ictx) })
	}
	var addrs []string
	udp, _ := l.sockets()
	for _, pc := range udp {
		addrs = append(addrs, pc.LocalAddr().String())
	}
	log.Info("serving cluster DNS over UDP and TCP", "domain", resolver.Zone(), "addresses", addrs, "upstreams", o.Upstreams)
	l.Serve(ctx, h, log)
	return nil
}

// informers follow the cluster's Services, EndpointSlices and Pods into
// x, trimmed. They are plain informers, not shared ones: x is their only
// handler, called as each change is stored, with no listener goroutines
// between and no notification buffers (an initial list of every Pod of
// the cluster would fill them), and their stores have no indexers (x
// makes the lookups).
func informers(client kubernetes.Interface, x *Index) []cache.Controller {
	kinds := []struct {
		obj   runtime.Object
		list  func(context.Context, metav1.ListOptions) (runtime.Object, error)
		watch func(context.Context, metav1.ListOptions) (watch.Interface, error)
	}{
		{&corev1.Service{}, func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
			return client.CoreV1().Services(metav1.NamespaceAll).List(ctx, o)
		}, client.CoreV1().Services(metav1.NamespaceAll).Watch},
		{&discoveryv1.EndpointSlice{}, func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
			return client.DiscoveryV1().EndpointSlices(metav1.NamespaceAll).List(ctx, o)
		}, client.DiscoveryV1().EndpointSlices(metav1.NamespaceAll).Watch},
		{&corev1.Pod{}, func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
			return client.CoreV1().Pods(metav1.NamespaceAll).List(ctx, o)
		}, client.CoreV1().Pods(metav1.NamespaceAll).Watch},
	}
	var out []cache.Controller
	for _, k := range kinds {
		lw := cache.ToListWatcherWithWatchListSemantics(&cache.ListWatch{ListWithContextFunc: k.list, WatchFuncWithContext: k.watch}, client)
		_, c := cache.NewInformerWithOptions(cache.InformerOptions{ListerWatcher: lw, ObjectType: k.obj, Handler: x, Transform: Trim})
		out = append(out, c)
	}
	return out
}

// dialIn dials from the network namespace at nsPath ("" for the
// process's own).
func dialIn(nsPath string) (DialFunc, func(), error) {
	if nsPath == "" {
		return nil, func() {}, nil
	}
	fd, err := netns.Open(nsPath)
	if err != nil {
		return nil, nil, fmt.Errorf("cluster DNS upstreams: %w", err)
	}
	dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
		var c net.Conn
		err := netns.DoFD(fd, func() (err error) {
			c, err = (&net.Dialer{}).DialContext(ctx, network, addr)
			return err
		})
		return c, err
	}
	return dial, func() { _ = unix.Close(fd) }, nil
}

// NodeAnnotation on a Node says whether its agent serves cluster DNS on
// port 53 of its InternalIPs ("true") or not ("false"): duet server lists
// the nodes that do as the kube-dns Service's endpoints.
const NodeAnnotation = "duet.dev/cluster-dns"
