// Package agent is `duet agent`, one per node: it registers the Node,
// keeps its lease, and programs the node's network namespace from what
// the API says (routes to other nodes' pods now; pod sandboxes, the
// service proxy and egress masquerading as they land).
package agent

import (
	"context"
	"fmt"
	"github.com/duet-net/duet/internal/agent/images"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/record"
	"k8s.io/client-go/util/workqueue"
	"k8s.io/component-base/metrics/legacyregistry"

	"github.com/duet-net/duet/internal/agent/clusterdns"
	"github.com/duet-net/duet/internal/agent/crilog"
	"github.com/duet-net/duet/internal/agent/nodestatus"
	"github.com/duet-net/duet/internal/agent/pods"
	"github.com/duet-net/duet/internal/agent/proxy"
	"github.com/duet-net/duet/internal/agent/routes"
	"github.com/duet-net/duet/internal/agent/streaming"
	"github.com/duet-net/duet/internal/controller/events"
	"github.com/duet-net/duet/internal/controller/worker"
)

// Config is one agent's configuration.
type Config struct {
	NodeName string
	// NetNS is the node's network namespace ("" for the agent's own).
	NetNS       string
	InternalIPs []netip.Addr
	Version     string
	// ResyncInterval bounds how long a route changed behind the agent's
	// back stays wrong.
	ResyncInterval time.Duration
	// Binary is the duet executable (containers run through duet ns-exec).
	Binary string
	// StateDir keeps the node's IPAM store and container logs.
	StateDir string
	// ClusterCIDRs are the whole cluster's pod CIDRs (--cluster-cidr):
	// never masqueraded, and how the proxy tells in-cluster sources from
	// outside ones.
	ClusterCIDRs []netip.Prefix
	// ServiceCIDRs are --service-cluster-ip-range, kept unmasqueraded by
	// the IPv6 egress defaults.
	ServiceCIDRs []netip.Prefix
	// MasqConfig is the ip-masq-agent config file ("" means defaults).
	MasqConfig string
	// MetricsAddr serves Prometheus metrics on /metrics ("" for none).
	MetricsAddr string
	// Images is the image table pods' images map to (nil: the built-in).
	Images *images.Table
	// NoProxy and NoMasq leave the service proxy or egress masquerading
	// to something else.
	NoProxy, NoMasq bool
	// Streaming serves exec, attach, port-forward and container logs to
	// the API server (nil: not served); StreamingAddress is the address
	// the API server dials for it ("" : the node's first InternalIP).
	Streaming        *streaming.Config
	StreamingAddress string
	// ContainerLogs size and rotate container logs.
	ContainerLogs crilog.Options
	// ClusterDomain is the cluster's DNS domain ("" is cluster.local).
	ClusterDomain string
	// ResolvConf is the node's resolver configuration ("" is
	// /etc/resolv.conf): cluster DNS's upstreams, and dnsPolicy Default's.
	ResolvConf string
	// NoDNS leaves cluster DNS to other nodes.
	NoDNS bool
}

// Event reasons the agent records on its Node.
const (
	ReasonMasqFailed  = "MasqueradeConfigFailed"
	ReasonMasqApplied = "MasqueradeConfigApplied"
	ReasonProxyFailed = "ServiceProxyFailed"
	ReasonDNSFailed   = "ClusterDNSFailed"
)

// serveMetrics serves the agent's Prometheus metrics (pod setup stages,
// proxy syncs, Go runtime) until ctx ends.
func serveMetrics(ctx context.Context, addr string, log *slog.Logger) error {
	pods.RegisterMetrics()
	proxy.RegisterMetrics()
	clusterdns.RegisterMetrics()
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("--metrics-bind-address %s: %w", addr, err)
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", legacyregistry.Handler())
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("ok")) })
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		<-ctx.Done()
		_ = srv.Close()
	}()
	go func() { _ = srv.Serve(l) }()
	log.Info("serving metrics", "url", "http://"+l.Addr().String()+"/metrics")
	return nil
}

