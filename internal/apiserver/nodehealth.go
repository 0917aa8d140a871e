package apiserver

import (
	"fmt"
	"time"

	"github.com/duet-net/duet/internal/admission/defaulttolerations"
	"github.com/duet-net/duet/internal/controller/nodelifecycle"
)

// NodeHealth is how the server judges nodes that stop reporting, with
// kube-controller-manager's and kube-apiserver's flags.
type NodeHealth struct {
	// MonitorGracePeriod is --node-monitor-grace-period: how long a node
	// may go without renewing its Lease or posting Ready before it is
	// Unknown and tainted unreachable.
	MonitorGracePeriod time.Duration
	// NotReadyTolerationSeconds and UnreachableTolerationSeconds are
	// --default-not-ready-toleration-seconds and
	// --default-unreachable-toleration-seconds: how long pods created
	// without such tolerations stay on a node with the NoExecute taint.
	NotReadyTolerationSeconds, UnreachableTolerationSeconds int64
}

// DefaultNodeHealth is Kubernetes' defaults.
var DefaultNodeHealth = NodeHealth{
	MonitorGracePeriod:           nodelifecycle.DefaultGracePeriod,
	NotReadyTolerationSeconds:    defaulttolerations.DefaultSeconds,
	UnreachableTolerationSeconds: defaulttolerations.DefaultSeconds,
}

func (h NodeHealth) validate() error {
	if h.MonitorGracePeriod <= 0 {
		return fmt.Errorf("--node-monitor-grace-period %s: must be positive", h.MonitorGracePeriod)
	}
	if h.NotReadyTolerationSeconds < 0 {
		return fmt.Errorf("--default-not-ready-toleration-seconds %d: must not be negative", h.NotReadyTolerationSeconds)
	}
	if h.UnreachableTolerationSeconds < 0 {
		return fmt.Errorf("--default-unreachable-toleration-seconds %d: must not be negative", h.UnreachableTolerationSeconds)
	}
	return nil
}
