package apiserver

import (
	"context"
	"fmt"
	"strings"
	"sync"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/record"
	"k8s.io/klog/v2"

	"github.com/duet-net/duet/internal/alloc"
	"github.com/duet-net/duet/internal/clusterranges"
	"github.com/duet-net/duet/internal/controller/familydrop"
	"github.com/duet-net/duet/internal/etcdstore"
	"github.com/duet-net/duet/internal/netaddr"
)

// lbIPsPrefix is where load balancer IPAM keeps its records.
const lbIPsPrefix = "/duet/allocations/lbips/"

// podFamilies are the families of the cluster CIDRs now (the ClusterCIDR
// objects'), primary first.
func (l *liveRanges) podFamilies() []netaddr.Family {
	var out []netaddr.Family
	for _, c := range l.source.Load().Cluster {
		out = append(out, netaddr.FamilyOf(c.CIDR.Addr()))
	}
	return out
}

// keepOf are the families a Snapshot keeps: those of its ready service
// ranges for Services, those of its ClusterCIDRs for pods.
func keepOf(snap *clusterranges.Snapshot) familydrop.Families {
	var keep familydrop.Families
	for _, f := range snap.ServiceFamilies() {
		keep.Services = append(keep.Services, corev1.IPFamily(f))
	}
	for _, c := range snap.Cluster {
		keep.Pods = append(keep.Pods, corev1.IPFamily(netaddr.FamilyOf(c.CIDR.Addr())))
	}
	return keep
}

// runFamilyDrop runs, in the leader, the reconcile that takes a family
// the cluster's ranges lack out of its objects and records (see
// familydrop), for the ranges of each Snapshot: started anew, with the
// old pass stopped, whenever they change, so a family added back while a
// removal is under way is never taken out. With nothing to drop a pass
// ends at once; every leadership term runs one, which finishes a removal
// a killed server left half done.
func (s *Server) runFamilyDrop(ctx context.Context, wg *sync.WaitGroup, client kubernetes.Interface, nodeCIDRs alloc.Store, recorder record.EventRecorder) {
	wg.Go(func() {
		s.dropDeps.Store(&dropDeps{client: client, nodeCIDRs: nodeCIDRs, recorder: recorder})
		if !s.live.waitSynced(ctx) {
			return
		}
		changed, unsubscribe := s.live.changes()
		defer unsubscribe()
		for {
			pass, stop := context.WithCancel(ctx)
			var running sync.WaitGroup
			r := s.familyDrop(client, nodeCIDRs, recorder, keepOf(s.live.source.Load()))
			running.Go(func() { r.Run(pass) })
			select {
			case <-ctx.Done():
			case <-changed:
			}
			stop()
			running.Wait()
			if ctx.Err() != nil {
				return
			}
		}
	})
}

// dropDeps are what the family-drop reconcile needs of the leader.
type dropDeps struct {
	client    kubernetes.Interface
	nodeCIDRs alloc.Store
	recorder  record.EventRecorder
}

// removeFamiliesNow is the live ranges' FamilyRemover: one pass of the
// reconcile for the current Snapshot, with the leader's clients; an error
// while work is left, or before this server leads (the caller retries).
func (s *Server) removeFamiliesNow(ctx context.Context, _ []netaddr.Family) error {
	d := s.dropDeps.Load()
	if d == nil {
		return fmt.Errorf("the family-drop reconcile is not running yet")
	}
	res, err := s.familyDrop(d.client, d.nodeCIDRs, d.recorder, keepOf(s.live.source.Load())).Sync(ctx)
	if err != nil {
		return err
	}
	if len(res.Left) > 0 {
		return fmt.Errorf("the family is still in use: %s", strings.Join(res.Left, "; "))
	}
	return nil
}

// familyDrop is the reconciler that takes the families keep lacks out of
// the cluster's objects and records (see familydrop). nodeCIDRs is node
// IPAM's store.
func (s *Server) familyDrop(client kubernetes.Interface, nodeCIDRs alloc.Store, recorder record.EventRecorder, keep familydrop.Families) *familydrop.Reconciler {
	r := &familydrop.Reconciler{Client: client, Keep: keep, NodeCIDRs: nodeCIDRs, Recorder: recorder}
	// The load balancer IP records are looked at whatever the pools:
	// a pool of the dropped family may have left the flags already.
	if lb, err := etcdstore.New(s.etcdClient, lbIPsPrefix); err == nil {
		r.LBIPs = lb
	} else {
		klog.ErrorS(err, "load balancer IP records of a dropped family are kept")
	}
	return r
}
