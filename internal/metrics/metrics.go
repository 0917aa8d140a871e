// Package metrics holds Duet's Prometheus metrics, registered with the
// registry that the API server serves on /metrics.
package metrics

import (
	"math/big"
	"sync"

	"k8s.io/component-base/metrics"
	"k8s.io/component-base/metrics/legacyregistry"
	"lukechampine.com/uint128"
)

var (
	// AddressesUsed and AddressesFree count addresses or prefixes per
	// range, by kind (service-ip, node-cidr) and family.
	AddressesUsed = metrics.NewGaugeVec(&metrics.GaugeOpts{
		Namespace: "duet", Name: "allocator_used",
		Help:           "Addresses (or node CIDRs) allocated in a range.",
		StabilityLevel: metrics.ALPHA,
	}, []string{"kind", "family", "range"})
	AddressesFree = metrics.NewGaugeVec(&metrics.GaugeOpts{
		Namespace: "duet", Name: "allocator_free",
		Help:           "Addresses (or node CIDRs) still free in a range.",
		StabilityLevel: metrics.ALPHA,
	}, []string{"kind", "family", "range"})
	once sync.Once
)

// Register adds Duet's metrics to the served registry; safe to call twice.
func Register() {
	once.Do(func() {
		legacyregistry.MustRegister(AddressesUsed, AddressesFree)
	})
}

// Range is what an allocator reports.
type Range interface {
	Used() uint64
	Free() uint128.Uint128
}

// Observe records a range's fill.
func Observe(kind, family, rng string, r Range) {
	AddressesUsed.WithLabelValues(kind, family, rng).Set(float64(r.Used()))
	f, _ := new(big.Float).SetInt(r.Free().Big()).Float64()
	AddressesFree.WithLabelValues(kind, family, rng).Set(f)
}
