package apiserver

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	corev1 "k8s.io/api/core/v1"

	"github.com/duet-net/duet/internal/apis/core"
	"github.com/duet-net/duet/internal/controller/familydrop"
	"github.com/duet-net/duet/internal/etcdstore"
	"github.com/duet-net/duet/internal/netaddr"
)

// rangesKey holds the service ranges and cluster CIDRs the cluster last
// ran with, so that a server restarted on the same etcd with other ones
// can tell an added or dropped secondary family (allowed: the upstream way
// to go dual-stack and back) from a changed primary family (refused: every
// stored Service, Node and Pod has its primary address of that family).
const rangesKey = "/duet/cluster-ranges"

// rangesRecord is the value at rangesKey, primary first.
type rangesRecord struct {
	ServiceRanges []netip.Prefix `json:"serviceRanges"`
	ClusterCIDRs  []netip.Prefix `json:"clusterCIDRs,omitempty"`
	// Flags are the range flags of the last start when the ranges above,
	// kept in step with the ServiceCIDRs and ClusterCIDRs, differ from
	// them (see liveranges.go): a restart is checked against them.
	Flags *rangesRecord `json:"flags,omitempty"`
}

// checkRangeChange says whether a cluster that ran with old may run with
// now, each flag on its own as Kubernetes' flags are: the same families, a
// second family appended, or the second family dropped (the reconcile of
// internal/controller/familydrop then takes it out of every object);
// never another primary family, nor no range at all.
func checkRangeChange(old, now rangesRecord) error {
	for _, l := range []struct {
		flag     string
		old, now []netip.Prefix
	}{
		{"--service-cluster-ip-range", old.ServiceRanges, now.ServiceRanges},
		{"--cluster-cidr", old.ClusterCIDRs, now.ClusterCIDRs},
	} {
		if len(l.old) == 0 {
			continue
		}
		oldFam := netaddr.FamilyOf(l.old[0].Addr())
		if len(l.now) == 0 {
			return fmt.Errorf("%s: the cluster ran with %v; it cannot lose its ranges (to drop the %s family, keep only %s)",
				l.flag, l.old, netaddr.FamilyOf(l.old[len(l.old)-1].Addr()), l.old[0])
		}
		if f := netaddr.FamilyOf(l.now[0].Addr()); f != oldFam {
			return fmt.Errorf("%s: the primary family cannot change: the cluster ran with %v (%s primary), now %v (%s primary); to add a family, append it after %s; to drop one, keep only %s",
				l.flag, l.old, oldFam, l.now, f, l.old[0], l.old[0])
		}
	}
	return nil
}

// droppedSecondary returns the secondary range of old that now lacks, if
// any.
func droppedSecondary(old, now []netip.Prefix) (netip.Prefix, bool) {
	if len(old) == 2 && len(now) == 1 {
		return old[1], true
	}
	return netip.Prefix{}, false
}

// servicesPrefix is the etcd key prefix of the stored Services.
const servicesPrefix = storagePrefix + "/services/"

// serviceBlockers reads every Service from etcd at revision rev, as the
// storage encoded it, and returns those that cannot live on the families
// of ranges (see familydrop.Blockers). It runs before the API server
// serves, so the registry cannot be asked.
func serviceBlockers(ctx context.Context, kv clientv3.KV, rev int64, ranges []netip.Prefix) ([]familydrop.Blocker, error) {
	var keep []corev1.IPFamily
	for _, r := range ranges {
		keep = append(keep, corev1.IPFamily(netaddr.FamilyOf(r.Addr())))
	}
	decoder := Codecs.UniversalDeserializer()
	var svcs []*corev1.Service
	err := etcdstore.ScanAt(ctx, kv, rev, servicesPrefix, clientv3.GetPrefixRangeEnd(servicesPrefix), false, func(key, value []byte) error {
		obj, _, err := decoder.Decode(value, nil, nil)
		if err != nil {
			return fmt.Errorf("decoding %s: %w", key, err)
		}
		switch o := obj.(type) {
		case *core.Service:
			svcs = append(svcs, o.ToV1())
		case *corev1.Service:
			svcs = append(svcs, o)
		default:
			return fmt.Errorf("decoding %s: got %T, want a Service", key, obj)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("reading the Services from etcd: %w", err)
	}
	return familydrop.Blockers(svcs, keep), nil
}

// recordRanges checks this server's ranges against those recorded in
// etcd and records them, in one compare-and-swap so that two replicas
// starting with different ranges cannot both pass.
func recordRanges(ctx context.Context, endpoints []string, cfg *Config) error {
	now := rangesRecord{ServiceRanges: cfg.ServiceRanges, ClusterCIDRs: cfg.ClusterCIDRs.CIDRs}
	client, err := clientv3.New(clientv3.Config{Endpoints: endpoints, DialTimeout: 10 * time.Second})
	if err != nil {
		return fmt.Errorf("connecting to etcd: %w", err)
	}
	defer client.Close()
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	for {
		resp, err := client.Get(ctx, rangesKey)
		if err != nil {
			return fmt.Errorf("reading the cluster's ranges from etcd: %w", err)
		}
		var rev int64 // 0: the key does not exist
		var guards []clientv3.Cmp
		next := now
		if len(resp.Kvs) > 0 {
			var old rangesRecord
			if err := json.Unmarshal(resp.Kvs[0].Value, &old); err != nil {
				return fmt.Errorf("reading the cluster's ranges from etcd (%s): %w", rangesKey, err)
			}
			if err := checkRangeChange(old.lastFlags(), now); err != nil {
				return err
			}
			rev = resp.Kvs[0].ModRevision
			// A restart is checked against the flags of the last start: a
			// family the objects added since is not the flags' to drop.
			if gone, ok := droppedSecondary(old.lastFlags().ServiceRanges, now.ServiceRanges); ok {
				// The Services are read at the revision the record was read
				// at, and the record is written only if no Service changed
				// since: a replica still serving the old ranges cannot
				// create a RequireDualStack Service between the check and
				// the record.
				read := resp.Header.Revision
				blockers, err := serviceBlockers(ctx, client, read, now.ServiceRanges)
				if err != nil {
					return err
				}
				if err := familydrop.RefusalError("--service-cluster-ip-range",
					fmt.Sprintf("the %s range %s", netaddr.FamilyOf(gone.Addr()), gone), blockers); err != nil {
					return err
				}
				guards = append(guards, clientv3.Compare(clientv3.ModRevision(servicesPrefix), "<", read+1).WithPrefix())
			}
			next = old.restartedWith(now)
		}
		mine, err := json.Marshal(next)
		if err != nil {
			return err
		}
		txn, err := client.Txn(ctx).
			If(append(guards, clientv3.Compare(clientv3.ModRevision(rangesKey), "=", rev))...).
			Then(clientv3.OpPut(rangesKey, string(mine))).
			Commit()
		if err != nil {
			return fmt.Errorf("recording the cluster's ranges in etcd: %w", err)
		}
		if txn.Succeeded {
			return nil
		}
		// Another replica wrote the ranges, or a Service changed, in
		// between: check again.
	}
}
