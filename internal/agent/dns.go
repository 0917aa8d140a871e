package agent

import (
	"context"
	"log/slog"
	"net/netip"

	"k8s.io/client-go/kubernetes"

	"github.com/duet-net/duet/internal/agent/clusterdns"
)

// DefaultResolvConf is the node's resolver configuration: the upstream
// resolvers of cluster DNS and what dnsPolicy Default gives pods.
const DefaultResolvConf = "/etc/resolv.conf"

// listenDNS binds cluster DNS on port 53 of the node's InternalIPs, in
// the node's namespace, before the Node is registered: the Node's
// clusterdns.NodeAnnotation then says whether kube-dns may send queries
// here. A node that cannot bind (the port taken) runs on without it,
// and its pods' queries go to the other nodes.
func listenDNS(cfg Config, log *slog.Logger) (*clusterdns.Listeners, string) {
	if cfg.NoDNS {
		return nil, "false"
	}
	l, err := clusterdns.Listen(cfg.NetNS, cfg.InternalIPs, clusterdns.Port)
	if err != nil {
		log.Error("cluster DNS cannot listen on this node; kube-dns will not send queries here", "err", err)
		return nil, "false"
	}
	return l, "true"
}

// serveDNS answers DNS on l until ctx ends: the cluster's names from the
// API, others through the resolvers of cfg.ResolvConf.
func serveDNS(ctx context.Context, client kubernetes.Interface, cfg Config, l *clusterdns.Listeners, log *slog.Logger) error {
	path := cfg.ResolvConf
	if path == "" {
		path = DefaultResolvConf
	}
	upstreams, err := clusterdns.Upstreams(path, cfg.InternalIPs)
	if err != nil {
		l.Close()
		return err
	}
	if len(upstreams) == 0 {
		log.Warn("cluster DNS has no upstream resolvers: names outside the cluster domain get REFUSED", "resolvConf", path)
	}
	owned := append(append([]netip.Prefix{}, cfg.ClusterCIDRs...), cfg.ServiceCIDRs...)
	return clusterdns.Serve(ctx, client, l, clusterdns.Options{
		Domain: cfg.ClusterDomain, Owned: owned, Upstreams: upstreams, NetNS: cfg.NetNS, Log: log,
	})
}
