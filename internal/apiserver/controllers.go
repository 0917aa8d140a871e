package apiserver

import (
	"context"
	"fmt"
	"os"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/uuid"
	"k8s.io/apimachinery/pkg/util/wait"
	genericapiserver "k8s.io/apiserver/pkg/server"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/leaderelection"
	"k8s.io/client-go/tools/leaderelection/resourcelock"
	"k8s.io/client-go/tools/record"
	"k8s.io/klog/v2"

	"github.com/duet-net/duet/internal/alloc"
	"github.com/duet-net/duet/internal/controller/endpoints"
	"github.com/duet-net/duet/internal/controller/endpointslice"
	"github.com/duet-net/duet/internal/controller/events"
	"github.com/duet-net/duet/internal/controller/familydrop"
	"github.com/duet-net/duet/internal/controller/kubedns"
	"github.com/duet-net/duet/internal/controller/lbipam"
	"github.com/duet-net/duet/internal/controller/namespace"
	"github.com/duet-net/duet/internal/controller/nodeipam"
	"github.com/duet-net/duet/internal/controller/nsdefaults"
	"github.com/duet-net/duet/internal/controller/scheduler"
	"github.com/duet-net/duet/internal/controller/trim"
	"github.com/duet-net/duet/internal/etcdstore"
	"github.com/duet-net/duet/internal/metrics"
	"github.com/duet-net/duet/internal/netaddr"
	"github.com/duet-net/duet/internal/registry/service"
)

// LeaseName is the Lease in kube-system that elects which replica runs the
// cluster-wide controllers.
const LeaseName = "duet-controller-manager"

// startControllers runs the repair loop in every replica and the
// cluster-wide controllers (namespace deletion, scheduling, node IPAM) in
// the elected one.
func (s *Server) startControllers(hookCtx genericapiserver.PostStartHookContext) error {
	// The controllers run in the server's own process: client-side rate
	// limits (loopback default 50 QPS) would only pace a burst of binds,
	// slice and status writes that the server's own flow control already
	// protects it from.
	loopback := rest.CopyConfig(hookCtx.LoopbackClientConfig)
	loopback.QPS, loopback.Burst = 1000, 2000
	// Protobuf on the wire costs the informers a third of JSON's decoding;
	// deprecation warnings (v1 Endpoints) are for users, not for the
	// controller that must keep writing them.
	loopback.ContentType = runtime.ContentTypeProtobuf
	loopback.AcceptContentTypes = runtime.ContentTypeProtobuf + "," + runtime.ContentTypeJSON
	loopback.WarningHandler = rest.NoWarnings{}
	// gzip on loopback only burns CPU: the repair loop's lists were
	// compressed and decompressed in this one process.
	loopback.DisableCompression = true
	client, err := kubernetes.NewForConfig(loopback)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(context.Background())
	s.stopControllers.Store(&cancel)
	go func() {
		<-hookCtx.Done()
		cancel()
	}()

	// The process's one event broadcaster: every controller records
	// through it, in every leadership term.
	broadcaster := events.Start(ctx, client)
	repair := &service.Repair{
		Client:   client,
		Records:  s.ipStore.ListAll,
		Ranges:   s.live.allocs.Ranges,
		Recorder: broadcaster.Recorder(corev1.EventSource{Component: "ipallocator-repair-controller"}),
		Interval: s.cfg.RepairInterval,
		// A create may store its Service until its request times out,
		// a minute after it began (the API server's default timeout).
		Grace: time.Minute,
	}
	metrics.Register()
	go repair.Run(ctx)
	go s.nodeGraph.Run(ctx, client)

	etcdClient := s.etcdClient
	store, err := etcdstore.New(etcdClient, "/duet/allocations/nodecidrs/")
	if err != nil {
		return err
	}
	id, _ := os.Hostname()
	id = fmt.Sprintf("%s_%s", id, uuid.NewUUID())
	// Every replica keeps default/kubernetes and lists itself in its
	// endpoints, as every kube-apiserver does.
	self := serverEndpoint{Addrs: advertisedAddrs(s.cfg.BindAddress), Port: s.port}
	leases, err := newEtcdLeases(ctx, s.etcdClient, id, self, apiserverLeaseTTL)
	if err != nil {
		return err
	}
	var families []corev1.IPFamily
	for _, r := range s.cfg.ServiceRanges {
		families = append(families, corev1.IPFamily(netaddr.FamilyOf(r.Addr())))
	}
	kube := &kubernetesService{client: client, leases: leases, self: self, families: families, currentFamilies: s.live.serviceFamilies, interval: kubernetesServiceInterval,
		ip: s.serviceRanges[netaddr.FamilyOf(s.cfg.ServiceRanges[0].Addr())].KubernetesServiceIP()}
	// The etcd client is closed, and controllersDone closed, once both
	// the leader-elected controllers and this (which withdraws the
	// server's lease through etcd) have stopped.
	var running sync.WaitGroup
	running.Go(func() { kube.Run(ctx) })

	lock := &resourcelock.LeaseLock{
		LeaseMeta:  metav1.ObjectMeta{Namespace: metav1.NamespaceSystem, Name: LeaseName},
		Client:     client.CoordinationV1(),
		LockConfig: resourcelock.ResourceLockConfig{Identity: id},
	}
	go func() {
		running.Wait()
		etcdClient.Close()
		close(s.controllersDone)
	}()
	running.Go(func() {
		// The lease lives in kube-system, which the bootstrap hook may
		// still be creating on a fresh cluster: campaigning before it
		// exists only logs errors.
		_ = wait.PollUntilContextCancel(ctx, 100*time.Millisecond, true, func(ctx context.Context) (bool, error) {
			_, err := client.CoreV1().Namespaces().Get(ctx, metav1.NamespaceSystem, metav1.GetOptions{})
			return err == nil, nil
		})
		for ctx.Err() == nil {
			leaderelection.RunOrDie(ctx, leaderelection.LeaderElectionConfig{
				Lock:            lock,
				LeaseDuration:   15 * time.Second,
				RenewDeadline:   10 * time.Second,
				RetryPeriod:     2 * time.Second,
				ReleaseOnCancel: true,
				Name:            LeaseName,
				Callbacks: leaderelection.LeaderCallbacks{
					OnStartedLeading: func(leaderCtx context.Context) {
						klog.InfoS("leading: starting cluster-wide controllers", "identity", id)
						s.runLeaderControllers(leaderCtx, loopback, client, broadcaster, store)
					},
					OnStoppedLeading: func() { klog.InfoS("no longer leading", "identity", id) },
				},
			})
		}
	})
	return nil
}

