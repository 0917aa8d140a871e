package apiserver

import (
	"context"
	"sync"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/klog/v2"

	"github.com/duet-net/duet/internal/controller/gc"
	"github.com/duet-net/duet/internal/controller/workloads"
)

// sharedInformers are the resources the leader's controllers keep typed
// informers of (see runLeaderControllers); the garbage collector watches
// them through those, every other resource metadata-only.
var sharedInformers = []schema.GroupVersionResource{
	corev1.SchemeGroupVersion.WithResource("namespaces"),
	corev1.SchemeGroupVersion.WithResource("nodes"),
	corev1.SchemeGroupVersion.WithResource("pods"),
	corev1.SchemeGroupVersion.WithResource("services"),
	corev1.SchemeGroupVersion.WithResource("endpoints"),
	discoveryv1.SchemeGroupVersion.WithResource("endpointslices"),
	appsv1.SchemeGroupVersion.WithResource("deployments"),
	appsv1.SchemeGroupVersion.WithResource("replicasets"),
	appsv1.SchemeGroupVersion.WithResource("daemonsets"),
	appsv1.SchemeGroupVersion.WithResource("controllerrevisions"),
}

// workloadControllers builds the Deployment, ReplicaSet and DaemonSet
// controllers and the garbage collector on factory, before it starts. The
// returned run starts them on wg once factory has been started; a
// controller that could not be built is logged and left out.
func workloadControllers(ctx context.Context, config *rest.Config, client kubernetes.Interface, factory informers.SharedInformerFactory) (run func(wg *sync.WaitGroup)) {
	apps, err := workloads.New(ctx, client, factory, workloads.Options{})
	if err != nil {
		klog.ErrorS(err, "starting the workload controllers")
	}
	collector, err := gc.New(ctx, config, client, factory, gc.Options{Shared: sharedInformers})
	if err != nil {
		klog.ErrorS(err, "starting the garbage collector")
	}
	return func(wg *sync.WaitGroup) {
		if apps != nil {
			wg.Go(func() { apps.Run(ctx) })
		}
		if collector != nil {
			collector.Started()
			wg.Go(func() { collector.Run(ctx) })
		}
	}
}
