package main

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/duet-net/duet/internal/apiserver"
	"github.com/duet-net/duet/internal/cluster"
)

func newSnapshotCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "snapshot (save|restore) FILE --data-dir DIR",
		Short: "Save a running cluster's etcd to a file, or restore one into a stopped server's data directory",
		Long: `duet snapshot save writes a snapshot of the etcd of the running server whose data
directory is DIR (a duet server's --data-dir, or duet up's) to FILE, with a
checksum. duet snapshot restore checks FILE's checksum and makes DIR hold a new
one-member etcd cluster with its data: start the server (or duet up) on DIR
afterwards; other servers join it afresh. The restored cluster's allocations
(cluster IPs, node ports, pod CIDRs) are exactly the snapshot's, and the
repair loops reconcile what changed since.`,
		Example: `  duet snapshot save /backup/duet.db --data-dir /var/lib/duet
  duet snapshot restore /backup/duet.db --data-dir /var/lib/duet-new`,
	}
	var dataDir string
	save := &cobra.Command{
		Use:   "save FILE --data-dir DIR",
		Short: "Write a snapshot of the running cluster's etcd to FILE",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return firstServer(dataDir, func(d cluster.ServerDir) error {
				version, err := apiserver.SaveSnapshot(cmd.Context(), d.Dir, args[0], d.Dial)
				if err != nil {
					return err
				}
				fmt.Fprintf(cmd.OutOrStdout(), "snapshot of %s (etcd %s) saved to %s\n", d.Dir, version, args[0])
				return nil
			})
		},
	}
	var bind string
	restore := &cobra.Command{
		Use:   "restore FILE --data-dir DIR",
		Short: "Make DIR hold a one-member etcd cluster with the snapshot's data (its server stopped)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if _, err := os.Stat(args[0]); err != nil {
				return err
			}
			target, err := cluster.RestoreTargetOf(dataDir)
			if err != nil {
				return err
			}
			// The other servers' members belong to the old cluster: they
			// join the restored one afresh when duet up starts them.
			for _, other := range target.Others {
				etcdDir := filepath.Join(other, "etcd")
				if _, err := os.Stat(etcdDir); err == nil {
					if err := os.RemoveAll(etcdDir); err != nil {
						return err
					}
					fmt.Fprintf(cmd.OutOrStdout(), "removed %s: that server joins the restored cluster afresh\n", etcdDir)
				}
			}
			if err := os.MkdirAll(target.Dir, 0o700); err != nil {
				return err
			}
			if target.BindAddress != "" && !cmd.Flags().Changed("bind-address") {
				bind = target.BindAddress
			}
			st, err := apiserver.RestoreSnapshot(args[0], target.Dir, bind)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "restored %s (revision %d, %d keys) into %s\n", args[0], st.Revision, st.TotalKeys, filepath.Join(target.Dir, "etcd"))
			return nil
		},
	}
	restore.Flags().StringVar(&bind, "bind-address", "127.0.0.1", "the --bind-address the server will start with (its etcd peer address)")
	for _, c := range []*cobra.Command{save, restore} {
		c.Flags().StringVar(&dataDir, "data-dir", "", "a duet server's --data-dir, or duet up's (required)")
		_ = c.MarkFlagRequired("data-dir")
		cmd.AddCommand(c)
	}
	return cmd
}