// runLeaderControllers runs until leadership is lost; every start builds
// its state afresh from the API and the store.
func (s *Server) runLeaderControllers(ctx context.Context, loopback *rest.Config, client kubernetes.Interface, broadcaster *events.Broadcaster, store alloc.Store) {
	recorder := func(component string) record.EventRecorder {
		return broadcaster.Recorder(corev1.EventSource{Component: component})
	}
	factory := informers.NewSharedInformerFactoryWithOptions(client, 0, informers.WithTransform(trim.ForControllers))
	var wg sync.WaitGroup
	ns := namespace.New(client, factory.Core().V1().Namespaces(), recorder(namespace.ControllerName))
	wg.Go(func() { ns.Run(ctx, 2) })
	if caPEM, err := os.ReadFile(s.ca.CertFile); err != nil {
		klog.ErrorS(err, "reading the cluster CA: no default ServiceAccounts or kube-root-ca.crt ConfigMaps")
	} else {
		defaults := nsdefaults.New(client, factory.Core().V1().Namespaces(), caPEM)
		wg.Go(func() { defaults.Run(ctx, 2) })
	}
	sched := scheduler.New(client, factory.Core().V1().Pods(), factory.Core().V1().Nodes(), factory.Core().V1().Namespaces(), recorder(scheduler.Name))
	wg.Go(func() { sched.Run(ctx, 8) })
	s.runNodeHealth(ctx, &wg, client, factory, recorder)
	s.runRangeControllers(ctx, &wg, loopback, client, factory, recorder)
	slices, err := endpointslice.New(client, factory.Core().V1().Pods(), factory.Core().V1().Services(),
		factory.Core().V1().Nodes(), factory.Discovery().V1().EndpointSlices(), endpointslice.Options{Recorder: recorder(endpointslice.EventComponent)})
	if err != nil {
		klog.ErrorS(err, "starting the EndpointSlice controller")
	} else {
		wg.Go(func() { slices.Run(ctx, 4) })
	}
	eps, err := endpoints.New(client, factory.Core().V1().Pods(), factory.Core().V1().Services(),
		factory.Core().V1().Endpoints(), endpoints.Options{Recorder: recorder(endpoints.ControllerName)})
	if err != nil {
		klog.ErrorS(err, "starting the Endpoints controller")
	} else {
		wg.Go(func() { eps.Run(ctx, 4) })
	}
	dns := kubedns.New(client, factory.Core().V1().Nodes(), factory.Core().V1().Services(), factory.Discovery().V1().EndpointSlices(), s.live.source.Load().ServiceRanges())
	wg.Go(func() { dns.Run(ctx) })
	s.runLiveRanges(ctx, &wg, client, factory.Core().V1().Nodes(), recorder(nodeipam.ControllerName), dns, store)
	if len(s.cfg.LBPools) > 0 {
		lbStore, err := etcdstore.New(s.etcdClient, lbIPsPrefix)
		if err == nil {
			var lb *lbipam.Controller
			lb, err = lbipam.New(client, factory.Core().V1().Services(), s.cfg.LBPools, lbStore, recorder(lbipam.ControllerName))
			if err == nil {
				wg.Go(func() { lb.Run(ctx, 2) })
			}
		}
		if err != nil {
			klog.ErrorS(err, "starting load balancer IPAM")
		}
	}
	s.runFamilyDrop(ctx, &wg, client, store, recorder(familydrop.ControllerName))
	runWorkloads := workloadControllers(ctx, loopback, client, factory)
	factory.Start(ctx.Done())
	runWorkloads(&wg)
	wg.Wait()
	factory.Shutdown()
}
