package cluster

import (
	"net"
	"os"
	"path/filepath"
	"strconv"

	"github.com/duet-net/duet/internal/pki"
)

// agentStreamingArgs are the flags with which a node's agent serves exec,
// attach, port-forward and logs to the API server: agents run in the
// host's namespace, so each listens on a free loopback port (and
// advertises 127.0.0.1), with a serving certificate from the cluster CA.
func agentStreamingArgs(dataDir, node string) ([]string, error) {
	port, err := freeLoopbackPort()
	if err != nil {
		return nil, err
	}
	dir := filepath.Join(dataDir, "nodes", node)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	cert, key := filepath.Join(dir, "agent.crt"), filepath.Join(dir, "agent.key")
	if err := pki.WriteAgentServingCert(dataDir, node, []string{"127.0.0.1", "localhost"}, cert, key); err != nil {
		return nil, err
	}
	return []string{"--streaming-bind-address", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)),
		"--tls-cert-file", cert, "--tls-private-key-file", key}, nil
}