// Run runs the agent until ctx is done.
func Run(ctx context.Context, client kubernetes.Interface, cfg Config, log *slog.Logger) error {
	known := cfg.InternalIPs
	cfg = withNodeFamilies(ctx, client, cfg, func(is4 bool) (netip.Addr, error) { // familyadd.go
		return nodeAddrOfFamily(cfg.NetNS, known, is4)
	})
	reporter := &nodestatus.Reporter{Client: client, NodeName: cfg.NodeName, InternalIPs: cfg.InternalIPs, Version: cfg.Version}
	dnsListeners, servesDNS := listenDNS(cfg, log)
	reporter.Annotations = map[string]string{clusterdns.NodeAnnotation: servesDNS}
	var err error
	var stream *streaming.Server
	if cfg.Streaming != nil {
		if stream, err = streaming.Listen(*cfg.Streaming); err != nil {
			return err
		}
		reporter.DaemonPort = int32(stream.Addr().Port)
		if cfg.StreamingAddress != "" {
			reporter.Annotations[streaming.AddressAnnotation] = cfg.StreamingAddress
		}
	}
	// The API may still be starting: retry registration with backoff.
	backoff := wait.Backoff{Duration: 200 * time.Millisecond, Factor: 2, Cap: 10 * time.Second, Steps: 1 << 30}
	if werr := wait.ExponentialBackoffWithContext(ctx, backoff, func(ctx context.Context) (bool, error) {
		_, err = reporter.Register(ctx)
		if err != nil {
			log.Warn("registering node, will retry", "err", err)
		}
		return err == nil, nil
	}); werr != nil {
		return fmt.Errorf("registering node %s: %w (last error: %v)", cfg.NodeName, werr, err)
	}
	log.Info("node registered", "node", cfg.NodeName, "internalIPs", cfg.InternalIPs)
	go reporter.Run(ctx)

	if cfg.MetricsAddr != "" {
		if err := serveMetrics(ctx, cfg.MetricsAddr, log); err != nil {
			return err
		}
	}
	// The agent's one broadcaster; events about the node, as the kubelet
	// records them.
	broadcaster := events.Start(ctx, client)
	defer broadcaster.Shutdown()
	recorder := broadcaster.Recorder(corev1.EventSource{Component: "duet-agent", Host: cfg.NodeName})
	nodeRef := &corev1.ObjectReference{Kind: "Node", Name: cfg.NodeName, UID: types.UID(cfg.NodeName)}
	// Proxy and masquerading follow the families the cluster gains
	// (familyadd.go).
	fol := newFollower(client, cfg, log, reporter, recorder, nodeRef)
	fol.known = known
	fol.setDNS(dnsListeners) // familyremove.go
	fol.start(ctx)
	if dnsListeners != nil {
		dlog := log.With("component", "dns")
		go func() {
			if err := serveDNS(ctx, client, cfg, dnsListeners, dlog); err != nil {
				dlog.Error("cluster DNS stopped", "err", err)
				recorder.Eventf(nodeRef, corev1.EventTypeWarning, ReasonDNSFailed, "cluster DNS: %v", err)
			}
		}()
	}
	programmer, err := routes.NewProgrammer(cfg.NetNS)
	if err != nil {
		return err
	}
	defer programmer.Close()

	factory := informers.NewSharedInformerFactory(client, 0)
	nodes := factory.Core().V1().Nodes()
	// All Services, for containers' service-link variables (Informer
	// registers it before Start).
	services := factory.Core().V1().Services()
	services.Informer()
	// One key: routes are recomputed from all nodes whatever changed.
	queue := workqueue.NewTypedRateLimitingQueue(workqueue.DefaultTypedControllerRateLimiter[string]())
	defer queue.ShutDown()
	enqueue := func(any) { queue.Add("routes") }
	if _, err := nodes.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: enqueue, UpdateFunc: func(_, o any) { enqueue(o) }, DeleteFunc: enqueue,
	}); err != nil {
		return err
	}
	if err := fol.watch(ctx, nodes.Informer(), nodes.Lister()); err != nil {
		return err
	}
	if err := followKubeDNS(services.Informer(), &fol.mgr); err != nil { // familyremove.go
		return err
	}
	factory.Start(ctx.Done())
	defer factory.Shutdown()
	if !cache.WaitForCacheSync(ctx.Done(), nodes.Informer().HasSynced, services.Informer().HasSynced) {
		return ctx.Err()
	}
	resync := cfg.ResyncInterval
	if resync <= 0 {
		resync = 30 * time.Second
	}
	go wait.UntilWithContext(ctx, func(context.Context) { queue.Add("routes") }, resync)

	if err := runPods(ctx, client, cfg, log, stream, services.Lister(), recorder, fol.mgr.Store); err != nil {
		return err
	}

	syncRoutes := func(context.Context, string) error {
		all, err := nodes.Lister().List(labels.Everything())
		if err != nil {
			return err
		}
		added, deleted, err := programmer.Sync(routes.Desired(cfg.NodeName, all))
		if added+deleted > 0 {
			log.Info("routes synced", "added", added, "deleted", deleted)
		}
		return err
	}
	worker.Run(worker.WithSlog(ctx, log), queue, 1, syncRoutes, worker.Options{Failed: "Syncing routes failed; will retry"})
	return nil
}

