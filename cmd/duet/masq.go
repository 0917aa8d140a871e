package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/duet-net/duet/internal/agent/masq"
	"github.com/duet-net/duet/internal/netaddr"
)

// defaultMasqConfig is where ip-masq-agent's DaemonSet mounts its
// ConfigMap, so the same manifest works with either.
const defaultMasqConfig = "/etc/config/ip-masq-agent"

func newMasqCommand() *cobra.Command {
	var configPath, netns, serviceRange string
	var clusterCIDRs []string
	var cleanup bool
	cmd := &cobra.Command{
		Use:   "masq [--config FILE] [--netns NAME] [--cluster-cidr A[,B]] [--service-cluster-ip-range A[,B]] [--cleanup]",
		Short: "Masquerade pods' egress traffic, configured like ip-masq-agent",
		Long: `duet masq runs Duet's egress masquerading on its own, for nodes where the rest
of Duet does not run. Traffic leaving the node for a
destination that is not local, not in the cluster's pod CIDRs (--cluster-cidr,
never masqueraded) and not in the config's nonMasqueradeCIDRs gets the node's
address as its source, with fully random ports.

The config file is ip-masq-agent's, YAML or JSON:

  nonMasqueradeCIDRs: [10.0.0.0/8, fd00::/8]   # both families; replaces the defaults
  masqLinkLocal: false                         # true: masquerade 169.254.0.0/16 too
  masqLinkLocalIPv6: false                     # true: masquerade fe80::/10 too
  resyncInterval: 60s                          # re-read the file and repair the rules (>= 1s)
  cidrLimit: 64                                # optional; Duet has no limit of its own

Absent keys keep their defaults; without a file (or without nonMasqueradeCIDRs)
10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16 and the IPv6 service ranges of
--service-cluster-ip-range keep their source. Unknown keys, CIDRs with host bits
and resyncIntervals under a second are refused: the error names the field, and
the rules in force stay as they were until the file is fixed. A file replaced
whole (renamed into place, or a ConfigMap update) takes effect within a second;
one written in place once it has not changed for a second, so that a writer
pausing for less does not get half a file applied.

The rules live in the nftables tables "ip duet-masq" and "ip6 duet-masq" and
nothing else is touched. On SIGINT or SIGTERM duet masq exits and, like
ip-masq-agent, leaves the rules in place, so that restarting it does not
interrupt traffic; with --cleanup it deletes both tables first.`,
		Example: `  # Pods in 10.244.0.0/16 and fd00:10:244::/56; the config from a ConfigMap volume.
  duet masq --cluster-cidr 10.244.0.0/16,fd00:10:244::/56 --service-cluster-ip-range 10.96.0.0/16,fd00:10:96::/108

  # A node of duet up, in its network namespace, with a local file.
  duet masq --netns node1 --config ./masq.yaml --cluster-cidr 10.244.0.0/16,fd00:10:244::/56

  # Remove the tables after testing.
  duet masq --netns node1 --config ./masq.yaml --cleanup`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			o := masq.Options{NetNS: netns, ConfigPath: configPath}
			for _, s := range clusterCIDRs {
				p, err := netaddr.ParseCIDR(s)
				if err != nil {
					return fmt.Errorf("--cluster-cidr: %w", err)
				}
				o.ClusterCIDRs = append(o.ClusterCIDRs, p)
			}
			if serviceRange != "" {
				ranges, err := netaddr.ParseServiceClusterIPRange(serviceRange)
				if err != nil {
					return err
				}
				o.ServiceCIDRs = ranges
			}
			log := slog.New(slog.NewTextHandler(os.Stderr, nil))
			if netns != "" {
				log = log.With("netns", netns)
			}
			if len(o.ClusterCIDRs) == 0 {
				log.Warn("no --cluster-cidr: traffic between pods is masqueraded unless nonMasqueradeCIDRs covers the pod CIDRs")
			}
			o.Log = log

			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			if err := masq.Run(ctx, o); err != nil {
				return err
			}
			if cleanup {
				if err := masq.Cleanup(netns); err != nil {
					return err
				}
				log.Info("removed the masquerade tables", "table", masq.TableName)
				return nil
			}
			log.Info("stopped; the masquerade rules stay in place (duet masq --cleanup removes them)")
			return nil
		},
	}
	fs := cmd.Flags()
	fs.StringVar(&configPath, "config", defaultMasqConfig, "ip-masq-agent config file, YAML or JSON; a missing file means the defaults")
	fs.StringVar(&netns, "netns", "", "network namespace to program: a name under /run/netns or a path (default: duet masq's own)")
	fs.StringSliceVar(&clusterCIDRs, "cluster-cidr", nil, "the cluster's pod CIDRs, never masqueraded")
	fs.StringVar(&serviceRange, "service-cluster-ip-range", "", "the cluster's service ranges, one per family; by default the IPv6 one is not masqueraded")
	fs.BoolVar(&cleanup, "cleanup", false, "delete the masquerade tables on exit instead of leaving the rules in place")
	return cmd
}
