package nodestatus

import (
	"context"
	"net/netip"
	"slices"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/util/retry"
)

func (r *Reporter) internalIPs() []netip.Addr {
	r.ipsMu.Lock()
	defer r.ipsMu.Unlock()
	return slices.Clone(r.InternalIPs)
}

// SetInternalIPs replaces the node's InternalIPs (the node gained an
// address of a family the cluster added) and writes the status at once,
// so that routes to the node's pods of that family follow without
// waiting for the next refresh.
func (r *Reporter) SetInternalIPs(ctx context.Context, ips []netip.Addr) error {
	r.ipsMu.Lock()
	r.InternalIPs = slices.Clone(ips)
	r.ipsMu.Unlock()
	return retry.RetryOnConflict(retry.DefaultRetry, func() error {
		node, err := r.Client.CoreV1().Nodes().Get(ctx, r.NodeName, metav1.GetOptions{})
		if err != nil {
			return err
		}
		_, err = r.UpdateStatus(ctx, node)
		return err
	})
}