// runPods starts the pod loop: it waits for the node's pod CIDRs, removes
// what a previous run left for pods no longer here, then keeps every pod
// bound to the node running.
func runPods(ctx context.Context, client kubernetes.Interface, cfg Config, log *slog.Logger, stream *streaming.Server, services corelisters.ServiceLister, recorder record.EventRecorder, onManager func(*pods.Manager)) error {
	queue := workqueue.NewTypedRateLimitingQueue(workqueue.DefaultTypedControllerRateLimiter[string]())
	mgr := &pods.Manager{
		Client: client, NodeName: cfg.NodeName, NodeNS: cfg.NetNS, HostIPs: cfg.InternalIPs,
		Binary: cfg.Binary, StateDir: cfg.StateDir, Log: log,
		OnChange:      func(ns, name string) { queue.Add(ns + "/" + name) },
		LogOptions:    cfg.ContainerLogs,
		Images:        cfg.Images,
		Services:      services,
		Events:        recorder,
		ClusterDomain: cfg.ClusterDomain, ResolvConf: cfg.ResolvConf,
	}
	onManager(mgr)
	if stream != nil {
		stream.Serve(ctx, mgr)
	}
	factory := informers.NewSharedInformerFactoryWithOptions(client, 0,
		informers.WithTweakListOptions(func(o *metav1.ListOptions) {
			o.FieldSelector = fields.OneTermEqualSelector("spec.nodeName", cfg.NodeName).String()
		}))
	podInformer := factory.Core().V1().Pods()
	var uidsMu sync.Mutex
	uids := map[string]types.UID{} // last UID seen per pod key
	enqueue := func(obj any) {
		if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
			obj = d.Obj
		}
		if p, ok := obj.(*corev1.Pod); ok {
			key := p.Namespace + "/" + p.Name
			uidsMu.Lock()
			if old, ok := uids[key]; ok && old != p.UID {
				queue.Add("uid:" + string(old)) // replaced by a pod of the same name
			}
			uids[key] = p.UID
			uidsMu.Unlock()
			queue.Add(key)
		}
	}
	if _, err := podInformer.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: enqueue, UpdateFunc: func(_, o any) { enqueue(o) }, DeleteFunc: enqueue,
	}); err != nil {
		return err
	}
	nodeInformer := informers.NewSharedInformerFactoryWithOptions(client, 0,
		informers.WithTweakListOptions(func(o *metav1.ListOptions) {
			o.FieldSelector = fields.OneTermEqualSelector("metadata.name", cfg.NodeName).String()
		})).Core().V1().Nodes()
	podCIDRs := make(chan []netip.Prefix, 1)
	if _, err := nodeInformer.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: func(obj any) {
			if n, ok := obj.(*corev1.Node); ok && len(n.Spec.PodCIDRs) > 0 {
				sendLatest(podCIDRs, parsePrefixes(n.Spec.PodCIDRs))
			}
		},
		UpdateFunc: func(_, obj any) {
			if n, ok := obj.(*corev1.Node); ok && len(n.Spec.PodCIDRs) > 0 {
				sendLatest(podCIDRs, parsePrefixes(n.Spec.PodCIDRs))
			}
		},
	}); err != nil {
		return err
	}
	go nodeInformer.Informer().Run(ctx.Done())

	go func() {
		defer queue.ShutDown()
		// Pods wait for the node's pod CIDRs (one per cluster CIDR).
		var cidrs []netip.Prefix
		select {
		case cidrs = <-podCIDRs:
		case <-ctx.Done():
			return
		}
		for {
			err := mgr.SetPodCIDRs(cidrs)
			if err == nil {
				break
			}
			log.Error("preparing the node for pods", "err", err)
			select {
			case <-time.After(2 * time.Second):
			case <-ctx.Done():
				return
			}
		}
		log.Info("node ready for pods", "podCIDRs", cidrs)
		go followPodCIDRs(ctx, mgr, podCIDRs, log) // familyadd.go
		factory.Start(ctx.Done())
		if !cache.WaitForCacheSync(ctx.Done(), podInformer.Informer().HasSynced) {
			return
		}
		keep := map[types.UID]bool{}
		all, _ := podInformer.Lister().List(labels.Everything())
		for _, p := range all {
			if p.DeletionTimestamp == nil {
				keep[p.UID] = true
			}
		}
		if err := mgr.Reconcile(keep); err != nil {
			log.Error("reconciling sandboxes left by an earlier run", "err", err)
		}
		go wait.UntilWithContext(ctx, func(context.Context) {
			all, _ := podInformer.Lister().List(labels.Everything())
			for _, p := range all {
				queue.Add(p.Namespace + "/" + p.Name)
			}
		}, 30*time.Second)
		worker.Run(worker.WithSlog(ctx, log), queue, 8, func(ctx context.Context, key string) error {
			return syncPod(ctx, mgr, podInformer.Lister(), key, uids, &uidsMu)
		}, worker.Options{KeyName: "pod", Failed: "Syncing pod failed; will retry"})
	}()
	return nil
}

func syncPod(ctx context.Context, mgr *pods.Manager, lister corelisters.PodLister, key string, uids map[string]types.UID, mu *sync.Mutex) error {
	if uid, ok := strings.CutPrefix(key, "uid:"); ok {
		return mgr.Sync(ctx, types.UID(uid), nil)
	}
	ns, name, _ := cache.SplitMetaNamespaceKey(key)
	pod, err := lister.Pods(ns).Get(name)
	if apierrors.IsNotFound(err) {
		mu.Lock()
		uid, ok := uids[key]
		delete(uids, key)
		mu.Unlock()
		if !ok {
			return nil
		}
		return mgr.Sync(ctx, uid, nil)
	}
	if err != nil {
		return err
	}
	return mgr.Sync(ctx, pod.UID, pod)
}

func parsePrefixes(ss []string) []netip.Prefix {
	var out []netip.Prefix
	for _, s := range ss {
		if p, err := netip.ParsePrefix(s); err == nil {
			out = append(out, p)
		}
	}
	return out
}
