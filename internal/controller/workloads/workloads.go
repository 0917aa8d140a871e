// Package workloads runs Kubernetes' own Deployment, ReplicaSet and
// DaemonSet controllers (k8s.io/kubernetes pkg/controller/deployment,
// replicaset and daemon) in `duet server`, on the informers the server's
// other controllers share. Rolling updates, Recreate, minReadySeconds,
// progress deadlines, revision history, the pod-template-hash label and
// every status field are upstream's, because the code is.
//
// The pods the controllers create carry no node (DaemonSet pods ask for
// theirs by node affinity); Duet's scheduler binds them.
package workloads

import (
	"context"
	"fmt"
	"sync"
	"time"

	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/util/flowcontrol"
	"k8s.io/kubernetes/pkg/controller/daemon"
	"k8s.io/kubernetes/pkg/controller/deployment"
	"k8s.io/kubernetes/pkg/controller/replicaset"
)

// Options tune the controllers; zero values take kube-controller-manager's
// defaults.
type Options struct {
	// DeploymentWorkers, ReplicaSetWorkers and DaemonSetWorkers are how
	// many objects of each kind are synced at once (5, 5, 2).
	DeploymentWorkers, ReplicaSetWorkers, DaemonSetWorkers int
}

// Controllers are the three workload controllers, built and ready to Run.
type Controllers struct {
	deployments *deployment.DeploymentController
	replicaSets *replicaset.ReplicaSetController
	daemonSets  *daemon.DaemonSetsController
	opts        Options
}

// New builds the controllers on factory's informers. It must be called
// before factory is started, so that the informers they use are started
// with the others.
func New(ctx context.Context, client kubernetes.Interface, factory informers.SharedInformerFactory, opts Options) (*Controllers, error) {
	if opts.DeploymentWorkers == 0 {
		opts.DeploymentWorkers = 5
	}
	if opts.ReplicaSetWorkers == 0 {
		opts.ReplicaSetWorkers = 5
	}
	if opts.DaemonSetWorkers == 0 {
		opts.DaemonSetWorkers = 2
	}
	apps, core := factory.Apps().V1(), factory.Core().V1()
	c := &Controllers{opts: opts}
	var err error
	if c.deployments, err = deployment.NewDeploymentController(ctx, apps.Deployments(), apps.ReplicaSets(), core.Pods(), client); err != nil {
		return nil, fmt.Errorf("deployment controller: %w", err)
	}
	c.replicaSets = replicaset.NewReplicaSetController(ctx, apps.ReplicaSets(), core.Pods(), client, replicaset.BurstReplicas)
	// A DaemonSet pod that keeps failing on a node is recreated after a
	// back-off from 1 s doubling to 15 min, kube-controller-manager's.
	c.daemonSets, err = daemon.NewDaemonSetsController(ctx, apps.DaemonSets(), apps.ControllerRevisions(), core.Pods(), core.Nodes(),
		client, flowcontrol.NewBackOff(time.Second, 15*time.Minute))
	if err != nil {
		return nil, fmt.Errorf("daemonset controller: %w", err)
	}
	return c, nil
}

// Run runs the controllers until ctx is done.
func (c *Controllers) Run(ctx context.Context) {
	var wg sync.WaitGroup
	wg.Go(func() { c.deployments.Run(ctx, c.opts.DeploymentWorkers) })
	wg.Go(func() { c.replicaSets.Run(ctx, c.opts.ReplicaSetWorkers) })
	wg.Go(func() { c.daemonSets.Run(ctx, c.opts.DaemonSetWorkers) })
	wg.Wait()
}
