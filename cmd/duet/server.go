package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/duet-net/duet/internal/apiserver"
	"github.com/duet-net/duet/internal/netaddr"
)

func newServerCommand() *cobra.Command {
	var f apiserver.Flags
	var leave bool
	cmd := &cobra.Command{
		Use:   "server --data-dir DIR --service-cluster-ip-range A[,B] [flags]",
		Short: "Run the control plane: the Kubernetes API, its store and Duet's controllers",
		Long: `duet server serves the Kubernetes API (core/v1 Nodes, Pods, Services, Endpoints,
Events, Namespaces; discovery/v1 EndpointSlices; coordination/v1 Leases;
networking/v1 ServiceCIDRs and IPAddresses; apps/v1 Deployments, ReplicaSets,
DaemonSets and ControllerRevisions) with dual-stack Service, Node and Pod
semantics, and runs the controllers behind them, Kubernetes' garbage collector
among them. Without --etcd-servers it runs an embedded etcd in --data-dir.

It writes DIR/admin.kubeconfig before it reports ready on /readyz.`,
		Example: `  # A dual-stack control plane, IPv4 primary, on a free port:
  duet server --data-dir /var/lib/duet --secure-port 0 \
    --service-cluster-ip-range 10.96.0.0/16,fd00:10:96::/108 \
    --cluster-cidr 10.244.0.0/16,fd00:10:244::/56
  kubectl --kubeconfig /var/lib/duet/admin.kubeconfig get ns`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if leave {
				return runLeave(cmd, f)
			}
			f.NodeMasks.IPv4Set = cmd.Flags().Changed("node-cidr-mask-size-ipv4")
			f.NodeMasks.IPv6Set = cmd.Flags().Changed("node-cidr-mask-size-ipv6")
			cfg, err := f.Complete()
			if err != nil {
				return err
			}
			log := slog.New(slog.NewTextHandler(os.Stderr, nil))
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			srv, err := apiserver.New(ctx, cfg, log)
			if err != nil {
				if ctx.Err() != nil {
					// SIGINT or SIGTERM while starting: stopped as asked.
					log.Info("stopped while starting", "reason", err)
					return nil
				}
				return err
			}
			log.Info("serving", "url", srv.URL, "kubeconfig", srv.Kubeconfig)
			fmt.Fprintf(cmd.ErrOrStderr(), "kubeconfig: %s\n", srv.Kubeconfig)
			return srv.Run(ctx)
		},
	}
	fs := cmd.Flags()
	fs.StringVar(&f.DataDir, "data-dir", "", "directory for etcd data, credentials and admin.kubeconfig (required)")
	fs.StringVar(&f.BindAddress, "bind-address", "127.0.0.1", "address to serve the API on")
	fs.IntVar(&f.SecurePort, "secure-port", 6443, "HTTPS port; 0 picks a free one (the kubeconfig names it)")
	fs.StringVar(&f.ServiceClusterIPRange, "service-cluster-ip-range", "", "one CIDR, or two of different families, for Service cluster IPs; the first is the primary")
	fs.StringVar(&f.ClusterCIDR, "cluster-cidr", "", "pod CIDR(s), at most one per family, from which each Node gets spec.podCIDRs")
	fs.IntVar(&f.NodeMasks.IPv4, "node-cidr-mask-size-ipv4", netaddr.DefaultNodeMaskIPv4, "prefix length of each Node's IPv4 pod CIDR")
	fs.IntVar(&f.NodeMasks.IPv6, "node-cidr-mask-size-ipv6", netaddr.DefaultNodeMaskIPv6, "prefix length of each Node's IPv6 pod CIDR")
	fs.StringToStringVar(&f.FeatureGates, "feature-gates", nil, "feature gates, e.g. IPv6DualStack=false")
	fs.StringSliceVar(&f.EtcdServers, "etcd-servers", nil, "external etcd URLs (comma-separated); without it an embedded etcd runs in --data-dir")
	fs.DurationVar(&f.RepairInterval, "repair-interval", 30*time.Second, "how often cluster IP records are reconciled with Services")
	fs.DurationVar(&f.NodeHealth.MonitorGracePeriod, "node-monitor-grace-period", apiserver.DefaultNodeHealth.MonitorGracePeriod, "how long a node may go without renewing its Lease or posting Ready before it is Unknown and tainted unreachable")
	fs.Int64Var(&f.NodeHealth.NotReadyTolerationSeconds, "default-not-ready-toleration-seconds", apiserver.DefaultNodeHealth.NotReadyTolerationSeconds, "seconds pods created without such a toleration tolerate node.kubernetes.io/not-ready:NoExecute")
	fs.Int64Var(&f.NodeHealth.UnreachableTolerationSeconds, "default-unreachable-toleration-seconds", apiserver.DefaultNodeHealth.UnreachableTolerationSeconds, "seconds pods created without such a toleration tolerate node.kubernetes.io/unreachable:NoExecute")
	_ = fs.MarkHidden("repair-interval")
	fs.StringVar(&f.NodePortRange, "service-node-port-range", "30000-32767", "port range reserved for NodePort (and LoadBalancer) Services, base-end inclusive or base+size")
	fs.StringVar(&f.MemoryLimit, "memory-limit", "", "soft limit on the server's memory (e.g. 2560Mi), as GOMEMLIMIT: the garbage collector works harder as the heap nears it, trading CPU for memory; 0 or unset: none beyond GOMEMLIMIT's")
	fs.StringSliceVar(&f.LBPools, "load-balancer-ip-pool", nil, "CIDRs of either family (comma-separated or repeated) from which LoadBalancer Services get status.loadBalancer.ingress IPs; without a pool of a family, that family gets none")
	registerClusterFlags(fs, &f, &leave)
	return cmd
}
