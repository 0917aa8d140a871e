package apiserver

import (
	"context"
	"sync"

	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/record"
	"k8s.io/klog/v2"

	"github.com/duet-net/duet/internal/controller/nodelifecycle"
	"github.com/duet-net/duet/internal/controller/podgc"
	"github.com/duet-net/duet/internal/controller/tainteviction"
)

// runNodeHealth starts, with the other leader-elected controllers, the node
// lifecycle controller (heartbeats, Unknown conditions, taints), the taint
// eviction controller and the collector of deleted nodes' pods.
func (s *Server) runNodeHealth(ctx context.Context, wg *sync.WaitGroup, client kubernetes.Interface, factory informers.SharedInformerFactory, recorder func(string) record.EventRecorder) {
	lifecycle, err := nodelifecycle.New(client, factory.Core().V1().Nodes(), factory.Coordination().V1().Leases(), factory.Core().V1().Pods(),
		nodelifecycle.Options{GracePeriod: s.cfg.NodeHealth.MonitorGracePeriod, Recorder: recorder(nodelifecycle.ControllerName)})
	if err != nil {
		klog.ErrorS(err, "starting the node lifecycle controller")
	} else {
		wg.Go(func() { lifecycle.Run(ctx) })
	}
	eviction, err := tainteviction.New(client, factory.Core().V1().Pods(), factory.Core().V1().Nodes(), nil, recorder(tainteviction.ControllerName))
	if err != nil {
		klog.ErrorS(err, "starting the taint eviction controller")
	} else {
		wg.Go(func() { eviction.Run(ctx, 2) })
	}
	gc := podgc.New(client, factory.Core().V1().Pods(), factory.Core().V1().Nodes(), nil)
	wg.Go(func() { gc.Run(ctx) })
}
