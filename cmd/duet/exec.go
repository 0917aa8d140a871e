package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"

	"github.com/spf13/cobra"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/duet-net/duet/internal/agent/sandbox"
	"github.com/duet-net/duet/internal/cluster"
	"github.com/duet-net/duet/internal/netns"
)

func newExecCommand() *cobra.Command {
	var dataDir, namespace, node string
	var external bool
	cmd := &cobra.Command{
		Use:   "exec [--data-dir DIR] [-n NAMESPACE] (POD | --external | --node NODE) -- COMMAND [ARG...]",
		Short: "Run a command in a pod's network namespace (or the external one, or a node's) of a duet up cluster",
		Long: `duet exec runs COMMAND, with its standard streams, in the network namespace of a
pod of the duet up cluster kept in --data-dir (default $DUET_DATA_DIR), on this
host. With --external it runs in the namespace that plays the outside world;
with --node in that node's own namespace.`,
		Example: `  duet exec --data-dir /tmp/duet web-0 -- ip addr
  duet exec --data-dir /tmp/duet --external -- curl http://[2001:db8:ffff::10]/`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if dataDir == "" {
				dataDir = os.Getenv("DUET_DATA_DIR")
			}
			if dataDir == "" {
				return errors.New("--data-dir is required (or set DUET_DATA_DIR)")
			}
			dash := cmd.ArgsLenAtDash()
			var pod string
			var command []string
			switch {
			case external && node != "":
				return errors.New("--external and --node exclude each other")
			case (external || node != "") && (dash == 0 || dash == -1):
				command = args
			case !external && dash == 1:
				pod, command = args[0], args[1:]
			default:
				return errors.New("usage: duet exec [-n NAMESPACE] POD -- COMMAND, duet exec --external -- COMMAND, or duet exec --node NODE -- COMMAND")
			}
			if len(command) == 0 {
				return errors.New("no command given after --")
			}
			nsPath, err := execTarget(cmd.Context(), dataDir, namespace, pod, external, node)
			if err != nil {
				return err
			}
			return runInNetNS(nsPath, command)
		},
	}
	cmd.Flags().StringVar(&dataDir, "data-dir", "", "the data directory of the duet up cluster")
	cmd.Flags().StringVarP(&namespace, "namespace", "n", metav1.NamespaceDefault, "the pod's namespace")
	cmd.Flags().BoolVar(&external, "external", false, "run in the external namespace (the outside world) instead of a pod's")
	cmd.Flags().StringVar(&node, "node", "", "run in this node's network namespace instead of a pod's")
	return cmd
}

// execTarget finds the network namespace to run in.
func execTarget(ctx context.Context, dataDir, namespace, pod string, external bool, node string) (string, error) {
	topo, err := cluster.Plan(dataDir, 200)
	if err != nil {
		return "", err
	}
	if external {
		return cluster.NetNSPath(topo.External), nil
	}
	if node != "" {
		for _, n := range topo.Nodes {
			if n.Name == node {
				if _, err := os.Stat(cluster.NetNSPath(n.NetNS)); err != nil {
					return "", fmt.Errorf("node %s of the cluster in %s: %w", node, dataDir, err)
				}
				return cluster.NetNSPath(n.NetNS), nil
			}
		}
		return "", fmt.Errorf("no node %s in the cluster in %s (nodes are named node1, node2, …)", node, dataDir)
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", filepath.Join(dataDir, "admin.kubeconfig"))
	if err != nil {
		return "", fmt.Errorf("is a duet up cluster running in %s? %w", dataDir, err)
	}
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return "", err
	}
	if ctx == nil {
		ctx = context.Background()
	}
	p, err := client.CoreV1().Pods(namespace).Get(ctx, pod, metav1.GetOptions{})
	if err != nil {
		return "", err
	}
	if p.Spec.NodeName == "" {
		return "", fmt.Errorf("pod %s/%s is not scheduled yet", namespace, pod)
	}
	for _, n := range topo.Nodes {
		if n.Name == p.Spec.NodeName {
			return sandbox.NetNSPath(cluster.NetNSPath(n.NetNS), string(p.UID))
		}
	}
	return "", fmt.Errorf("pod %s/%s runs on %s, which is not a node of the cluster in %s", namespace, pod, p.Spec.NodeName, dataDir)
}

// runInNetNS runs command in the namespace at nsPath, as a child whose exit
// status becomes ours.
func runInNetNS(nsPath string, command []string) error {
	self, err := os.Executable()
	if err != nil {
		return err
	}
	c := exec.Command(self, append([]string{"ns-exec", nsPath, "--"}, command...)...)
	c.Stdin, c.Stdout, c.Stderr = os.Stdin, os.Stdout, os.Stderr
	if err := c.Run(); err != nil {
		var exit *exec.ExitError
		if errors.As(err, &exit) {
			os.Exit(exit.ExitCode())
		}
		return err
	}
	return nil
}

// newNSExecCommand is the hidden helper that enters a network namespace
// and replaces itself with the command: execve from the thread that
// entered the namespace leaves the new program in it.
func newNSExecCommand() *cobra.Command {
	return &cobra.Command{
		Use:    "ns-exec NETNS_PATH -- COMMAND [ARG...]",
		Hidden: true,
		Args:   cobra.MinimumNArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			path, err := exec.LookPath(args[1])
			if err != nil {
				return err
			}
			return netns.Exec(args[0], path, args[1:], os.Environ())
		},
	}
}
