package main

import (
	"errors"
	"fmt"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/duet-net/duet/internal/apiserver"
	"github.com/duet-net/duet/internal/cluster"
)

func newMemberCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "member (list | remove NAME) --data-dir DIR",
		Short: "List the etcd members of a cluster of servers, or remove one that is gone for good",
		Long: `duet member asks the embedded etcd of the running server whose data directory
is DIR (a duet server's --data-dir, or duet up's). duet member remove removes a
member whose server is gone for good (a dead machine), so that the cluster's
quorum counts it no more; a server that is still there leaves with
duet server --leave instead.`,
		Example: "  duet member list --data-dir /var/lib/duet\n  duet member remove host2-3f2a1c --data-dir /var/lib/duet",
	}
	var dataDir string
	list := &cobra.Command{
		Use:   "list --data-dir DIR",
		Short: "List the members",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return firstServer(dataDir, func(d cluster.ServerDir) error {
				members, err := apiserver.ListMembers(cmd.Context(), d.Dir, d.Dial)
				if err != nil {
					return err
				}
				w := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
				fmt.Fprintln(w, "ID\tNAME\tPEER URLS\tROLE")
				for _, m := range members {
					role := "voter"
					if m.Learner {
						role = "learner"
					}
					name := m.Name
					if name == "" {
						name = "(not started)"
					}
					if m.Self {
						name += " (this server)"
					}
					fmt.Fprintf(w, "%x\t%s\t%s\t%s\n", m.ID, name, strings.Join(m.PeerURLs, ","), role)
				}
				return w.Flush()
			})
		},
	}
	remove := &cobra.Command{
		Use:   "remove NAME --data-dir DIR",
		Short: "Remove the member NAME (or hex ID), whose server is gone for good",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return firstServer(dataDir, func(d cluster.ServerDir) error {
				m, err := apiserver.RemoveMember(cmd.Context(), d.Dir, args[0], d.Dial)
				if err != nil {
					return err
				}
				fmt.Fprintf(cmd.OutOrStdout(), "removed member %s (%x)\n", m.Name, m.ID)
				return nil
			})
		},
	}
	for _, c := range []*cobra.Command{list, remove} {
		c.Flags().StringVar(&dataDir, "data-dir", "", "a running duet server's --data-dir, or duet up's (required)")
		_ = c.MarkFlagRequired("data-dir")
		cmd.AddCommand(c)
	}
	return cmd
}

// firstServer runs try on the servers of the cluster in dataDir in turn
// until one succeeds (the others may be down); it returns every failure
// when none does.
func firstServer(dataDir string, try func(cluster.ServerDir) error) error {
	dirs, err := cluster.ServerDataDirs(dataDir)
	if err != nil {
		return err
	}
	var errs []error
	for _, d := range dirs {
		err := try(d)
		if err == nil {
			return nil
		}
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}
