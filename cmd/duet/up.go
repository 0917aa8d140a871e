package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/duet-net/duet/internal/cluster"
)

func newUpCommand() *cobra.Command {
	o := cluster.Options{}
	cmd := &cobra.Command{
		Use:   "up --data-dir DIR [--nodes 2] [--cluster-cidr …] [--service-cluster-ip-range …] [--ipv6-primary | --single-stack ipv4|ipv6]",
		Short: "Run a cluster (dual-stack unless told otherwise) on this host (root): a control plane and N nodes in network namespaces",
		Long: `duet up starts a duet server and N nodes. Each node is a network namespace on an
underlay network built in namespaces of its own, with an InternalIP of each of
the cluster's families from documentation ranges (203.0.113.0/24,
2001:db8:0:1::/64); a single-stack cluster (--single-stack, or --cluster-cidr and
--service-cluster-ip-range of one family) has no address of the other. Nothing
of the cluster's network goes into the host's namespace. It prints progress, then
the kubeconfig path, and runs in the foreground: Ctrl-C (or SIGTERM) tears
everything down. After a crash, duet down --data-dir DIR cleans up.`,
		Example: "  sudo duet up --data-dir /tmp/duet\n  sudo duet up --data-dir /tmp/duet6 --single-stack ipv6\n  kubectl --kubeconfig /tmp/duet/admin.kubeconfig get nodes -o wide",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			exe, err := os.Executable()
			if err != nil {
				return err
			}
			o.Binary, o.Out = exe, cmd.OutOrStdout()
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			return cluster.Up(ctx, o)
		},
	}
	fs := cmd.Flags()
	fs.StringVar(&o.DataDir, "data-dir", "", "directory for the cluster's state, logs and admin.kubeconfig (required)")
	fs.IntVar(&o.Nodes, "nodes", 2, "number of nodes")
	fs.IntVar(&o.Servers, "servers", 1, "number of API servers, each an etcd member; with more than one (3 tolerates the loss of one), each runs in a network namespace of its own on the underlay, agents and kubectl follow the ready ones")
	fs.StringVar(&o.ClusterCIDR, "cluster-cidr", cluster.DefaultClusterCIDR, "pod CIDRs, one per family, primary first")
	fs.StringVar(&o.ServiceRange, "service-cluster-ip-range", cluster.DefaultServiceRange, "service ranges, one per family, primary first")
	fs.BoolVar(&o.IPv6Primary, "ipv6-primary", false, "make IPv6 the primary family (puts the IPv6 entries first)")
	fs.StringVar(&o.SingleStack, "single-stack", "", "ipv4 or ipv6: a single-stack cluster of that family, keeping that family's entries of --cluster-cidr, --service-cluster-ip-range and --load-balancer-ip-pool")
	fs.StringVar(&o.LBPools, "load-balancer-ip-pool", cluster.DefaultLBPools, "LoadBalancer IP pools, CIDRs of either family, routed from the external namespace to the nodes; empty for none")
	fs.StringVar(&o.Images, "images", "", "image table file (YAML) every node's agent adds to its built-in table (see duet agent --images)")
	fs.StringVar(&o.MasqConfig, "masq-config", "", "ip-masq-agent config file (YAML or JSON) every node's agent watches; without it the defaults apply")
	fs.StringVar(&o.ClusterDomain, "cluster-domain", "cluster.local", "the cluster's DNS domain, served by every node's DNS behind kube-system/kube-dns")
	fs.StringVar(&o.ResolvConf, "resolv-conf", "", "resolver configuration whose nameservers every node's DNS forwards names outside the cluster domain to, reached from the node's namespace (default: the host's /etc/resolv.conf)")
	_ = cmd.MarkFlagRequired("data-dir")
	return cmd
}

func newDownCommand() *cobra.Command {
	var dataDir string
	cmd := &cobra.Command{
		Use:   "down --data-dir DIR",
		Short: "Remove what a crashed duet up left behind (processes, namespaces)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return cluster.Down(dataDir, cmd.OutOrStdout())
		},
	}
	cmd.Flags().StringVar(&dataDir, "data-dir", "", "the data directory given to duet up (required)")
	_ = cmd.MarkFlagRequired("data-dir")
	return cmd
}
