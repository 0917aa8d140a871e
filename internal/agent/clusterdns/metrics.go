package clusterdns

import (
	"sync"
	"time"

	"github.com/miekg/dns"
	"k8s.io/component-base/metrics"
	"k8s.io/component-base/metrics/legacyregistry"
)

// Where a question was answered, the "zone" label of the metrics.
const (
	zoneCluster = "cluster" // the cluster domain and its reverse zones
	zoneForward = "forward" // the upstream resolvers
)

var (
	// Requests counts questions by transport, query type and zone.
	Requests = metrics.NewCounterVec(&metrics.CounterOpts{
		Namespace: "duet", Subsystem: "dns", Name: "requests_total",
		Help:           "DNS questions received by the node's cluster DNS server, by transport (udp, tcp), query type and zone (cluster, forward).",
		StabilityLevel: metrics.ALPHA,
	}, []string{"proto", "type", "zone"})
	// Responses counts answers by response code and zone.
	Responses = metrics.NewCounterVec(&metrics.CounterOpts{
		Namespace: "duet", Subsystem: "dns", Name: "responses_total",
		Help:           "DNS answers sent by the node's cluster DNS server, by response code (NOERROR, NXDOMAIN, SERVFAIL…) and zone; truncated UDP answers are also counted in duet_dns_truncated_total.",
		StabilityLevel: metrics.ALPHA,
	}, []string{"rcode", "zone"})
	// Truncated counts UDP answers cut to the client's size.
	Truncated = metrics.NewCounterVec(&metrics.CounterOpts{
		Namespace: "duet", Subsystem: "dns", Name: "truncated_total",
		Help:           "UDP answers that did not fit the client's buffer and were sent truncated (TC set), by zone.",
		StabilityLevel: metrics.ALPHA,
	}, []string{"zone"})
	// Duration is the time from reading a question to writing its answer.
	Duration = metrics.NewHistogramVec(&metrics.HistogramOpts{
		Namespace: "duet", Subsystem: "dns", Name: "request_duration_seconds",
		Help:           "Time to answer a DNS question, by zone: the cluster's names from the node's index, the others from upstream.",
		Buckets:        metrics.ExponentialBuckets(0.00002, 2, 18), // 20 µs to 2.6 s
		StabilityLevel: metrics.ALPHA,
	}, []string{"zone"})
	// IndexObjects is how many objects the records are made from.
	IndexObjects = metrics.NewGaugeVec(&metrics.GaugeOpts{
		Namespace: "duet", Subsystem: "dns", Name: "index_objects",
		Help:           "Objects in the cluster DNS server's index, by kind (services, endpointslices, pods).",
		StabilityLevel: metrics.ALPHA,
	}, []string{"kind"})
	registerOnce sync.Once
)

// RegisterMetrics adds the DNS server's metrics to the registry Duet
// serves; safe to call twice.
func RegisterMetrics() {
	registerOnce.Do(func() {
		legacyregistry.MustRegister(Requests, Responses, Truncated, Duration, IndexObjects)
	})
}

// typeLabel keeps the query-type label's values few.
func typeLabel(t uint16) string {
	switch t {
	case dns.TypeA, dns.TypeAAAA, dns.TypePTR, dns.TypeSRV, dns.TypeCNAME, dns.TypeTXT,
		dns.TypeSOA, dns.TypeNS, dns.TypeMX, dns.TypeANY, dns.TypeHTTPS, dns.TypeSVCB:
		return dns.TypeToString[t]
	}
	return "other"
}

func rcodeLabel(rcode int) string {
	if s, ok := dns.RcodeToString[rcode]; ok {
		return s
	}
	return "other"
}

func observe(proto string, qtype uint16, rcode int, zone string, truncated bool, took time.Duration) {
	Requests.WithLabelValues(proto, typeLabel(qtype), zone).Inc()
	Responses.WithLabelValues(rcodeLabel(rcode), zone).Inc()
	if truncated {
		Truncated.WithLabelValues(zone).Inc()
	}
	Duration.WithLabelValues(zone).Observe(took.Seconds())
}
