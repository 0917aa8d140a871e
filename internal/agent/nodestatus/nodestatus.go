// Package nodestatus registers a node with the API and keeps it alive: the
// Node object with an InternalIP of each family and a Ready condition, and
// a Lease in kube-node-lease renewed as the heartbeat, as the kubelet does.
package nodestatus

import (
	"context"
	"fmt"
	"maps"
	"net/netip"
	"runtime"
	"sync"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	"k8s.io/klog/v2"
	"k8s.io/utils/ptr"
)

const (
	// LeaseDuration is how long a lease holds without renewal.
	LeaseDuration = 40 * time.Second
	// RenewInterval is how often the lease is renewed.
	RenewInterval = 10 * time.Second
	// StatusInterval is how often the Node's status is refreshed when
	// nothing changed.
	StatusInterval = time.Minute
	// MaxPods is the pod capacity a node reports.
	MaxPods = 110
)

// Reporter registers one node and keeps its status and lease fresh.
type Reporter struct {
	Client      kubernetes.Interface
	NodeName    string
	InternalIPs []netip.Addr // one per family, primary first; SetInternalIPs changes them
	ipsMu       sync.Mutex
	Labels      map[string]string
	Version     string // reported as the kubelet version
	// DaemonPort is where the agent serves the API server (exec, logs),
	// reported as status.daemonEndpoints.kubeletEndpoint.Port (0: not
	// served); Annotations are set on the Node (where it is reachable).
	DaemonPort  int32
	Annotations map[string]string
	// Capacity is what the node offers pods (reported as both capacity
	// and allocatable: Duet reserves nothing); nil: the machine's.
	Capacity corev1.ResourceList
	Now      func() time.Time
}

func (r *Reporter) now() time.Time {
	if r.Now != nil {
		return r.Now()
	}
	return time.Now()
}

// Register creates the Node, or updates the addresses, labels and status
// of an existing one (a restarted agent), and returns it.
func (r *Reporter) Register(ctx context.Context) (*corev1.Node, error) {
	nodes := r.Client.CoreV1().Nodes()
	node, err := nodes.Get(ctx, r.NodeName, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		node = &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: r.NodeName, Labels: r.labels(nil)}}
		node, err = nodes.Create(ctx, node, metav1.CreateOptions{})
		if apierrors.IsAlreadyExists(err) {
			node, err = nodes.Get(ctx, r.NodeName, metav1.GetOptions{})
		}
	}
	if err != nil {
		return nil, fmt.Errorf("registering node %s: %w", r.NodeName, err)
	}
	if want, ann := r.labels(node.Labels), r.annotations(node.Annotations); !maps.Equal(want, node.Labels) || !maps.Equal(ann, node.Annotations) {
		node.Labels, node.Annotations = want, ann
		if node, err = nodes.Update(ctx, node, metav1.UpdateOptions{}); err != nil {
			return nil, fmt.Errorf("labelling node %s: %w", r.NodeName, err)
		}
	}
	return r.UpdateStatus(ctx, node)
}

func (r *Reporter) annotations(have map[string]string) map[string]string {
	if len(r.Annotations) == 0 {
		return have
	}
	out := maps.Clone(have)
	if out == nil {
		out = map[string]string{}
	}
	maps.Copy(out, r.Annotations)
	return out
}

func (r *Reporter) labels(have map[string]string) map[string]string {
	out := maps.Clone(have)
	if out == nil {
		out = map[string]string{}
	}
	out[corev1.LabelHostname] = r.NodeName
	out[corev1.LabelOSStable] = runtime.GOOS
	out[corev1.LabelArchStable] = runtime.GOARCH
	for k, v := range r.Labels {
		out[k] = v
	}
	return out
}

