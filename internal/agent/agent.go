// Package agent is `duet agent`, one per node: it registers the Node,
// keeps its lease, and programs the node's network namespace from what
// the API says (routes to other nodes' pods now; pod sandboxes, the
// service proxy and egress masquerading as they land).
package agent

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"time"

	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/workqueue"

	"github.com/duet-net/duet/internal/agent/nodestatus"
	"github.com/duet-net/duet/internal/agent/routes"
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
}

// Run runs the agent until ctx is done.
func Run(ctx context.Context, client kubernetes.Interface, cfg Config, log *slog.Logger) error {
	reporter := &nodestatus.Reporter{Client: client, NodeName: cfg.NodeName, InternalIPs: cfg.InternalIPs, Version: cfg.Version}
	var err error
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

	programmer, err := routes.NewProgrammer(cfg.NetNS)
	if err != nil {
		return err
	}
	defer programmer.Close()

	factory := informers.NewSharedInformerFactory(client, 0)
	nodes := factory.Core().V1().Nodes()
	// One key: routes are recomputed from all nodes whatever changed.
	queue := workqueue.NewTypedRateLimitingQueue(workqueue.DefaultTypedControllerRateLimiter[string]())
	defer queue.ShutDown()
	enqueue := func(any) { queue.Add("routes") }
	if _, err := nodes.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: enqueue, UpdateFunc: func(_, o any) { enqueue(o) }, DeleteFunc: enqueue,
	}); err != nil {
		return err
	}
	factory.Start(ctx.Done())
	defer factory.Shutdown()
	if !cache.WaitForCacheSync(ctx.Done(), nodes.Informer().HasSynced) {
		return ctx.Err()
	}
	resync := cfg.ResyncInterval
	if resync <= 0 {
		resync = 30 * time.Second
	}
	go wait.UntilWithContext(ctx, func(context.Context) { queue.Add("routes") }, resync)

	go func() {
		<-ctx.Done()
		queue.ShutDown()
	}()
	for {
		key, quit := queue.Get()
		if quit {
			return nil
		}
		all, err := nodes.Lister().List(labels.Everything())
		if err == nil {
			var added, deleted int
			added, deleted, err = programmer.Sync(routes.Desired(cfg.NodeName, all))
			if added+deleted > 0 {
				log.Info("routes synced", "added", added, "deleted", deleted)
			}
		}
		if err != nil {
			log.Error("syncing routes", "err", err)
			queue.AddRateLimited(key)
		} else {
			queue.Forget(key)
		}
		queue.Done(key)
	}
}
