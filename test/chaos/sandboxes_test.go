//go:build chaos

package chaos

import (
	"github.com/duet-net/duet/internal/agent/sandbox"
	"github.com/duet-net/duet/internal/cluster"
)

// countSandboxes counts the pods' namespaces on every node.
func countSandboxes(dataDir string) (int, error) {
	topo, err := cluster.Plan(dataDir, 2)
	if err != nil {
		return 0, err
	}
	n := 0
	for _, node := range topo.Nodes {
		entries, err := sandbox.List(cluster.NetNSPath(node.NetNS))
		if err != nil {
			return 0, err
		}
		n += len(entries)
	}
	return n, nil
}
