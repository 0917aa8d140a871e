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
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	coreinformers "k8s.io/client-go/informers/core/v1"
	discoveryinformers "k8s.io/client-go/informers/discovery/v1"
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
	// Informers without indexers: the Index is their only handler and
	// makes the lookups.
	informers := []cache.SharedIndexInformer{
		coreinformers.NewServiceInformer(client, metav1.NamespaceAll, 0, cache.Indexers{}),
		discoveryinformers.NewEndpointSliceInformer(client, metav1.NamespaceAll, 0, cache.Indexers{}),
		coreinformers.NewPodInformer(client, metav1.NamespaceAll, 0, cache.Indexers{}),
	}
	src := NewIndex()
	var synced []cache.InformerSynced
	for _, inf := range informers {
		if err := inf.SetTransform(Trim); err != nil {
			return err
		}
		reg, err := inf.AddEventHandler(src)
		if err != nil {
			return err
		}
		synced = append(synced, reg.HasSynced)
	}
	src.HasSynced = func() bool {
		for _, s := range synced {
			if !s() {
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
	for _, inf := range informers {
		wg.Go(func() { inf.RunWithContext(ictx) })
	}
	var addrs []string
	for _, pc := range l.UDP {
		addrs = append(addrs, pc.LocalAddr().String())
	}
	log.Info("serving cluster DNS over UDP and TCP", "domain", resolver.Zone(), "addresses", addrs, "upstreams", o.Upstreams)
	l.Serve(ctx, h, log)
	return nil
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
