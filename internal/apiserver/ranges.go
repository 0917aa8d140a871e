package apiserver

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/duet-net/duet/internal/netaddr"
)

// rangesKey holds the service ranges and cluster CIDRs the cluster last
// ran with, so that a server restarted on the same etcd with other ones
// can tell an added family (allowed: the upstream way to go dual-stack)
// from a changed primary family (refused: every stored Service, Node and
// Pod has its primary address of that family).
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
// now: the same families, or a second family appended; never another
// primary family, nor a family dropped.
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
			return fmt.Errorf("%s: the cluster ran with %v; it cannot lose its ranges", l.flag, l.old)
		}
		if f := netaddr.FamilyOf(l.now[0].Addr()); f != oldFam {
			return fmt.Errorf("%s: the primary family cannot change: the cluster ran with %v (%s primary), now %v (%s primary); to add a family, append it after %s",
				l.flag, l.old, oldFam, l.now, f, l.old[0])
		}
		if len(l.old) == 2 && len(l.now) == 1 {
			return fmt.Errorf("%s: the cluster ran dual-stack with %v; dropping the %s range %s on restart is not supported",
				l.flag, l.old, netaddr.FamilyOf(l.old[1].Addr()), l.old[1])
		}
	}
	return nil
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
			next = old.restartedWith(now)
		}
		mine, err := json.Marshal(next)
		if err != nil {
			return err
		}
		txn, err := client.Txn(ctx).
			If(clientv3.Compare(clientv3.ModRevision(rangesKey), "=", rev)).
			Then(clientv3.OpPut(rangesKey, string(mine))).
			Commit()
		if err != nil {
			return fmt.Errorf("recording the cluster's ranges in etcd: %w", err)
		}
		if txn.Succeeded {
			return nil
		}
		// Another replica wrote in between: check against what it wrote.
	}
}