// UpdateStatus writes addresses, the Ready condition and node info.
func (r *Reporter) UpdateStatus(ctx context.Context, node *corev1.Node) (*corev1.Node, error) {
	n := node.DeepCopy()
	now := metav1.NewTime(r.now())
	n.Status.Addresses = nil
	for _, ip := range r.internalIPs() {
		n.Status.Addresses = append(n.Status.Addresses, corev1.NodeAddress{Type: corev1.NodeInternalIP, Address: ip.String()})
	}
	n.Status.Addresses = append(n.Status.Addresses, corev1.NodeAddress{Type: corev1.NodeHostName, Address: r.NodeName})
	ready := corev1.NodeCondition{
		Type: corev1.NodeReady, Status: corev1.ConditionTrue, Reason: "DuetAgentReady",
		Message: "duet agent is posting ready status", LastHeartbeatTime: now, LastTransitionTime: now,
	}
	replaced := false
	for i, c := range n.Status.Conditions {
		if c.Type == corev1.NodeReady {
			if c.Status == ready.Status {
				ready.LastTransitionTime = c.LastTransitionTime
			}
			n.Status.Conditions[i] = ready
			replaced = true
		}
	}
	if !replaced {
		n.Status.Conditions = append(n.Status.Conditions, ready)
	}
	capacity := r.Capacity
	if capacity == nil {
		capacity = machineCapacity()
	}
	n.Status.Capacity = capacity.DeepCopy()
	n.Status.Allocatable = capacity.DeepCopy()
	n.Status.DaemonEndpoints.KubeletEndpoint.Port = r.DaemonPort
	n.Status.NodeInfo.KubeletVersion = r.Version
	n.Status.NodeInfo.OperatingSystem = runtime.GOOS
	n.Status.NodeInfo.Architecture = runtime.GOARCH
	n.Status.NodeInfo.OSImage = "duet node"
	n.Status.NodeInfo.KernelVersion = kernelVersion()
	out, err := r.Client.CoreV1().Nodes().UpdateStatus(ctx, n, metav1.UpdateOptions{})
	if err != nil {
		return nil, fmt.Errorf("updating status of node %s: %w", r.NodeName, err)
	}
	return out, nil
}

// RenewLease creates or renews the node's Lease.
func (r *Reporter) RenewLease(ctx context.Context) error {
	leases := r.Client.CoordinationV1().Leases(corev1.NamespaceNodeLease)
	now := metav1.NewMicroTime(r.now())
	lease, err := leases.Get(ctx, r.NodeName, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		_, err = leases.Create(ctx, &coordinationv1.Lease{
			ObjectMeta: metav1.ObjectMeta{Name: r.NodeName, Namespace: corev1.NamespaceNodeLease},
			Spec: coordinationv1.LeaseSpec{
				HolderIdentity:       ptr.To(r.NodeName),
				LeaseDurationSeconds: ptr.To(int32(LeaseDuration / time.Second)),
				RenewTime:            &now,
			},
		}, metav1.CreateOptions{})
		return err
	}
	if err != nil {
		return err
	}
	lease.Spec.HolderIdentity = ptr.To(r.NodeName)
	lease.Spec.LeaseDurationSeconds = ptr.To(int32(LeaseDuration / time.Second))
	lease.Spec.RenewTime = &now
	_, err = leases.Update(ctx, lease, metav1.UpdateOptions{})
	return err
}

// Run renews the lease and refreshes the status until ctx is done.
func (r *Reporter) Run(ctx context.Context) {
	go wait.UntilWithContext(ctx, func(ctx context.Context) {
		if err := r.RenewLease(ctx); err != nil {
			klog.ErrorS(err, "renewing node lease", "node", r.NodeName)
		}
	}, RenewInterval)
	wait.UntilWithContext(ctx, func(ctx context.Context) {
		node, err := r.Client.CoreV1().Nodes().Get(ctx, r.NodeName, metav1.GetOptions{})
		if err == nil {
			_, err = r.UpdateStatus(ctx, node)
		}
		if err != nil {
			klog.ErrorS(err, "refreshing node status", "node", r.NodeName)
		}
	}, StatusInterval)
}
