package main

import (
	"context"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/duet-net/duet/internal/netexec"
)

func newNetexecCommand() *cobra.Command {
	var httpPort, udpPort int
	cmd := &cobra.Command{
		Use:   "netexec [--http-port 8080] [--udp-port 8081]",
		Short: "Run a small test server on both IP families (like agnhost netexec)",
		Long: `netexec answers over HTTP: /hostname (the pod's name), /clientip (the caller's
address and port as the server sees them), /echo?msg=... ; and over UDP the
datagrams "hostname", "clientip" and "echo ...". It listens on every address of
both families.`,
		Example: "  duet netexec --http-port 8080 --udp-port 8081\n  curl http://[fd00:10:244:1::5]:8080/clientip",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			log := slog.New(slog.NewTextHandler(os.Stderr, nil))
			srv, err := netexec.Listen(httpPort, udpPort, log)
			if err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			return srv.Serve(ctx)
		},
	}
	cmd.Flags().IntVar(&httpPort, "http-port", 8080, "HTTP port (0: no HTTP)")
	cmd.Flags().IntVar(&udpPort, "udp-port", 8081, "UDP port (0: no UDP)")
	return cmd
}
