package endpointslice

import (
	"context"
	"sync"

	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	discoveryclient "k8s.io/client-go/kubernetes/typed/discovery/v1"
	discoverylisters "k8s.io/client-go/listers/discovery/v1"
)

// supersededVersions records, per slice, the resourceVersion that this
// run's last update of it replaced. The EndpointSliceTracker detects a
// cache that lags behind this controller's updates by metadata.generation,
// which Kubernetes' EndpointSlice registry bumps on every change; a server
// that leaves generations at 0 gives it nothing to compare. A cached slice
// still at a version this run has overwritten is just as stale, and an
// exact resourceVersion match needs no ordering of versions.
type supersededVersions struct {
	mu sync.Mutex
	rv map[types.UID]string
}

func newSupersededVersions() *supersededVersions {
	return &supersededVersions{rv: map[types.UID]string{}}
}

func (s *supersededVersions) record(uid types.UID, rv string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.rv[uid] = rv
}

func (s *supersededVersions) forget(uid types.UID) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.rv, uid)
}

// stale reports whether any of slices is a version this run overwrote.
func (s *supersededVersions) stale(slices []*discovery.EndpointSlice) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, sl := range slices {
		if rv, ok := s.rv[sl.UID]; ok && rv == sl.ResourceVersion {
			return true
		}
	}
	return false
}

// recordingClient is the client the reconciler writes through: it notes
// the version every successful EndpointSlice update replaced.
type recordingClient struct {
	kubernetes.Interface
	slices     discoverylisters.EndpointSliceLister
	superseded *supersededVersions
}

func (c recordingClient) DiscoveryV1() discoveryclient.DiscoveryV1Interface {
	return recordingDiscovery{DiscoveryV1Interface: c.Interface.DiscoveryV1(), c: c}
}

type recordingDiscovery struct {
	discoveryclient.DiscoveryV1Interface
	c recordingClient
}

func (d recordingDiscovery) EndpointSlices(ns string) discoveryclient.EndpointSliceInterface {
	return recordingSlices{EndpointSliceInterface: d.DiscoveryV1Interface.EndpointSlices(ns), ns: ns, c: d.c}
}

type recordingSlices struct {
	discoveryclient.EndpointSliceInterface
	ns string
	c  recordingClient
}

func (s recordingSlices) Update(ctx context.Context, slice *discovery.EndpointSlice, opts metav1.UpdateOptions) (*discovery.EndpointSlice, error) {
	prev := slice.ResourceVersion
	if prev == "" {
		// The reconciler reuses a slice it would delete for one it would
		// create by writing the new one under the old name, without a
		// resourceVersion: what it replaces is what the cache holds now,
		// read before the write so that it cannot be the write itself.
		if cached, err := s.c.slices.EndpointSlices(s.ns).Get(slice.Name); err == nil {
			prev = cached.ResourceVersion
		}
	}
	out, err := s.EndpointSliceInterface.Update(ctx, slice, opts)
	if err == nil && prev != "" && out.ResourceVersion != prev {
		s.c.superseded.record(out.UID, prev)
	}
	return out, err
}
