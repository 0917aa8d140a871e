package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/duet-net/duet/internal/apiserver"
)

// registerClusterFlags adds the flags of servers that form one cluster,
// each an etcd member.
func registerClusterFlags(fs *pflag.FlagSet, f *apiserver.Flags, leave *bool) {
	fs.StringSliceVar(&f.Join, "join", nil, "API URLs of running servers (https://HOST:PORT, comma-separated): join their cluster as an etcd member, the first time; needs the cluster's join token (--token, --token-file, or DATA_DIR/"+apiserver.JoinTokenFile+")")
	fs.StringVar(&f.JoinToken, "token", "", "the cluster's join token, as a running server wrote it to DATA_DIR/"+apiserver.JoinTokenFile)
	fs.StringVar(&f.JoinTokenFile, "token-file", "", "file holding the cluster's join token (default DATA_DIR/"+apiserver.JoinTokenFile+")")
	fs.BoolVar(leave, "leave", false, "remove this (stopped) server's etcd member from its cluster and wipe its etcd data, then exit; needs only --data-dir (and --bind-address if the server had one)")
}

// runLeave is `duet server --leave`.
func runLeave(cmd *cobra.Command, f apiserver.Flags) error {
	if f.DataDir == "" {
		return errors.New("--data-dir is required")
	}
	bind := net.ParseIP(f.BindAddress)
	if bind == nil {
		return fmt.Errorf("--bind-address %q is not a valid IP address", f.BindAddress)
	}
	cfg := &apiserver.Config{DataDir: f.DataDir, BindAddress: bind, EtcdServers: f.EtcdServers}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := apiserver.Leave(ctx, cfg, slog.New(slog.NewTextHandler(os.Stderr, nil))); err != nil {
		return err
	}
	fmt.Fprintf(cmd.OutOrStdout(), "left the cluster; %s no longer holds an etcd member\n", cfg.DataDir)
	return nil
}
