package proxy

import (
	"sync"
	"time"

	"k8s.io/component-base/metrics"
	"k8s.io/component-base/metrics/legacyregistry"
)

var (
	// SyncDuration is the time a sync takes: incremental (the usual
	// kind), full (the first one, or after a failure) and repair (the
	// periodic check), and whether it succeeded.
	SyncDuration = metrics.NewHistogramVec(&metrics.HistogramOpts{
		Namespace: "duet", Subsystem: "proxy", Name: "sync_duration_seconds",
		Help:           "Time to program the service proxy's nftables table, by family, kind of sync and result.",
		Buckets:        metrics.ExponentialBuckets(0.0005, 2, 16), // 0.5 ms to 16 s
		StabilityLevel: metrics.ALPHA,
	}, []string{"family", "kind", "result"})
	registerOnce sync.Once
)

// RegisterMetrics adds the proxy's metrics to the registry Duet serves;
// safe to call twice. Unregistered, they cost nothing.
func RegisterMetrics() {
	registerOnce.Do(func() { legacyregistry.MustRegister(SyncDuration) })
}

func observeSync(f Family, kind string, start time.Time, err error) {
	result := "ok"
	if err != nil {
		result = "error"
	}
	SyncDuration.WithLabelValues(f.String(), kind, result).Observe(time.Since(start).Seconds())
}
