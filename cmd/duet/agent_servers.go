package main

import (
	"context"
	"log/slog"
	"strings"

	"github.com/spf13/pflag"
	"k8s.io/client-go/rest"

	"github.com/duet-net/duet/internal/failover"
)

// serverFlags are the agent's flags for following several API servers.
type serverFlags struct {
	servers string
	netns   string
}

func (f *serverFlags) register(fs *pflag.FlagSet) {
	fs.StringVar(&f.servers, "server", "", "API server URLs (https://HOST:PORT, comma-separated) to use instead of the kubeconfig's: the agent uses a ready one and moves to another within seconds when it dies, is cut off or loses its etcd quorum; a kubeconfig whose server lists several URLs, comma-separated, does the same")
	fs.StringVar(&f.netns, "api-netns", "", "network namespace to reach the API servers from, with --server (default: the agent's own)")
}

// apply makes cfg follow the servers of --server, or of a kubeconfig whose
// server field lists several; with one server and no --server it leaves
// cfg alone. The returned function runs the health checks until its
// context is done.
func (f *serverFlags) apply(cfg *rest.Config, log *slog.Logger) (func(context.Context), error) {
	list := f.servers
	if list == "" && strings.Contains(cfg.Host, ",") {
		list = cfg.Host
	}
	if list == "" {
		return func(context.Context) {}, nil
	}
	servers, err := failover.ParseServers(list)
	if err != nil {
		return nil, err
	}
	d, err := failover.Configure(cfg, servers, f.netns, log.With("component", "api-failover"))
	if err != nil {
		return nil, err
	}
	log.Info("following API servers", "servers", servers)
	return d.Run, nil
}
