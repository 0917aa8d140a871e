package clusterranges

import (
	"context"
	"log/slog"
	"time"

	networkingv1 "k8s.io/api/networking/v1"
)

// Feeder keeps a Source in step with the objects: whenever told of a
// change (an informer event), it lists them again, builds the Snapshot and
// publishes it. It is level-triggered: a burst of events makes one
// rebuild, and what it publishes is what the lists say, whatever event
// woke it.
type Feeder struct {
	Source   *Source
	Defaults Defaults
	// Services and Clusters list the objects (from informers' listers).
	Services func() ([]*networkingv1.ServiceCIDR, error)
	Clusters func() ([]ClusterCIDR, error)
	Log      *slog.Logger

	kick chan struct{}
}

// NewFeeder returns a Feeder; call Changed from event handlers and Run.
func NewFeeder(f Feeder) *Feeder {
	f.kick = make(chan struct{}, 1)
	if f.Log == nil {
		f.Log = slog.Default()
	}
	return &f
}

// Changed tells the Feeder the objects changed. It never blocks.
func (f *Feeder) Changed() {
	select {
	case f.kick <- struct{}{}:
	default:
	}
}

// Rebuild lists the objects and publishes their Snapshot now.
func (f *Feeder) Rebuild() error {
	svcs, err := f.Services()
	if err != nil {
		return err
	}
	var clusters []ClusterCIDR
	if f.Clusters != nil {
		if clusters, err = f.Clusters(); err != nil {
			return err
		}
	}
	next := Build(f.Defaults, svcs, clusters)
	if f.Source.Publish(next) {
		f.Log.Info("cluster ranges changed", "ranges", next.String(), "families", next.Families())
	}
	return nil
}

// Run rebuilds on every Changed until ctx ends.
func (f *Feeder) Run(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-f.kick:
		}
		if err := f.Rebuild(); err != nil {
			f.Log.Error("reading the cluster's ranges; retrying", "err", err)
			time.AfterFunc(time.Second, f.Changed)
		}
	}
}
