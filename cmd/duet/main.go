// Command duet is Duet's single binary: the control plane, the node agent,
// the all-in-one local cluster and the CNI plugin are its subcommands.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/duet-net/duet/internal/version"
)

func main() {
	if err := newRootCommand().Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "error:", err)
		os.Exit(1)
	}
}

func newRootCommand() *cobra.Command {
	root := &cobra.Command{
		Use:   "duet",
		Short: "Dual-stack IPv4/IPv6 networking for container clusters",
		Long: `Duet gives every pod an IPv4 and an IPv6 address, every Service cluster IPs
of the families it asks for, and pods egress over both families, with a
Kubernetes API that kubectl and client-go use unchanged.`,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.AddCommand(newVersionCommand(), newServerCommand(), newAgentCommand(), newUpCommand(), newDownCommand(), newExecCommand(), newNSExecCommand(), newNetexecCommand(), newMasqCommand(), newPauseCommand())
	root.AddCommand(newSnapshotCommand(), newMemberCommand())
	return root
}

func newVersionCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the version of duet",
		Args:  cobra.NoArgs,
		Run: func(cmd *cobra.Command, _ []string) {
			fmt.Fprintln(cmd.OutOrStdout(), version.String())
		},
	}
}

// newPauseCommand is what the pause images run: a process that holds on
// until it is told to stop.
func newPauseCommand() *cobra.Command {
	return &cobra.Command{
		Use:    "pause",
		Short:  "Wait for SIGINT or SIGTERM, then exit 0 (the pause image's program)",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			<-ctx.Done()
			return nil
		},
	}
}
