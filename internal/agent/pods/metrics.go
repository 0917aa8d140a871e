package pods

import (
	"sync"
	"time"

	"k8s.io/component-base/metrics"
	"k8s.io/component-base/metrics/legacyregistry"
)

// SetupDuration is how long each stage of starting a pod's network takes
// (the CNI ADD of Duet's own wiring): ipam (reserving the addresses in the
// durable store), sandbox (namespace, veth, addresses, routes), containers
// (until each command was started) and total.
var SetupDuration = metrics.NewHistogramVec(&metrics.HistogramOpts{
	Namespace: "duet", Subsystem: "agent", Name: "pod_setup_duration_seconds",
	Help:           "Time to start a pod, by stage: ipam, sandbox, containers, total.",
	Buckets:        metrics.ExponentialBuckets(0.0005, 2, 16), // 0.5 ms to 16 s
	StabilityLevel: metrics.ALPHA,
}, []string{"stage"})

var registerOnce sync.Once

// RegisterMetrics adds the pod metrics to the registry the agent serves;
// safe to call twice.
func RegisterMetrics() {
	registerOnce.Do(func() { legacyregistry.MustRegister(SetupDuration) })
}

func observeStage(stage string, since time.Time) {
	SetupDuration.WithLabelValues(stage).Observe(time.Since(since).Seconds())
}
