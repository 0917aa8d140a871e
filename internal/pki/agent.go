package pki

import (
	"fmt"
	"path/filepath"
)

// AgentClientUser is the identity the API server presents to node agents
// when it proxies exec, attach, port-forward and logs to them, as
// kube-apiserver presents its kubelet client certificate. Agents serve
// this identity only: a node's or an administrator's certificate is
// refused.
const AgentClientUser = "duet-apiserver-agent-client"

// AgentClient issues the API server's client certificate for agents.
func (ca *CA) AgentClient() (Pair, error) {
	return ca.Issue(AgentClientUser, nil, nil, false)
}

// WriteAgentServingCert writes an agent's serving certificate, signed by
// the cluster CA in dataDir/pki, for the given hosts (the addresses the
// API server dials, and the node's name), to certFile and keyFile.
func WriteAgentServingCert(dataDir, node string, hosts []string, certFile, keyFile string) error {
	ca, err := LoadOrCreateCA(filepath.Join(dataDir, "pki"), "duet-ca")
	if err != nil {
		return err
	}
	pair, err := ca.Issue("system:node:"+node+":agent", nil, append([]string{node}, hosts...), true)
	if err != nil {
		return fmt.Errorf("agent serving certificate for %s: %w", node, err)
	}
	return pair.WriteFiles(certFile, keyFile)
}
