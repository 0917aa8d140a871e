package main

import (
	"context"
	"fmt"
	"github.com/duet-net/duet/internal/agent/images"
	"log/slog"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/spf13/cobra"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/duet-net/duet/internal/agent"
	"github.com/duet-net/duet/internal/agent/clusterdns"
	"github.com/duet-net/duet/internal/netaddr"
	"github.com/duet-net/duet/internal/version"
)

func newAgentCommand() *cobra.Command {
	var kubeconfig, nodeName, netns, stateDir, clusterCIDR, serviceRange, masqConfig string
	var nodeIPs []string
	var noProxy, noMasq bool
	var metricsAddr string
	var stream streamingFlags
	var imagesFile string
	var clusterDomain, resolvConf string
	var noDNS bool
	var follow serverFlags
	cmd := &cobra.Command{
		Use:   "agent --kubeconfig FILE --node-name NAME --node-ip A[,B] [--netns PATH]",
		Short: "Run a node agent: register the Node and program its network",
		Long: `duet agent registers its Node with an InternalIP of each family, keeps it Ready
with a Lease heartbeat, and programs routes to every other node's pod CIDRs via
that node's InternalIP of the same family. With --netns it programs that network
namespace (as duet up's nodes are) instead of its own.`,
		Example: "  duet agent --kubeconfig node1.kubeconfig --node-name node1 --node-ip 203.0.113.11,2001:db8::11",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if nodeName == "" {
				return fmt.Errorf("--node-name is required")
			}
			exe, err := os.Executable()
			if err != nil {
				return err
			}
			if stateDir == "" {
				stateDir = filepath.Join("/var/lib/duet/agent", nodeName)
			}
			cfg := agent.Config{NodeName: nodeName, NetNS: netns, Version: "v1.37.0-duet-" + version.Version, Binary: exe, StateDir: stateDir}
			fams := map[bool]bool{}
			for _, s := range nodeIPs {
				ip, err := netip.ParseAddr(s)
				if err != nil || ip.Zone() != "" {
					return fmt.Errorf("--node-ip: %q is not an IP address", s)
				}
				if fams[ip.Is4()] {
					return fmt.Errorf("--node-ip: at most one address per family, got %v", nodeIPs)
				}
				fams[ip.Is4()] = true
				cfg.InternalIPs = append(cfg.InternalIPs, ip)
			}
			if len(cfg.InternalIPs) == 0 {
				return fmt.Errorf("--node-ip is required (one address per family, primary first)")
			}
			if clusterCIDR != "" {
				if cfg.ClusterCIDRs, err = netaddr.ParseCIDRList("--cluster-cidr", clusterCIDR); err != nil {
					return err
				}
			}
			if serviceRange != "" {
				if cfg.ServiceCIDRs, err = netaddr.ParseCIDRList("--service-cluster-ip-range", serviceRange); err != nil {
					return err
				}
			}
			cfg.MasqConfig, cfg.NoProxy, cfg.NoMasq, cfg.MetricsAddr = masqConfig, noProxy, noMasq, metricsAddr
			zone, err := clusterdns.CanonicalDomain(clusterDomain)
			if err != nil {
				return fmt.Errorf("--cluster-domain: %w", err)
			}
			cfg.ClusterDomain, cfg.ResolvConf, cfg.NoDNS = strings.TrimSuffix(zone, "."), resolvConf, noDNS
			rest, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
			if err != nil {
				return fmt.Errorf("--kubeconfig: %w", err)
			}
			rest.UserAgent = "duet-agent/" + nodeName
			// client-go's default of 5 QPS would pace a burst of pod
			// status updates; the kubelet's defaults are these.
			rest.QPS, rest.Burst = 50, 100
			log := slog.New(slog.NewTextHandler(os.Stderr, nil)).With("node", nodeName)
			runFailover, err := follow.apply(rest, log)
			if err != nil {
				return fmt.Errorf("--server: %w", err)
			}
			client, err := kubernetes.NewForConfig(rest)
			if err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			go runFailover(ctx)
			if imagesFile != "" {
				exe, err := os.Executable()
				if err != nil {
					return err
				}
				if cfg.Images, err = images.Load(imagesFile, exe); err != nil {
					return fmt.Errorf("--images: %w", err)
				}
			}
			if err := stream.apply(&cfg, rest, log); err != nil {
				return err
			}
			return agent.Run(ctx, client, cfg, log)
		},
	}
	fs := cmd.Flags()
	fs.StringVar(&kubeconfig, "kubeconfig", "", "kubeconfig with this node's credential")
	fs.StringVar(&nodeName, "node-name", "", "the Node's name")
	fs.StringSliceVar(&nodeIPs, "node-ip", nil, "the node's InternalIPs, one per family, primary first")
	fs.StringVar(&netns, "netns", "", "network namespace to program (default: the agent's own)")
	fs.StringVar(&clusterCIDR, "cluster-cidr", "", "the cluster's pod CIDRs (as given to duet server): never masqueraded; traffic from elsewhere to a Service is")
	fs.StringVar(&serviceRange, "service-cluster-ip-range", "", "the cluster's service ranges (as given to duet server): not masqueraded by the IPv6 egress defaults")
	fs.StringVar(&masqConfig, "masq-config", "", "ip-masq-agent config file (YAML or JSON), watched for changes; empty means the defaults")
	fs.StringVar(&metricsAddr, "metrics-bind-address", "", "host:port to serve Prometheus metrics on (/metrics), e.g. 127.0.0.1:10249; empty for none")
	fs.BoolVar(&noProxy, "no-proxy", false, "do not run the service proxy")
	fs.BoolVar(&noMasq, "no-masq", false, "do not masquerade egress traffic")
	fs.StringVar(&clusterDomain, "cluster-domain", "cluster.local", "the cluster's DNS domain: cluster DNS answers for it, and ClusterFirst pods search it")
	fs.StringVar(&resolvConf, "resolv-conf", agent.DefaultResolvConf, "the node's resolver configuration: cluster DNS forwards names outside the cluster domain to its nameservers, and dnsPolicy Default pods get it")
	fs.BoolVar(&noDNS, "no-dns", false, "do not serve cluster DNS on this node's InternalIPs (port 53); kube-dns then sends its queries to other nodes")
	stream.register(fs)
	follow.register(fs)
	fs.StringVar(&imagesFile, "images", "", "image table file (YAML) mapping images to entrypoints and files, added to the built-in table")
	fs.StringVar(&stateDir, "state-dir", "", "where the node's IPAM store and container logs live (default /var/lib/duet/agent/NODE)")
	return cmd
}
