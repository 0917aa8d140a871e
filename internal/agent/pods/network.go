package pods

import (
	"context"

	"github.com/duet-net/duet/internal/agent/sandbox"
)

// Network is what the manager needs of the node's pod network: the calls
// of internal/agent/sandbox, behind an interface so that the pod lifecycle
// is tested without root.
type Network interface {
	// EnsureNode makes the node's bridge ready for pods of cfg.PodCIDRs.
	EnsureNode(nodeNS string, cfg sandbox.NodeConfig) error
	// Setup wires a pod's sandbox, all or nothing.
	Setup(ctx context.Context, nodeNS string, req sandbox.Request) (*sandbox.Sandbox, error)
	// Teardown removes the sandbox id; an absent one is success.
	Teardown(nodeNS, id string) error
	// List returns the node's sandboxes, found after a restart.
	List(nodeNS string) ([]sandbox.Entry, error)
	// TeardownNetNS removes a sandbox List found without an ID.
	TeardownNetNS(nodeNS, netnsPath string) error
}

// SandboxNetwork is the real Network: network namespaces and veth pairs
// on the node's bridge.
type SandboxNetwork struct{}

func (SandboxNetwork) EnsureNode(nodeNS string, cfg sandbox.NodeConfig) error {
	return sandbox.EnsureNode(nodeNS, cfg)
}

func (SandboxNetwork) Setup(ctx context.Context, nodeNS string, req sandbox.Request) (*sandbox.Sandbox, error) {
	return sandbox.Setup(ctx, nodeNS, req)
}

func (SandboxNetwork) Teardown(nodeNS, id string) error { return sandbox.Teardown(nodeNS, id) }

func (SandboxNetwork) List(nodeNS string) ([]sandbox.Entry, error) { return sandbox.List(nodeNS) }

func (SandboxNetwork) TeardownNetNS(nodeNS, netnsPath string) error {
	return sandbox.TeardownNetNS(nodeNS, netnsPath)
}
