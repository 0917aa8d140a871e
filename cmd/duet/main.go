// Command duet is Duet's single binary: the control plane, the node agent,
// the all-in-one local cluster and the CNI plugin are its subcommands.
package main

import (
	"fmt"
	"os"

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
	root.AddCommand(newVersionCommand(), newServerCommand(), newAgentCommand(), newUpCommand(), newDownCommand(), newExecCommand(), newNSExecCommand(), newNetexecCommand(), newMasqCommand())
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
